package baton

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// newConn takes over fd, a connected stream socket accepted on the
// listener named listener, and puts it in non-blocking mode (a worker in
// another language may have had it blocking), so that it goes through the
// poller.
func newConn(fd int, listener string) (*Conn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	return &Conn{f: os.NewFile(uintptr(fd), "adopted:"+listener), listener: listener}, nil
}

// shutdown wraps shutdown(2).
func (c *Conn) shutdown(op string, how shutdownHow) error {
	flag := unix.SHUT_RD
	if how == shutWrite {
		flag = unix.SHUT_WR
	}
	raw, err := c.f.SyscallConn()
	if err != nil {
		return c.opError(op, err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), flag) }); err != nil {
		return c.opError(op, err)
	}
	if serr != nil {
		return c.opError(op, os.NewSyscallError("shutdown", serr))
	}
	return nil
}

// readAddrs reads the local and the peer's address from the socket.
func (c *Conn) readAddrs() {
	raw, err := c.f.SyscallConn()
	if err != nil {
		return
	}
	// The syscall package's getsockname: x/sys/unix's makes a second
	// system call for every IPv4 or IPv6 address (to rule out L2TP).
	raw.Control(func(fd uintptr) {
		if sa, err := syscall.Getsockname(int(fd)); err == nil {
			c.local = sockaddrAddr(sa)
		}
		if sa, err := syscall.Getpeername(int(fd)); err == nil {
			c.rem = sockaddrAddr(sa)
		}
	})
}

// sockaddrAddr is sa as a net.Addr, or nil.
func sockaddrAddr(sa syscall.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *syscall.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *syscall.SockaddrUnix:
		return &net.UnixAddr{Name: a.Name, Net: "unix"}
	}
	return nil
}
