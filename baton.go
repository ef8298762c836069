package baton

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
)

// ErrNotFound is returned when no inherited socket has the asked name.
var ErrNotFound = errors.New("no inherited socket with that name")

// ErrNotSupported is wrapped by the error of what the library cannot do
// on this system: handing connections on (Handoff) needs Linux.
var ErrNotSupported = errors.New("not supported on this system")

// errWrongType is wrapped by the error for a socket asked for as the
// other kind (a stream socket from PacketConn, a datagram one from
// Listener).
var errWrongType = errors.New("wrong socket type")

// Worker is this process as baton (or systemd) started it, made from its
// environment: the sockets it inherited, where it reports readiness and
// status, the signal that asks it to stop, and baton's worker socket for
// handing connections on. The package-level functions are the methods of
// Default, the one a program has: there is no other constructor, because
// the descriptors a process inherited can be taken only once.
//
// A Worker's methods may be called from many goroutines at once.
type Worker struct {
	env env

	// From the environment, read when the Worker is made.
	vars         map[string]string // LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
	notifySocket string
	batonSocket  string
	slot         int
	generation   int
	stopSignal   string

	inherit struct {
		once  sync.Once
		err   error
		mu    sync.Mutex
		fds   map[string]int // not yet taken, by name
		order []string
		taken map[string]any // net.Listener or net.PacketConn already made
	}
	stop struct {
		once sync.Once
		ch   chan struct{}
	}
	handoffs handoffs // what Handoff keeps between calls (per system)
	adopt    struct {
		once sync.Once
		ch   <-chan AdoptedConn
	}
}

// env is what a Worker takes from its process: the seam its tests
// replace with a fake environment (tableflip's env, Go's
// net/hook_unix.go). processEnv is the real one.
type env struct {
	lookupEnv    listener.LookupEnv                          // os.LookupEnv
	pid          int                                         // os.Getpid()
	firstFd      int                                         // listener.FirstFd: where inherited descriptors start
	notifySignal func(c chan<- os.Signal, sigs ...os.Signal) // signal.Notify
}

// processEnv is this process's own environment.
func processEnv() env {
	return env{lookupEnv: os.LookupEnv, pid: os.Getpid(), firstFd: listener.FirstFd, notifySignal: signal.Notify}
}

// newWorker makes a Worker of e, reading its variables now.
func newWorker(e env) *Worker {
	get := func(key string) string { v, _ := e.lookupEnv(key); return v }
	w := &Worker{
		env:          e,
		vars:         map[string]string{},
		notifySocket: get("NOTIFY_SOCKET"),
		batonSocket:  get("BATON_SOCKET"),
		slot:         envInt(get("BATON_SLOT")),
		generation:   envInt(get("BATON_GENERATION")),
		stopSignal:   get("BATON_STOP_SIGNAL"),
	}
	for _, k := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		if v, ok := e.lookupEnv(k); ok {
			w.vars[k] = v
		}
	}
	return w
}

// The per-system halves of the library (*_linux.go, *_others.go) have the
// same shape.
var (
	_ func(*Worker) ([]listener.Inherited, error) = (*Worker).inheritFiles
	_ func(int, string, sockType) (any, error)    = openInherited
	_ func(string) []os.Signal                    = stopSignals
	_ func(*Worker, net.Conn, []byte) error       = (*Worker).handoff
	_ func(*Worker) <-chan AdoptedConn            = (*Worker).subscribe
	_ func(*Conn, string, shutdownHow) error      = (*Conn).shutdown
	_ func(*Conn)                                 = (*Conn).readAddrs
	_ handoffs                                    // what Handoff keeps in a Worker
)

// defaultWorker makes Default's Worker, once.
var defaultWorker = sync.OnceValue(func() *Worker { return newWorker(processEnv()) })

// Default returns this process's Worker, made from its environment on the
// first call of Default or of any package-level function (they all use
// it). Every call returns the same Worker.
func Default() *Worker { return defaultWorker() }

// envInt is a variable's value as a number, or -1.
func envInt(v string) int {
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	return -1
}

// load reads the inherited descriptors, once.
func (w *Worker) load() error {
	in := &w.inherit
	in.once.Do(func() {
		in.fds, in.taken = map[string]int{}, map[string]any{}
		files, err := w.inheritFiles()
		if err != nil {
			in.err = err
			return
		}
		for i, f := range files {
			name := f.Name
			if name == "" {
				name = "fd" + strconv.Itoa(f.Fd)
			}
			if _, dup := in.fds[name]; dup {
				name += "." + strconv.Itoa(i)
			}
			in.fds[name] = f.Fd
			in.order = append(in.order, name)
		}
	})
	return in.err
}

// Activated calls Activated on the Default Worker: whether this process
// was given sockets with socket activation.
func Activated() bool { return Default().Activated() }

// Activated reports whether this process was given sockets with socket
// activation (by baton or systemd); off Linux, never. An error reading
// the inherited sockets counts as none: Listeners and Listener return it.
func (w *Worker) Activated() bool {
	return w.load() == nil && len(w.inherit.order) > 0
}

// Slot calls Slot on the Default Worker: this worker's slot under baton,
// or -1.
func Slot() int { return Default().Slot() }

// Slot is this worker's slot under baton (BATON_SLOT, 0..N-1, kept
// across reloads), or -1 when not run by baton.
func (w *Worker) Slot() int { return w.slot }

