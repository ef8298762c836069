package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/listener"
	"golang.org/x/sys/unix"
)

func TestSupported(t *testing.T) {
	err := Supported()
	if err != nil {
		if !errors.Is(err, ErrNotSupported) {
			t.Fatalf("Supported() = %v, which does not wrap ErrNotSupported", err)
		}
		t.Skipf("bind capture unavailable here: %v", err)
	}
	// The probe's thread ends after it: no thread of this process keeps
	// its filter or no_new_privs. Thread exit is asynchronous, so wait
	// for it (bounded by the failsafe).
	batontest.WaitFor(t, failsafe, func() error {
		if filtered := filteredThreads(t); len(filtered) != 0 {
			return fmt.Errorf("threads %v still carry the probe's filter", filtered)
		}
		return nil
	})
}

// filteredThreads lists this process's threads that have a seccomp
// filter or no_new_privs.
func filteredThreads(t *testing.T) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/status")
		if err != nil {
			continue // ended meanwhile
		}
		s := string(b)
		if strings.Contains(s, "\nSeccomp:\t2") || strings.Contains(s, "\nNoNewPrivs:\t1") {
			out = append(out, task.Name())
		}
	}
	return out
}

// TestCapture runs an unmodified Go program under the filter: its bind to
// the port the test holds gets the test's socket, and every other bind
// goes ahead as without baton.
func TestCapture(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	heldAddr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	freeAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	unixPath := filepath.Join(t.TempDir(), "app.sock")
	c := startProgram(t)
	pid := c.cmd.Process.Pid
	before := openFds(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})

	// The program inherits neither the shim's end of the socketpair nor
	// the notification descriptor.
	if fds := c.must("fds").Addr; strings.Contains(fds, "socket:") || strings.Contains(fds, "seccomp") {
		t.Errorf("the program starts with descriptors %s, want no socket and no notification descriptor", fds)
	}

	t.Run("held port", func(t *testing.T) {
		r := c.must("listen tcp4 " + heldAddr)
		ev := srv.event(heldAddr)
		if ev.Action != Captured || ev.Listener != "http" || ev.PID != pid || ev.Fd != r.Fd || ev.Err != nil {
			t.Errorf("event %s, want captured by listener \"http\" for pid %d fd %d", ev, pid, r.Fd)
		}
		if got, want := socketInode(t, pid, r.Fd), sock.Inode(); got != want {
			t.Errorf("the program's fd %d is socket %d, want the held socket %d", r.Fd, got, want)
		}
		if !cloexec(t, pid, r.Fd) {
			t.Errorf("fd %d lost the close-on-exec flag the program set", r.Fd)
		}
		// The test never accepts: whoever answers accepted from the held
		// socket.
		if got, want := hello(t, "tcp", heldAddr), fmt.Sprintf("pid=%d", pid); got != want {
			t.Errorf("connection to %s answered %q, want %q", heldAddr, got, want)
		}
	})
	t.Run("port not held", func(t *testing.T) {
		r := c.must("listen tcp4 " + freeAddr)
		ev := srv.event(freeAddr)
		if ev.Action != Passed || ev.Err != nil {
			t.Errorf("event %s, want passed without error", ev)
		}
		if got := socketInode(t, pid, r.Fd); got == sock.Inode() {
			t.Errorf("the program's fd %d is the held socket, want its own", r.Fd)
		}
		if got, want := hello(t, "tcp", freeAddr), fmt.Sprintf("pid=%d", pid); got != want {
			t.Errorf("connection to %s answered %q, want %q", freeAddr, got, want)
		}
	})
	t.Run("port 0", func(t *testing.T) {
		r := c.must("listen tcp4 127.0.0.1:0")
		ev := srv.event("127.0.0.1:0")
		if ev.Action != Passed || ev.Err != nil {
			t.Errorf("event %s, want passed without error", ev)
		}
		if strings.HasSuffix(r.Addr, ":0") || r.Addr == heldAddr {
			t.Errorf("the program's socket is on %s, want a port of its own", r.Addr)
		}
		if got, want := hello(t, "tcp", r.Addr), fmt.Sprintf("pid=%d", pid); got != want {
			t.Errorf("connection to %s answered %q, want %q", r.Addr, got, want)
		}
	})
	t.Run("unix path", func(t *testing.T) {
		c.must("listen unix " + unixPath)
		ev := srv.event(unixPath)
		if ev.Action != Passed || ev.Err != nil {
			t.Errorf("event %s, want passed without error", ev)
		}
		if got, want := hello(t, "unix", unixPath), fmt.Sprintf("pid=%d", pid); got != want {
			t.Errorf("connection to %s answered %q, want %q", unixPath, got, want)
		}
	})

	// When the program and all it started have exited and been reaped,
	// Serve returns by itself.
	c.exit()
	if err := srv.wait(); err != nil {
		t.Errorf("Serve returned %v after the program exited, want nil", err)
	}
	checkNoNewFds(t, before)
}

