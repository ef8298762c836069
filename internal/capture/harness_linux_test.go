package capture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/listener"
	"golang.org/x/sys/unix"
)

// failsafe bounds every wait in these tests, so that a broken mechanism
// fails the test instead of hanging it. Nothing asserts how long anything
// takes.
const failsafe = 30 * time.Second

// requireCapture skips a test that needs the real mechanism where the
// kernel or the sandbox cannot provide it.
func requireCapture(t *testing.T) {
	t.Helper()
	if err := Supported(); err != nil {
		t.Skipf("bind capture unavailable here: %v", err)
	}
}

// child is a process started through the test shim, under the filter.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	in     io.WriteCloser
	lines  chan string
	stderr *syncBuffer
	notif  int // baton's notification descriptor; -1 once closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startProgram starts the program helper under the filter.
func startProgram(t *testing.T) *child {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return startCaptured(t, "program", "", exe)
}

// startCaptured starts argv through the test shim, which installs the
// filter and execs argv with helperEnv=then, and receives the
// notification descriptor as baton would. With then == "program" the
// child's stdin and stdout carry commands and replies.
func startCaptured(t *testing.T, then, dir string, argv ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	batonEnd, shimEnd, err := Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(batonEnd)
	shimFile := os.NewFile(uintptr(shimEnd), "capture-shim")
	cmd := exec.Command(exe, argv...)
	cmd.Dir = dir
	// ExtraFiles[0] is descriptor 3 in the child.
	cmd.Env = append(os.Environ(), helperEnv+"=shim", thenEnv+"="+then, EnvFD+"=3")
	cmd.ExtraFiles = []*os.File{shimFile}
	c := &child{t: t, cmd: cmd, stderr: &syncBuffer{}, lines: make(chan string, 16), notif: -1}
	cmd.Stderr = c.stderr
	var out io.ReadCloser
	if then == "program" {
		if c.in, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if out, err = cmd.StdoutPipe(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Only the child keeps the shim's end, so that its exit is seen.
	shimFile.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		c.closeNotif()
		if t.Failed() {
			t.Logf("child %d stderr:\n%s", cmd.Process.Pid, c.stderr)
		}
	})
	if out != nil {
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				c.lines <- sc.Text()
			}
			close(c.lines)
		}()
	}
	if c.notif, err = ReceiveNotifFd(batonEnd); err != nil {
		t.Fatalf("ReceiveNotifFd: %v\nchild stderr:\n%s", err, c.stderr)
	}
	return c
}

func (c *child) closeNotif() {
	if c.notif >= 0 {
		unix.Close(c.notif)
		c.notif = -1
	}
}

// send writes a command without waiting for the reply.
func (c *child) send(cmd string) {
	c.t.Helper()
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		c.t.Fatalf("%s: %v", cmd, err)
	}
}

// reply waits for the next reply.
func (c *child) reply(cmd string) reply {
	c.t.Helper()
	select {
	case line, ok := <-c.lines:
		if !ok {
			c.t.Fatalf("%s: the child exited\nstderr:\n%s", cmd, c.stderr)
		}
		var r reply
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			c.t.Fatalf("%s: reply %q: %v", cmd, line, err)
		}
		return r
	case <-time.After(failsafe):
		c.t.Fatalf("%s: no reply (failsafe)\nstderr:\n%s", cmd, c.stderr)
	}
	return reply{}
}

// do sends a command and returns its reply.
func (c *child) do(cmd string) reply {
	c.t.Helper()
	c.send(cmd)
	return c.reply(cmd)
}

// must sends a command and fails the test if it failed.
func (c *child) must(cmd string) reply {
	c.t.Helper()
	r := c.do(cmd)
	if r.Err != "" {
		c.t.Fatalf("%s: %s", cmd, r.Err)
	}
	return r
}

// exit ends the program helper and waits for it.
func (c *child) exit() {
	c.t.Helper()
	c.send("exit")
	if err := c.cmd.Wait(); err != nil {
		c.t.Fatalf("child: %v\nstderr:\n%s", err, c.stderr)
	}
}

// serving is a Serve running in the background.
type serving struct {
	t      *testing.T
	events chan Event
	cancel context.CancelFunc
	done   chan error
	err    error
	ended  bool
}

func startServe(t *testing.T, nfd int, held []Listener, h hooks) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{t: t, events: make(chan Event, 256), cancel: cancel, done: make(chan error, 1)}
	go func() {
		s.done <- serve(ctx, nfd, held, func(e Event) { s.events <- e }, h)
	}()
	t.Cleanup(func() { s.stop() })
	return s
}

// stop cancels Serve and returns what it returned.
func (s *serving) stop() error {
	s.cancel()
	return s.wait()
}

// wait waits for Serve to return by itself.
func (s *serving) wait() error {
	s.t.Helper()
	if s.ended {
		return s.err
	}
	select {
	case s.err = <-s.done:
		s.ended = true
		return s.err
	case <-time.After(failsafe):
		s.t.Fatal("Serve did not return (failsafe)")
	}
	return nil
}

// event waits for the event of a bind to addr, logging the others.
func (s *serving) event(addr string) Event {
	s.t.Helper()
	return s.waitFor("a bind to "+addr, func(e Event) bool { return e.Addr == addr })
}

// waitFor waits for an event that match accepts, logging the others.
func (s *serving) waitFor(what string, match func(Event) bool) Event {
	s.t.Helper()
	deadline := time.After(failsafe)
	for {
		select {
		case e := <-s.events:
			if match(e) {
				return e
			}
			s.t.Logf("other event: %s", e)
		case err := <-s.done:
			s.done <- err
			s.t.Fatalf("Serve returned %v while waiting for %s", err, what)
		case <-deadline:
			s.t.Fatalf("no event for %s (failsafe)", what)
		}
	}
}

// holdSpec binds a listener the way baton does.
func holdSpec(t *testing.T, spec string) *listener.Socket {
	t.Helper()
	sp, err := listener.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	s, err := listener.Bind(sp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// socketInode is the inode of the socket at descriptor fd of process pid.
func socketInode(t *testing.T, pid, fd int) uint64 {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := strings.CutPrefix(link, "socket:[")
	if !ok {
		t.Fatalf("/proc/%d/fd/%d is %s, not a socket", pid, fd, link)
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

// cloexec reports whether descriptor fd of process pid is close-on-exec.
func cloexec(t *testing.T, pid, fd int) bool {
	t.Helper()
	ce, err := fdCloexec(pid, fd)
	if err != nil {
		t.Fatal(err)
	}
	return ce
}

// hello connects to addr and returns the greeting of the process that
// accepted.
func hello(t *testing.T, network, addr string) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, failsafe)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(failsafe))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}

// openFds lists this process's descriptors and what they are.
func openFds(t *testing.T) map[int]string {
	t.Helper()
	fds, err := batontest.OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	return fds
}

// checkNoNewFds fails if descriptors appeared since before.
func checkNoNewFds(t *testing.T, before map[int]string) {
	t.Helper()
	for fd, link := range openFds(t) {
		if before[fd] != link {
			t.Errorf("descriptor %d (%s) leaked", fd, link)
		}
	}
}

// waitGone waits until process pid has exited.
func waitGone(t *testing.T, pid int) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Errorf("pidfd_open %d: %v", pid, err)
		return
	}
	defer unix.Close(pidfd)
	n, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(failsafe/time.Millisecond))
	for errors.Is(err, unix.EINTR) {
		n, err = unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, int(failsafe/time.Millisecond))
	}
	if err != nil || n == 0 {
		t.Errorf("process %d did not exit (%v)", pid, err)
	}
}
