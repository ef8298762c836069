package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/baton-dev/baton/internal/fdpass"
)

// Conn is a connection to hand off: its descriptor, the name of the
// listener it came from and its state.
type Conn struct {
	Fd       int
	Listener string
	State    []byte
}

// Sender is a worker's handoff connection to baton.
type Sender struct {
	c     *net.UnixConn
	grant Grant
	next  error // baton refused further transfers
}

// request is a request line of the worker socket.
type request struct {
	Method string `json:"method"`
	Params any    `json:"params,omitempty"`
}

// dial connects to the worker socket at path and sends one request
// line, then reads the answer into v. The context bounds the exchange.
func dial(ctx context.Context, path string, req request, v any) (*net.UnixConn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to baton's worker socket %s: %w", path, err)
	}
	c := nc.(*net.UnixConn)
	// BATON_SOCKET is an abstract name: whoever binds it first owns it,
	// and once baton is gone any local user could. Only baton (root, or
	// this worker's own user when baton runs as it) gets connections.
	if _, err := fdpass.CheckPeer(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("baton's worker socket %s: %w: baton runs as root or as this process's user; the process answering does not, so it is not baton", path, err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	err = writeLine(c, req)
	if err == nil {
		err = readReply(c, v)
	}
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		c.Close() // the exchange failed: the connection is of no use
		return nil, fmt.Errorf("%s request to baton: %w", req.Method, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// DialSender connects to baton's worker socket at path and asks to hand
// off connections. An error matching ErrRefused carries baton's reason.
func DialSender(ctx context.Context, path string) (*Sender, error) {
	s := &Sender{}
	c, err := dial(ctx, path, request{Method: MethodHandoff}, &s.grant)
	if err != nil {
		return nil, err
	}
	s.c = c
	if err := s.grant.check(); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func (g Grant) check() error {
	if g.MaxFDs < 1 || g.MaxFDs > MaxFDs || g.MaxState < 0 || g.MaxState > MaxStateLimit || g.MaxBytes < 1 {
		return fmt.Errorf("%w: baton granted %+v", fdpass.ErrProtocol, g)
	}
	return nil
}

// Grant is what the next transfer may carry.
func (s *Sender) Grant() Grant { return s.grant }

// Fits reports whether conns, as one transfer, fit the current grant.
func (s *Sender) Fits(conns []Conn) error {
	if len(conns) > s.grant.MaxFDs {
		return fmt.Errorf("%d connections in one transfer; baton takes %d now", len(conns), s.grant.MaxFDs)
	}
	bytes := 0
	for _, c := range conns {
		if len(c.State) > s.grant.MaxState {
			return StateTooLarge{Size: len(c.State), Max: s.grant.MaxState}
		}
		if len(c.Listener) > fdpass.MaxName {
			return fmt.Errorf("listener name %q is over %d bytes", c.Listener, fdpass.MaxName)
		}
		bytes += entrySize(c.Listener, c.State)
	}
	if bytes > s.grant.MaxBytes {
		return fmt.Errorf("the transfer's states add up to %d bytes; baton takes %d per transfer: send fewer at once", bytes, s.grant.MaxBytes)
	}
	return nil
}

// StateTooLarge is the error for a state over baton's bound.
type StateTooLarge struct{ Size, Max int }

func (e StateTooLarge) Error() string {
	return fmt.Sprintf("connection state is %d bytes; baton takes at most %d (baton run --handoff-max-state)", e.Size, e.Max)
}

// RejectedError is Send's error when baton kept all the connections of a
// transfer but some: those it found were not connections accepted on the
// worker's listeners. They stay the caller's.
type RejectedError struct {
	// Reasons maps the index in the transfer of each refused connection
	// to baton's reason.
	Reasons map[int]string
}

func (e *RejectedError) Error() string {
	for i, r := range e.Reasons {
		return fmt.Sprintf("baton refused %d of the connections (connection %d: %s)", len(e.Reasons), i, r)
	}
	return "baton refused none of the connections"
}

// Send hands conns to baton as one transfer, which must fit the grant
// (Fits). It returns nil once baton holds them: only then may the caller
// close its copies. It returns a *RejectedError when baton holds all but
// the ones it names, which stay the caller's. On any other error baton
// holds none of them. After a transfer baton may refuse the next one (its
// reason is then the error of every later Send); Grant says how much the
// next may carry.
func (s *Sender) Send(ctx context.Context, conns []Conn) error {
	if s.next != nil {
		return s.next
	}
	if err := s.Fits(conns); err != nil {
		return err
	}
	fds := make([]fdpass.FD, len(conns))
	for i, c := range conns {
		fds[i] = fdpass.FD{Fd: c.Fd, Name: c.Listener, Kind: Kind, Meta: c.State}
	}
	if err := fdpass.Send(ctx, s.c, fds); err != nil {
		s.next = err
		return err
	}
	// baton holds them now; the grant line says what comes next.
	stop := context.AfterFunc(ctx, func() { s.c.SetReadDeadline(aLongTimeAgo) })
	var g Grant
	err := readReply(s.c, &g)
	if err == nil {
		err = g.check()
	}
	if !stop() {
		s.c.SetReadDeadline(time.Time{})
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		s.next = err
		return nil
	}
	s.grant = g
	if len(g.Refused) > 0 {
		rej := &RejectedError{Reasons: map[int]string{}}
		for _, r := range g.Refused {
			if r.Index >= 0 && r.Index < len(conns) {
				rej.Reasons[r.Index] = r.Reason
			}
		}
		if len(rej.Reasons) > 0 {
			return rej
		}
	}
	return nil
}

// Close ends the handoff connection.
func (s *Sender) Close() error { return s.c.Close() }

// Adopter is a worker's adopt subscription.
type Adopter struct {
	c   *net.UnixConn
	sub Subscription
}

// DialAdopter connects to baton's worker socket at path and subscribes
// to adopt connections, at most maxFDs per transfer (0: MaxFDs).
func DialAdopter(ctx context.Context, path string, maxFDs int) (*Adopter, error) {
	a := &Adopter{}
	c, err := dial(ctx, path, request{Method: MethodAdopt, Params: AdoptParams{MaxFDs: maxFDs}}, &a.sub)
	if err != nil {
		return nil, err
	}
	a.c = c
	if a.sub.MaxFDs < 1 || a.sub.MaxFDs > MaxFDs || a.sub.MaxState > MaxStateLimit {
		c.Close()
		return nil, fmt.Errorf("%w: baton's subscription %+v", fdpass.ErrProtocol, a.sub)
	}
	return a, nil
}

// Next waits for baton's next transfer and returns its connections,
// acknowledged: they belong to the caller (descriptors with FD_CLOEXEC;
// Name is the listener, Meta the state). It returns io.EOF when baton
// ended the subscription. On any other error the subscription is broken:
// Close it.
func (a *Adopter) Next(ctx context.Context) ([]fdpass.FD, error) {
	lim := fdpass.Limits{MaxFDs: a.sub.MaxFDs, MaxMeta: max(a.sub.MaxState, 1), MaxBytes: min(max(a.sub.MaxBytes, 1), fdpass.BytesHardMax)}
	fds, err := fdpass.Recv(ctx, a.c, lim)
	if errors.Is(err, io.EOF) {
		return nil, io.EOF
	}
	return fds, err
}

// Close ends the subscription. A transfer baton has begun and the caller
// has not received stays baton's.
func (a *Adopter) Close() error { return a.c.Close() }
