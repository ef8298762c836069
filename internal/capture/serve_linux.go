package capture

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Serve answers the bind notifications on notifFd (from ReceiveNotifFd)
// until ctx is done, returning ctx.Err(), or until no process uses the
// filter any more (every process under it has exited and been reaped),
// returning nil.
//
// A bind to an address of a held inet listener (see below), from a socket
// of the same family, type and protocol (an MPTCP socket counts as TCP)
// that is not bound yet, gets that listener's socket installed at the
// program's descriptor number, keeping the descriptor's close-on-exec
// flag, and returns 0. Every other bind
// goes ahead unchanged. An address matches a listener of the same family
// and port when the addresses are equal, when the listener is on the
// family's wildcard address (0.0.0.0, [::]), or when the program asks for
// the wildcard; in that order, ties to the order of held.
//
// events, when not nil, is called for every bind from Serve's goroutine;
// the trapped program waits while it runs.
//
// Serve works on duplicates of notifFd and of the held descriptors, so
// the caller may close a listener meanwhile (it stays open until Serve
// returns); the duplicate of notifFd is put in non-blocking mode, which
// the caller's descriptor shares. Serve never closes notifFd: the caller
// must keep it for as long as any process under the filter lives, because
// closing it makes every pending and future bind of theirs fail with
// ENOSYS. To change the held listeners, or to hand the descriptor to a
// new baton, stop Serve and call it again: binds made meanwhile wait in
// the kernel. Run one Serve per descriptor at a time.
//
// Serve returns another error only when it cannot go on: notifFd is not a
// notification descriptor, a listener is not a bound inet socket, or the
// kernel refuses to deliver or answer notifications. The caller should
// then close notifFd, failing the waiting binds, rather than leave them
// waiting.
func Serve(ctx context.Context, notifFd int, held []Listener, events func(Event)) error {
	return serve(ctx, notifFd, held, events, hooks{})
}

// hooks let tests act at the moments a dying process changes what Serve
// sees. Both are nil outside tests.
type hooks struct {
	polled   func()        // a notification is pending, not yet received
	received func(tid int) // a notification was received, not yet handled
}

func serve(ctx context.Context, notifFd int, held []Listener, events func(Event), h hooks) error {
	if auditArch == 0 {
		return errArch()
	}
	if err := checkNotifFd(notifFd); err != nil {
		return fmt.Errorf("bind capture: cannot serve %w", err)
	}
	if err := checkSizes(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	hs, err := holdAll(held)
	if err != nil {
		return err
	}
	defer closeHeld(hs)

	dup, err := unix.FcntlInt(uintptr(notifFd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bind capture: %w", os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err))
	}
	// Non-blocking, the duplicate joins Go's poller: waiting for a bind
	// takes no thread, and a deadline ends the wait when ctx is done.
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup) // not yet owned by an *os.File
		return fmt.Errorf("bind capture: %w", os.NewSyscallError("fcntl(O_NONBLOCK)", err))
	}
	f := os.NewFile(uintptr(dup), "seccomp-notify")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("bind capture: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	s := &server{nfd: dup, held: hs, events: events}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var revents int16
		var perr error
		err := rc.Read(func(fd uintptr) bool {
			revents, perr = pollNow(int(fd))
			return perr != nil || revents != 0
		})
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			return fmt.Errorf("bind capture: waiting for binds: %w", err)
		case perr != nil:
			return fmt.Errorf("bind capture: waiting for binds: %w", perr)
		case revents&unix.POLLIN != 0:
			if h.polled != nil {
				h.polled()
			}
			if err := s.next(h); err != nil {
				return err
			}
		case revents&unix.POLLHUP != 0:
			// No task uses the filter any more: nothing can bind under
			// it again.
			return nil
		}
		// POLLERR alone: the kernel's poll was interrupted; poll again.
	}
}

// pollNow reports the notification descriptor's state without waiting.
func pollNow(fd int) (int16, error) {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, 0)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, os.NewSyscallError("poll", err)
		case n == 0:
			return 0, nil
		}
		return p[0].Revents, nil
	}
}

type server struct {
	nfd    int
	held   []heldSocket
	events func(Event)
}

