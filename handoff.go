package baton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/fdpass"
	"github.com/baton-dev/baton/internal/handoff"
)

// Errors of Handoff, for errors.Is. Whatever the error, the connection
// is still the caller's, untouched: serve it on, or close it.
var (
	// ErrNoHandoff: the connection was not handed off: the process does
	// not run under baton, baton refused (it is stopping, or holds as
	// many connections as its RLIMIT_NOFILE allows), or the exchange
	// with baton failed. The message says which.
	ErrNoHandoff = errors.New("connection not handed off")
	// ErrStateTooLarge: the state is over baton's bound
	// (baton run --handoff-max-state, 64 KiB by default).
	ErrStateTooLarge = errors.New("handoff state too large")
)

// AdoptedConn is a connection that a worker of an earlier generation
// handed over, as Adopted delivers it.
type AdoptedConn struct {
	// Conn is the connection itself, a *Conn, with what the peer sent
	// and the old worker never read still queued in it, and what the old
	// worker wrote still on its way to the peer.
	Conn net.Conn
	// State is what the old worker passed to Handoff.
	State []byte
	// Listener is the name of the listener the connection was accepted
	// on.
	Listener string
}

// Handoff gives conn, with state, to baton, which passes it to a worker
// of the next generation: that worker receives it from Adopted, with the
// same state. It returns nil once baton holds the connection, and then
// closes conn in this process (the connection itself stays open). On an
// error conn is untouched and still the caller's.
//
// Stop at a message boundary first, so that the next worker can carry
// on: stop reading (conn.SetReadDeadline(time.Now()) interrupts a Read),
// finish what was read whole, and put in state what the next worker must
// know, including bytes already read but not processed. Bytes not read
// yet stay in the kernel's receive buffer and travel with the
// connection; bytes written have been sent or are queued in the socket
// and go on being sent.
//
// conn must be the *net.TCPConn or *net.UnixConn accepted from one of the
// process's inherited listeners (or adopted); a TLS connection cannot be
// handed off (its keys are in this process). Handoff may be called from
// many goroutines at once: their connections go to baton together, up to
// 253 per transfer.
func Handoff(conn net.Conn, state []byte) error {
	path := batonSocket()
	if path == "" {
		return fmt.Errorf("baton.Handoff: %w: not running under baton (no BATON_SOCKET); close the connection instead", ErrNoHandoff)
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("baton.Handoff: %w: a %T has no socket of its own to hand off; pass the *net.TCPConn or *net.UnixConn", ErrNoHandoff, conn)
	}
	name, err := listenerOf(conn)
	if err != nil {
		return fmt.Errorf("baton.Handoff: %w: %w", ErrNoHandoff, err)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("baton.Handoff: %w: %w", ErrNoHandoff, err)
	}
	r := &handoffReq{raw: raw, conn: handoff.Conn{Listener: name, State: state}, done: make(chan error, 1)}
	sendq.add(r, path)
	if err := <-r.done; err != nil {
		var tooLarge handoff.StateTooLarge
		if errors.As(err, &tooLarge) {
			return fmt.Errorf("baton.Handoff: %w: %w", ErrStateTooLarge, err)
		}
		return fmt.Errorf("baton.Handoff: %w: %w", ErrNoHandoff, err)
	}
	conn.Close() // baton holds the connection now
	return nil
}

// batonSocket is BATON_SOCKET, read once.
var batonSocket = sync.OnceValue(func() string { return os.Getenv("BATON_SOCKET") })

// handoffReq is one Handoff waiting for its transfer.
type handoffReq struct {
	raw  syscall.RawConn
	conn handoff.Conn // Fd is set while the transfer holds it
	done chan error
}

// sendq batches concurrent Handoff calls: a goroutine sends them, as many
// per transfer as baton grants, over a handoff connection that it closes
// when nothing is left to send. While more wait than one transfer takes,
// up to maxSenders goroutines do, each on its own connection, so that
// transfers overlap instead of each waiting for the last one's
// acknowledgement.
var sendq handoffQueue

const maxSenders = 2

type handoffQueue struct {
	mu      sync.Mutex
	pending []*handoffReq
	running int
}

func (q *handoffQueue) add(r *handoffReq, path string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, r)
	if q.running == 0 || q.running < maxSenders && len(q.pending) > q.running*handoff.MaxFDs {
		q.running++
		go q.run(path)
	}
}

// dialTimeout bounds connecting to baton and its first answer. A
// transfer itself has no timeout here: baton bounds it, and answers or
// closes the connection, so the worker always learns whether baton holds
// its connections.
const dialTimeout = 10 * time.Second