// TestCaptureForkedChild: a process the program forks inherits the filter
// (nginx's workers), and its bind reaches baton on the same descriptor.
func TestCaptureForkedChild(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	c := startProgram(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})

	r := c.must("listen tcp4 " + addr)
	if ev := srv.event(addr); ev.Action != Captured {
		t.Fatalf("child's bind: %s, want captured", ev)
	}
	gc := c.must("spawn").Pid
	rg := c.must("gc listen tcp4 " + addr)
	if ev := srv.event(addr); ev.Action != Captured || ev.PID != gc {
		t.Errorf("grandchild's bind: %s, want captured for pid %d", ev, gc)
	}
	if got, want := socketInode(t, gc, rg.Fd), sock.Inode(); got != want {
		t.Errorf("the grandchild's fd %d is socket %d, want the held socket %d", rg.Fd, got, want)
	}
	// The child stops accepting, as an old generation would; the
	// grandchild now takes every connection from the same socket.
	c.must(fmt.Sprintf("close %d", r.Fd))
	if got, want := hello(t, "tcp", addr), fmt.Sprintf("pid=%d", gc); got != want {
		t.Errorf("connection answered %q, want %q", got, want)
	}
}

// TestCaptureWildcard: the usual wildcard rules, end to end.
func TestCaptureWildcard(t *testing.T) {
	requireCapture(t)
	anyAddr := holdSpec(t, "any=tcp4://0.0.0.0:0")
	oneAddr := holdSpec(t, "one=tcp4://127.0.0.1:0")
	c := startProgram(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{anyAddr, oneAddr}), hooks{})
	for _, tc := range []struct {
		name, bind string
		want       *listener.Socket
	}{
		{"program binds one address, baton holds the wildcard", fmt.Sprintf("127.0.0.1:%d", anyAddr.Port()), anyAddr},
		{"program binds the wildcard, baton holds one address", fmt.Sprintf("0.0.0.0:%d", oneAddr.Port()), oneAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.must("listen tcp4 " + tc.bind)
			if ev := srv.event(tc.bind); ev.Action != Captured || ev.Listener != tc.want.Spec.Name {
				t.Errorf("event %s, want captured by %q", ev, tc.want.Spec.Name)
			}
			if got, want := socketInode(t, r.Pid, r.Fd), tc.want.Inode(); got != want {
				t.Errorf("the program's fd %d is socket %d, want %d", r.Fd, got, want)
			}
		})
	}
}

// TestCaptureChecksSocketType: a UDP bind to the port of a held TCP
// socket keeps the program's own socket (the ports are independent), and
// the event says why baton's socket did not fit.
func TestCaptureChecksSocketType(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	c := startProgram(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})
	r := c.must("listenpacket udp4 " + addr)
	ev := srv.event(addr)
	if ev.Action != Passed || !errors.Is(ev.Err, ErrNoMatch) {
		t.Errorf("event %s, want passed with an error wrapping ErrNoMatch", ev)
	}
	if got := socketInode(t, r.Pid, r.Fd); got == sock.Inode() {
		t.Error("the program's UDP socket was replaced by the held TCP socket")
	}
}

