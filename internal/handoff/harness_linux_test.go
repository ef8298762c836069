package handoff

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
)

// helperEnv makes the test binary run as a helper process.
const helperEnv = "HANDOFF_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// fakeSource is the pid the harness gives handoff connections, so that
// the store, which never pushes a connection back to its source, pushes
// to subscribers of this process.
const fakeSource = 1

// harness is a store served on an abstract worker socket the way the
// supervisor serves it.
type harness struct {
	t     *testing.T
	store *Store
	srv   *control.Server
	path  string
	slots atomic.Int32
	// source is the Source.PID of handoff connections (fakeSource unless
	// set before the first one).
	source atomic.Int64
	// listeners are the Source.Listeners of handoff connections (none:
	// the tests that check descriptors set them and Config.check).
	listeners map[string][]net.Addr
	// errs are the errors the takeovers returned.
	mu   sync.Mutex
	errs []error
}

// anySocket is Config.check for tests that pass socketpairs and
// connections on listeners of their own: it refuses only what is not a
// socket.
func anySocket(fd int, _ string, _ map[string][]net.Addr) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("fd %d is not a socket", fd)
	}
	return nil
}

// newHarness serves a store on a worker socket of its own. Unless cfg
// sets check, received descriptors need only be sockets (anySocket).
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	cfg.Log = testLog(t)
	if cfg.check == nil {
		cfg.check = anySocket
	}
	st, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("@baton-handoff-test/%d/%s/%d", os.Getpid(), t.Name(), time.Now().UnixNano())
	srv, err := control.ListenAbstract(name, cfg.Log)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, store: st, srv: srv, path: name}
	h.source.Store(fakeSource)
	srv.ConnMethods(MethodHandoff, MethodAdopt)
	go srv.Serve(h.handle)
	t.Cleanup(func() {
		st.Close()
		srv.Close()
	})
	return h
}

// handle serves the worker socket the way the supervisor does.
func (h *harness) handle(ctx context.Context, peer control.Peer, req control.Request) (any, error) {
	c := control.ConnFrom(ctx)
	switch req.Method {
	case MethodHandoff:
		answered, err := h.store.ServeHandoff(ctx, c, Source{PID: int(h.source.Load()), Listeners: h.listeners})
		if !answered {
			return nil, err
		}
		h.record(err)
		return control.Hijacked, nil
	case MethodAdopt:
		var p AdoptParams
		if err := control.DecodeParams(req.Params, &p); err != nil {
			return nil, err
		}
		sub, err := h.store.Subscribe(p)
		if err != nil {
			return nil, err
		}
		if err := WriteResult(c, sub); err == nil {
			h.record(h.store.Adopt(ctx, c, Worker{PID: peer.PID, Slot: int(h.slots.Add(1)) - 1, Adopt: true}, sub))
		}
		return control.Hijacked, nil
	}
	return nil, fmt.Errorf("unknown method %q", req.Method)
}

func (h *harness) record(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, err)
}

// allow lets this process's subscriptions adopt.
func (h *harness) allow() {
	h.store.SetWorkers([]Worker{{PID: os.Getpid(), Adopt: true}})
}

// waitStats polls the store's counts until ok holds (bounded).
func (h *harness) waitStats(what string, ok func(Stats) bool) Stats {
	h.t.Helper()
	var st Stats
	batontest.WaitFor(h.t, 20*time.Second, func() error {
		if st = h.store.Stats(); !ok(st) {
			return fmt.Errorf("store never reached %s; stats %+v", what, st)
		}
		return nil
	})
	return st
}

func (h *harness) sender() *Sender {
	h.t.Helper()
	s, err := DialSender(ctx(h.t), h.path)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.Close() })
	return s
}

func (h *harness) adopter(maxFDs int) *Adopter {
	h.t.Helper()
	a, err := DialAdopter(ctx(h.t), h.path, maxFDs)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { a.Close() })
	return a
}

// ctx bounds one operation of a test.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// pairs makes n established loopback TCP connections and returns both
// ends, closed when the test ends.
func pairs(t *testing.T, n int) (clients, servers []*net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range n {
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		clients, servers = append(clients, c), append(servers, s)
	}
	t.Cleanup(func() {
		for i := range clients {
			clients[i].Close()
			servers[i].Close()
		}
	})
	return clients, servers
}

// fdOf is conn's descriptor, which stays the conn's.
func fdOf(t *testing.T, conn syscall.Conn) int {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	raw.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// peerPort is the remote port of the TCP socket fd.
func peerPort(t *testing.T, fd int) int {
	t.Helper()
	sa, err := unix.Getpeername(fd)
	if err != nil {
		t.Fatalf("getpeername(%d): %v", fd, err)
	}
	return sa.(*unix.SockaddrInet4).Port
}

func localPort(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }

// conns describes server ends as connections to hand off, each with
// the state "state-PORT" where PORT is its client's port.
func conns(t *testing.T, servers []*net.TCPConn, listener string) []Conn {
	var out []Conn
	for _, s := range servers {
		port := s.RemoteAddr().(*net.TCPAddr).Port
		out = append(out, Conn{Fd: fdOf(t, s), Listener: listener, State: []byte("state-" + strconv.Itoa(port))})
	}
	return out
}

// closeFDs closes received descriptors.
func closeFDs(fds []fdpass.FD) {
	for _, f := range fds {
		unix.Close(f.Fd)
	}
}

// readAll reads from c until EOF or an error, bounded.
func readAll(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// newBenchHarness is newHarness for a benchmark.
func newBenchHarness(b *testing.B) *harness {
	st, err := NewStore(Config{check: anySocket})
	if err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("@baton-handoff-bench/%d/%d", os.Getpid(), time.Now().UnixNano())
	srv, err := control.ListenAbstract(name, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	h := &harness{store: st, srv: srv, path: name}
	h.source.Store(fakeSource)
	srv.ConnMethods(MethodHandoff, MethodAdopt)
	go srv.Serve(h.handle)
	b.Cleanup(func() {
		st.Close()
		srv.Close()
	})
	return h
}

func ctxB(b *testing.B) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	b.Cleanup(cancel)
	return c
}