// next receives one notification, answers it and reports it.
func (s *server) next(h hooks) error {
	n, err := recvNotif(s.nfd)
	switch {
	case errors.Is(err, unix.ENOENT):
		// The caller died, or a signal interrupted its bind, between the
		// wake-up and the receive: there is nothing to answer.
		return nil
	case errors.Is(err, unix.EAGAIN):
		return nil
	case err != nil:
		return fmt.Errorf("bind capture: %w", err)
	}
	if h.received != nil {
		h.received(int(n.Pid))
	}
	ev, err := s.handle(&n)
	if s.events != nil {
		s.events(ev)
	}
	return err
}

// handle decides and answers one notification. Its error is fatal to
// Serve: the notification could not be answered at all.
func (s *server) handle(n *seccompNotif) (Event, error) {
	tid := int(n.Pid)
	ev := Event{Time: time.Now(), PID: tid, Fd: int(int32(n.Data.Args[0]))}
	if n.Data.Arch != auditArch || uint32(n.Data.Nr) != sysBind {
		// Not a bind under this package's filter: never interfere.
		ev.Addr = fmt.Sprintf("(system call %d)", n.Data.Nr)
		return s.pass(n, ev, nil)
	}
	if pid, err := tgid(tid); err == nil {
		ev.PID = pid
	}
	size := int32(n.Data.Args[2]) // socklen_t, an int to the kernel
	if size < 2 || size > maxSockaddr {
		ev.Addr = fmt.Sprintf("(%d-byte address)", size)
		return s.pass(n, ev, nil) // the kernel refuses it with EINVAL
	}
	buf := make([]byte, size)
	if err := readMem(tid, n.Data.Args[1], buf); err != nil {
		switch {
		case s.stale(n):
			return gone(ev), nil
		case errors.Is(err, unix.EFAULT), errors.Is(err, unix.EIO):
			ev.Addr = "(unreadable address)"
			return s.pass(n, ev, nil) // the kernel answers EFAULT
		}
		return s.fail(n, ev, fmt.Errorf("reading the address from pid %d: %w", tid, err))
	}
	a, err := parseSockaddr(buf)
	if err != nil {
		ev.Addr = "(" + err.Error() + ")"
		return s.pass(n, ev, nil) // the kernel refuses it
	}
	ev.Addr = a.String()
	cands := candidates(a, s.held)
	if len(cands) == 0 {
		return s.pass(n, ev, miss(a, s.held))
	}
	return s.capture(n, ev, a, cands)
}

// capture gives the program a held socket if its own fits.
func (s *server) capture(n *seccompNotif, ev Event, a bindAddr, cands []int) (Event, error) {
	tid := int(n.Pid)
	pidfd, err := openPidfd(tid)
	if err != nil {
		if s.stale(n) {
			return gone(ev), nil
		}
		return s.fail(n, ev, err)
	}
	defer unix.Close(pidfd)
	cloexec, ferr := fdCloexec(tid, ev.Fd)
	// Act on what was read only if the bind is still pending: then the
	// thread is alive, its pid was not reused, and the address, the pidfd
	// and the descriptor flags are its own.
	if s.stale(n) {
		return gone(ev), nil
	}
	if ferr != nil {
		if errors.Is(ferr, os.ErrNotExist) {
			return s.pass(n, ev, nil) // not an open descriptor: the kernel answers EBADF
		}
		return s.fail(n, ev, ferr)
	}
	own, err := unix.PidfdGetfd(pidfd, ev.Fd, 0)
	if err != nil {
		if errors.Is(err, unix.EBADF) {
			return s.pass(n, ev, nil)
		}
		return s.fail(n, ev, fmt.Errorf("looking at the program's socket: %w", os.NewSyscallError("pidfd_getfd", err)))
	}
	prog, err := inspect(own, "/proc/"+strconv.Itoa(tid)+"/ns/net")
	unix.Close(own) // only looked at: the program keeps its own
	if err != nil {
		if errors.Is(err, unix.ENOTSOCK) {
			return s.pass(n, ev, nil) // the kernel answers ENOTSOCK
		}
		return s.fail(n, ev, fmt.Errorf("looking at the program's socket: %w", err))
	}
	for _, h := range s.held {
		if h.ino == prog.ino {
			// Already baton's socket: a bind restarted after a signal
			// interrupted it once the socket was installed. Answer as the
			// first time.
			ev.Listener = h.name
			return s.succeed(n, ev)
		}
	}
	if prog.bound {
		return s.pass(n, ev, nil) // the kernel answers EINVAL
	}
	if prog.kind.family != a.family {
		return s.pass(n, ev, nil) // the kernel answers EAFNOSUPPORT
	}
	if cands, why := sameNetns(prog.netns, s.held, cands); len(cands) == 0 {
		return s.pass(n, ev, why)
	}
	i, why := choose(a, prog.kind, s.held, cands)
	if i < 0 {
		return s.pass(n, ev, why)
	}
	ev.Listener = s.held[i].name
	if err := addFd(s.nfd, n.ID, s.held[i].fd, ev.Fd, cloexec); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return gone(ev), nil
		}
		// The program's own socket is still in place.
		ev.Listener = ""
		return s.fail(n, ev, fmt.Errorf("installing listener %q: %w", s.held[i].name, err))
	}
	return s.succeed(n, ev)
}

