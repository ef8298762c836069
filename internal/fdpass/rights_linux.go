package fdpass

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetPassRights wraps setsockopt(SO_PASSRIGHTS) on a unix socket. With on
// false, the kernel refuses every SCM_RIGHTS message sent to the socket
// (the sender's sendmsg fails with EPERM), so no descriptor can reach
// this process through it; set on a listening socket, it holds for every
// socket accepted from it, from the moment the peer connects. It returns
// an error wrapping ErrNotSupported on kernels before Linux 6.16, which
// accept descriptors on every unix socket.
func SetPassRights(c syscall.Conn, on bool) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSRIGHTS, boolInt(on))
	}); err != nil {
		return err
	}
	if errors.Is(serr, unix.ENOPROTOOPT) {
		return fmt.Errorf("setsockopt SO_PASSRIGHTS: %w: Linux 6.16 or later is needed to refuse descriptors", ErrNotSupported)
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt SO_PASSRIGHTS", serr)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Closer closes descriptors that came from another process without ever
// blocking its caller. The last close(2) of a descriptor can block: a TCP
// socket with SO_LINGER set and unsent data waits up to the linger time
// (minutes), a file on a FUSE mount waits for its server to answer the
// flush. A goroutine that others wait for (a supervisor's loop, a store's
// lock holder, a notification reader) must therefore never close what a
// peer sent; it hands the descriptors to a Closer.
//
// A Closer first turns SO_LINGER off on sockets (an ordinary close then
// returns at once), then closes, in runs (CloseAll), on at most its
// number of goroutines, started when there is work and gone when there is
// none. A descriptor that still blocks holds one goroutine and the rest of
// its run; the other goroutines go on; when all are held, descriptors wait
// in the queue, still open, until one is free. The zero value is not
// usable; make one with NewCloser.
type Closer struct {
	max    int
	closed func()

	mu      sync.Mutex
	queue   []int
	running int
	busy    int // goroutines closing a run now
	closing int // descriptors in those runs
	idle    *sync.Cond
}

// closeRun is the most descriptors one goroutine takes at a time.
const closeRun = 1024

// NewCloser returns a Closer that closes on at most workers goroutines
// and calls closed (when not nil) after each run it has closed, from the
// goroutine that closed it.
func NewCloser(workers int, closed func()) *Closer {
	c := &Closer{max: max(workers, 1), closed: closed}
	c.idle = sync.NewCond(&c.mu)
	return c
}

// Close queues fds to be closed and returns at once. The caller gives
// them up: it must not use or close them again.
func (c *Closer) Close(fds ...int) {
	if len(fds) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = append(c.queue, fds...)
	for c.running < c.max && c.running-c.busy < (len(c.queue)+closeRun-1)/closeRun {
		c.running++
		go c.work()
	}
}

// Pending is how many descriptors wait to be closed or are being closed:
// they still take room in the process's descriptor table.
func (c *Closer) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) + c.closing
}

// Wait waits until every queued descriptor has been closed. Tests use it.
func (c *Closer) Wait() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue)+c.closing > 0 {
		c.idle.Wait()
	}
}

// work closes queued descriptors, a run at a time, until none is left.
func (c *Closer) work() {
	c.mu.Lock()
	for len(c.queue) > 0 {
		n := min(len(c.queue), closeRun)
		run := slices.Clone(c.queue[:n])
		c.queue = c.queue[n:]
		c.busy++
		c.closing += n
		c.mu.Unlock()
		for _, fd := range run {
			disarmLinger(fd)
		}
		CloseAll(run)
		c.mu.Lock()
		c.busy--
		c.closing -= n
		if c.closed != nil {
			c.mu.Unlock()
			c.closed()
			c.mu.Lock()
		}
	}
	c.running--
	if len(c.queue)+c.closing == 0 {
		c.queue = nil // release the backing array
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

// disarmLinger turns SO_LINGER off on a socket, so that its last close
// returns at once and the kernel sends what is left in the background, as
// for any socket. It is a no-op on what is not a socket.
func disarmLinger(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
}

// maxDrain bounds the reads Drain makes: a peer writing without end must
// not keep it reading.
const maxDrain = 1024

// Drain readies a unix stream connection that may hold descriptors in its
// receive queue to be closed without blocking: it turns SO_PASSRIGHTS
// off and shuts its reading side (the peer's further sends fail, so
// nothing more can be queued), then reads what is queued without
// waiting, giving every descriptor that arrives to discard. Closing a
// socket with descriptors still queued would close them, the last of
// each in the closing thread: a lingering socket there blocks it. The
// caller still closes c.
func Drain(c *net.UnixConn, discard func(fds []int)) {
	SetPassRights(c, false)
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		unix.Shutdown(int(fd), unix.SHUT_RD)
		buf := make([]byte, 4096)
		oob := make([]byte, oobSize)
		for range maxDrain {
			n, oobn, _, _, err := unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			if fds, _ := parseRights(oob[:oobn]); len(fds) > 0 {
				discard(fds)
			}
			if n == 0 && oobn == 0 {
				return
			}
		}
	})
}
