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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/fdpass"
	"github.com/baton-dev/baton/internal/pathtrust"
	"github.com/baton-dev/baton/internal/sockfile"
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

// Server serves the control socket.
type Server struct {
	ln    *net.UnixListener
	path  string
	log   *slog.Logger
	allow func(Peer) error
	// admit, if set, runs after allow, at accept (Admit).
	admit   func(Peer) (release func(), err error)
	refused refusalLog
	closer  *fdpass.Closer // what refused peers queued
	// requestTimeout bounds reading a request (RequestTimeout).
	requestTimeout time.Duration
	connMethods    []string
	ctx            context.Context
	cancel         context.CancelFunc
	wg             sync.WaitGroup
	// mu orders Serve's wg.Add before Close's wg.Wait: a connection
	// accepted as Close runs is closed instead of served.
	mu     sync.Mutex
	closed bool
}

// Listen creates the control socket at path.
//
// Its directory must exist: Listen never creates it, since a directory
// the user named (--control) and that is missing is a mistake to report,
// not to paper over with a mkdir. The default directories (/run/baton,
// ...) are created first with CreateDir. The directory must be a real
// directory (not a symlink), owned
// by root or baton's user and not writable by group or others, and the
// directories above it must be safe as pathtrust.Dir says (a sticky /tmp
// is): otherwise another user could remove baton's socket file and answer
// in its place, and Listen refuses, naming the directory, its owner and
// mode, and the fix.
//
// A stale socket file (nothing answers on it) is removed: it is probed
// and removed by descriptor (sockfile), so the file probed is the file
// removed. If a process answers, the error wraps ErrInUse and names its
// pid. The new socket file is born 0600 (fchmod(2) of the socket before
// bind(2)) and, once checked to be the file the socket is bound to, set
// to exactly 0600 by descriptor, whatever the umask.
func Listen(path string, log *slog.Logger) (*Server, error) {
	if err := checkDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := clearStale(path, log); err != nil {
		return nil, err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		// Before bind(2): the file is born with this mode less the
		// umask, never more open.
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.Fchmod(int(fd), 0o600) }); cerr != nil {
			return cerr
		}
		return os.NewSyscallError("fchmod", err)
	}}
	l, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln := l.(*net.UnixListener)
	s := newServer(ln, path, log, sameUser)
	if err := s.onFile(func(f *sockfile.File) error { return f.Chmod(0o600) }); err != nil {
		// Never served. The file at the path is not known to be ours:
		// leave it, and only close the socket.
		ln.SetUnlinkOnClose(false)
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return s, nil
}

// CreateDir creates dir, the directory of a default control socket path
// (/run/baton, $XDG_RUNTIME_DIR/baton, $TMPDIR/baton-UID), with mode 0700
// when it is missing, and its parents as needed. Listen checks it after:
// a directory another user made first is found there, whoever won.
func CreateDir(dir string) error {
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("control socket directory %s: %w: create it (mode 0700) or pass --control with a path in a directory you can write", dir, err)
	}
	return nil
}

// checkDir makes sure the control socket's directory is baton's alone:
// refused when it is missing, a symlink, not a directory, owned by
// another user, writable by group or others, or below a directory another
// user can change (pathtrust.Dir).
func checkDir(dir string) error {
	const fix = "remove it (if nobody else uses it) and start baton again, or pass --control with a path in a directory of your own"
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("directory %s does not exist: create it (mkdir -m 0700 %s), or leave out --control for the default directory, which baton creates", dir, dir)
	} else if err != nil {
		return fmt.Errorf("directory %s: %w", dir, os.NewSyscallError("lstat", err))
	}
	euid := os.Geteuid()
	mode := st.Mode & 0o7777
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("directory %s is a symlink: whoever can change it decides where baton's socket goes; %s", dir, fix)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory; %s", dir, fix)
	case st.Uid != 0 && int(st.Uid) != euid:
		return fmt.Errorf("directory %s is owned by uid %d, neither root nor baton's user (uid %d): that user could remove baton's socket and answer in its place; %s", dir, st.Uid, euid, fix)
	case mode&0o022 != 0:
		return fmt.Errorf("directory %s is writable by group or others (mode %04o): another user could remove baton's socket and answer in its place; run chmod go-w %s, or %s", dir, mode, dir, fix)
	}
	if err := pathtrust.Dir(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	return nil
}

