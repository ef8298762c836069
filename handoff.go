package baton

import (
	"errors"
	"net"
)

// Errors of Handoff, for errors.Is. Whatever the error, the connection
// is still the caller's, untouched: serve it on, or close it.
var (
	// ErrNoHandoff: the connection was not handed off: the process does
	// not run under baton, baton refused (it is stopping, or holds as
	// many connections as its RLIMIT_NOFILE allows), the exchange with
	// baton failed, or the system is not Linux (then the error matches
	// ErrNotSupported too). The message says which.
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

// Handoff calls Handoff on the Default Worker: it gives conn, with state,
// to baton, for a worker of the next generation.
func Handoff(conn net.Conn, state []byte) error { return Default().Handoff(conn, state) }

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
// 253 per transfer. Off Linux it returns an error matching ErrNoHandoff
// and ErrNotSupported.
func (w *Worker) Handoff(conn net.Conn, state []byte) error { return w.handoff(conn, state) }

// Adopted calls Adopted on the Default Worker: the channel on which
// connections handed over by workers of earlier generations arrive.
func Adopted() <-chan AdoptedConn { return Default().Adopted() }

// Adopted returns the channel on which connections handed over by
// workers of earlier generations arrive. The first call subscribes on
// BATON_SOCKET; call it before Ready, so that the subscription is open
// when baton stops the old generation. The subscription lasts until baton
// asks this worker to stop (it survives a baton upgrade); the channel is
// closed then, once every connection received is delivered. Not under
// baton, or off Linux, the channel is closed at once. Every call returns
// the same channel.
//
// Serve each AdoptedConn as the old worker would have carried on:
// restore its State, read on where it stopped.
func (w *Worker) Adopted() <-chan AdoptedConn {
	w.adopt.once.Do(func() { w.adopt.ch = w.subscribe() })
	return w.adopt.ch
}
