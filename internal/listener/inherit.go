package listener

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// FirstFd is the first descriptor of the socket-activation protocol
// (SD_LISTEN_FDS_START).
const FirstFd = 3

// Inherited is one descriptor passed with socket activation.
type Inherited struct {
	Name string // from LISTEN_FDNAMES; "" when not given
	Fd   int
}

// Inherit reads the descriptors passed to this process with the systemd
// socket-activation protocol. It returns nil and no error when LISTEN_FDS
// is absent or LISTEN_PID names another process (the variables were meant
// for a parent). Every inherited descriptor gets FD_CLOEXEC so that it does
// not leak into programs this process starts. Inherit does not change the
// environment, so calling it twice returns the same descriptors.
func Inherit() ([]Inherited, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if fds == "" || pid == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > 1<<16 {
		return nil, fmt.Errorf("LISTEN_FDS=%q: want a count of descriptors", fds)
	}
	var names []string
	if v, ok := os.LookupEnv("LISTEN_FDNAMES"); ok {
		names = strings.Split(v, ":")
		if len(names) != n {
			return nil, fmt.Errorf("LISTEN_FDNAMES has %d names for LISTEN_FDS=%d descriptors", len(names), n)
		}
	}
	out := make([]Inherited, n)
	for i := range out {
		fd := FirstFd + i
		syscall.CloseOnExec(fd)
		out[i].Fd = fd
		if names != nil {
			out[i].Name = names[i]
		}
	}
	return out, nil
}
