//go:build !unix

package notify

import (
	"fmt"
	"runtime"
	"time"
)

// sendFds refuses descriptors: passing them (SCM_RIGHTS) is a unix
// feature, and there is no systemd on runtime.GOOS.
func sendFds(addr, state string, fds []int, timeout time.Duration) error {
	return fmt.Errorf("passing descriptors with a notification needs a unix system, not %s", runtime.GOOS)
}

// closeFds does nothing: no descriptor can have been passed here.
func closeFds([]int) {}

// Both implementations have the same shape (rights_unix.go).
var (
	_ func(string, string, []int, time.Duration) error = sendFds
	_ func([]int)                                      = closeFds
)