// TestCaptureRebind: a second bind of a socket the program already bound
// goes ahead (the kernel refuses it), unless the socket is already the
// held one: then it is answered as the first, which is what a bind
// restarted after a signal needs.
func TestCaptureRebind(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	c := startProgram(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})

	r := c.do("rebind 127.0.0.1:0 " + addr)
	if want := unix.EINVAL.Error(); !strings.Contains(r.Err, want) {
		t.Errorf("binding a bound socket to the held port: %q, want %q", r.Err, want)
	}
	if ev := srv.event(addr); ev.Action != Passed {
		t.Errorf("event %s, want passed", ev)
	}

	r = c.must("rebind " + addr + " " + addr)
	for i := range 2 {
		if ev := srv.event(addr); ev.Action != Captured {
			t.Errorf("bind %d: %s, want captured", i+1, ev)
		}
	}
	if got := socketInode(t, r.Pid, r.Fd); got != sock.Inode() {
		t.Errorf("fd %d is not the held socket", r.Fd)
	}
}

// TestCaptureChecksNetns: a program that binds in a network namespace of
// its own keeps its own socket: baton's would serve another network.
func TestCaptureChecksNetns(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	// The wildcard, because loopback is down in a new namespace; by the
	// wildcard rule it would get the held socket.
	addr := fmt.Sprintf("0.0.0.0:%d", sock.Port())
	c := startProgram(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})
	r := c.do("netns " + addr)
	if strings.Contains(r.Err, "unshare") {
		t.Skipf("cannot make a network namespace here: %s", r.Err)
	}
	if r.Err != "" {
		t.Fatalf("bind in a new network namespace: %s", r.Err)
	}
	ev := srv.event(addr)
	if ev.Action != Passed || !errors.Is(ev.Err, ErrNoMatch) || !strings.Contains(ev.Err.Error(), "network namespace") {
		t.Errorf("event %s, want passed with an error wrapping ErrNoMatch about the network namespace", ev)
	}
	if got := socketInode(t, r.Pid, r.Fd); got == sock.Inode() {
		t.Error("the program's socket in its own network namespace was replaced by the held socket")
	}
}

// TestCaptureKeepsCloseOnExec: the installed descriptor keeps the
// program's close-on-exec flag either way (nginx passes its listening
// sockets to its next binary across exec).
func TestCaptureKeepsCloseOnExec(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	c := startProgram(t)
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})
	for _, mode := range []string{"inherit", "cloexec"} {
		r := c.must("raw " + addr + " " + mode)
		if ev := srv.event(addr); ev.Action != Captured {
			t.Fatalf("%s: %s, want captured", mode, ev)
		}
		if got := socketInode(t, r.Pid, r.Fd); got != sock.Inode() {
			t.Errorf("%s: fd %d is not the held socket", mode, r.Fd)
		}
		if got, want := cloexec(t, r.Pid, r.Fd), mode == "cloexec"; got != want {
			t.Errorf("%s: close-on-exec is %v, want %v", mode, got, want)
		}
	}
}

// TestCaptureProcessDies: a process killed while its bind waits for baton
// does not stop Serve, whether it dies before or after the notification
// is received.
func TestCaptureProcessDies(t *testing.T) {
	requireCapture(t)
	for _, tc := range []struct {
		name     string
		received bool
	}{
		{"before receive", false},
		{"after receive", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
			addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
			c := startProgram(t)
			gc := c.must("spawn").Pid
			var once sync.Once
			killed := make(chan struct{})
			kill := func() {
				once.Do(func() {
					unix.Kill(gc, syscall.SIGKILL)
					waitGone(t, gc)
					close(killed)
				})
			}
			var h hooks
			if tc.received {
				h.received = func(tid int) {
					if pid, err := tgid(tid); err == nil && pid == gc {
						kill()
					}
				}
			} else {
				// Only the grandchild binds until it is dead.
				h.polled = kill
			}
			srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), h)
			// One bind(2) in the grandchild, which dies in it.
			if r := c.do("gc raw " + addr + " cloexec"); r.Err == "" {
				t.Fatalf("the grandchild's bind succeeded (fd %d); it should have died in it", r.Fd)
			}
			<-killed
			if tc.received {
				if ev := srv.waitFor("the dead bind", func(e Event) bool { return e.Action != Passed }); ev.Action != Gone || !errors.Is(ev.Err, ErrGone) {
					t.Errorf("event %s, want gone", ev)
				}
			}
			r := c.must("raw " + addr + " cloexec")
			if ev := srv.event(addr); ev.Action != Captured || ev.PID != r.Pid {
				t.Errorf("after the death: %s, want captured for pid %d", ev, r.Pid)
			}
			if got := socketInode(t, r.Pid, r.Fd); got != sock.Inode() {
				t.Errorf("fd %d is not the held socket", r.Fd)
			}
		})
	}
}