// succeed answers the bind with 0.
func (s *server) succeed(n *seccompNotif, ev Event) (Event, error) {
	ev.Action = Captured
	return answered(ev, respond(s.nfd, seccompNotifResp{ID: n.ID}))
}

// pass lets the bind go ahead unchanged.
func (s *server) pass(n *seccompNotif, ev Event, why error) (Event, error) {
	ev.Action, ev.Err = Passed, why
	return answered(ev, continueBind(s.nfd, n.ID))
}

// fail reports err and lets the bind go ahead unchanged.
func (s *server) fail(n *seccompNotif, ev Event, err error) (Event, error) {
	ev.Action, ev.Err = Failed, err
	return answered(ev, continueBind(s.nfd, n.ID))
}

// answered turns the result of answering a notification into the event
// and Serve's error.
func answered(ev Event, err error) (Event, error) {
	switch {
	case err == nil:
		return ev, nil
	case errors.Is(err, unix.ENOENT):
		return gone(ev), nil
	}
	ev.Action, ev.Err = Failed, err
	return ev, fmt.Errorf("bind capture: answering the bind of pid %d: %w", ev.PID, err)
}

func gone(ev Event) Event {
	ev.Action, ev.Err, ev.Listener = Gone, ErrGone, ""
	return ev
}

// stale reports whether the notification is no longer pending.
func (s *server) stale(n *seccompNotif) bool { return idValid(s.nfd, n.ID) != nil }

// readMem reads len(buf) bytes at addr in the memory of thread tid.
func readMem(tid int, addr uint64, buf []byte) error {
	local := []unix.Iovec{{Base: &buf[0]}}
	local[0].SetLen(len(buf))
	remote := []unix.RemoteIovec{{Base: uintptr(addr), Len: len(buf)}}
	n, err := unix.ProcessVMReadv(tid, local, remote, 0)
	switch {
	case err == nil && n == len(buf):
		return nil
	case err == nil:
		return fmt.Errorf("process_vm_readv: read %d of %d bytes: %w", n, len(buf), unix.EFAULT)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
		// The kernel lacks it (CONFIG_CROSS_MEMORY_ATTACH=n) or a
		// sandbox's filter refuses it: /proc/PID/mem is another way in,
		// under the same ptrace access check.
		return readProcMem(tid, addr, buf)
	}
	return os.NewSyscallError("process_vm_readv", err)
}

func readProcMem(tid int, addr uint64, buf []byte) error {
	f, err := os.Open("/proc/" + strconv.Itoa(tid) + "/mem")
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.ReadAt(buf, int64(addr))
	return err
}

// openPidfd opens a pidfd for the process of thread tid whose descriptor
// table pidfd_getfd will read.
func openPidfd(tid int) (int, error) {
	fd, err := unix.PidfdOpen(tid, unix.PIDFD_THREAD)
	if errors.Is(err, unix.EINVAL) {
		// Before Linux 6.9 a pidfd names a process, by its leader's pid;
		// its threads share the descriptor table.
		pid, terr := tgid(tid)
		if terr != nil {
			return -1, terr
		}
		fd, err = unix.PidfdOpen(pid, 0)
	}
	if err != nil {
		return -1, os.NewSyscallError("pidfd_open", err)
	}
	return fd, nil
}

// tgid is the process id of thread tid.
func tgid(tid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no Tgid line", tid)
}

// fdCloexec reports whether descriptor fd of thread tid is close-on-exec.
func fdCloexec(tid, fd int) (bool, error) {
	name := "/proc/" + strconv.Itoa(tid) + "/fdinfo/" + strconv.Itoa(fd)
	b, err := os.ReadFile(name)
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err != nil {
				return false, fmt.Errorf("%s: flags %q: %w", name, v, err)
			}
			return flags&unix.O_CLOEXEC != 0, nil
		}
	}
	return false, fmt.Errorf("%s has no flags line", name)
}

