package batontest

import (
	"fmt"
	"os"
	"strconv"
)

// CountFDs counts this process's open descriptors: the entries of
// /proc/self/fd, less the one this count opens to read it.
func CountFDs() (int, error) {
	n := 0
	err := readFDs(func(int) { n++ })
	return n, err
}

// OpenFDs returns this process's open descriptors, each with what
// /proc/self/fd says it is ("socket:[1234]", "pipe:[5678]", a path), less
// the one this call opens to read them. A descriptor closed while it is
// read is left out.
func OpenFDs() (map[int]string, error) {
	fds := make(map[int]string)
	err := readFDs(func(fd int) {
		if target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
			fds[fd] = target
		}
	})
	return fds, err
}

// readFDs calls f with each descriptor open in this process but the one it
// reads /proc/self/fd through.
func readFDs(f func(fd int)) error {
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("counting descriptors: %w", err)
	}
	defer dir.Close()
	self := -1
	if raw, err := dir.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { self = int(fd) })
	}
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("counting descriptors: %w", err)
	}
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == self {
			continue
		}
		f(fd)
	}
	return nil
}
