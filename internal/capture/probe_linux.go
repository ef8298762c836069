package capture

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Supported reports whether bind capture works here, with an error
// wrapping ErrNotSupported that names the missing piece and the fix when
// it does not. Call it before starting any worker with capture.
//
// It runs the whole mechanism once on a throwaway thread of this process:
// it installs the same filter there, binds two unix sockets, answers the
// first by installing another socket at its number (reading the address
// from the thread's memory, checking the notification, looking at the
// socket through pidfd_getfd) and lets the second go ahead. The thread
// ends with the probe, taking its filter and no_new_privs with it; the
// rest of the process is never filtered.
func Supported() error {
	if auditArch == 0 {
		return errArch()
	}
	if err := ptraceAllowed(); err != nil {
		return err
	}
	act := uint32(unix.SECCOMP_RET_USER_NOTIF)
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_ACTION_AVAIL, 0, uintptr(unsafe.Pointer(&act))); errno != 0 {
		err := os.NewSyscallError("seccomp(SECCOMP_GET_ACTION_AVAIL)", errno)
		switch errno {
		case unix.ENOSYS:
			return unsupported(err, "the kernel has no seccomp(2) (Linux 3.17 with CONFIG_SECCOMP_FILTER), or a sandbox hides it")
		case unix.EOPNOTSUPP, unix.EINVAL:
			return unsupported(err, "the kernel lacks SECCOMP_RET_USER_NOTIF: bind capture needs Linux 5.9 or later")
		}
		return unsupported(err, "a sandbox may forbid seccomp(2)")
	}
	if err := checkSizes(); err != nil {
		return unsupported(err, "")
	}
	return onThrowawayThread(probe)
}

// onThrowawayThread runs f on an OS thread that ends when f returns, so
// that whatever f sets on its thread (a seccomp filter, no_new_privs)
// leaves the process with it.
func onThrowawayThread(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine ends, the runtime ends the
		// thread.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// Except the main thread, which the runtime parks for good
			// instead. Keep it locked here, so that the goroutine below
			// runs on another thread, then give it back.
			errc <- onThrowawayThread(f)
			runtime.UnlockOSThread()
			return
		}
		errc <- f()
	}()
	return <-errc
}

func unsupported(err error, fix string) error {
	if fix == "" {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	return fmt.Errorf("%w: %w: %s", ErrNotSupported, err, fix)
}

// ptraceAllowed checks that Yama lets baton read its workers' memory.
func ptraceAllowed() error {
	b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	if err != nil {
		return nil // no Yama
	}
	switch strings.TrimSpace(string(b)) {
	case "3":
		return fmt.Errorf("%w: kernel.yama.ptrace_scope is 3, which forbids reading another process's memory, even as root; set it to 2 or lower", ErrNotSupported)
	case "2":
		if !hasCapSysPtrace() {
			return fmt.Errorf("%w: kernel.yama.ptrace_scope is 2, so reading a worker's memory needs CAP_SYS_PTRACE: run baton as root or grant it CAP_SYS_PTRACE", ErrNotSupported)
		}
	}
	return nil
}

func hasCapSysPtrace() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_PTRACE) != 0
		}
	}
	return false
}

// probe runs on a locked thread that ends after it.
func probe() error {
	var socks [3]int
	for i := range socks {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeAll(socks[:i]) // the probe stops here
			return fmt.Errorf("bind capture probe: %w", os.NewSyscallError("socket", err))
		}
		socks[i] = fd
	}
	defer closeAll(socks[:])
	// target is bound and gets standin in its place; plain is bound and
	// left alone.
	target, standin, plain := socks[0], socks[1], socks[2]
	var st unix.Stat_t
	if err := unix.Fstat(standin, &st); err != nil {
		return fmt.Errorf("bind capture probe: %w", os.NewSyscallError("fstat", err))
	}
	standinIno := st.Ino

	nfd, err := installFilter()
	if err != nil {
		return installError(err)
	}
	tid := unix.Gettid()
	served := make(chan error, 1)
	// The server owns nfd and closes it when done: on failure that
	// answers any bind still waiting with ENOSYS, so this thread never
	// waits forever.
	go func() { served <- probeServe(nfd, tid, target, standin) }()
	// Autobind (an address of the family alone) needs no free name.
	errTarget := unix.Bind(target, &unix.SockaddrUnix{})
	errPlain := unix.Bind(plain, &unix.SockaddrUnix{})
	if err := <-served; err != nil {
		return err
	}
	if errTarget != nil {
		return unsupported(os.NewSyscallError("bind", errTarget), "a bind answered with success failed")
	}
	if err := unix.Fstat(target, &st); err != nil {
		return fmt.Errorf("bind capture probe: %w", os.NewSyscallError("fstat", err))
	}
	if st.Ino != standinIno {
		return fmt.Errorf("%w: SECCOMP_IOCTL_NOTIF_ADDFD succeeded but the descriptor is not the installed socket", ErrNotSupported)
	}
	if errPlain != nil {
		return unsupported(os.NewSyscallError("bind", errPlain), "a bind let go ahead with SECCOMP_USER_NOTIF_FLAG_CONTINUE failed")
	}
	sa, err := unix.Getsockname(plain)
	if u, ok := sa.(*unix.SockaddrUnix); err != nil || !ok || u.Name == "" {
		return fmt.Errorf("%w: a bind let go ahead with SECCOMP_USER_NOTIF_FLAG_CONTINUE did not bind", ErrNotSupported)
	}
	return nil
}