// Generation calls Generation on the Default Worker: this worker's
// generation under baton, or -1.
func Generation() int { return Default().Generation() }

// Generation is this worker's generation under baton
// (BATON_GENERATION), or -1 when not run by baton.
func (w *Worker) Generation() int { return w.generation }

// Listeners calls Listeners on the Default Worker: every inherited stream
// socket, by name.
func Listeners() (map[string]net.Listener, error) { return Default().Listeners() }

// Listeners returns every inherited stream socket by name (an unnamed one
// is "fd3", "fd4", ...; a name given twice gets ".N", its index, from the
// second on). It returns an empty map when the process was not
// socket-activated, and an error when the socket-activation variables
// are malformed.
func (w *Worker) Listeners() (map[string]net.Listener, error) {
	if err := w.load(); err != nil {
		return nil, err
	}
	out := map[string]net.Listener{}
	for _, name := range w.inherit.order {
		if ln, err := w.take(name, stream); err == nil {
			out[name] = ln.(net.Listener)
		} else if !errors.Is(err, errWrongType) {
			return nil, err
		}
	}
	return out, nil
}

// Listener calls Listener on the Default Worker: the inherited stream
// socket called name, or, when the process was not socket-activated, one
// listening on addr.
func Listener(name, addr string) (net.Listener, error) { return Default().Listener(name, addr) }

// Listener returns the inherited stream socket called name. When the
// process was not socket-activated it listens on addr itself instead, so
// the program runs the same way in development; addr is "host:port" or a
// baton listener address ("tcp://127.0.0.1:8080", "unix:///run/app.sock").
// Asking twice for a name returns the same listener.
func (w *Worker) Listener(name, addr string) (net.Listener, error) {
	if err := w.load(); err != nil {
		return nil, err
	}
	if len(w.inherit.order) == 0 {
		return listenOwn(addr)
	}
	ln, err := w.take(name, stream)
	if err != nil {
		return nil, err
	}
	return ln.(net.Listener), nil
}

// PacketConn calls PacketConn on the Default Worker: the inherited
// datagram socket called name, or, when the process was not
// socket-activated, one listening on addr.
func PacketConn(name, addr string) (net.PacketConn, error) { return Default().PacketConn(name, addr) }

// PacketConn returns the inherited datagram socket called name, or, when
// the process was not socket-activated, listens on addr ("udp://...",
// "unixgram://...", or "host:port" for UDP). Asking twice for a name
// returns the same socket.
func (w *Worker) PacketConn(name, addr string) (net.PacketConn, error) {
	if err := w.load(); err != nil {
		return nil, err
	}
	if len(w.inherit.order) == 0 {
		return listenOwnPacket(addr)
	}
	pc, err := w.take(name, datagram)
	if err != nil {
		return nil, err
	}
	return pc.(net.PacketConn), nil
}

// sockType is the kind of socket asked for.
type sockType int

const (
	stream sockType = iota + 1
	datagram
)

// String names the kind and the method that takes it, for errors.
func (t sockType) String() string {
	switch t {
	case stream:
		return "stream (use Listener)"
	case datagram:
		return "datagram (use PacketConn)"
	}
	return fmt.Sprintf("type %d", int(t))
}

// take turns the inherited descriptor called name into a net.Listener or
// net.PacketConn, once.
func (w *Worker) take(name string, want sockType) (any, error) {
	in := &w.inherit
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.taken[name]; ok {
		got := datagram
		if _, isListener := v.(net.Listener); isListener {
			got = stream
		}
		if got != want {
			return nil, fmt.Errorf("socket %q is a %s socket: %w", name, got, errWrongType)
		}
		return v, nil
	}
	fd, ok := in.fds[name]
	if !ok {
		names := append([]string(nil), in.order...)
		sort.Strings(names)
		return nil, fmt.Errorf("socket %q: %w; this process has %s (LISTEN_FDNAMES)", name, ErrNotFound, strings.Join(names, ", "))
	}
	v, err := openInherited(fd, name, want)
	if err != nil {
		return nil, err
	}
	delete(in.fds, name)
	in.taken[name] = v
	return v, nil
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

// listenOwnPacket is listenOwn for datagram sockets: "host:port" is UDP.
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

// Ready calls Ready on the Default Worker: it sends READY=1 to
// NOTIFY_SOCKET, if there is one.
func Ready() error { return Default().Ready() }

// Ready tells the supervisor (baton, or systemd) that this process is ready
// to serve, by sending READY=1 to NOTIFY_SOCKET. Without NOTIFY_SOCKET it
// does nothing and returns nil; it returns an error when the datagram
// could not be sent.
func (w *Worker) Ready() error { return w.notify("READY=1") }

// Status calls Status on the Default Worker: it sends a one-line status
// that baton shows beside the worker, if there is a NOTIFY_SOCKET.
func Status(text string) error { return Default().Status(text) }

// Status sends a one-line status ("serving 12 connections") that baton
// shows beside the worker in `baton status` (newlines become spaces).
// Without NOTIFY_SOCKET it does nothing and returns nil; it returns an
// error when the datagram could not be sent.
func (w *Worker) Status(text string) error {
	return w.notify("STATUS=" + strings.ReplaceAll(text, "\n", " "))
}

// notify sends state to NOTIFY_SOCKET, if there is one.
func (w *Worker) notify(state string) error {
	if w.notifySocket == "" {
		return nil
	}
	return notify.Send(w.notifySocket, state)
}