// clearStale removes a socket file at path that nothing answers on (a
// baton that died), and refuses one that something answers on, or a path
// that is not a socket.
func clearStale(path string, log *slog.Logger) error {
	f, err := sockfile.OpenPath(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	defer f.Close() // only the probe and the check need it
	if !f.IsSocket() {
		return fmt.Errorf("control socket %s: the path exists and is not a socket; remove it or pass another --control", path)
	}
	alive, pid, err := f.Answers()
	if err != nil {
		return fmt.Errorf("control socket %s: cannot tell whether it is in use: %w", path, err)
	}
	if alive {
		return fmt.Errorf("control socket %s: %w by pid %d (another baton?): stop it with `baton stop --control %s`, or give this one another --name or --control", path, ErrInUse, pid, path)
	}
	if _, err := sockfile.Remove(path, f.ID); err != nil {
		return fmt.Errorf("control socket %s: removing the stale socket: %w", path, err)
	}
	log.Info("removed stale control socket", "path", path)
	return nil
}

// onFile runs do on the server's socket file, opened by descriptor and
// checked to be the very file the socket is bound to (sockfile.Verify).
func (s *Server) onFile(do func(*sockfile.File) error) error {
	fd := s.Fd()
	if fd < 0 {
		return errors.New("the socket has no descriptor (closed?)")
	}
	f, err := sockfile.Verify(fd, s.path)
	if err != nil {
		return err
	}
	defer f.Close() // only do needs it
	return do(f)
}

// ListenAbstract serves the protocol on an abstract unix socket ("@name")
// that any local process may connect to. The handler must check the peer
// itself; baton's worker socket accepts only its workers' pids.
func ListenAbstract(name string, log *slog.Logger) (*Server, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", name, err)
	}
	return newAbstract(ln, name, log), nil
}

// newAbstract is newServer for an abstract socket: any local process can
// reach it, so its refusals are logged at a bounded rate.
func newAbstract(ln *net.UnixListener, name string, log *slog.Logger) *Server {
	s := newServer(ln, name, log, nil)
	s.refused.burst = abstractRefusalBurst
	return s
}

func newServer(ln *net.UnixListener, path string, log *slog.Logger, allow func(Peer) error) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	// No client sends descriptors to baton unasked: the kernel refuses
	// them for every connection accepted from here on (Linux 6.16+), so a
	// client cannot make baton hold, or block in the close of, a
	// descriptor of its choosing. A method that takes descriptors
	// (handoff) turns them on for its own connection (AcceptRights).
	if err := fdpass.SetPassRights(ln, false); err != nil && !errors.Is(err, fdpass.ErrNotSupported) {
		log.Warn("cannot make the socket refuse descriptors", "socket", path, "err", err)
	}
	return &Server{ln: ln, path: path, log: log, allow: allow, requestTimeout: RequestTimeout, ctx: ctx, cancel: cancel, closer: fdpass.NewCloser(2, nil)}
}

// Admit sets a check that runs at accept, after the peer's uid is
// allowed and before the connection takes one of MaxConns slots or a
// goroutine: a refused peer gets the error as its answer, written without
// waiting, and the connection is closed at once. release is called when
// an admitted connection ends. Call it before Serve.
func (s *Server) Admit(f func(Peer) (release func(), err error)) { s.admit = f }

// AcceptRights lets the client of c send descriptors (SCM_RIGHTS): the
// server refuses them on every connection otherwise. A handler calls it
// once it has checked the peer and the request, before it answers.
func AcceptRights(c *net.UnixConn) error {
	if err := fdpass.SetPassRights(c, true); err != nil && !errors.Is(err, fdpass.ErrNotSupported) {
		return err
	}
	return nil
}

// sameUser admits root and the user baton runs as.
func sameUser(p Peer) error {
	if uid := os.Geteuid(); p.UID != 0 && p.UID != uid {
		return fmt.Errorf("permission denied: uid %d may not control this baton (run by uid %d); use that user or root", p.UID, uid)
	}
	return nil
}

