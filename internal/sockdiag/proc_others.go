//go:build !linux

package sockdiag

// SocketInodes returns an error wrapping ErrNotSupported: /proc/PID/fd is
// Linux only.
func SocketInodes(pid int) (map[uint64]int, error) { return nil, errOS("socket inodes") }

// Owners returns an error wrapping ErrNotSupported.
func Owners(pids ...int) (map[uint64][]Owner, error) { return nil, errOS("socket owners") }

// AllPIDs returns an error wrapping ErrNotSupported.
func AllPIDs() ([]int, error) { return nil, errOS("process list") }

// FDUsage returns an error wrapping ErrNotSupported.
func FDUsage(pid int) (open int, soft, hard uint64, err error) {
	return 0, 0, 0, errOS("fd usage")
}

// ReadNetstat returns an error wrapping ErrNotSupported.
func ReadNetstat() (map[string]map[string]int64, error) { return nil, errOS("netstat counters") }

// ReadSockstat returns an error wrapping ErrNotSupported.
func ReadSockstat() (map[string]map[string]int64, error) { return nil, errOS("sockstat counters") }
