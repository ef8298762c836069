package spawn

import (
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// The spawner re-executes this binary as the shim.
	RunShim()
	os.Exit(m.Run())
}

var spawner = New()

// start runs argv through the shim with the given extra descriptors and
// returns its output and how it ended.
func start(t *testing.T, env []string, extra []int, argv ...string) (string, Exit) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	exited := make(chan Exit, 1)
	files := append([]int{int(devnull.Fd()), int(w.Fd()), int(w.Fd())}, extra...)
	p, err := spawner.Start(Spec{Path: argv[0], Args: argv, Env: env, Files: files, Pdeathsig: syscall.SIGTERM},
		func(e Exit) { exited <- e })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	select {
	case e := <-exited:
		if e.Pid != p.Pid {
			t.Errorf("exit reported for pid %d, started %d", e.Pid, p.Pid)
		}
		if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("Signal after exit: %v, want ErrProcessDone", err)
		}
		return string(out), e
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20s")
	}
	return "", Exit{}
}

func TestShimSetsListenPIDAndKeepsPid(t *testing.T) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sp[0])
	defer unix.Close(sp[1])
	env := []string{"LISTEN_FDS=1", "LISTEN_PID=999", "PATH=/usr/bin:/bin"}
	out, e := start(t, env, []int{sp[0]}, "/bin/sh", "-c", `echo "$LISTEN_PID $$ $BATON_INTERNAL_SHIM"; ls /proc/self/fd | tr '\n' ' '`)
	if !e.Status.Exited() || e.Status.ExitStatus() != 0 {
		t.Fatalf("shell ended %v: %s", e.Status, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[0])
	if len(f) != 2 || f[0] != f[1] {
		t.Errorf("LISTEN_PID and the shell's pid: %q; want equal, and the shim's marker gone", lines[0])
	}
	// 0, 1, 2, the socket at 3, and ls's own directory descriptor.
	if got := strings.Fields(lines[1]); len(got) != 5 || got[3] != "3" {
		t.Errorf("descriptors in the child: %v; want 0 1 2 3 and ls's own", got)
	}
}

func TestShimReportsExecFailure(t *testing.T) {
	out, e := start(t, nil, nil, "/nonexistent/program")
	if e.Status.ExitStatus() != 127 || !strings.Contains(out, "exec /nonexistent/program") {
		t.Errorf("exit %d, output %q; want 127 and the reason", e.Status.ExitStatus(), out)
	}
}

func TestSignalReachesProcess(t *testing.T) {
	r, w, _ := os.Pipe()
	defer r.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	exited := make(chan Exit, 1)
	p, err := spawner.Start(Spec{Path: "/bin/sleep", Args: []string{"sleep", "30"}, Files: []int{int(devnull.Fd()), int(w.Fd()), int(w.Fd())}},
		func(e Exit) { exited <- e })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-exited:
		if !e.Status.Signaled() || e.Status.Signal() != syscall.SIGTERM {
			t.Errorf("sleep ended %v, want killed by SIGTERM", e.Status)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("sleep did not exit on SIGTERM")
	}
}

// A listening socket on fd 0 (--fd0, the FastCGI convention) reaches the
// command blocking, as spawn-fcgi hands it to php-cgi: baton's
// listeners are non-blocking, and php-cgi exits at the first EAGAIN.
func TestShimMakesListenerOnFd0Blocking(t *testing.T) {
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(ln, 8); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	exited := make(chan Exit, 1)
	// fdinfo's flags are octal; O_NONBLOCK is 04000.
	argv := []string{"/bin/sh", "-c", "grep ^flags: /proc/self/fdinfo/0"}
	_, err = spawner.Start(Spec{Path: argv[0], Args: argv, Env: []string{"PATH=/usr/bin:/bin"}, Files: []int{ln, int(w.Fd()), int(w.Fd())}, Pdeathsig: syscall.SIGTERM},
		func(e Exit) { exited <- e })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("no exit within 20s")
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("fdinfo of fd 0: %q", out)
	}
	flags, err := strconv.ParseUint(f[1], 8, 64)
	if err != nil || flags&unix.O_NONBLOCK != 0 {
		t.Errorf("fd 0 in the command has flags %s: want O_NONBLOCK (04000) clear", f[1])
	}
	// And with /dev/null on fd 0 the shim changes nothing.
	if out, e := start(t, []string{"PATH=/usr/bin:/bin"}, nil, "/bin/sh", "-c", "grep ^flags: /proc/self/fdinfo/0"); e.Status.ExitStatus() != 0 {
		t.Errorf("with /dev/null on fd 0: %v %q", e.Status, out)
	}
}
