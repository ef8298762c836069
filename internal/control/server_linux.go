package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse is returned by Listen when another process answers on the path.
var ErrInUse = errors.New("control socket in use")

// MaxConns bounds the connections served at once; further clients wait in
// the listen backlog.
const MaxConns = 1024

// Peer identifies the process on the other end of a connection.
type Peer struct{ PID, UID, GID int }

// Handler answers one request. The context is cancelled when the server
// closes. A returned error becomes {"ok":false,"error":...}.
type Handler func(ctx context.Context, peer Peer, req Request) (any, error)

// Takeover carries on an exchange after the reply to its request: it owns
// the connection until it returns, and the server closes it then. The
// context is cancelled when the server closes.
type Takeover func(ctx context.Context, c *net.UnixConn)

// ConnHandler answers one request like a Handler and may keep the
// connection: when it returns a Takeover and no error, the server writes
// the reply, clears the connection's deadlines and calls the Takeover.
// Unlike Serve, ServeConns does not read from the connection while the
// handler runs (a client hanging up does not cancel the context), since
// what the client sends after its request belongs to the Takeover.
type ConnHandler func(ctx context.Context, peer Peer, req Request) (any, Takeover, error)

// Server serves the control socket.
type Server struct {
	ln    *net.UnixListener
	path  string
	log   *slog.Logger
	allow func(Peer) error
	// requestTimeout bounds reading a request (RequestTimeout).
	requestTimeout time.Duration
	ctx            context.Context
	cancel         context.CancelFunc
	wg             sync.WaitGroup
}

// Listen creates the control socket at path, creating its directory (mode
// 0700 when baton makes it) and removing a stale socket file that nothing
// answers on. If a process answers, the error wraps ErrInUse and names its
// pid.
func Listen(path string, log *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket %s: %w: create the directory or pass --control with a writable path", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("control socket %s: the path exists and is not a socket; remove it or pass another --control", path)
		}
		if pid, alive := answering(path); alive {
			return nil, fmt.Errorf("control socket %s: %w by pid %d (another baton?): stop it with `baton stop --control %s`, or give this one another --name or --control", path, ErrInUse, pid, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: removing the stale socket: %w", path, err)
		}
		log.Info("removed stale control socket", "path", path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close() // never served: release and unlink it
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return newServer(ln, path, log, sameUser), nil
}

// ListenAbstract serves the protocol on an abstract unix socket ("@name")
// that any local process may connect to. The handler must check the peer
// itself; baton's worker socket accepts only its workers' pids.
func ListenAbstract(name string, log *slog.Logger) (*Server, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", name, err)
	}
	return newServer(ln, name, log, nil), nil
}

func newServer(ln *net.UnixListener, path string, log *slog.Logger, allow func(Peer) error) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{ln: ln, path: path, log: log, allow: allow, requestTimeout: RequestTimeout, ctx: ctx, cancel: cancel}
}

// sameUser admits root and the user baton runs as.
func sameUser(p Peer) error {
	if uid := os.Geteuid(); p.UID != 0 && p.UID != uid {
		return fmt.Errorf("permission denied: uid %d may not control this baton (run by uid %d); use that user or root", p.UID, uid)
	}
	return nil
}

// answering reports whether a process accepts connections on path, and its
// pid (from SO_PEERCRED).
func answering(path string) (int, bool) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0, false
	}
	defer c.Close()
	cred, err := peerCred(c.(*net.UnixConn))
	if err != nil {
		return 0, true
	}
	return int(cred.Pid), true
}

// AllowGroup lets members of group gid use the socket besides root and
// baton's own user: the socket file gets that group and mode 0660.
func (s *Server) AllowGroup(gid int) error {
	if err := os.Chown(s.path, -1, gid); err != nil {
		return fmt.Errorf("control socket %s: giving it group %d: %w", s.path, gid, err)
	}
	if err := os.Chmod(s.path, 0o660); err != nil {
		return fmt.Errorf("control socket %s: %w", s.path, err)
	}
	s.allow = func(p Peer) error {
		if sameUser(p) == nil || inGroup(p, gid) {
			return nil
		}
		return fmt.Errorf("permission denied: uid %d is neither root, baton's user, nor in group %d; ask for that group or use root", p.UID, gid)
	}
	return nil
}

// inGroup reports whether a peer process has gid as its group or one of
// its supplementary groups (read from /proc, which SO_PEERCRED lacks).
func inGroup(p Peer, gid int) bool {
	if p.GID == gid {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, g := range strings.Fields(v) {
				if g == strconv.Itoa(gid) {
					return true
				}
			}
		}
	}
	return false
}

// Fd is the listening socket's descriptor, for a handover across an
// execve of baton. It stays owned by the server.
func (s *Server) Fd() int {
	fd := -1
	if rc, err := s.ln.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// FromFd rebuilds a control socket server from a descriptor a previous
// baton handed over; the socket file at path stays. The descriptor is
// taken over.
func FromFd(fd int, path string, log *slog.Logger) (*Server, error) {
	ln, err := fileListener(fd, path)
	if err != nil {
		return nil, err
	}
	// This process did not create the file, but it owns it now.
	ln.SetUnlinkOnClose(true)
	return newServer(ln, path, log, sameUser), nil
}

// AbstractFromFd is FromFd for the worker socket (ListenAbstract).
func AbstractFromFd(fd int, name string, log *slog.Logger) (*Server, error) {
	ln, err := fileListener(fd, name)
	if err != nil {
		return nil, err
	}
	return newServer(ln, name, log, nil), nil
}

func fileListener(fd int, path string) (*net.UnixListener, error) {
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // net dups it
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("socket %s (fd %d): %w", path, fd, err)
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("socket %s (fd %d) is not a unix stream socket", path, fd)
	}
	return ln, nil
}

