package notify

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Notify sends state ("READY=1", "STATUS=draining\nSTOPPING=1") to the
// socket named by NOTIFY_SOCKET. It returns false and no error when
// NOTIFY_SOCKET is unset (not supervised), true when the datagram was
// sent, and false with an error when sending failed.
func Notify(state string) (bool, error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return false, nil
	}
	return true, Send(addr, state)
}

// Send sends one notification datagram to addr, a path or "@abstract".
func Send(addr, state string) error {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify to %s: %w", addr, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", addr, err)
	}
	return nil
}

// Notifier sends notifications to a service manager (baton's own, under
// systemd) in order, from a goroutine of its own: a manager that does not
// read (its socket's queue full) delays the notifications, never the
// caller, which is baton's supervisor loop. The zero value is not usable;
// use NewNotifier.
type Notifier struct {
	addr    string
	queue   chan message
	done    chan struct{}
	failed  func(state string, err error)
	pending sync.WaitGroup // queued and not yet sent

	mu     sync.Mutex // orders Notify and Close
	closed bool
}

// notifierQueue bounds the notifications waiting to be sent; past it
// they are dropped (and reported to failed).
const notifierQueue = 64

// notifierTimeout bounds one send.
const notifierTimeout = 10 * time.Second

// NewNotifier returns a Notifier for addr (NOTIFY_SOCKET's value), or nil
// when addr is "": a nil Notifier's methods do nothing. failed is called,
// from the Notifier's goroutine or from Notify, for each notification
// that could not be sent.
func NewNotifier(addr string, failed func(state string, err error)) *Notifier {
	if addr == "" {
		return nil
	}
	n := &Notifier{addr: addr, queue: make(chan message, notifierQueue), done: make(chan struct{}), failed: failed}
	go n.run()
	return n
}

// message is one notification waiting to be sent: its text and the
// descriptors that go with it (SCM_RIGHTS), which the Notifier owns.
type message struct {
	state string
	fds   []int
}

// Notify queues state and returns at once. After Close it does nothing.
func (n *Notifier) Notify(state string) { n.NotifyFds(state, nil) }

// NotifyFds queues state with descriptors that go with it in the same
// datagram (SCM_RIGHTS), as sd_pid_notify_with_fds does: "FDSTORE=1" and
// a descriptor puts it in the service manager's file descriptor store.
// It returns at once. The Notifier owns fds from then on and closes its
// copies once they are sent, or dropped (a full queue, a send that
// failed, a Notifier closed or nil): the caller passes duplicates of
// what it keeps, never a descriptor it may close meanwhile, whose number
// could be reused before the datagram goes out.
func (n *Notifier) NotifyFds(state string, fds []int) {
	if n == nil {
		closeFds(fds)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		closeFds(fds)
		return
	}
	n.pending.Add(1)
	select {
	case n.queue <- message{state: state, fds: fds}:
	default:
		n.pending.Done()
		closeFds(fds)
		n.failed(state, fmt.Errorf("%d notifications wait for the service manager at %s already: it does not read them", notifierQueue, n.addr))
	}
}

func (n *Notifier) run() {
	defer close(n.done)
	for m := range n.queue {
		if err := sendWithin(n.addr, m.state, m.fds, notifierTimeout); err != nil {
			n.failed(m.state, err)
		}
		closeFds(m.fds)
		n.pending.Done()
	}
}

// Flush waits until what is queued has been sent, at most timeout (baton
// calls it before it re-executes itself, which would lose the queue).
func (n *Notifier) Flush(timeout time.Duration) {
	if n == nil {
		return
	}
	sent := make(chan struct{})
	go func() {
		n.pending.Wait()
		close(sent)
	}()
	select {
	case <-sent:
	case <-time.After(timeout):
	}
}

// Close sends what is queued, waiting at most timeout, and stops; a later
// Notify does nothing.
func (n *Notifier) Close(timeout time.Duration) {
	if n == nil {
		return
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	close(n.queue)
	n.mu.Unlock()
	select {
	case <-n.done:
	case <-time.After(timeout):
	}
}

// sendWithin is Send with a deadline on the write, and descriptors
// (SCM_RIGHTS, sendFds) when fds is not empty. The caller keeps fds.
func sendWithin(addr, state string, fds []int, timeout time.Duration) error {
	if len(fds) > 0 {
		if err := sendFds(addr, state, fds, timeout); err != nil {
			return fmt.Errorf("sd_notify to %s: %w", addr, err)
		}
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify to %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", addr, err)
	}
	return nil
}