func (q *handoffQueue) run(path string) {
	var s *handoff.Sender
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	for {
		q.mu.Lock()
		if len(q.pending) == 0 {
			q.running--
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		if s == nil {
			ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
			var err error
			s, err = handoff.DialSender(ctx, path)
			cancel()
			if err != nil {
				if q.failLast(err) {
					return
				}
				continue
			}
		}
		batch := q.take(s.Grant())
		if len(batch) == 0 {
			continue
		}
		var err error
		holding(batch, nil, nil, func(conns []handoff.Conn, held []*handoffReq) {
			if len(conns) == 0 {
				return
			}
			err = s.Send(context.Background(), conns)
			var rej *handoff.RejectedError
			if errors.As(err, &rej) {
				// baton holds the others; these stay the caller's.
				for i, r := range held {
					if reason, ok := rej.Reasons[i]; ok {
						r.done <- fmt.Errorf("baton refused the connection: %s", reason)
					} else {
						r.done <- nil
					}
				}
				err = nil
				return
			}
			for _, r := range held {
				r.done <- err
			}
		})
		if err != nil {
			s.Close()
			s = nil
		}
	}
}

// holding calls f with the descriptors of the connections of rest (after
// conns and held, those gathered so far), each held open by its RawConn's
// Control while f runs: a Close in another goroutine waits until the
// transfer is over, so the descriptor number cannot be reused under it. A
// request whose connection is closed already fails alone.
func holding(rest []*handoffReq, conns []handoff.Conn, held []*handoffReq, f func([]handoff.Conn, []*handoffReq)) {
	if len(rest) == 0 {
		f(conns, held)
		return
	}
	r, ran := rest[0], false
	err := r.raw.Control(func(fd uintptr) {
		ran = true
		c := r.conn
		c.Fd = int(fd)
		holding(rest[1:], append(conns, c), append(held, r), f)
	})
	if !ran {
		r.done <- fmt.Errorf("the connection is closed: %w", err)
		holding(rest[1:], conns, held, f)
	}
}

// take removes the requests the next transfer carries: as many as g
// allows, oldest first. A request whose state is over g's bound fails at
// once, alone.
func (q *handoffQueue) take(g handoff.Grant) []*handoffReq {
	q.mu.Lock()
	defer q.mu.Unlock()
	var batch []*handoffReq
	bytes, i := 0, 0
	for ; i < len(q.pending) && len(batch) < g.MaxFDs; i++ {
		r := q.pending[i]
		if len(r.conn.State) > g.MaxState {
			r.done <- handoff.StateTooLarge{Size: len(r.conn.State), Max: g.MaxState}
			continue
		}
		size := 6 + len(r.conn.Listener) + len(handoff.Kind) + len(r.conn.State)
		if len(batch) > 0 && bytes+size > g.MaxBytes {
			break
		}
		batch = append(batch, r)
		bytes += size
	}
	clear(q.pending[:i])
	q.pending = q.pending[i:]
	return batch
}

// failLast handles a sender that could not connect: while another sender
// runs, this one leaves the queue to it and reports true (baton may have
// granted the other all the room it has); the last one fails every
// request waiting.
func (q *handoffQueue) failLast(err error) (gone bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.running > 1 {
		q.running--
		return true
	}
	for _, r := range q.pending {
		r.done <- err
	}
	q.pending = nil
	return false
}

// listeners caches the local address of each inherited stream listener.
var listeners struct {
	once  sync.Once
	names []string
	addrs []net.Addr
}

// listenerOf names the inherited listener conn was accepted on, by its
// local address.
func listenerOf(conn net.Conn) (string, error) {
	listeners.once.Do(func() {
		if loadInherited() != nil {
			return
		}
		inherited.mu.Lock()
		defer inherited.mu.Unlock()
		for _, name := range inherited.order {
			var addr net.Addr
			if v, ok := inherited.taken[name]; ok {
				if ln, ok := v.(net.Listener); ok {
					addr = ln.Addr()
				}
			} else if fd, ok := inherited.fds[name]; ok {
				addr = streamAddr(fd)
			}
			if addr != nil {
				listeners.names = append(listeners.names, name)
				listeners.addrs = append(listeners.addrs, addr)
			}
		}
	})
	if c, ok := conn.(*Conn); ok && slices.Contains(listeners.names, c.listener) {
		// Adopted, and its listener is this process's too: no need to
		// ask the kernel for its address.
		return c.listener, nil
	}
	local := conn.LocalAddr()
	for i, a := range listeners.addrs {
		if sameListener(a, local) {
			return listeners.names[i], nil
		}
	}
	var have []string
	for i, a := range listeners.addrs {
		have = append(have, listeners.names[i]+"="+a.String())
	}
	if len(have) == 0 {
		return "", fmt.Errorf("this process inherited no stream listener, so %s came from none", local)
	}
	return "", fmt.Errorf("the connection's local address %s is none of this process's listeners (%s)", local, strings.Join(have, ", "))
}

// streamAddr is the address of the stream socket fd, or nil.
func streamAddr(fd int) net.Addr {
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		return nil
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return nil
}

// sameListener reports whether a connection with local address c was
// accepted on a listener bound to l.
func sameListener(l, c net.Addr) bool {
	switch la := l.(type) {
	case *net.TCPAddr:
		ca, ok := c.(*net.TCPAddr)
		return ok && la.Port == ca.Port && (la.IP.IsUnspecified() || la.IP.Equal(ca.IP))
	case *net.UnixAddr:
		ca, ok := c.(*net.UnixAddr)
		return ok && la.Name == ca.Name
	}
	return false
}

var adoption struct {
	once sync.Once
	ch   chan AdoptedConn
}

// Adopted returns the channel on which connections handed over by
// workers of earlier generations arrive. The first call subscribes on
// BATON_SOCKET; call it before Ready, so that the subscription is open
// when baton stops the old generation. The subscription lasts until baton
// asks this worker to stop (it survives a baton upgrade); the channel is
// closed then, once every connection received is delivered. Not under
// baton, the channel is closed at once.
//
// Serve each AdoptedConn as the old worker would have carried on:
// restore its State, read on where it stopped.
func Adopted() <-chan AdoptedConn {
	adoption.once.Do(func() {
		// Buffered: a transfer brings up to 253 at once, and handing
		// them over one goroutine switch at a time would cost more than
		// the move itself.
		adoption.ch = make(chan AdoptedConn, handoff.MaxFDs)
		path := batonSocket()
		if path == "" {
			close(adoption.ch)
			return
		}
		q := &adoptQueue{out: adoption.ch, wake: make(chan struct{}, 1)}
		go q.deliver()
		go adoptLoop(path, q)
	})
	return adoption.ch
}

// adoptLoop keeps the subscription open until baton refuses it (it asked
// this worker to stop). When baton ends a subscription, which it does when
// it stops the worker and when it re-executes itself (baton upgrade), the
// loop asks again; a broken subscription (a transfer this process could
// not take) is opened again too, asking for transfers that fit its
// descriptor room.
func adoptLoop(path string, q *adoptQueue) {
	defer q.finish()
	backoff := 50 * time.Millisecond
	maxFDs := adoptRoom()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		a, err := handoff.DialAdopter(ctx, path, maxFDs)
		cancel()
		if errors.Is(err, handoff.ErrRefused) {
			return // this worker may not adopt: it is stopping
		}
		if err == nil {
			err = adoptFrom(a, q)
			a.Close()
			if err == nil {
				backoff = 50 * time.Millisecond
				continue // baton ended the subscription: ask again
			}
			// A transfer failed, perhaps for want of descriptors: ask for
			// what fits now.
			maxFDs = adoptRoom()
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// adoptFrom receives transfers until baton ends the subscription (nil)
// or one fails.
func adoptFrom(a *handoff.Adopter, q *adoptQueue) error {
	for {
		fds, err := a.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		q.push(fileConns(fds))
	}
}

// fileConns turns received descriptors into connections.
func fileConns(fds []fdpass.FD) []AdoptedConn {
	out := make([]AdoptedConn, 0, len(fds))
	for _, f := range fds {
		c, err := newConn(f.Fd, f.Name)
		if err != nil {
			unix.Close(f.Fd) // nothing this process can serve
			continue
		}
		out = append(out, AdoptedConn{Conn: c, State: f.Meta, Listener: f.Name})
	}
	return out
}

// adoptRoom is how many descriptors a transfer may bring, from this
// process's RLIMIT_NOFILE room.
func adoptRoom() int {
	lim, err := handoff.GetNOFILE()
	open, cerr := handoff.CountFDs()
	if err != nil || cerr != nil {
		return handoff.MaxFDs
	}
	room := int(min(lim.Soft, 1<<30)) - open - 64
	return max(1, min(room, handoff.MaxFDs))
}

// adoptQueue hands adopted connections to the channel without ever
// holding up the subscription, which must acknowledge promptly.
type adoptQueue struct {
	out  chan AdoptedConn
	wake chan struct{}

	mu    sync.Mutex
	items []AdoptedConn
	done  bool
}

func (q *adoptQueue) push(cs []AdoptedConn) {
	q.mu.Lock()
	q.items = append(q.items, cs...)
	q.mu.Unlock()
	q.signal()
}

func (q *adoptQueue) finish() {
	q.mu.Lock()
	q.done = true
	q.mu.Unlock()
	q.signal()
}

func (q *adoptQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *adoptQueue) deliver() {
	for {
		q.mu.Lock()
		items, done := q.items, q.done
		q.items = nil
		q.mu.Unlock()
		for _, c := range items {
			q.out <- c
		}
		if len(items) > 0 {
			continue
		}
		if done {
			close(q.out)
			return
		}
		<-q.wake
	}
}
