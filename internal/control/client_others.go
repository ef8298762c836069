//go:build !linux

package control

import (
	"errors"
	"fmt"
	"net"
	"runtime"
)

// dialer is the dialer of Call.
func dialer() *net.Dialer { return &net.Dialer{} }

// ErrUntrustedServer is wrapped by the error CheckServer returns when the
// process that answers is neither root nor the caller's user.
var ErrUntrustedServer = errors.New("answered by a process of another user")

// CheckServer returns an error: off Linux, who answers cannot be checked
// (and no baton runs there).
func CheckServer(c *net.UnixConn, path string) error {
	return fmt.Errorf("control socket %s: cannot tell who answers on %s: baton runs on Linux only", path, runtime.GOOS)
}