// sameNetns keeps the candidates in network namespace netns: a socket
// of baton's namespace would serve a program that made its own in another
// the wrong network. Without any it explains, wrapping ErrNoMatch.
func sameNetns(netns uint64, held []heldSocket, cands []int) ([]int, error) {
	var out []int
	for _, i := range cands {
		if held[i].netns == netns {
			out = append(out, i)
		}
	}
	if len(out) == 0 && len(cands) > 0 {
		return nil, fmt.Errorf("%w: the program's socket is in another network namespace than listener %q; baton's sockets serve their own namespace only",
			ErrNoMatch, held[cands[0]].name)
	}
	return out, nil
}

// progSocket is what Serve learns about a socket.
type progSocket struct {
	kind  sockKind
	bound bool
	ino   uint64
	netns uint64 // inode of its network namespace
}

// inspect looks at a socket. nsPath names the network namespace to assume
// when the kernel does not tell the socket's own (SIOCGSKNS needs
// CAP_NET_ADMIN): the one of the process that made it.
func inspect(fd int, nsPath string) (progSocket, error) {
	var p progSocket
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return p, os.NewSyscallError("fstat", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return p, unix.ENOTSOCK
	}
	p.ino = st.Ino
	var err error
	if p.kind, err = kindOf(fd); err != nil {
		return p, err
	}
	ap, err := sockname(fd)
	if err != nil {
		return p, err
	}
	p.bound = ap.Port() != 0
	if p.netns, err = netnsOf(fd); err != nil {
		if err := unix.Stat(nsPath, &st); err != nil {
			return p, fmt.Errorf("network namespace: %w", &os.PathError{Op: "stat", Path: nsPath, Err: err})
		}
		p.netns = st.Ino
	}
	return p, nil
}

// netnsOf is the inode of the network namespace socket fd belongs to.
func netnsOf(fd int) (uint64, error) {
	ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return 0, os.NewSyscallError("ioctl(SIOCGSKNS)", err)
	}
	defer unix.Close(ns) // only looked at
	var st unix.Stat_t
	if err := unix.Fstat(ns, &st); err != nil {
		return 0, os.NewSyscallError("fstat", err)
	}
	return st.Ino, nil
}

func kindOf(fd int) (sockKind, error) {
	var k sockKind
	for _, o := range []struct {
		opt  int
		dst  *int
		name string
	}{
		{unix.SO_DOMAIN, &k.family, "getsockopt(SO_DOMAIN)"},
		{unix.SO_TYPE, &k.sotype, "getsockopt(SO_TYPE)"},
		{unix.SO_PROTOCOL, &k.proto, "getsockopt(SO_PROTOCOL)"},
	} {
		v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, o.opt)
		if err != nil {
			return k, os.NewSyscallError(o.name, err)
		}
		*o.dst = v
	}
	return k, nil
}

// sockname is an inet socket's bound address; the zero AddrPort for
// other families.
func sockname(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, nil
}

// holdAll duplicates and describes the listeners Serve offers. Unix
// sockets are skipped: a bind to a path always goes ahead.
func holdAll(ls []Listener) ([]heldSocket, error) {
	var hs []heldSocket
	for _, l := range ls {
		h, ok, err := hold(l)
		if err != nil {
			closeHeld(hs) // Serve does not start: release what it took
			return nil, fmt.Errorf("bind capture: listener %q (descriptor %d): %w", l.Name, l.Fd, err)
		}
		if ok {
			hs = append(hs, h)
		}
	}
	return hs, nil
}

func hold(l Listener) (heldSocket, bool, error) {
	h := heldSocket{name: l.Name}
	fd, err := unix.FcntlInt(uintptr(l.Fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return h, false, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	p, err := inspect(fd, "/proc/self/ns/net")
	if err == nil && p.kind.family != unix.AF_INET && p.kind.family != unix.AF_INET6 {
		unix.Close(fd) // never offered
		return h, false, nil
	}
	if err == nil {
		h.addr, err = sockname(fd)
	}
	if err == nil && h.addr.Port() == 0 {
		err = errors.New("not bound to a port; bind it before serving")
	}
	if err != nil {
		unix.Close(fd) // not kept: the caller gets an error
		return h, false, err
	}
	h.fd, h.kind, h.ino, h.netns = fd, p.kind, p.ino, p.netns
	return h, true, nil
}

func closeHeld(hs []heldSocket) {
	for _, h := range hs {
		unix.Close(h.fd)
	}
}
