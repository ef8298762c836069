package baton

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is the net.Conn that Adopted delivers: the adopted socket itself,
// read and written through Go's poller as a *net.TCPConn or *net.UnixConn
// would be, with deadlines. It is made with two system calls where
// net.FileConn takes fifteen (a duplicate descriptor, its type and
// addresses, TCP_NODELAY and four keep-alive options), which is most of
// what a worker spends adopting a connection. The socket keeps the
// options the old worker set.
//
// Errors are *net.OpError as from the net package (net.ErrClosed after
// Close, os.ErrDeadlineExceeded past a deadline, io.EOF at the end).
// Code that needs a *net.TCPConn or *net.UnixConn gets one from NetConn.
type Conn struct {
	f        *os.File
	listener string // the listener it was accepted on, as handed over

	addrs      sync.Once
	local, rem net.Addr
}

var _ interface {
	net.Conn
	syscall.Conn
	CloseWrite() error
	CloseRead() error
} = (*Conn)(nil)

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

// Read reads from the connection, as net.Conn's Read.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	return n, c.opError("read", err)
}

// Write writes to the connection, as net.Conn's Write.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	return n, c.opError("write", err)
}

// Close closes the connection.
func (c *Conn) Close() error { return c.opError("close", c.f.Close()) }

// CloseWrite shuts down the writing side (shutdown(2) SHUT_WR), as
// *net.TCPConn's CloseWrite.
func (c *Conn) CloseWrite() error { return c.shutdown("close", unix.SHUT_WR) }

// CloseRead shuts down the reading side (SHUT_RD).
func (c *Conn) CloseRead() error { return c.shutdown("close", unix.SHUT_RD) }

func (c *Conn) shutdown(op string, how int) error {
	raw, err := c.f.SyscallConn()
	if err != nil {
		return c.opError(op, err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), how) }); err != nil {
		return c.opError(op, err)
	}
	if serr != nil {
		return c.opError(op, os.NewSyscallError("shutdown", serr))
	}
	return nil
}

// LocalAddr is the connection's local address (*net.TCPAddr or
// *net.UnixAddr), read from the socket on first use.
func (c *Conn) LocalAddr() net.Addr {
	c.addrs.Do(c.readAddrs)
	return c.local
}

// RemoteAddr is the peer's address, read from the socket on first use.
func (c *Conn) RemoteAddr() net.Addr {
	c.addrs.Do(c.readAddrs)
	return c.rem
}

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

// SetDeadline sets the read and write deadlines, as net.Conn's.
func (c *Conn) SetDeadline(t time.Time) error { return c.opError("set", c.f.SetDeadline(t)) }

// SetReadDeadline sets the read deadline, as net.Conn's.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.opError("set", c.f.SetReadDeadline(t)) }

// SetWriteDeadline sets the write deadline, as net.Conn's.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.opError("set", c.f.SetWriteDeadline(t))
}

// SyscallConn gives access to the socket's descriptor, as
// *net.TCPConn's: Handoff uses it to hand the connection on.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.f.SyscallConn() }

// NetConn returns the connection as a *net.TCPConn or *net.UnixConn, for
// code that needs those types, and closes c (the connection stays open in
// the value returned).
func (c *Conn) NetConn() (net.Conn, error) {
	nc, err := net.FileConn(c.f)
	if err != nil {
		return nil, c.opError("file", err)
	}
	c.f.Close() // nc holds a duplicate
	return nc, nil
}

// opError turns the os package's errors into the net package's.
func (c *Conn) opError(op string, err error) error {
	if err == nil || err == io.EOF {
		return err // io.EOF unwrapped, as net returns it
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if errors.Is(err, os.ErrClosed) {
		err = net.ErrClosed
	}
	network := "tcp"
	if _, ok := c.LocalAddr().(*net.UnixAddr); ok {
		network = "unix"
	}
	return &net.OpError{Op: op, Net: network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