// AllowGroup lets members of group gid use the socket besides root and
// baton's own user: the socket file gets that group and mode 0660, by
// descriptor, once checked to be the file the socket is bound to.
//
// The group's members must also reach the file: a directory baton made
// (0700) gets the search bit for group and others (0711: nobody can list
// it or write in it, and the socket's own mode keeps others out).
func (s *Server) AllowGroup(gid int) error {
	if err := searchable(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("control socket %s: members of group %d could not reach it: %w", s.path, gid, err)
	}
	if err := s.onFile(func(f *sockfile.File) error {
		if err := f.Chown(-1, gid); err != nil {
			return fmt.Errorf("giving it group %d: %w", gid, err)
		}
		return f.Chmod(0o660)
	}); err != nil {
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

// searchable adds the search bit for group and others to dir, by
// descriptor (opened without following a symlink), when it lacks it.
func searchable(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("directory %s: %w", dir, os.NewSyscallError("open", err))
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("directory %s: %w", dir, os.NewSyscallError("fstat", err))
	}
	mode := st.Mode & 0o7777
	if mode&0o011 == 0o011 {
		return nil
	}
	if err := unix.Fchmod(fd, mode|0o011); err != nil {
		return fmt.Errorf("directory %s (mode %04o): %w: give it the search bit for group and others (chmod go+x %s)", dir, mode, os.NewSyscallError("fchmod", err), dir)
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

// FromFd rebuilds a control socket server from a descriptor another baton
// handed over. The descriptor is taken over; the socket file at path is
// removed on Close only after Own.
func FromFd(fd int, path string, log *slog.Logger) (*Server, error) {
	ln, err := fileListener(fd, path)
	if err != nil {
		return nil, err
	}
	return newServer(ln, path, log, sameUser), nil
}

// Own makes Close remove the socket file: this process answers for it now.
func (s *Server) Own() { s.ln.SetUnlinkOnClose(true) }

// AbstractFromFd is FromFd for the worker socket (ListenAbstract).
func AbstractFromFd(fd int, name string, log *slog.Logger) (*Server, error) {
	ln, err := fileListener(fd, name)
	if err != nil {
		return nil, err
	}
	return newAbstract(ln, name, log), nil
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
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	err := s.ln.Close()
	s.wg.Wait()
	return err
}

// Serve accepts connections until Close and answers each with h. Every
// peer is checked at accept (the uid rule, then Admit), before it costs a
// slot, a goroutine or a read: a refused peer is answered without waiting
// and closed. At most MaxConns connections are served at once; further
// clients wait in the listen backlog.
func (s *Server) Serve(h Handler) error {
	sem := make(chan struct{}, MaxConns)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
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
		peer, release, ok := s.check(c)
		if !ok {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-s.ctx.Done():
			c.Close()
			release()
			return nil
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			release()
			<-sem
			return nil
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-sem }()
			defer release()
			s.serveConn(c, peer, h)
		}()
	}
}

// check identifies a new connection's peer and applies allow and admit.
// A refused connection is answered, without waiting, and closed.
func (s *Server) check(c *net.UnixConn) (Peer, func(), bool) {
	cred, err := peerCred(c)
	if err != nil {
		s.log.Warn("control socket: cannot identify peer", "socket", s.path, "err", err)
		c.Close()
		return Peer{}, nil, false
	}
	peer := Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}
	release := func() {}
	if s.allow != nil {
		err = s.allow(peer)
	}
	if err == nil && s.admit != nil {
		release, err = s.admit(peer)
	}
	if err != nil {
		s.refused.note(s.log, s.path, peer, err)
		s.refuse(c, err)
		return Peer{}, nil, false
	}
	return peer, release, true
}

