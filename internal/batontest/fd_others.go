//go:build !linux

package batontest

import (
	"fmt"
	"runtime"
)

// CountFDs counts this process's open descriptors; it reads /proc/self/fd,
// so off Linux it returns an error naming the system.
func CountFDs() (int, error) {
	return 0, fmt.Errorf("counting descriptors: not supported on %s: it reads /proc/self/fd", runtime.GOOS)
}

// OpenFDs returns this process's open descriptors and what each is; it
// reads /proc/self/fd, so off Linux it returns an error naming the system.
func OpenFDs() (map[int]string, error) {
	return nil, fmt.Errorf("listing descriptors: not supported on %s: it reads /proc/self/fd", runtime.GOOS)
}
