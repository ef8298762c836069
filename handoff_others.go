//go:build !linux

package baton

import (
	"fmt"
	"net"
	"runtime"
)

// handoffs is empty off Linux: Handoff keeps nothing.
type handoffs struct{}

// handoff is Handoff off Linux: it refuses, and conn stays the caller's.
func (w *Worker) handoff(conn net.Conn, state []byte) error {
	return fmt.Errorf("baton.Handoff: %w: %w: handing a connection on needs baton, which runs on linux, not on %s; close the connection instead", ErrNoHandoff, ErrNotSupported, runtime.GOOS)
}

// subscribe is Adopted's subscription off Linux: the channel is closed at
// once, as when not run by baton.
func (w *Worker) subscribe() <-chan AdoptedConn {
	ch := make(chan AdoptedConn)
	close(ch)
	return ch
}