// TestServeRestarts: Serve stops and starts again on the descriptor, even
// at another number (as after baton hands it to its next instance), and a
// bind made while nothing served is answered then.
func TestServeRestarts(t *testing.T) {
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	held := heldSockets([]*listener.Socket{sock})
	c := startProgram(t)
	if err := startServe(t, c.notif, held, hooks{}).stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped Serve returned %v, want context.Canceled", err)
	}
	c.send("raw " + addr + " cloexec")
	pfd := []unix.PollFd{{Fd: int32(c.notif), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, int(failsafe/time.Millisecond)); n != 1 || err != nil {
		t.Fatalf("no bind is waiting (poll: %d, %v)", n, err)
	}
	moved, err := unix.FcntlInt(uintptr(c.notif), unix.F_DUPFD_CLOEXEC, 100)
	if err != nil {
		t.Fatal(err)
	}
	c.closeNotif()
	c.notif = moved
	srv := startServe(t, moved, held, hooks{})
	r := c.reply("raw")
	if r.Err != "" {
		t.Fatalf("bind made while nothing served: %s", r.Err)
	}
	if ev := srv.event(addr); ev.Action != Captured {
		t.Errorf("event %s, want captured", ev)
	}
	if got := socketInode(t, r.Pid, r.Fd); got != sock.Inode() {
		t.Errorf("fd %d is not the held socket", r.Fd)
	}
}

// TestClosedNotifFd documents the descriptor's lifetime: once baton closes
// it, every bind under the filter fails with ENOSYS, held port or not.
func TestClosedNotifFd(t *testing.T) {
	requireCapture(t)
	c := startProgram(t)
	c.closeNotif()
	for _, cmd := range []string{"raw 127.0.0.1:0 cloexec", "listen tcp4 127.0.0.1:0"} {
		r := c.do(cmd)
		if !strings.Contains(r.Err, unix.ENOSYS.Error()) {
			t.Errorf("%s: got %+v, want the error %q", cmd, r, unix.ENOSYS.Error())
		}
	}
}

// TestNestedCapture: a program under the filter cannot capture binds
// itself (the kernel allows one listener per filter chain), and Supported
// says so.
func TestNestedCapture(t *testing.T) {
	requireCapture(t)
	c := startProgram(t)
	r := c.do("supported")
	if !strings.Contains(r.Err, ErrNotSupported.Error()) || !strings.Contains(r.Err, unix.EBUSY.Error()) {
		t.Errorf("Supported() under the filter: %q, want ErrNotSupported with %q", r.Err, unix.EBUSY.Error())
	}
}

