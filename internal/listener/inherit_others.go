//go:build !linux

package listener

import (
	"fmt"
	"runtime"
)

// Inherit is implemented on Linux only; elsewhere it returns an error
// (the worker library binds its own sockets there instead of calling it).
func Inherit(lookup LookupEnv, pid, first int) ([]Inherited, error) {
	return nil, fmt.Errorf("socket activation (LISTEN_FDS) is implemented on linux only, not on %s", runtime.GOOS)
}
