package handoff

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NOFILE is a process's RLIMIT_NOFILE.
type NOFILE struct {
	Soft, Hard uint64
}

// GetNOFILE wraps getrlimit(2) for RLIMIT_NOFILE.
func GetNOFILE() (NOFILE, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return NOFILE{}, os.NewSyscallError("getrlimit", err)
	}
	return NOFILE{Soft: lim.Cur, Hard: lim.Max}, nil
}

// RaiseNOFILE raises this process's soft RLIMIT_NOFILE to its hard limit
// (or, when the hard limit is infinite, to fs.nr_open) and returns the
// result. The processes this one starts still get the soft limit it
// started with.
//
// The Go runtime already raises the soft limit at start, to one below the
// hard limit, and remembers the original for children: syscall's
// fork and exec put it back when they still find the soft limit the
// runtime set. RaiseNOFILE keeps that arrangement: it changes nothing
// when the runtime's raise took, and otherwise sets the limit the same
// way, with a raw prlimit64 that leaves the runtime's record alone. One
// descriptor below the hard limit is the price of workers keeping their
// own limit (programs that still use select(2) need 1024).
func RaiseNOFILE() (NOFILE, error) {
	cur, err := GetNOFILE()
	if err != nil {
		return cur, err
	}
	target := cur.Hard
	if target == unix.RLIM_INFINITY {
		b, err := os.ReadFile("/proc/sys/fs/nr_open")
		if err != nil {
			return cur, fmt.Errorf("reading fs.nr_open for an infinite RLIMIT_NOFILE: %w", err)
		}
		if target, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return cur, fmt.Errorf("fs.nr_open: %w", err)
		}
	}
	if target == 0 || cur.Soft+1 >= target {
		return cur, nil
	}
	lim := unix.Rlimit{Cur: target - 1, Max: cur.Hard}
	_, _, e := unix.RawSyscall6(unix.SYS_PRLIMIT64, 0, unix.RLIMIT_NOFILE, uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
	if e != 0 {
		return cur, fmt.Errorf("raising the soft RLIMIT_NOFILE from %d to %d: %w", cur.Soft, target-1, os.NewSyscallError("prlimit64", e))
	}
	return GetNOFILE()
}

// CountFDs counts this process's open descriptors by reading /proc/self/fd
// with getdents64(2), without allocating per entry.
func CountFDs() (int, error) {
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, os.NewSyscallError("open /proc/self/fd", err)
	}
	defer unix.Close(dir)
	var buf [32 << 10]byte
	n := 0
	for {
		got, err := unix.Getdents(dir, buf[:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, os.NewSyscallError("getdents64", err)
		}
		if got <= 0 {
			break
		}
		for off := 0; off < got; {
			d := (*unix.Dirent)(unsafe.Pointer(&buf[off]))
			if d.Name[0] != '.' {
				n++
			}
			off += int(d.Reclen)
		}
	}
	return n - 1, nil // the directory's own descriptor
}