// refuse writes a refusal to a connection that has not been read from,
// in one non-blocking send (a fresh socket's buffer takes it; a peer that
// made sure it does not loses its answer), and closes it. Descriptors the
// peer queued (possible only where the kernel cannot refuse them, before
// Linux 6.16) go to the closer first: closing the connection with them
// queued would close them here, on the accept loop.
func (s *Server) refuse(c *net.UnixConn, err error) {
	fdpass.Drain(c, s.discard)
	b, _ := json.Marshal(Reply{Error: err.Error()})
	if raw, rerr := c.SyscallConn(); rerr == nil {
		raw.Write(func(fd uintptr) bool {
			unix.Send(int(fd), append(b, '\n'), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			return true
		})
	}
	c.Close()
}

// discard gives descriptors a peer sent to the server's closer.
func (s *Server) discard(fds []int) { s.closer.Close(fds...) }

// refusalLog logs refused peers: each one, or, with a burst set (the
// abstract sockets, which any local process can flood), at most burst a
// second, then how many more there were.
type refusalLog struct {
	burst      int
	mu         sync.Mutex
	window     time.Time
	logged     int
	suppressed int
}

// abstractRefusalBurst bounds the refusals an abstract socket logs a
// second.
const abstractRefusalBurst = 10

func (r *refusalLog) note(log *slog.Logger, socket string, p Peer, err error) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.window) >= time.Second {
		if r.suppressed > 0 {
			log.Warn("control socket: more peers refused, not logged one by one", "socket", socket, "refused", r.suppressed, "since", r.window.Format(time.TimeOnly))
		}
		r.window, r.logged, r.suppressed = now, 0, 0
	}
	if r.burst > 0 && r.logged >= r.burst {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	r.logged++
	r.mu.Unlock()
	log.Warn("control socket: refused a peer", "socket", socket, "pid", p.PID, "uid", p.UID, "err", err)
}

func (s *Server) serveConn(c *net.UnixConn, peer Peer, h Handler) {
	defer func() {
		// Descriptors still queued (a handoff that broke off, or a kernel
		// that cannot refuse them) go to the closer, not to this close.
		fdpass.Drain(c, s.discard)
		c.Close()
	}()
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
	if slices.Contains(s.connMethods, req.Method) {
		if extra > 0 {
			// Read with the request and gone: what follows cannot work
			// (descriptors that rode on those bytes are lost too).
			writeReply(c, Reply{Error: fmt.Sprintf("%d bytes followed the %s request before its reply; send nothing more until baton answers", extra, req.Method)})
			return
		}
		// The handler speaks on the connection itself from here on.
		if result, err := h(context.WithValue(ctx, connKey{}, c), peer, req); err != nil {
			writeReply(c, Reply{Error: err.Error()})
		} else if result != Hijacked {
			writeReply(c, Reply{OK: true})
		}
		return
	}
	go func() {
		// The client hanging up cancels a request it is waiting on (a
		// reload keeps going; only the wait ends).
		var b [1]byte
		c.Read(b[:])
		cancel()
	}()
	result, err := h(ctx, peer, req)
	if err != nil {
		writeReply(c, Reply{Error: err.Error()})
		return
	}
	raw, err := json.Marshal(result)
	if err != nil {
		writeReply(c, Reply{Error: fmt.Sprintf("encoding the reply: %v", err)})
		return
	}
	writeReply(c, Reply{OK: true, Result: raw})
	if a, ok := result.(Afterward); ok {
		c.Close()
		a.AfterReply()
	}
}

// Hijacked is the result of a handler that answered on the connection
// itself (see ConnMethods).
var Hijacked = &struct{ hijacked bool }{true}

type connKey struct{}

// ConnFrom returns the client connection of a request of a method named
// in ConnMethods: the handler speaks on it directly, and returns Hijacked
// (or an error, which the server reports).
func ConnFrom(ctx context.Context) *net.UnixConn {
	c, _ := ctx.Value(connKey{}).(*net.UnixConn)
	return c
}

// ConnMethods names the methods whose handlers get the connection itself
// (ConnFrom) once the request line has been read.
func (s *Server) ConnMethods(methods ...string) { s.connMethods = append(s.connMethods, methods...) }

// Release stops serving without removing the socket file, which another
// process serves now (it took this one over).
func (s *Server) Release() error {
	s.ln.SetUnlinkOnClose(false)
	return s.ln.Close()
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

func writeReply(c net.Conn, r Reply) {
	b, _ := json.Marshal(r)
	c.SetWriteDeadline(time.Now().Add(RequestTimeout))
	c.Write(append(b, '\n'))
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
