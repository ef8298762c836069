//go:build !linux

package notify

import (
	"fmt"
	"runtime"
	"time"
)

// sendFds refuses descriptors: baton (the one sender of descriptors to a
// service manager) runs on Linux only, and there is no systemd on
// runtime.GOOS.
func sendFds(addr, state string, fds []int, timeout time.Duration) error {
	return fmt.Errorf("passing descriptors with a notification is implemented on linux only, not on %s", runtime.GOOS)
}

// closeFds does nothing: off Linux nothing gives the Notifier
// descriptors.
func closeFds([]int) {}

// Both implementations have the same shape (rights_linux.go).
var (
	_ func(string, string, []int, time.Duration) error = sendFds
	_ func([]int)                                      = closeFds
)
