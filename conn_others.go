//go:build !linux

package baton

import (
	"fmt"
	"runtime"
)

// shutdown is not reached off Linux, where no Conn is ever made (Adopted
// delivers none).
func (c *Conn) shutdown(op string, how shutdownHow) error {
	return c.opError(op, fmt.Errorf("adopted connections are implemented on linux only, not on %s", runtime.GOOS))
}

// readAddrs leaves the addresses nil off Linux, where no Conn is made.
func (c *Conn) readAddrs() {}
