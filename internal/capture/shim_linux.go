package capture

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Bytes of the socketpair protocol: the shim sends msgNotifFd with the
// notification descriptor attached, baton answers msgAck once it holds
// the descriptor.
const (
	msgNotifFd = 'N'
	msgAck     = 'A'
)

// Socketpair creates the socketpair that carries the notification
// descriptor from the shim to baton: SOCK_SEQPACKET, close-on-exec,
// blocking. baton keeps the first end and passes the second to the shim
// by number (EnvFD); both belong to the caller.
func Socketpair() (baton, shim int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("capture socketpair: %w", os.NewSyscallError("socketpair", err))
	}
	return fds[0], fds[1], nil
}

// InstallFromEnv is what baton's shim calls, before it execs the program,
// when EnvFD is set: it removes EnvFD from the environment, runs
// InstallAndSend on that descriptor and closes it, so the program inherits
// neither. It returns false and nil when EnvFD is not set.
//
// It must be called from the goroutine that then calls syscall.Exec, with
// no bind(2) in between, and on error the shim must exit instead of
// running the program (see InstallAndSend).
func InstallFromEnv() (bool, error) {
	v, ok := os.LookupEnv(EnvFD)
	if !ok {
		return false, nil
	}
	os.Unsetenv(EnvFD)
	sock, err := strconv.Atoi(v)
	if err != nil || sock < 0 {
		return true, fmt.Errorf("bind capture: %s=%q: want the number of an inherited descriptor; this is baton's internal variable, do not set it", EnvFD, v)
	}
	// Checked before anything is installed, so a wrong number changes
	// nothing on this thread.
	t, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return true, fmt.Errorf("bind capture: %s=%d is not the capture socketpair (%w); this is baton's internal variable, do not set it", EnvFD, sock, os.NewSyscallError("getsockopt", err))
	}
	if t != unix.SOCK_SEQPACKET {
		return true, fmt.Errorf("bind capture: %s=%d is a socket of type %d, not the capture socketpair; this is baton's internal variable, do not set it", EnvFD, sock, t)
	}
	err = InstallAndSend(sock)
	// The program must not inherit the shim's end of the socketpair.
	unix.Close(sock)
	return true, err
}

// InstallAndSend installs the capture filter on the calling thread and
// hands its notification descriptor to baton over sock, the shim's end of
// Socketpair: it sets PR_SET_NO_NEW_PRIVS, installs the filter with
// SECCOMP_FILTER_FLAG_NEW_LISTENER, sends the descriptor (SCM_RIGHTS),
// closes its own copy and waits until baton confirms it holds it
// (ReceiveNotifFd). Without that confirmation every bind of the program
// would fail with ENOSYS, so it is better not to run it.
//
// The filter and no_new_privs belong to the calling OS thread, so
// InstallAndSend locks the calling goroutine to it and never unlocks it:
// the caller must execve from the same goroutine. On error the thread may
// already carry the filter; the caller must exit rather than run the
// program.
func InstallAndSend(sock int) error {
	runtime.LockOSThread()
	// A blocking socket makes the wait for the acknowledgement simple;
	// this end belongs to the shim alone.
	if err := unix.SetNonblock(sock, false); err != nil {
		return fmt.Errorf("bind capture: socket %d: %w", sock, os.NewSyscallError("fcntl", err))
	}
	nfd, err := installFilter()
	if err != nil {
		return fmt.Errorf("bind capture: installing the seccomp filter: %w", err)
	}
	err = sendFd(sock, nfd)
	// Baton has its own copy now, or the send failed and nobody would
	// answer this one: in both cases the shim's copy must go (it is
	// close-on-exec, but exit paths should not rely on that).
	unix.Close(nfd)
	if err != nil {
		return fmt.Errorf("bind capture: sending the notification descriptor to baton: %w", err)
	}
	var b [1]byte
	for {
		n, err := unix.Read(sock, b[:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bind capture: waiting for baton: %w", os.NewSyscallError("read", err))
		}
		if n != 1 || b[0] != msgAck {
			return errors.New("bind capture: baton closed the capture socket without taking the notification descriptor; every bind would fail, so the program does not start")
		}
		return nil
	}
}

func sendFd(sock, fd int) error {
	for {
		err := unix.Sendmsg(sock, []byte{msgNotifFd}, unix.UnixRights(fd), nil, unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return os.NewSyscallError("sendmsg", err)
		}
		return nil
	}
}

// ReceiveNotifFd receives the notification descriptor the shim sends over
// sock, baton's end of Socketpair, checks it is a seccomp notification
// descriptor, and acknowledges it so that the shim runs the program. The
// descriptor is close-on-exec and belongs to the caller, who must keep it
// open for as long as any process under the filter lives (see Serve).
//
// It blocks until the shim sends or exits; for the exit to be seen, the
// caller must have closed its copy of the shim's end after starting it.
func ReceiveNotifFd(sock int) (int, error) {
	fd, err := recvFd(sock)
	if err != nil {
		return -1, fmt.Errorf("bind capture: receiving the notification descriptor from the shim: %w", err)
	}
	if err := checkNotifFd(fd); err != nil {
		unix.Close(fd) // not what the caller asked for: do not hand it out
		return -1, fmt.Errorf("bind capture: the shim sent %w", err)
	}
	for {
		_, err := unix.SendmsgN(sock, []byte{msgAck}, nil, nil, unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			// The shim is gone and runs no program: nothing will bind
			// under this filter.
			unix.Close(fd)
			return -1, fmt.Errorf("bind capture: acknowledging the notification descriptor: %w: the shim exited", os.NewSyscallError("sendmsg", err))
		}
		return fd, nil
	}
}

func recvFd(sock int) (int, error) {
	buf := make([]byte, 1)
	// Room for exactly one descriptor: more sets MSG_CTRUNC.
	oob := make([]byte, unix.CmsgSpace(4))
	for {
		n, oobn, flags, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(sock), Events: unix.POLLIN}}, -1); err != nil && !errors.Is(err, unix.EINTR) {
				return -1, os.NewSyscallError("poll", err)
			}
			continue
		case err != nil:
			return -1, os.NewSyscallError("recvmsg", err)
		}
		fds := rights(oob[:oobn])
		switch {
		case n == 0 && len(fds) == 0:
			return -1, errors.New("the shim exited without sending it: see the worker's output for why")
		case flags&unix.MSG_CTRUNC != 0 || len(fds) != 1 || n != 1 || buf[0] != msgNotifFd:
			closeAll(fds) // a malformed message: keep none of it
			return -1, fmt.Errorf("unexpected message (%d bytes, %d descriptors, flags %#x): is the shim the same baton version?", n, len(fds), flags)
		}
		return fds[0], nil
	}
}

// rights returns every descriptor in a control message buffer.
func rights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if f, err := unix.ParseUnixRights(&m); err == nil {
			fds = append(fds, f...)
		}
	}
	return fds
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// checkNotifFd reports whether fd is a seccomp notification descriptor.
func checkNotifFd(fd int) error {
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("descriptor %d: %w", fd, err)
	}
	if link != "anon_inode:seccomp notify" {
		return fmt.Errorf("descriptor %d (%s), which is not a seccomp notification descriptor", fd, link)
	}
	return nil
}
