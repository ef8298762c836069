package notify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxMessage is the largest datagram the server reads; systemd uses the
// same bound. Longer datagrams are dropped whole.
const MaxMessage = 4096

// Message is one notification.
type Message struct {
	PID    int               // sender's pid, from SCM_CREDENTIALS
	UID    int               // sender's uid
	Fields map[string]string // "READY" -> "1"
}

// Server receives notifications on a unixgram socket.
type Server struct {
	conn *net.UnixConn
	addr string
}

// Listen binds a notification socket at addr: a filesystem path, or
// "@name" for the abstract namespace. A path is created with mode 0666
// because workers may run as another user; senders are identified by the
// kernel-supplied credentials, not by who may write to the file.
func Listen(addr string) (*Server, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", addr, err)
	}
	fail := func(err error) (*Server, error) {
		conn.Close() // not returned to the caller: release it here
		return nil, fmt.Errorf("notify socket %s: %w", addr, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return fail(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return fail(err)
	}
	if serr != nil {
		return fail(os.NewSyscallError("setsockopt SO_PASSCRED", serr))
	}
	if !strings.HasPrefix(addr, "@") {
		if err := os.Chmod(addr, 0o666); err != nil {
			return fail(err)
		}
	}
	return &Server{conn: conn, addr: addr}, nil
}

// Fd is the socket's descriptor, for a handover across an execve of baton.
// It stays owned by the server.
func (s *Server) Fd() int {
	fd := -1
	if rc, err := s.conn.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// FromFd rebuilds a server from a descriptor a previous baton handed over
// (SO_PASSCRED is still set on it). The descriptor is taken over.
func FromFd(fd int, addr string) (*Server, error) {
	f := os.NewFile(uintptr(fd), addr)
	defer f.Close() // net dups it
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("notify socket %s (fd %d): %w", addr, fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("notify socket %s (fd %d) is not a unix datagram socket", addr, fd)
	}
	return &Server{conn: uc, addr: addr}, nil
}

// Addr is the value for NOTIFY_SOCKET.
func (s *Server) Addr() string { return s.addr }

// Close stops Serve and removes a socket file.
func (s *Server) Close() error { return s.conn.Close() }

// Serve reads notifications and calls handle for each until Close. Datagrams
// without credentials or over MaxMessage are dropped; descriptors sent along
// (FDSTORE=1) are closed, since baton does not keep them.
func (s *Server) Serve(handle func(Message)) error {
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(4*253))
	for {
		n, oobn, flags, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("notify socket %s: %w", s.addr, err)
		}
		cred := closeRights(oob[:oobn])
		if cred == nil || n > MaxMessage || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			continue
		}
		handle(Message{PID: int(cred.Pid), UID: int(cred.Uid), Fields: Parse(buf[:n])})
	}
}

// closeRights returns the credentials in a control message and closes any
// descriptors that came with it.
func closeRights(oob []byte) *unix.Ucred {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var cred *unix.Ucred
	for i := range msgs {
		if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		if c, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
			cred = c
		}
	}
	return cred
}

// Parse splits a notification into its assignments. Lines without '=' are
// ignored, as systemd does.
func Parse(b []byte) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k != "" {
			fields[k] = v
		}
	}
	return fields
}
