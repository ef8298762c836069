package baton

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
)

// inheritFiles reads the descriptors passed with socket activation.
func (w *Worker) inheritFiles() ([]listener.Inherited, error) {
	return listener.Inherit(w.lookupVar, w.env.pid, w.env.firstFd)
}

// lookupVar looks a socket-activation variable up in what was read when w
// was made.
func (w *Worker) lookupVar(key string) (string, bool) {
	v, ok := w.vars[key]
	return v, ok
}

// openInherited turns the inherited descriptor fd, called name, into a
// net.Listener or a net.PacketConn if it is a socket of the kind wanted,
// and closes fd: only the returned object holds the socket in this process
// then.
func openInherited(fd int, name string, want sockType) (any, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("socket %q (fd %d): %w", name, fd, os.NewSyscallError("getsockopt SO_TYPE", err))
	}
	switch {
	case typ == unix.SOCK_STREAM && want != stream:
		return nil, fmt.Errorf("socket %q (fd %d) is a %s socket: %w", name, fd, stream, errWrongType)
	case typ == unix.SOCK_DGRAM && want != datagram:
		return nil, fmt.Errorf("socket %q (fd %d) is a %s socket: %w", name, fd, datagram, errWrongType)
	case typ != unix.SOCK_STREAM && typ != unix.SOCK_DGRAM:
		return nil, fmt.Errorf("socket %q (fd %d) is a socket of type %d: %w", name, fd, typ, errWrongType)
	}
	// os.NewFile keeps the descriptor's non-blocking mode (only sockets
	// from net's own File method are switched to blocking); net dups it,
	// and the original is closed so that only the returned object holds
	// the socket in this process.
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var v any
	if want == stream {
		v, err = net.FileListener(f)
	} else {
		v, err = net.FilePacketConn(f)
	}
	if err != nil {
		return nil, fmt.Errorf("socket %q (fd %d): %w", name, fd, err)
	}
	return v, nil
}
