package listener

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Inherit reads the descriptors passed to the process pid with the
// systemd socket-activation protocol: LISTEN_FDS, LISTEN_PID and
// LISTEN_FDNAMES as lookup returns them (os.LookupEnv and os.Getpid() for
// this process), the descriptors numbered from first (FirstFd).
//
// It returns nil and no error when LISTEN_FDS or LISTEN_PID is absent, or
// LISTEN_PID names another process (the variables were meant for a
// parent); an error when LISTEN_FDS is not a count or LISTEN_FDNAMES does
// not name every descriptor. Every inherited descriptor gets FD_CLOEXEC so
// that it does not leak into programs this process starts. Inherit does
// not change the environment, so calling it twice returns the same
// descriptors.
func Inherit(lookup LookupEnv, pid, first int) ([]Inherited, error) {
	pidVar, _ := lookup("LISTEN_PID")
	fds, _ := lookup("LISTEN_FDS")
	if fds == "" || pidVar == "" {
		return nil, nil
	}
	if p, err := strconv.Atoi(pidVar); err != nil || p != pid {
		return nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > 1<<16 {
		return nil, fmt.Errorf("LISTEN_FDS=%q: want a count of descriptors", fds)
	}
	var names []string
	if v, ok := lookup("LISTEN_FDNAMES"); ok && n > 0 {
		names = strings.Split(v, ":")
		if len(names) != n {
			return nil, fmt.Errorf("LISTEN_FDNAMES has %d names for LISTEN_FDS=%d descriptors", len(names), n)
		}
	}
	out := make([]Inherited, n)
	for i := range out {
		fd := first + i
		unix.CloseOnExec(fd)
		out[i].Fd = fd
		if names != nil {
			out[i].Name = names[i]
		}
	}
	return out, nil
}