// TestPythonHTTPServer runs an actually unmodified program.
func TestPythonHTTPServer(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	requireCapture(t)
	sock := holdSpec(t, "http=tcp4://127.0.0.1:0")
	addr := fmt.Sprintf("127.0.0.1:%d", sock.Port())
	dir := t.TempDir()
	const body = "hello from the held socket\n"
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCaptured(t, "", dir, py, "-m", "http.server", "--bind", "127.0.0.1", strconv.Itoa(sock.Port()))
	srv := startServe(t, c.notif, heldSockets([]*listener.Socket{sock}), hooks{})
	ev := srv.event(addr)
	if ev.Action != Captured {
		t.Fatalf("python's bind: %s, want captured", ev)
	}
	if got := socketInode(t, ev.PID, ev.Fd); got != sock.Inode() {
		t.Errorf("python's fd %d is socket %d, want the held socket %d", ev.Fd, got, sock.Inode())
	}
	client := &http.Client{Timeout: failsafe, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/hello.txt")
	if err != nil {
		t.Fatalf("GET: %v\npython's stderr:\n%s", err, c.stderr)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(got) != body {
		t.Errorf("GET /hello.txt: %s %q (%v), want 200 %q", resp.Status, got, err, body)
	}
}

// TestReceiveNotifFdRejects: anything but one seccomp notification
// descriptor is refused, and every descriptor received is closed.
func TestReceiveNotifFdRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(t *testing.T, shim int) // nil: the shim exits silently
		want string
	}{
		{"shim exits", nil, "exited without sending"},
		{"not a notification descriptor", func(t *testing.T, shim int) { sendPipes(t, shim, msgNotifFd, 1) }, "not a seccomp notification descriptor"},
		{"two descriptors", func(t *testing.T, shim int) { sendPipes(t, shim, msgNotifFd, 2) }, "unexpected message"},
		{"wrong message", func(t *testing.T, shim int) { sendPipes(t, shim, 'X', 1) }, "unexpected message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFds(t)
			baton, shim, err := Socketpair()
			if err != nil {
				t.Fatal(err)
			}
			if tc.send != nil {
				tc.send(t, shim)
			}
			unix.Close(shim)
			fd, err := ReceiveNotifFd(baton)
			unix.Close(baton)
			if err == nil {
				unix.Close(fd)
				t.Fatal("ReceiveNotifFd accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
			checkNoNewFds(t, before)
		})
	}
}

// sendPipes sends n pipe descriptors with the byte b, as a confused shim
// might, and closes its own copies.
func sendPipes(t *testing.T, sock int, b byte, n int) {
	t.Helper()
	var fds []int
	for range n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		unix.Close(p[1])
		fds = append(fds, p[0])
	}
	err := unix.Sendmsg(sock, []byte{b}, unix.UnixRights(fds...), nil, 0)
	closeAll(fds)
	if err != nil {
		t.Fatal(err)
	}
}

// TestInstallFromEnvRefuses: a missing or wrong EnvFD changes nothing on
// the calling thread.
func TestInstallFromEnvRefuses(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer closeAll(p[:])
	stream, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(stream[:])
	for _, tc := range []struct {
		name, value string
		set         bool
		want        string // "" for no error
	}{
		{"not set", "", false, ""},
		{"not a number", "three", true, "want the number of an inherited descriptor"},
		{"not a socket", strconv.Itoa(p[0]), true, "not the capture socketpair"},
		{"not the socketpair", strconv.Itoa(stream[0]), true, "not the capture socketpair"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvFD, tc.value)
			if !tc.set {
				os.Unsetenv(EnvFD)
			}
			type result struct {
				installed bool
				err       error
			}
			done := make(chan result, 1)
			go func() {
				// Were the checks to let it through, the filter would land
				// on this thread, which then ends with the goroutine.
				runtime.LockOSThread()
				installed, err := InstallFromEnv()
				done <- result{installed, err}
			}()
			r := <-done
			if r.installed != tc.set {
				t.Errorf("InstallFromEnv reported installed=%v, want %v", r.installed, tc.set)
			}
			if tc.want == "" && r.err != nil || tc.want != "" && (r.err == nil || !strings.Contains(r.err.Error(), tc.want)) {
				t.Errorf("InstallFromEnv error %v, want one saying %q", r.err, tc.want)
			}
			if _, ok := os.LookupEnv(EnvFD); ok {
				t.Errorf("%s is still set: the program would inherit it", EnvFD)
			}
		})
	}
}

func TestReadMem(t *testing.T) {
	want := []byte("the address a program passed to bind")
	for _, tc := range []struct {
		name string
		read func(tid int, addr uint64, buf []byte) error
	}{
		{"process_vm_readv", readMem},
		{"/proc/PID/mem", readProcMem},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make([]byte, len(want))
			addr := uint64(uintptr(unsafe.Pointer(&want[0])))
			if err := tc.read(os.Getpid(), addr, got); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("read %q, want %q", got, want)
			}
			runtime.KeepAlive(want)
		})
	}
}

// heldSockets describes sockets baton holds for Serve, named after their
// specs. Unix sockets may be included: Serve never offers them.
func heldSockets(socks []*listener.Socket) []Listener {
	out := make([]Listener, 0, len(socks))
	for _, s := range socks {
		out = append(out, Listener{Name: s.Spec.Name, Fd: s.Fd()})
	}
	return out
}
