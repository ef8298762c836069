package batontest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// LingeringTCP returns a connected TCP socket on the loopback, as a raw
// descriptor in blocking mode and close-on-exec, whose last close(2) would
// block for linger (whole seconds, at most 2^31-1): SO_LINGER is on, its
// send buffer is full, and its peer never reads. The peer stays open
// until the test's cleanup; the descriptor is the caller's to close (or
// to hand to the code under test, whose close of the last copy is what
// the test watches).
func LingeringTCP(t testing.TB, linger time.Duration) int {
	t.Helper()
	fd, peer, err := NewLingeringTCP(linger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return fd
}

// NewLingeringTCP is LingeringTCP for a process without a testing.TB (a
// helper process run as another user, say): it returns the descriptor
// and the peer, which the caller keeps open, without reading it, for as
// long as the descriptor must linger, and closes.
func NewLingeringTCP(linger time.Duration) (fd int, peer net.Conn, err error) {
	secs := linger / time.Second
	if secs <= 0 || secs > 1<<31-1 {
		return -1, nil, fmt.Errorf("a lingering socket needs a linger of 1s to 2^31-1 s, not %s", linger)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return -1, nil, err
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return -1, nil, err
	}
	// c's descriptor is dup'ed below; the dup is the only copy once c is
	// closed, on every path.
	defer c.Close()
	peer, err = ln.Accept()
	if err != nil {
		return -1, nil, err
	}
	// A small receive buffer on the peer, so that the send buffer fills
	// after little data.
	if err := peer.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		peer.Close()
		return -1, nil, err
	}
	fd, err = lingerFill(c.(*net.TCPConn), int32(secs))
	if err != nil {
		peer.Close()
		return -1, nil, err
	}
	return fd, peer, nil
}

// lingerFill duplicates c's descriptor, turns SO_LINGER on for secs,
// and writes to it until its send buffer is full.
func lingerFill(c *net.TCPConn, secs int32) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) {
		fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", dupErr)
	}
	// Closed on every failure below: SO_LINGER may be on already, so
	// without it first, and the close cannot block.
	fail := func(err error) (int, error) {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
		unix.Close(fd)
		return -1, err
	}
	// The dup shares c's file description, which Go made non-blocking:
	// writes stop with EAGAIN when the send buffer is full.
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(os.NewSyscallError("fcntl O_NONBLOCK", err))
	}
	buf := make([]byte, 64<<10)
	for {
		_, err := unix.Write(fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			return fail(os.NewSyscallError("write", err))
		}
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: secs}); err != nil {
		return fail(os.NewSyscallError("setsockopt SO_LINGER", err))
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fail(os.NewSyscallError("fcntl O_NONBLOCK", err))
	}
	return fd, nil
}
