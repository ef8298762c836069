//go:build !linux

package sockdiag

import (
	"fmt"
	"runtime"
)

var _ diag = &Conn{}

// Conn is a NETLINK_SOCK_DIAG socket. It exists only on Linux.
type Conn struct{}

// Dial returns an error wrapping ErrNotSupported: sock_diag is Linux only.
func Dial() (*Conn, error) { return nil, errOS("sock_diag") }

// Close does nothing.
func (c *Conn) Close() error { return nil }

// Query returns an error wrapping ErrNotSupported.
func (c *Conn) Query(Query) ([]Socket, error) { return nil, errOS("sock_diag") }

// ListenQueues returns an error wrapping ErrNotSupported.
func (c *Conn) ListenQueues(...uint64) (map[uint64]Queue, error) {
	return nil, errOS("sock_diag")
}

// UnixQueues returns an error wrapping ErrNotSupported.
func (c *Conn) UnixQueues(...uint64) (map[uint64]Queue, error) {
	return nil, errOS("sock_diag")
}

// UnixFile returns an error wrapping ErrNotSupported.
func (c *Conn) UnixFile(uint64) (UnixFile, bool, error) {
	return UnixFile{}, false, errOS("sock_diag")
}

func errOS(what string) error {
	return fmt.Errorf("%s: %w on %s: it is Linux only", what, ErrNotSupported, runtime.GOOS)
}
