//go:build !linux

package sockdiag

// Owners returns an error wrapping ErrNotSupported.
func Owners(pids ...int) (map[uint64][]Owner, error) { return nil, errOS("socket owners") }

// FDUsage returns an error wrapping ErrNotSupported.
func FDUsage(pid int) (open int, soft, hard uint64, err error) {
	return 0, 0, 0, errOS("fd usage")
}

// ReadNetstat returns an error wrapping ErrNotSupported.
func ReadNetstat() (map[string]map[string]int64, error) { return nil, errOS("netstat counters") }

// ReadSockstat returns an error wrapping ErrNotSupported.
func ReadSockstat() (map[string]map[string]int64, error) { return nil, errOS("sockstat counters") }
