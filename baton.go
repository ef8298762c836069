// Package baton is the worker side of baton, the zero-downtime socket
// manager: a Go program imports it to receive its listening sockets, say
// when it is ready, learn when to stop, and serve HTTP with a drain that
// loses no request.
//
// It speaks the plain systemd protocols (socket activation with LISTEN_FDS,
// LISTEN_PID and LISTEN_FDNAMES; readiness with READY=1 on NOTIFY_SOCKET),
// so the same program also runs under systemd socket activation, and, when
// started by neither, binds the address it is given so it runs unchanged in
// development.
//
//	func main() {
//		http.HandleFunc("/", hello)
//		log.Fatal(baton.Serve(&http.Server{Addr: "127.0.0.1:8080"}))
//	}
package baton

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned when no inherited socket has the asked name.
var ErrNotFound = errors.New("no inherited socket with that name")

var inherited struct {
	once  sync.Once
	err   error
	fds   map[string]int // not yet taken, by name
	order []string
	taken map[string]any // net.Listener or net.PacketConn already made
	mu    sync.Mutex
}

func loadInherited() error {
	inherited.once.Do(func() {
		inherited.fds, inherited.taken = map[string]int{}, map[string]any{}
		files, err := listener.Inherit(os.LookupEnv, os.Getpid(), listener.FirstFd)
		if err != nil {
			inherited.err = err
			return
		}
		for i, f := range files {
			name := f.Name
			if name == "" {
				name = "fd" + strconv.Itoa(f.Fd)
			}
			if _, dup := inherited.fds[name]; dup {
				name += "." + strconv.Itoa(i)
			}
			inherited.fds[name] = f.Fd
			inherited.order = append(inherited.order, name)
		}
	})
	return inherited.err
}

// Activated reports whether this process was given sockets with socket
// activation (by baton or systemd).
func Activated() bool {
	return loadInherited() == nil && len(inherited.order) > 0
}

// Slot and Generation are this worker's slot and generation under baton,
// or -1 when not run by baton.
func Slot() int       { return envInt("BATON_SLOT") }
func Generation() int { return envInt("BATON_GENERATION") }

func envInt(key string) int {
	if n, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return n
	}
	return -1
}

// Listeners returns every inherited stream socket by name. It returns an
// empty map when the process was not socket-activated.
func Listeners() (map[string]net.Listener, error) {
	if err := loadInherited(); err != nil {
		return nil, err
	}
	out := map[string]net.Listener{}
	for _, name := range inherited.order {
		if ln, err := take(name, unix.SOCK_STREAM); err == nil {
			out[name] = ln.(net.Listener)
		} else if !errors.Is(err, errWrongType) {
			return nil, err
		}
	}
	return out, nil
}

// Listener returns the inherited stream socket called name. When the
// process was not socket-activated it listens on addr itself instead, so
// the program runs the same way in development; addr is "host:port" or a
// baton listener address ("tcp://127.0.0.1:8080", "unix:///run/app.sock").
// Asking twice for a name returns the same listener.
func Listener(name, addr string) (net.Listener, error) {
	if err := loadInherited(); err != nil {
		return nil, err
	}
	if len(inherited.order) == 0 {
		return listenOwn(addr)
	}
	ln, err := take(name, unix.SOCK_STREAM)
	if err != nil {
		return nil, err
	}
	return ln.(net.Listener), nil
}

// PacketConn returns the inherited datagram socket called name, or, when
// the process was not socket-activated, listens on addr ("udp://...",
// "unixgram://...", or "host:port" for UDP).
func PacketConn(name, addr string) (net.PacketConn, error) {
	if err := loadInherited(); err != nil {
		return nil, err
	}
	if len(inherited.order) == 0 {
		return listenOwnPacket(addr)
	}
	pc, err := take(name, unix.SOCK_DGRAM)
	if err != nil {
		return nil, err
	}
	return pc.(net.PacketConn), nil
}

var errWrongType = errors.New("wrong socket type")

// take turns the inherited descriptor called name into a net.Listener or
// net.PacketConn, once.
func take(name string, want int) (any, error) {
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	if v, ok := inherited.taken[name]; ok {
		if _, isListener := v.(net.Listener); isListener != (want == unix.SOCK_STREAM) {
			other := map[bool]int{true: unix.SOCK_STREAM, false: unix.SOCK_DGRAM}[isListener]
			return nil, fmt.Errorf("socket %q is a %s socket: %w", name, kindName(other), errWrongType)
		}
		return v, nil
	}
	fd, ok := inherited.fds[name]
	if !ok {
		names := append([]string(nil), inherited.order...)
		sort.Strings(names)
		return nil, fmt.Errorf("socket %q: %w; this process has %s (LISTEN_FDNAMES)", name, ErrNotFound, strings.Join(names, ", "))
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("socket %q (fd %d): %w", name, fd, os.NewSyscallError("getsockopt SO_TYPE", err))
	}
	if typ != want {
		return nil, fmt.Errorf("socket %q (fd %d) is a %s socket: %w", name, fd, kindName(typ), errWrongType)
	}
	// os.NewFile keeps the descriptor's non-blocking mode (only sockets
	// from net's own File method are switched to blocking); net dups it,
	// and the original is closed so that only the returned object holds
	// the socket in this process.
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var v any
	if want == unix.SOCK_STREAM {
		v, err = net.FileListener(f)
	} else {
		v, err = net.FilePacketConn(f)
	}
	if err != nil {
		return nil, fmt.Errorf("socket %q (fd %d): %w", name, fd, err)
	}
	delete(inherited.fds, name)
	inherited.taken[name] = v
	return v, nil
}

func kindName(typ int) string {
	switch typ {
	case unix.SOCK_STREAM:
		return "stream (use Listener)"
	case unix.SOCK_DGRAM:
		return "datagram (use PacketConn)"
	}
	return fmt.Sprintf("type %d", typ)
}

// listenOwn listens on addr when the process was not socket-activated:
// "host:port" as net.Listen takes it, or a baton listener address.
func listenOwn(addr string) (net.Listener, error) {
	if !strings.Contains(addr, "://") {
		return net.Listen("tcp", addr)
	}
	spec, err := listener.Parse(addr)
	if err != nil {
		return nil, err
	}
	if spec.Kind != listener.Stream {
		return nil, fmt.Errorf("%s is not a stream address; use PacketConn", addr)
	}
	return net.Listen(spec.Scheme, spec.Address())
}

func listenOwnPacket(addr string) (net.PacketConn, error) {
	if !strings.Contains(addr, "://") {
		return net.ListenPacket("udp", addr)
	}
	spec, err := listener.Parse(addr)
	if err != nil {
		return nil, err
	}
	if spec.Kind != listener.Datagram {
		return nil, fmt.Errorf("%s is not a datagram address; use Listener", addr)
	}
	return net.ListenPacket(spec.Scheme, spec.Address())
}

// Ready tells the supervisor (baton, or systemd) that this process is ready
// to serve, by sending READY=1 to NOTIFY_SOCKET. Without NOTIFY_SOCKET it
// does nothing and returns nil.
func Ready() error {
	_, err := notify.Notify("READY=1")
	return err
}

// Status sends a one-line status ("serving 12 connections") that baton
// shows beside the worker in `baton status`.
func Status(text string) error {
	_, err := notify.Notify("STATUS=" + strings.ReplaceAll(text, "\n", " "))
	return err
}
