package capture

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's structures, from include/uapi/linux/seccomp.h. x/sys/unix
// has the ioctl numbers but not these types.
type seccompData struct {
	Nr   int32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

type seccompNotif struct {
	ID    uint64
	Pid   uint32 // thread id, in the receiver's pid namespace
	Flags uint32
	Data  seccompData
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

type seccompNotifAddfd struct {
	ID         uint64
	Flags      uint32
	Srcfd      uint32
	Newfd      uint32
	NewfdFlags uint32
}

type seccompNotifSizes struct {
	Notif     uint16
	NotifResp uint16
	Data      uint16
}

// Offsets into struct seccomp_data for the filter.
const (
	offNr   = 0
	offArch = 4
)

// filterProgram is the classic BPF program the shim installs: a system
// call of another architecture (a 32-bit program on a 64-bit kernel) is
// allowed untouched, a native bind(2) becomes a user notification, and
// everything else is allowed.
func filterProgram() []unix.SockFilter {
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offArch},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: auditArch, Jt: 0, Jf: 3},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: offNr},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: sysBind, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_USER_NOTIF},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
}

// errArch reports an architecture the filter has no constants for.
func errArch() error {
	return fmt.Errorf("%w on linux/%s: the filter knows the bind(2) number of amd64 and arm64 only; run programs that accept on inherited sockets (LISTEN_FDS) instead",
		ErrNotSupported, runtime.GOARCH)
}

// installFilter sets no_new_privs and installs the filter on the calling
// thread, returning the notification descriptor (close-on-exec, as the
// kernel creates it). The caller must be locked to its OS thread: both
// belong to the thread, not the process.
func installFilter() (int, error) {
	if auditArch == 0 {
		return -1, errArch()
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return -1, os.NewSyscallError("prctl(PR_SET_NO_NEW_PRIVS)", err)
	}
	prog := filterProgram()
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// WAIT_KILLABLE_RECV (Linux 5.19): once baton has received a bind, only
	// SIGKILL interrupts it. Without it a signal to the program makes the
	// kernel drop the notification and restart the bind as a new one,
	// which Serve also handles.
	fd, err := seccompSetFilter(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER|unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &fprog)
	if errors.Is(err, unix.EINVAL) {
		fd, err = seccompSetFilter(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog)
	}
	runtime.KeepAlive(prog)
	if err != nil {
		return -1, err
	}
	return fd, nil
}

func seccompSetFilter(flags uintptr, prog *unix.SockFprog) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(prog)))
	if errno != 0 {
		return -1, os.NewSyscallError("seccomp(SECCOMP_SET_MODE_FILTER)", errno)
	}
	return int(fd), nil
}

// checkSizes compares the kernel's notification structures with this
// package's: a kernel whose structures grew would write past them.
func checkSizes() error {
	var s seccompNotifSizes
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&s))); errno != 0 {
		return os.NewSyscallError("seccomp(SECCOMP_GET_NOTIF_SIZES)", errno)
	}
	if int(s.Notif) != int(unsafe.Sizeof(seccompNotif{})) || int(s.NotifResp) != int(unsafe.Sizeof(seccompNotifResp{})) || int(s.Data) != int(unsafe.Sizeof(seccompData{})) {
		return fmt.Errorf("the kernel's seccomp notification structures are %d/%d/%d bytes, baton knows %d/%d/%d: update baton",
			s.Notif, s.NotifResp, s.Data, unsafe.Sizeof(seccompNotif{}), unsafe.Sizeof(seccompNotifResp{}), unsafe.Sizeof(seccompData{}))
	}
	return nil
}

// ioctl runs a notification ioctl, again when a signal interrupts it.
func ioctl(fd int, req uint, arg unsafe.Pointer) (int, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return -1, errno
		}
		return int(r), nil
	}
}

// recvNotif wraps SECCOMP_IOCTL_NOTIF_RECV. ENOENT means the caller died
// (or a signal interrupted its bind) between the wake-up and the receive.
func recvNotif(nfd int) (seccompNotif, error) {
	var n seccompNotif // the kernel wants it zeroed
	if _, err := ioctl(nfd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&n)); err != nil {
		return n, os.NewSyscallError("ioctl(SECCOMP_IOCTL_NOTIF_RECV)", err)
	}
	return n, nil
}

// idValid wraps SECCOMP_IOCTL_NOTIF_ID_VALID: nil while the thread is
// still waiting in this very notification, so its pid still names it.
func idValid(nfd int, id uint64) error {
	if _, err := ioctl(nfd, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id)); err != nil {
		return os.NewSyscallError("ioctl(SECCOMP_IOCTL_NOTIF_ID_VALID)", err)
	}
	return nil
}

// respond wraps SECCOMP_IOCTL_NOTIF_SEND.
func respond(nfd int, r seccompNotifResp) error {
	if _, err := ioctl(nfd, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&r)); err != nil {
		return os.NewSyscallError("ioctl(SECCOMP_IOCTL_NOTIF_SEND)", err)
	}
	return nil
}

// continueBind lets the trapped bind run as if there were no filter.
func continueBind(nfd int, id uint64) error {
	return respond(nfd, seccompNotifResp{ID: id, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE})
}

// addFd wraps SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SETFD: the
// trapped thread's process gets src at number dst, replacing (and
// closing) what was there, as dup2 would. It does not answer the
// notification. SECCOMP_ADDFD_FLAG_SEND (Linux 5.14) would install and
// answer at once, but its answer is the new descriptor number, and bind
// must return 0.
func addFd(nfd int, id uint64, src, dst int, cloexec bool) error {
	a := seccompNotifAddfd{ID: id, Flags: unix.SECCOMP_ADDFD_FLAG_SETFD, Srcfd: uint32(src), Newfd: uint32(dst)}
	if cloexec {
		a.NewfdFlags = unix.O_CLOEXEC
	}
	if _, err := ioctl(nfd, unix.SECCOMP_IOCTL_NOTIF_ADDFD, unsafe.Pointer(&a)); err != nil {
		return os.NewSyscallError("ioctl(SECCOMP_IOCTL_NOTIF_ADDFD)", err)
	}
	return nil
}
