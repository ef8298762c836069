package notify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/fdpass"
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
	// rights is set when the kernel accepts no descriptor for the socket
	// (SO_PASSRIGHTS off); otherwise closer closes what arrives.
	rights error
	closer *fdpass.Closer
}

// Listen binds a notification socket in the abstract namespace ("@name").
// Any local process can send to an abstract socket: the kernel-supplied
// credentials (SO_PASSCRED) identify each sender, and the kernel refuses
// every descriptor sent to it (SO_PASSRIGHTS off, Linux 6.16+), so that
// no sender can make baton hold or close a descriptor of theirs. A
// filesystem path is refused: baton would have to make the file writable
// by the workers' user, as root, in a directory someone else may write.
func Listen(addr string) (*Server, error) {
	if !strings.HasPrefix(addr, "@") {
		return nil, fmt.Errorf("notify socket %s: want an abstract address (@name): a socket file would have to be opened to every worker user", addr)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", addr, err)
	}
	s, err := newServer(conn, addr)
	if err != nil {
		conn.Close() // not returned to the caller: release it here
		return nil, fmt.Errorf("notify socket %s: %w", addr, err)
	}
	return s, nil
}

// newServer sets the socket options every notify socket has: SO_PASSCRED,
// and SO_PASSRIGHTS off where the kernel has it.
func newServer(conn *net.UnixConn, addr string) (*Server, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("setsockopt SO_PASSCRED", serr)
	}
	s := &Server{conn: conn, addr: addr, closer: fdpass.NewCloser(2, nil)}
	if err := fdpass.SetPassRights(conn, false); err != nil {
		if !errors.Is(err, fdpass.ErrNotSupported) {
			return nil, err
		}
		s.rights = err
	}
	return s, nil
}

// RefusesDescriptors returns nil when the kernel refuses every
// descriptor sent to the socket, or why not (a kernel before 6.16: what
// arrives is then closed on goroutines of its own, never on Serve's).
func (s *Server) RefusesDescriptors() error { return s.rights }

// Fd is the socket's descriptor, for a handover across an execve of baton.
// It stays owned by the server.
func (s *Server) Fd() int {
	fd := -1
	if rc, err := s.conn.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// FromFd rebuilds a server from a descriptor a previous baton handed over.
// The descriptor is taken over.
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
	s, err := newServer(uc, addr)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("notify socket %s (fd %d): %w", addr, fd, err)
	}
	return s, nil
}

// Addr is the value for NOTIFY_SOCKET.
func (s *Server) Addr() string { return s.addr }

// Close stops Serve and removes a socket file.
func (s *Server) Close() error { return s.conn.Close() }

// Serve reads notifications and calls handle for each until Close. Datagrams
// without credentials or over MaxMessage are dropped. Descriptors sent
// along (FDSTORE=1) are refused by the kernel where it can; on an older
// kernel they are given to a closer (their last close can block: a socket
// with SO_LINGER, a file on FUSE), never closed on this goroutine. handle
// runs on this goroutine: it must be quick, and decide who is heard
// before it costs anything.
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
		cred, fds := parseControl(oob[:oobn])
		s.closer.Close(fds...)
		if cred == nil || n > MaxMessage || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
			continue
		}
		handle(Message{PID: int(cred.Pid), UID: int(cred.Uid), Fields: Parse(buf[:n])})
	}
}

// parseControl returns the credentials in a control message and the
// descriptors that came with it.
func parseControl(oob []byte) (*unix.Ucred, []int) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, nil
	}
	var cred *unix.Ucred
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
		if c, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
			cred = c
		}
	}
	return cred, fds
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
