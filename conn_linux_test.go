package baton

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// adoptedPair is a TCP connection whose server end is a *Conn, made as
// Adopted makes it.
func adoptedPair(t *testing.T) (client *net.TCPConn, c *Conn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	raw, _ := s.SyscallConn()
	var fd int
	raw.Control(func(f uintptr) { fd, _ = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) })
	// A sender in another language may leave the socket blocking.
	unix.SetNonblock(fd, false)
	if c, err = newConn(fd, "adopted:test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return client, c
}

func TestConnBehavesAsNetConn(t *testing.T) {
	client, c := adoptedPair(t)
	if c.LocalAddr().String() != client.RemoteAddr().String() || c.RemoteAddr().String() != client.LocalAddr().String() {
		t.Errorf("addresses %v <- %v, client %v -> %v", c.LocalAddr(), c.RemoteAddr(), client.LocalAddr(), client.RemoteAddr())
	}
	client.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if _, err := c.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	io.ReadFull(client, buf)
	// Deadlines go through the poller, and time out as net's do.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(buf)
	var ne net.Error
	var op *net.OpError
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &op) || op.Op != "read" || op.Net != "tcp" {
		t.Errorf("read past the deadline: %#v", err)
	}
	c.SetReadDeadline(time.Time{})
	// CloseWrite: the client reads EOF, the connection still reads.
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := client.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("client after CloseWrite: %d, %v", n, err)
	}
	client.Write([]byte("last"))
	client.CloseWrite()
	if b, err := io.ReadAll(c); err != nil || string(b) != "last" {
		t.Errorf("read to the end: %q, %v", b, err)
	}
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after Close: %v; want net.ErrClosed", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

func TestConnNetConn(t *testing.T) {
	client, c := adoptedPair(t)
	nc, err := c.NetConn()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		t.Fatalf("NetConn gave a %T", nc)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the Conn after NetConn: %v; want it closed", err)
	}
	client.Write([]byte("ok"))
	buf := make([]byte, 2)
	tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ok" {
		t.Errorf("through the *net.TCPConn: %q, %v", buf, err)
	}
}