// Path is where the socket lives.
func (s *Server) Path() string { return s.path }

// Close stops accepting, cancels requests in progress, waits for their
// goroutines and removes the socket file.
func (s *Server) Close() error {
	s.cancel()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// Serve accepts connections until Close and answers each with h.
func (s *Server) Serve(h Handler) error {
	return s.serve(func(c *net.UnixConn) {
		s.serveConn(c, func(ctx context.Context, p Peer, r Request) (any, Takeover, error) {
			v, err := h(ctx, p, r)
			return v, nil, err
		}, true)
	})
}

// ServeConns accepts connections until Close and answers each with h,
// which may take a connection over after its reply (baton's worker socket
// moves descriptors that way). A client must send nothing after its
// request line until it has read the reply: a request followed by more
// bytes is refused.
func (s *Server) ServeConns(h ConnHandler) error {
	return s.serve(func(c *net.UnixConn) { s.serveConn(c, h, false) })
}

func (s *Server) serve(handle func(*net.UnixConn)) error {
	sem := make(chan struct{}, MaxConns)
	for {
		select {
		case sem <- struct{}{}:
		case <-s.ctx.Done():
			return nil
		}
		c, err := s.ln.AcceptUnix()
		if err != nil {
			<-sem
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				s.log.Warn("control socket: accept failed, retrying", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return fmt.Errorf("control socket %s: %w", s.path, err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-sem }()
			handle(c)
		}()
	}
}

// serveConn answers one request on c. With watchHangup, the client
// hanging up cancels the handler's context.
func (s *Server) serveConn(c *net.UnixConn, h ConnHandler, watchHangup bool) {
	defer c.Close()
	cred, err := peerCred(c)
	if err != nil {
		s.log.Warn("control socket: cannot identify peer", "err", err)
		return
	}
	peer := Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
	if s.allow != nil {
		if err := s.allow(peer); err != nil {
			s.log.Warn("control socket: refused a peer", "pid", peer.PID, "uid", peer.UID, "err", err)
			writeReply(c, Reply{Error: err.Error()})
			return
		}
	}
	c.SetReadDeadline(time.Now().Add(s.requestTimeout))
	line, extra, err := readLine(c, s.requestTimeout)
	if err != nil {
		writeReply(c, Reply{Error: err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	req, err := DecodeRequest(line)
	if err != nil {
		writeReply(c, Reply{Error: err.Error()})
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	if watchHangup {
		go func() {
			// The client hanging up cancels a request it is waiting on (a
			// reload keeps going; only the wait ends).
			var b [1]byte
			c.Read(b[:])
			cancel()
		}()
	}
	result, takeover, err := h(ctx, peer, req)
	if err == nil && takeover != nil && extra > 0 {
		// Those bytes were read as part of the request and are gone:
		// the exchange that follows cannot work.
		err = fmt.Errorf("%d bytes followed the %s request before its reply; send nothing more until baton answers", extra, req.Method)
	}
	if err != nil {
		writeReply(c, Reply{Error: err.Error()})
		return
	}
	raw, err := json.Marshal(result)
	if err != nil {
		writeReply(c, Reply{Error: fmt.Sprintf("encoding the reply: %v", err)})
		return
	}
	if err := writeReply(c, Reply{OK: true, Result: raw}); err != nil {
		return
	}
	if a, ok := result.(Afterward); ok {
		c.Close()
		a.AfterReply()
		return
	}
	if takeover != nil {
		c.SetDeadline(time.Time{})
		takeover(ctx, c)
	}
}

// Afterward is a result with something to do once its reply has been
// written and the connection closed (an upgrade execs baton then).
type Afterward interface{ AfterReply() }

// readLine reads one newline-terminated request of at most MaxRequest
// bytes. extra counts the bytes read past the newline.
func readLine(c net.Conn, timeout time.Duration) (line []byte, extra int, err error) {
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		n, err := c.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && i <= MaxRequest {
			return buf[:i], len(buf) - i - 1, nil
		}
		if len(buf) > MaxRequest {
			return nil, 0, fmt.Errorf("request is over %d bytes", MaxRequest)
		}
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return nil, 0, fmt.Errorf("no complete request within %s; end the request with a newline", timeout)
		case err == io.EOF:
			return nil, 0, errors.New("connection closed before a complete request; end the request with a newline")
		case err != nil:
			return nil, 0, fmt.Errorf("reading the request: %w", err)
		}
	}
}

func writeReply(c net.Conn, r Reply) error {
	b, _ := json.Marshal(r)
	c.SetWriteDeadline(time.Now().Add(RequestTimeout))
	_, err := c.Write(append(b, '\n'))
	return err
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, os.NewSyscallError("getsockopt SO_PEERCRED", cerr)
	}
	return cred, nil
}
