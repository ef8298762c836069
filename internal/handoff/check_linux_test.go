package handoff

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

	"github.com/baton-dev/baton/internal/batontest"
)

// rawFd dups the descriptor of c (a *net.TCPConn, listener, ...) for the
// test to own; it is closed when the test ends.
func rawFd(t *testing.T, c syscall.Conn) int {
	t.Helper()
	fd := -1
	var err error
	raw, rerr := c.SyscallConn()
	if rerr != nil {
		t.Fatal(rerr)
	}
	raw.Control(func(f uintptr) { fd, err = unix.Dup(int(f)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// tcpConn returns the server end (a descriptor) of a loopback connection
// accepted on ln.
func tcpConn(t *testing.T, ln *net.TCPListener) int {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return rawFd(t, s)
}

func TestCheckConn(t *testing.T) {
	web, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	any4, err := net.ListenTCP("tcp4", &net.TCPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer any4.Close()
	other, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	sockPath := filepath.Join(t.TempDir(), "chat.sock")
	chat, err := net.ListenUnix("unix", &net.UnixAddr{Name: sockPath, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer chat.Close()
	listeners := map[string][]net.Addr{"web": {web.Addr()}, "any": {any4.Addr()}, "chat": {chat.Addr()}}

	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root only"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T, flags int, path string) int {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	tests := []struct {
		name    string
		fd      func(t *testing.T) int
		as      string // the listener name the worker claims
		wantErr string // "" for accepted
	}{
		{"a TCP connection on its listener", func(t *testing.T) int { return tcpConn(t, web) }, "web", ""},
		{"a connection on a listener bound to every address", func(t *testing.T) int { return tcpConn(t, any4) }, "any", ""},
		{"a unix connection on its listener", func(t *testing.T) int {
			c, err := net.DialUnix("unix", nil, chat.Addr().(*net.UnixAddr))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			s, err := chat.AcceptUnix()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return rawFd(t, s)
		}, "chat", ""},
		{"a connection on another listener", func(t *testing.T) int { return tcpConn(t, other) }, "web", "is not that of listener web"},
		{"a connection claiming a listener the worker does not have", func(t *testing.T) int { return tcpConn(t, web) }, "admin", "no stream listener called \"admin\""},
		{"a pipe", func(t *testing.T) int {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
			return p[0]
		}, "web", "a pipe or FIFO"},
		{"a root-only file", func(t *testing.T) int { return open(t, unix.O_RDONLY, secret) }, "web", "a regular file (" + secret + "), not a socket"},
		{"a directory", func(t *testing.T) int { return open(t, unix.O_RDONLY|unix.O_DIRECTORY, t.TempDir()) }, "web", "a directory"},
		{"an epoll descriptor", func(t *testing.T) int {
			fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			return fd
		}, "web", "anon_inode:[eventpoll]"},
		{"a UDP socket", func(t *testing.T) int {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return rawFd(t, c)
		}, "web", "a datagram socket"},
		{"the listener itself", func(t *testing.T) int { return rawFd(t, web) }, "web", "a listening socket"},
		{"a TCP socket never connected", func(t *testing.T) int {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			return fd
		}, "web", "not connected"},
		{"a unix socketpair", func(t *testing.T) int {
			p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
			return p[0]
		}, "chat", "is not that of listener chat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckConn(tt.fd(t), tt.as, listeners)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("CheckConn = %v, want nil", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("CheckConn = nil, want an error with %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("CheckConn = %q, want %q in it", err, tt.wantErr)
			}
		})
	}
}

// TestStoreRefusesWhatIsNotAConnection hands off, in one transfer, real
// connections between a pipe, a file and a UDP socket: the store keeps
// the connections, refuses the rest by index, and the sender keeps its
// copies of what was refused.
func TestStoreRefusesWhatIsNotAConnection(t *testing.T) {
	batontest.CheckLeaks(t)
	web, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	h := newHarness(t, Config{check: CheckConn})
	h.listeners = map[string][]net.Addr{"web": {web.Addr()}}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	file, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	good1, good2 := tcpConn(t, web), tcpConn(t, web)
	cs := []Conn{
		{Fd: p[0], Listener: "web"},
		{Fd: good1, Listener: "web", State: []byte("one")},
		{Fd: int(file.Fd()), Listener: "web"},
		{Fd: rawFd(t, udp), Listener: "web"},
		{Fd: good2, Listener: "web", State: []byte("two")},
	}
	err = h.sender().Send(ctx(t), cs)
	var rej *RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("Send = %v, want a *RejectedError", err)
	}
	for _, i := range []int{0, 2, 3} {
		if _, ok := rej.Reasons[i]; !ok {
			t.Errorf("descriptor %d (%s) was not refused: %v", i, []string{"pipe", "", "file", "udp"}[i], rej.Reasons)
		}
	}
	if len(rej.Reasons) != 3 {
		t.Errorf("refused %v, want descriptors 0, 2 and 3", rej.Reasons)
	}
	st := h.waitStats("2 held, 3 rejected", func(st Stats) bool { return st.Held == 2 && st.Rejected == 3 })
	if st.Stored != 2 {
		t.Errorf("stats %+v: want 2 stored", st)
	}
	// The sender still has what baton refused.
	if _, err := unix.Write(p[1], []byte("x")); err != nil {
		t.Errorf("the pipe the store refused is closed in the sender: %v", err)
	}
	h.allow()
	got := adoptN(t, h.adopter(0), 2)
	for _, f := range got {
		if string(f.Meta) != "one" && string(f.Meta) != "two" {
			t.Errorf("adopted a descriptor with state %q", f.Meta)
		}
	}
}

// TestExpiringALingeringConnectionBlocksNothing stores a connection
// whose last close would block for a minute (SO_LINGER on, unsent data,
// a peer that never reads) and lets it expire: the store's lock is never
// held across that close, so the store goes on answering.
func TestExpiringALingeringConnectionBlocksNothing(t *testing.T) {
	h := newHarness(t, Config{Timeout: 50 * time.Millisecond})
	fd := batontest.LingeringTCP(t, time.Minute)
	if err := h.sender().Send(ctx(t), []Conn{{Fd: fd, Listener: "web"}}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd) // baton's copy is the last one now
	done := make(chan Stats, 1)
	go func() {
		// Expired, then asked again: a lock held across the close would
		// keep Stats waiting for the linger time. The select below bounds
		// the wait.
		err := batontest.Wait(time.Minute, func() error {
			if st := h.store.Stats(); st.Expired != 1 {
				return fmt.Errorf("the connection has not expired: %+v", st)
			}
			return nil
		})
		if err == nil {
			h.store.SetWorkers(nil)
			done <- h.store.Stats()
		}
	}()
	select {
	case st := <-done:
		if st.Held != 0 {
			t.Errorf("after expiry: %+v", st)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the store stopped answering while it closed a lingering connection (its lock held across close(2))")
	}
}

// TestBrokenTransferWithALingeringSocketBlocksNothing: a worker sends a
// frame that is not one, carrying a TCP socket whose last close would
// block for a minute, and drops its own copy. The store refuses the
// transfer and lets go of the socket through its closer: the handoff
// connection ends at once instead of after the linger time.
func TestBrokenTransferWithALingeringSocketBlocksNothing(t *testing.T) {
	h := newHarness(t, Config{})
	fd := batontest.LingeringTCP(t, time.Minute)
	s := h.sender() // asked for a handoff and holds a grant
	garbage := make([]byte, 20)
	if _, _, err := s.c.WriteMsgUnix(garbage, unix.UnixRights(fd), nil); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd) // the store's copy is the last one now
	h.waitStats("the broken transfer refused and its connection ended", func(st Stats) bool { return st.Refused == 1 && st.Senders == 0 })
}

// TestWorkerRefusesASquatter: once baton is gone, any local user may bind
// BATON_SOCKET's abstract name. A worker then must not hand its clients'
// connections to them: the library checks who answers before it sends a
// byte.
func TestWorkerRefusesASquatter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the squatter runs as another user")
	}
	// The system's python3: one under root's home (pyenv) is out of the
	// squatter's reach.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skipf("needs %s for the squatter: %v", py, err)
	}
	name := fmt.Sprintf("baton-squat-test/%d/%d", os.Getpid(), time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-c", `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0" + sys.argv[1])
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    got = c.recv(4096)
    print("got", len(got), flush=True)
    c.close()
`, name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "listening" {
		t.Fatalf("the squatter did not start: %q", lines.Text())
	}
	_, err = DialSender(ctx, "@"+name)
	if err == nil || !strings.Contains(err.Error(), "not baton") {
		t.Fatalf("DialSender to a squatter of uid 65534: %v; want it refused", err)
	}
	if _, err := DialAdopter(ctx, "@"+name, 0); err == nil {
		t.Fatal("DialAdopter to a squatter succeeded")
	}
	cmd.Process.Kill()
	for lines.Scan() {
		// "got N" per connection (a line the kill cut short reads "got").
		var n int
		if _, err := fmt.Sscanf(lines.Text(), "got %d", &n); err == nil && n > 0 {
			t.Errorf("the squatter read %d bytes", n)
		}
	}
}

// TestIdleSenderIsClosed: a worker that asks for a handoff and then sends
// nothing does not hold its grant's room for ever.
func TestIdleSenderIsClosed(t *testing.T) {
	old := idleTimeout
	idleTimeout = 200 * time.Millisecond
	defer func() { idleTimeout = old }()
	h := newHarness(t, Config{})
	h.sender()
	h.waitStats("the sender counted", func(st Stats) bool { return st.Senders == 1 })
	h.waitStats("the idle sender closed", func(st Stats) bool { return st.Senders == 0 })
}