func installError(err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		return unsupported(err, "this process already runs under a seccomp filter with a notification listener (a container runtime's, or a baton capturing binds for this baton), and the kernel allows one per process: run baton outside it")
	case errors.Is(err, unix.ENOSYS):
		return unsupported(err, "the kernel has no seccomp(2) (Linux 3.17 with CONFIG_SECCOMP_FILTER), or a sandbox hides it")
	case errors.Is(err, unix.EINVAL):
		return unsupported(err, "the kernel lacks SECCOMP_FILTER_FLAG_NEW_LISTENER: bind capture needs Linux 5.9 or later")
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return unsupported(err, "a sandbox forbids installing seccomp filters; allow seccomp(2) in its profile")
	}
	return unsupported(err, "")
}

// probeServe answers the probe thread's two binds: the first by
// installing standin at its descriptor number, the second by letting it
// go ahead. It closes nfd in every case.
func probeServe(nfd, tid, target, standin int) error {
	defer unix.Close(nfd)
	n, err := recvNotif(nfd)
	if err != nil {
		return unsupported(err, "")
	}
	if int(n.Pid) != tid || uint32(n.Data.Nr) != sysBind || int(n.Data.Args[0]) != target {
		return fmt.Errorf("%w: the probe received a notification for thread %d, system call %d, descriptor %d, not its own bind", ErrNotSupported, n.Pid, n.Data.Nr, int(n.Data.Args[0]))
	}
	buf := make([]byte, int32(n.Data.Args[2]))
	if len(buf) == 0 {
		return fmt.Errorf("%w: the probe's bind carried a %d-byte address", ErrNotSupported, int32(n.Data.Args[2]))
	}
	if err := readMem(tid, n.Data.Args[1], buf); err != nil {
		return unsupported(err, "baton reads a program's bind address from its memory: allow process_vm_readv(2) or /proc/PID/mem (in a container, CAP_SYS_PTRACE or a seccomp profile that allows process_vm_readv)")
	}
	if err := idValid(nfd, n.ID); err != nil {
		return unsupported(err, "")
	}
	pidfd, err := openPidfd(tid)
	if err != nil {
		return unsupported(err, "bind capture needs pidfd_open(2), Linux 5.3 or later, allowed by any sandbox")
	}
	own, err := unix.PidfdGetfd(pidfd, target, 0)
	unix.Close(pidfd)
	if err != nil {
		return unsupported(os.NewSyscallError("pidfd_getfd", err), "bind capture needs pidfd_getfd(2), Linux 5.6 or later (in a container, CAP_SYS_PTRACE or a seccomp profile that allows it)")
	}
	unix.Close(own)
	if err := addFd(nfd, n.ID, standin, target, true); err != nil {
		return unsupported(err, "the kernel lacks SECCOMP_ADDFD_FLAG_SETFD: bind capture needs Linux 5.9 or later")
	}
	if err := respond(nfd, seccompNotifResp{ID: n.ID}); err != nil {
		return unsupported(err, "")
	}
	n, err = recvNotif(nfd)
	if err != nil {
		return unsupported(err, "")
	}
	if err := continueBind(nfd, n.ID); err != nil {
		return unsupported(err, "the kernel lacks SECCOMP_USER_NOTIF_FLAG_CONTINUE: bind capture needs Linux 5.9 or later")
	}
	return nil
}
