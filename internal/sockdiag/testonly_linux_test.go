package sockdiag

import (
	"fmt"
	"os"
	"slices"
	"strconv"
)

// What only the tests use, kept out of the package's API.

// SocketInodes returns the sockets process pid holds, as inode → fd. A
// socket held at several fds maps to the lowest. It reads the links in
// /proc/PID/fd, so it needs the right to inspect the process: root, or the
// process's own user. An error for a process that has exited wraps
// fs.ErrNotExist.
func SocketInodes(pid int) (map[uint64]int, error) {
	socks := make(map[uint64]int)
	if err := socketInodes(pid, func(ino uint64, fd int) {
		if old, ok := socks[ino]; !ok || fd < old {
			socks[ino] = fd
		}
	}); err != nil {
		return nil, err
	}
	return socks, nil
}

// AllPIDs lists every process in /proc (of the caller's pid namespace).
func AllPIDs() ([]int, error) {
	f, err := os.Open(procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	pids := make([]int, 0, len(names))
	for _, name := range names {
		if pid, err := strconv.Atoi(name); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids, nil
}
