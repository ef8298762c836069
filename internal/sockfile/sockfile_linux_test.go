package sockfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/sockdiag"
)

// bound is a unix stream socket bound (not listening) at dir/name.
func bound(t *testing.T, dir, name string) (fd int, path string) {
	t.Helper()
	path = filepath.Join(dir, name)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	return fd, path
}

// secret is a file standing for a root-only one: mode 0600.
func secret(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func lstatID(t *testing.T, path string) ID {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}
}

func perm(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestVerifyOwnSocketFile(t *testing.T) {
	fd, path := bound(t, t.TempDir(), "s.sock")
	f, err := Verify(fd, path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if want := lstatID(t, path); f.ID != want {
		t.Errorf("ID %+v, the file at the path is %+v", f.ID, want)
	}
	if err := f.Chmod(0o640); err != nil {
		t.Fatal(err)
	}
	if got := perm(t, path); got != 0o640 {
		t.Errorf("mode %v after Chmod(0640)", got)
	}
	if err := f.Chown(-1, os.Getegid()); err != nil {
		t.Errorf("Chown to our own group: %v", err)
	}
}

func TestVerifyRefusesWhatWasSwappedIn(t *testing.T) {
	tests := []struct {
		name string
		swap func(t *testing.T, path string) (check func(t *testing.T))
		want string
	}{
		{name: "symlink to a root-only file", want: "is a symlink to", swap: func(t *testing.T, path string) func(t *testing.T) {
			target := secret(t)
			os.Remove(path)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			return func(t *testing.T) {
				if got := perm(t, target); got != 0o600 {
					t.Errorf("the symlink's target is mode %v now, was 0600", got)
				}
			}
		}},
		{name: "another socket", want: "another socket file", swap: func(t *testing.T, path string) func(t *testing.T) {
			os.Remove(path)
			bound(t, filepath.Dir(path), filepath.Base(path))
			return func(*testing.T) {}
		}},
		{name: "a regular file", want: "a regular file", swap: func(t *testing.T, path string) func(t *testing.T) {
			os.Remove(path)
			os.WriteFile(path, nil, 0o600)
			return func(*testing.T) {}
		}},
		{name: "nothing", want: "nothing is at the path", swap: func(t *testing.T, path string) func(t *testing.T) {
			os.Remove(path)
			return func(*testing.T) {}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd, path := bound(t, t.TempDir(), "s.sock")
			check := tt.swap(t, path)
			f, err := Verify(fd, path)
			if err == nil {
				f.Close()
				t.Fatalf("Verify accepted %s", tt.name)
			}
			if !errors.Is(err, ErrReplaced) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "writable only by root") {
				t.Errorf("Verify: %v; want ErrReplaced, %q and the fix", err, tt.want)
			}
			check(t)
		})
	}
}

// A file verified and then swapped at its path: Chmod changes the file
// verified, never what the path leads to now.
func TestChmodActsOnTheDescriptor(t *testing.T) {
	dir := t.TempDir()
	fd, path := bound(t, dir, "s.sock")
	f, err := Verify(fd, path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	target := secret(t)
	if err := os.Rename(path, path+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	for name, chmod := range map[string]func(uint32) error{
		"fchmodat2":       f.Chmod,
		"/proc/self/fd/N": func(m uint32) error { return chmodProc(f.fd, m) },
	} {
		mode := uint32(0o666)
		if name != "fchmodat2" {
			mode = 0o660
		}
		if err := chmod(mode); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := perm(t, target); got != 0o600 {
			t.Errorf("%s: the symlink's target is mode %v, was 0600", name, got)
		}
		if got := perm(t, path+".moved"); got != os.FileMode(mode) {
			t.Errorf("%s: the socket file is mode %v, want %04o", name, got, mode)
		}
	}
}

func TestRemove(t *testing.T) {
	t.Run("ours", func(t *testing.T) {
		_, path := bound(t, t.TempDir(), "s.sock")
		if ok, err := Remove(path, lstatID(t, path)); !ok || err != nil {
			t.Fatalf("Remove = %v, %v", ok, err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("still there: %v", err)
		}
	})
	t.Run("replaced", func(t *testing.T) {
		_, path := bound(t, t.TempDir(), "s.sock")
		id := lstatID(t, path)
		os.Remove(path)
		bound(t, filepath.Dir(path), "s.sock")
		if ok, err := Remove(path, id); ok || err != nil {
			t.Fatalf("Remove of a replaced file = %v, %v", ok, err)
		}
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("the other socket file is gone: %v", err)
		}
	})
	t.Run("directory swapped for a symlink", func(t *testing.T) {
		// base/d/s.sock is ours; base/d becomes a symlink to a directory
		// with a file of the same name: that file stays.
		base := t.TempDir()
		d := filepath.Join(base, "d")
		os.Mkdir(d, 0o755)
		_, path := bound(t, d, "s.sock")
		id := lstatID(t, path)
		victim := filepath.Join(base, "victim")
		os.Mkdir(victim, 0o755)
		os.WriteFile(filepath.Join(victim, "s.sock"), nil, 0o600)
		os.Rename(d, filepath.Join(base, "d.moved"))
		os.Symlink(victim, d)
		if ok, err := Remove(path, id); ok || err != nil {
			t.Fatalf("Remove through a swapped directory = %v, %v", ok, err)
		}
		if _, err := os.Lstat(filepath.Join(victim, "s.sock")); err != nil {
			t.Errorf("a file in another directory was removed: %v", err)
		}
	})
	t.Run("nothing", func(t *testing.T) {
		if ok, err := Remove(filepath.Join(t.TempDir(), "none", "s.sock"), ID{Dev: 1, Ino: 2}); ok || err != nil {
			t.Errorf("Remove of nothing = %v, %v", ok, err)
		}
	})
}

func TestAnswers(t *testing.T) {
	dir := t.TempDir()
	live, livePath := bound(t, dir, "live.sock")
	if err := unix.Listen(live, 4); err != nil {
		t.Fatal(err)
	}
	stale, stalePath := bound(t, dir, "stale.sock")
	unix.Close(stale)

	probe := func(path string) (bool, int) {
		t.Helper()
		f, err := OpenPath(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		alive, pid, err := f.Answers()
		if err != nil {
			t.Fatal(err)
		}
		return alive, pid
	}
	if alive, pid := probe(livePath); !alive || pid != os.Getpid() {
		t.Errorf("live socket: alive %v, pid %d; want true, %d", alive, pid, os.Getpid())
	}
	if alive, _ := probe(stalePath); alive {
		t.Error("stale socket file: alive")
	}

	// The descriptor is what is probed: the stale file opened, then the
	// path swapped for a symlink to the live one.
	f, err := OpenPath(stalePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	os.Rename(stalePath, stalePath+".moved")
	os.Symlink(livePath, stalePath)
	if alive, _, err := f.Answers(); alive || err != nil {
		t.Errorf("Answers followed the path, not the descriptor: %v, %v", alive, err)
	}
}

func TestMountDevIsStatDevHere(t *testing.T) {
	f, err := OpenPath(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := mountDev(f.fd)
	if err != nil {
		t.Fatal(err)
	}
	// On ext4, xfs and tmpfs the mount's device is what stat reports.
	if dev != f.ID.Dev {
		t.Skipf("mountinfo says %#x, stat %#x: a filesystem with a device per subvolume?", dev, f.ID.Dev)
	}
}

func TestOpenPathLeaksNothing(t *testing.T) {
	before := batontest.NumFDs(t)
	dir := t.TempDir()
	fd, path := bound(t, dir, "s.sock")
	for range 20 {
		f, err := Verify(fd, path)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if _, err := OpenPath(filepath.Join(dir, "none")); err == nil {
			t.Fatal("opened nothing")
		}
	}
	os.Remove(path)
	for range 20 {
		if _, err := Verify(fd, path); err == nil {
			t.Fatal("verified nothing")
		}
	}
	if after := batontest.NumFDs(t); after != before+1 { // the bound socket
		t.Errorf("%d descriptors before, %d after (one socket)", before, after)
	}
}

// TestVerifyWithoutUnixDiag: a kernel that cannot say which file a socket
// is bound to. A socket file is accepted in a directory no other user can
// change, and refused, with both reasons, in one that others can write.
func TestVerifyWithoutUnixDiag(t *testing.T) {
	saved := boundFile
	t.Cleanup(func() { boundFile = saved })
	boundFile = func(uint64) (sockdiag.UnixFile, bool, error) {
		return sockdiag.UnixFile{}, false, fmt.Errorf("sock_diag unix: %w: no unix_diag here", sockdiag.ErrNotSupported)
	}

	fd, path := bound(t, t.TempDir(), "s.sock")
	f, err := Verify(fd, path)
	if err != nil {
		t.Fatalf("in a private directory: %v", err)
	}
	f.Close()

	swapped := filepath.Join(t.TempDir(), "s.sock")
	fd2, _ := bound(t, filepath.Dir(swapped), "s.sock")
	os.Remove(swapped)
	os.Symlink(secret(t), swapped)
	if f, err := Verify(fd2, swapped); err == nil || !errors.Is(err, ErrReplaced) {
		if f != nil {
			f.Close()
		}
		t.Errorf("a symlink in a private directory: %v; want ErrReplaced", err)
	}

	open := filepath.Join(t.TempDir(), "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	fd3, path3 := bound(t, open, "s.sock")
	if f, err := Verify(fd3, path3); err == nil {
		f.Close()
		t.Error("accepted a socket file in a directory others can write, without the kernel's word")
	} else if !strings.Contains(err.Error(), "no unix_diag here") || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("error %q does not give both reasons", err)
	}
}
