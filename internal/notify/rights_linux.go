package notify

import (
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// sendFds sends state with fds (SCM_RIGHTS) in one datagram to addr,
// waiting at most timeout for room in the receiver's queue. Go refuses
// WriteMsgUnix on a connected datagram socket, so the socket is not
// connected: each datagram names its destination. The caller keeps fds.
func sendFds(addr, state string, fds []int, timeout time.Duration) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "notify")
	c, err := net.FilePacketConn(f)
	f.Close() // FilePacketConn holds a duplicate
	if err != nil {
		return err
	}
	defer c.Close()
	conn := c.(*net.UnixConn)
	conn.SetWriteDeadline(time.Now().Add(timeout))
	_, _, err = conn.WriteMsgUnix([]byte(state), unix.UnixRights(fds...), &net.UnixAddr{Name: addr, Net: "unixgram"})
	return err
}

// closeFds closes descriptors the Notifier owns. Errors are ignored: a
// descriptor that cannot be closed is gone either way.
func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
