//go:build !linux

package inspect

import (
	"fmt"
	"runtime"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// readProc returns an error wrapping sockdiag.ErrNotSupported: /proc is
// Linux's.
func readProc(pid int, env bool) (proc, error) {
	return proc{}, fmt.Errorf("reading process %d on %s: %w", pid, runtime.GOOS, sockdiag.ErrNotSupported)
}

// descendants returns an error wrapping sockdiag.ErrNotSupported.
func descendants(pid, limit int) ([]int, error) {
	return nil, fmt.Errorf("listing the children of process %d on %s: %w", pid, runtime.GOOS, sockdiag.ErrNotSupported)
}
