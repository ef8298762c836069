package baton

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
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
func (c *Conn) CloseWrite() error { return c.shutdown("close", shutWrite) }

// CloseRead shuts down the reading side (SHUT_RD).
func (c *Conn) CloseRead() error { return c.shutdown("close", shutRead) }

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

// shutdownHow is which side of a connection shutdown(2) ends.
type shutdownHow int

const (
	shutRead shutdownHow = iota + 1
	shutWrite
)

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
