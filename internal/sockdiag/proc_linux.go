package sockdiag

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// procRoot is where procfs is mounted.
const procRoot = "/proc"

// Owners returns, for every socket the given processes hold, the processes
// and fds holding it, sorted by pid and fd: a listening socket that baton
// and its workers share has an Owner for each. A process that has exited
// is left out; any other failure to read one (such as permission denied)
// is an error. Only the given processes are read: pass AllPIDs() to scan
// the host.
func Owners(pids ...int) (map[uint64][]Owner, error) {
	owners := make(map[uint64][]Owner)
	for _, pid := range pids {
		err := socketInodes(pid, func(ino uint64, fd int) {
			owners[ino] = append(owners[ino], Owner{PID: pid, FD: fd})
		})
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
	}
	for _, o := range owners {
		slices.SortFunc(o, func(a, b Owner) int {
			if a.PID != b.PID {
				return a.PID - b.PID
			}
			return a.FD - b.FD
		})
	}
	return owners, nil
}

// socketInodes calls fn for each fd of process pid that is a socket.
func socketInodes(pid int, fn func(ino uint64, fd int)) error {
	dir := procRoot + "/" + strconv.Itoa(pid) + "/fd"
	f, err := os.Open(dir)
	if err != nil {
		return procError(pid, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return procError(pid, err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return procError(pid, err)
	}
	var rerr error
	cerr := rc.Control(func(dirfd uintptr) {
		// "socket:[4294967295]" is 19 bytes; a longer target is a path.
		var buf [32]byte
		for _, name := range names {
			n, err := unix.Readlinkat(int(dirfd), name, buf[:])
			if err != nil {
				if err == unix.ENOENT {
					continue // closed since the directory was read
				}
				rerr = os.NewSyscallError("readlinkat", err)
				return
			}
			if n == len(buf) {
				continue
			}
			ino, ok := socketInode(buf[:n])
			if !ok {
				continue
			}
			fd, err := strconv.Atoi(name)
			if err != nil {
				continue
			}
			fn(ino, fd)
		}
	})
	if cerr != nil {
		return procError(pid, cerr)
	}
	if rerr != nil {
		return procError(pid, fmt.Errorf("%s: %w", dir, rerr))
	}
	return nil
}

// FDUsage returns how many fds process pid has open and its RLIMIT_NOFILE
// soft and hard limits (math.MaxUint64 for unlimited). A process at its
// soft limit fails accept(2) with EMFILE.
func FDUsage(pid int) (open int, soft, hard uint64, err error) {
	open, err = countFDs(pid)
	if err != nil {
		return 0, 0, 0, err
	}
	f, err := os.Open(procRoot + "/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		return 0, 0, 0, procError(pid, err)
	}
	defer f.Close()
	soft, hard, err = parseNofile(f)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("process %d: %s: %w", pid, f.Name(), err)
	}
	return open, soft, hard, nil
}

// countFDs counts the open fds of process pid. Since Linux 6.2 the size
// of /proc/PID/fd is that number, which costs one stat; older kernels
// report 0 and the directory is read.
func countFDs(pid int) (int, error) {
	dir := procRoot + "/" + strconv.Itoa(pid) + "/fd"
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, procError(pid, err)
	}
	if n := fi.Size(); n > 0 {
		return int(n), nil
	}
	return countFDsByReading(pid)
}

func countFDsByReading(pid int) (int, error) {
	f, err := os.Open(procRoot + "/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, procError(pid, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, procError(pid, err)
	}
	n := len(names)
	if pid == os.Getpid() {
		n-- // the directory being read is one of them
	}
	return n, nil
}

// procError adds the process and, for the usual causes, what to do.
func procError(pid int, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ESRCH):
		return fmt.Errorf("process %d: %w: it has exited", pid, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("process %d: %w: reading another user's /proc/PID/fd needs root (CAP_SYS_PTRACE) or the process's own user", pid, err)
	}
	return fmt.Errorf("process %d: %w", pid, err)
}

// ReadNetstat returns the host's protocol counters, those of
// /proc/net/netstat and /proc/net/snmp (what nstat and netstat -s show),
// by group and name: m["TcpExt"]["ListenOverflows"], m["Tcp"]["CurrEstab"].
// The counters count since boot; rates are the caller's to compute.
func ReadNetstat() (map[string]map[string]int64, error) {
	m := make(map[string]map[string]int64)
	for _, name := range []string{"/net/netstat", "/net/snmp"} {
		if err := readProcFile(procRoot+name, m, parseNetstat); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ReadSockstat returns the socket counts of /proc/net/sockstat and, when
// the kernel has IPv6, /proc/net/sockstat6, by group and name:
// m["TCP"]["inuse"], m["TCP"]["tw"], m["TCP6"]["inuse"], m["sockets"]["used"].
func ReadSockstat() (map[string]map[string]int64, error) {
	m := make(map[string]map[string]int64)
	if err := readProcFile(procRoot+"/net/sockstat", m, parseSockstat); err != nil {
		return nil, err
	}
	err := readProcFile(procRoot+"/net/sockstat6", m, parseSockstat)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return m, nil
}

func readProcFile(path string, m map[string]map[string]int64, parse func(map[string]map[string]int64, io.Reader) error) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: is /proc mounted?", err)
		}
		return err
	}
	defer f.Close()
	if err := parse(m, f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
