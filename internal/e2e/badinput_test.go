package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBadInputStartsNothing runs baton with each kind of bad input and
// checks the message (what, why, how to fix), the exit code, and that no
// worker started and no socket was left behind.
func TestBadInputStartsNothing(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	marker := filepath.Join(dir, "started")
	worker := []string{"--", "/bin/sh", "-c", "touch " + marker + "; sleep 5"}

	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldAddr := held.Addr().String()

	notExec := filepath.Join(dir, "script")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)

	liveSock := filepath.Join(dir, "live.sock")
	live, err := net.Listen("unix", liveSock)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	longPath := "unix:///" + strings.Repeat("x", 120) + ".sock"
	ok := "tcp://127.0.0.1:0"
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no command", []string{"-l", ok}, 2, []string{"no command", "after --"}},
		{"unknown scheme", append([]string{"-l", "http://127.0.0.1:80"}, worker...), 2, []string{`unknown scheme "http"`, "tcp, tcp4, tcp6"}},
		{"unknown option", append([]string{"-l", ok + "?backlg=5"}, worker...), 2, []string{`unknown option "backlg"`, "options are backlog"}},
		{"option for another kind", append([]string{"-l", "udp://127.0.0.1:0?backlog=5"}, worker...), 2, []string{`option "backlog" does not apply to udp`}},
		{"bad port", append([]string{"-l", "tcp://127.0.0.1:99999"}, worker...), 2, []string{`port "99999"`, "0 to 65535"}},
		{"unix path too long", append([]string{"-l", longPath}, worker...), 2, []string{"bytes; the kernel allows at most 107", "abstract name"}},
		{"relative unix path", append([]string{"-l", "unix://run/x.sock"}, worker...), 2, []string{"not absolute", "three slashes"}},
		{"duplicate names", append([]string{"-l", ok, "-l", "tcp://127.0.0.1:0"}, worker...), 2, []string{`two listeners are named "tcp"`, "NAME=ADDRESS"}},
		{"command not found", []string{"-l", ok, "--", "no-such-command-xyz"}, 2, []string{`command "no-such-command-xyz" not found in PATH`}},
		{"command not executable", []string{"-l", ok, "--", notExec}, 2, []string{"is not an executable file", "chmod +x"}},
		{"no such command file", []string{"-l", ok, "--", "./missing/bin"}, 2, []string{"no such file"}},
		{"zero workers", append([]string{"-l", ok, "-n", "0"}, worker...), 2, []string{"--workers: 0: want 1 to 4096"}},
		{"bad ready", append([]string{"-l", ok, "--ready", "soon"}, worker...), 2, []string{`--ready: "soon": want notify`, "delay:DURATION"}},
		{"bad stop signal", append([]string{"-l", ok, "--stop-signal", "NOPE"}, worker...), 2, []string{`signal "NOPE"`}},
		{"unknown flag", append([]string{"-l", ok, "--worker", "2"}, worker...), 2, []string{"unknown flag: --worker"}},
		{"fd0 unknown listener", append([]string{"-l", ok, "--fd0", "web"}, worker...), 2, []string{"--fd0: web: no listener has that name"}},
		{"address in use", append([]string{"-l", "tcp://" + heldAddr}, worker...), 1, []string{"address already in use", fmt.Sprintf("held by pid %d (e2e.test)", os.Getpid()), "choose another port"}},
		{"unix socket in use", append([]string{"-l", "unix://" + liveSock}, worker...), 1, []string{"address already in use", fmt.Sprintf("held by pid %d", os.Getpid())}},
		{"path is not a socket", append([]string{"-l", "unix://" + notExec}, worker...), 1, []string{"exists and is not a socket"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctl := filepath.Join(dir, "ctl.sock")
			out, code := runBaton(t, nil, append([]string{"run", "--control", ctl}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if _, err := os.Stat(marker); err == nil {
				t.Errorf("a worker was started")
				os.Remove(marker)
			}
			if _, err := os.Stat(ctl); err == nil {
				t.Errorf("control socket %s left behind", ctl)
			}
		})
	}
}

func TestSecondBatonOnSameControlSocketIsRefused(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--", helloBin)
	st := b.waitReady(1)
	out, code := runBaton(t, nil, "run", "--control", b.ctl, "-l", "tcp://127.0.0.1:0", "--", helloBin)
	if code != 1 || !strings.Contains(out, fmt.Sprintf("control socket in use by pid %d", st.PID)) || !strings.Contains(out, "--name") {
		t.Errorf("second baton: exit %d, output %q; want 1 naming pid %d and how to pick another name", code, out, st.PID)
	}
	// The first one is untouched.
	if got := b.waitReady(1); got.Workers[0].PID != st.Workers[0].PID {
		t.Errorf("first baton's worker changed")
	}
}

func TestStaleUnixSocketIsReplaced(t *testing.T) {
	requireE2E(t)
	path := filepath.Join(shortDir(t), "app.sock")
	// A socket file whose owner is gone: bound, then closed without unlink.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)

	b := startBaton(t, nil, "-l", "http=unix://"+path+"?mode=0660", "-n", "1", "--ready", "notify", "--", helloBin)
	b.waitReady(1)
	if !b.logHas("removed a stale socket file") {
		t.Errorf("log does not say the stale socket was removed:\n%s", b.log)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket file: %v, mode %v; want mode 0660", err, fi.Mode())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	if !strings.Contains(string(buf[:n]), "200 OK") {
		t.Errorf("answer over the unix socket: %q", buf[:n])
	}
}

func TestPortBelow1024NeedsPrivilege(t *testing.T) {
	requireE2E(t)
	requireRoot(t)
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); err == nil {
		if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n <= 81 {
			t.Skipf("net.ipv4.ip_unprivileged_port_start is %d: any user may bind port 81 here", n)
		}
	}
	dir := shortDir(t)
	// The control socket's directory belongs to the user baton runs as
	// (one anybody can write is refused).
	os.Chown(dir, 65534, 65534)
	cmd := exec.Command(batonBin, "run", "--control", filepath.Join(dir, "ctl.sock"), "-l", "tcp://127.0.0.1:81", "--", "/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	if code != 1 || !strings.Contains(string(out), "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE") {
		t.Errorf("port 81 as uid 65534: exit %d (%v), output %q", code, err, out)
	}
}
