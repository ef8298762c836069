//go:build !linux

package baton

import (
	"fmt"
	"runtime"

	"github.com/baton-dev/baton/internal/listener"
)

// inheritFiles finds no inherited descriptor off Linux: Listener,
// PacketConn and Serve listen on their address instead.
func (w *Worker) inheritFiles() ([]listener.Inherited, error) { return nil, nil }

// openInherited is never reached off Linux (nothing is inherited there).
func openInherited(fd int, name string, want sockType) (any, error) {
	return nil, fmt.Errorf("socket %q (fd %d): inherited sockets are implemented on linux only, not on %s", name, fd, runtime.GOOS)
}
