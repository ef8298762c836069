package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/sockfile"
)

func TestListenChecksItsDirectory(t *testing.T) {
	const other = 65534
	tests := []struct {
		name    string
		root    bool                                   // needs root (chown to another uid)
		setup   func(t *testing.T, base string) string // returns the socket's directory
		wantErr string                                 // "" for none
	}{
		{name: "missing: refused, not created", wantErr: "does not exist: create it (mkdir -m 0700", setup: func(t *testing.T, base string) string {
			return filepath.Join(base, "a", "b")
		}},
		{name: "missing, then created by CreateDir", setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "a", "b")
			if err := CreateDir(d); err != nil {
				t.Fatal(err)
			}
			return d
		}},
		{name: "existing, private", setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o755)
			return d
		}},
		{name: "writable by others", wantErr: "is writable by group or others (mode 0777)", setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o777)
			return d
		}},
		{name: "sticky and writable by others", wantErr: "is writable by group or others (mode 1777)", setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o777|os.ModeSticky)
			return d
		}},
		{name: "group-writable", wantErr: "is writable by group or others (mode 0770)", setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o770)
			return d
		}},
		{name: "a symlink to a private directory", wantErr: "is a symlink", setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o700)
			link := filepath.Join(base, "link")
			if err := os.Symlink(d, link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{name: "below a directory others can write", wantErr: "writable by group or others", setup: func(t *testing.T, base string) string {
			open := filepath.Join(base, "open")
			mkdir(t, open, 0o777)
			d := filepath.Join(open, "d")
			mkdir(t, d, 0o700)
			return d
		}},
		{name: "owned by another user", root: true, wantErr: fmt.Sprintf("is owned by uid %d, neither root nor baton's user", other), setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o700)
			if err := os.Chown(d, other, other); err != nil {
				t.Fatal(err)
			}
			return d
		}},
		{name: "pre-made 0777 by another user", root: true, wantErr: fmt.Sprintf("is owned by uid %d", other), setup: func(t *testing.T, base string) string {
			d := filepath.Join(base, "d")
			mkdir(t, d, 0o777)
			if err := os.Chown(d, other, other); err != nil {
				t.Fatal(err)
			}
			return d
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.root && os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another uid")
			}
			dir := tt.setup(t, t.TempDir())
			path := filepath.Join(dir, "ctl.sock")
			s, err := Listen(path, quietLog())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Listen: %v", err)
				}
				defer s.Close()
				var st unix.Stat_t
				if err := unix.Lstat(dir, &st); err != nil || st.Mode&0o077 != 0 && st.Mode&0o022 != 0 {
					t.Errorf("directory mode %04o (%v)", st.Mode&0o7777, err)
				}
				if err := unix.Lstat(path, &st); err != nil || st.Mode&0o777 != 0o600 {
					t.Errorf("socket file mode %04o (%v), want 0600", st.Mode&0o777, err)
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("Listen in %s succeeded; want it refused with %q", dir, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "--control") && !strings.Contains(err.Error(), "another path") {
				t.Errorf("Listen: %v; want %q and the fix", err, tt.wantErr)
			}
			if _, err := os.Lstat(path); err == nil {
				t.Errorf("a refused Listen made %s", path)
			}
			if _, err := os.Lstat(dir); err == nil && strings.Contains(tt.wantErr, "does not exist") {
				t.Errorf("a refused Listen made the directory %s", dir)
			}
		})
	}
}

func mkdir(t *testing.T, d string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
}

// TestListenSocketModeIgnoresUmask: the socket file is 0600 whatever the
// umask, and never more open than that.
func TestListenSocketModeIgnoresUmask(t *testing.T) {
	for _, mask := range []int{0, 0o022, 0o077} {
		path := filepath.Join(t.TempDir(), "ctl.sock")
		old := unix.Umask(mask)
		s, err := Listen(path, quietLog())
		unix.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil || st.Mode&0o777 != 0o600 {
			t.Errorf("umask %04o: socket file mode %04o (%v), want 0600", mask, st.Mode&0o777, err)
		}
		s.Close()
	}
}

