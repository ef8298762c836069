package baton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/fdpass"
	"github.com/baton-dev/baton/internal/handoff"
)

// handoffs is what Handoff keeps between calls: the queue of
// connections waiting for a transfer and the addresses of the inherited
// listeners.
type handoffs struct {
	sendq handoffQueue

	listeners struct {
		once  sync.Once
		names []string
		addrs []net.Addr
	}
}

// handoff is Handoff, on Linux.
func (w *Worker) handoff(conn net.Conn, state []byte) error {
	path := w.batonSocket
	if path == "" {
		return fmt.Errorf("baton.Handoff: %w: not running under baton (no BATON_SOCKET); close the connection instead", ErrNoHandoff)
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return fmt.Errorf("baton.Handoff: %w: a %T has no socket of its own to hand off; pass the *net.TCPConn or *net.UnixConn", ErrNoHandoff, conn)
	}
	name, err := w.listenerOf(conn)
	if err != nil {
		return fmt.Errorf("baton.Handoff: %w: %w", ErrNoHandoff, err)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("baton.Handoff: %w: %w", ErrNoHandoff, err)
	}
	r := &handoffReq{raw: raw, conn: handoff.Conn{Listener: name, State: state}, done: make(chan error, 1)}
	w.handoffs.sendq.add(r, path)
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

// handoffReq is one Handoff waiting for its transfer.
type handoffReq struct {
	raw  syscall.RawConn
	conn handoff.Conn // Fd is set while the transfer holds it
	done chan error
}

// maxSenders is how many goroutines of a handoffQueue may send at once.
const maxSenders = 2

// handoffQueue batches concurrent Handoff calls: a goroutine sends them,
// as many per transfer as baton grants, over a handoff connection that it
// closes when nothing is left to send. While more wait than one transfer
// takes, up to maxSenders goroutines do, each on its own connection, so
// that transfers overlap instead of each waiting for the last one's
// acknowledgement.
type handoffQueue struct {
	mu      sync.Mutex
	pending []*handoffReq
	running int
}

// add queues r for a transfer on the worker socket at path, starting a
// sender if none runs or the ones running have more than they can carry.
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

// run sends what is queued, transfer after transfer, until nothing is.
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

// listenerOf names the inherited listener conn was accepted on, by its
// local address. The addresses of the inherited listeners are read once.
func (w *Worker) listenerOf(conn net.Conn) (string, error) {
	listeners := &w.handoffs.listeners
	listeners.once.Do(func() {
		if w.load() != nil {
			return
		}
		in := &w.inherit
		in.mu.Lock()
		defer in.mu.Unlock()
		for _, name := range in.order {
			var addr net.Addr
			if v, ok := in.taken[name]; ok {
				if ln, ok := v.(net.Listener); ok {
					addr = ln.Addr()
				}
			} else if fd, ok := in.fds[name]; ok {
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

// subscribe opens the adopt subscription for Adopted, if this process
// runs under baton, and returns the channel of its connections; without
// BATON_SOCKET the channel is closed at once.
func (w *Worker) subscribe() <-chan AdoptedConn {
	// Buffered: a transfer brings up to 253 at once, and handing them
	// over one goroutine switch at a time would cost more than the move
	// itself.
	ch := make(chan AdoptedConn, handoff.MaxFDs)
	if w.batonSocket == "" {
		close(ch)
		return ch
	}
	q := &adoptQueue{out: ch, wake: make(chan struct{}, 1)}
	go q.deliver()
	go adoptLoop(w.batonSocket, q)
	return ch
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

// push queues cs for delivery.
func (q *adoptQueue) push(cs []AdoptedConn) {
	q.mu.Lock()
	q.items = append(q.items, cs...)
	q.mu.Unlock()
	q.signal()
}

// finish closes the channel once everything queued is delivered.
func (q *adoptQueue) finish() {
	q.mu.Lock()
	q.done = true
	q.mu.Unlock()
	q.signal()
}

// signal wakes deliver.
func (q *adoptQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// deliver sends what is queued to the channel, and closes it after
// finish.
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