// TestAllowGroupActsOnTheSocketFile: the socket file swapped for a
// symlink to a root-only file before AllowGroup. Before the fix, os.Chown
// and os.Chmod followed it: the file became 0660 and changed group.
func TestAllowGroupActsOnTheSocketFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := Listen(path, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	target := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(target, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	err = s.AllowGroup(os.Getegid())
	if !errors.Is(err, sockfile.ErrReplaced) || !strings.Contains(err.Error(), path) {
		t.Errorf("AllowGroup over a swapped file: %v; want an error wrapping ErrReplaced naming %s", err, path)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the root-only file is mode %v now (%v), was 0600", fi.Mode().Perm(), err)
	}

	// The file in place: group and mode change, on that file.
	os.Remove(path)
	os.Rename(path+".moved", path)
	if err := s.AllowGroup(os.Getegid()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket file mode %v (%v) after AllowGroup, want 0660", fi.Mode().Perm(), err)
	}
}

// fakeEnv makes the test binary a fake control server of another uid: it
// listens at the path, answers every request with success and reports
// how many bytes it was sent.
const fakeEnv = "CONTROL_TEST_FAKE_SERVER"

// TestCallRefusesServerOfAnotherUser: a process of another uid answers at
// the control path (it made the directory, or could write it). Before the
// fix, Call sent it the request and took its success for baton's.
func TestCallRefusesServerOfAnotherUser(t *testing.T) {
	if path := os.Getenv(fakeEnv); path != "" {
		fakeServer(path)
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a fake server as another uid")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777) // the other user's directory
	path := filepath.Join(dir, "ctl.sock")
	exe := executableFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestCallRefusesServerOfAnotherUser$")
	cmd.Env = append(os.Environ(), fakeEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run the test binary as uid %d here: %v", nobody, err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Skipf("the fake server as uid %d did not start: %q", nobody, lines.Text())
	}

	_, err = call(t, path, "stop", nil)
	want := fmt.Sprintf("pid %d of uid %d, neither root nor you", cmd.Process.Pid, nobody)
	if !errors.Is(err, ErrUntrustedServer) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "nothing was sent") {
		t.Errorf("Call to a server of uid %d: %v; want ErrUntrustedServer and %q", nobody, err, want)
	}
	if !lines.Scan() || lines.Text() != "got 0 bytes" {
		t.Errorf("the fake server reports %q; want it sent nothing", lines.Text())
	}
}

// executableFor is a copy of the test binary that any uid can run: go test
// builds it in a directory only the user running the tests can enter.
func executableFor(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ctltest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "control.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// fakeServer answers one connection at path with success, and prints
// "ready" once listening and then how many bytes it got.
func fakeServer(path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("listen:", err)
		return
	}
	defer ln.Close()
	fmt.Println("ready")
	c, err := ln.Accept()
	if err != nil {
		fmt.Println("accept:", err)
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var n int
	buf := make([]byte, 4096)
	for {
		k, err := c.Read(buf)
		n += k
		if err != nil || strings.Contains(string(buf[:k]), "\n") {
			break
		}
	}
	c.Write([]byte(`{"ok":true,"result":{"stopped":true}}` + "\n"))
	fmt.Printf("got %d bytes\n", n)
}

// TestCallRefusesDescriptors: a server that sends a descriptor with its
// answer. Call's socket has SO_PASSRIGHTS off (Linux 6.16), so the kernel
// refuses the sender; before, the descriptor reached the client.
func TestCallRefusesDescriptors(t *testing.T) {
	probe, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.SetsockoptInt(probe, unix.SOL_SOCKET, unix.SO_PASSRIGHTS, 0)
	unix.Close(probe)
	if errors.Is(err, unix.ENOPROTOOPT) {
		t.Skip("SO_PASSRIGHTS needs Linux 6.16")
	}
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sent := make(chan error, 1)
	go func() {
		c, err := ln.AcceptUnix()
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		r, w, _ := os.Pipe()
		defer r.Close()
		defer w.Close()
		_, _, err = c.WriteMsgUnix([]byte(`{"ok":true,"result":{}}`+"\n"), unix.UnixRights(int(r.Fd())), nil)
		if err != nil {
			// The descriptor was refused: answer without it.
			c.Write([]byte(`{"ok":true,"result":{}}` + "\n"))
		}
		sent <- err
	}()
	if _, err := call(t, path, "status", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; !errors.Is(err, unix.EPERM) {
		t.Errorf("sending a descriptor to Call's socket: %v; want EPERM (SO_PASSRIGHTS off)", err)
	}
}
