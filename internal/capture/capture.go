package capture

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// EnvFD is the environment variable through which baton tells its shim
// which inherited descriptor is the shim's end of the capture socketpair
// (see Socketpair). It is internal to baton: InstallFromEnv removes it
// from the environment before the program runs.
const EnvFD = "BATON_INTERNAL_CAPTURE_FD"

// ErrNotSupported is wrapped by every error that says bind capture cannot
// work here: another operating system or architecture, a kernel without
// seccomp user notification or fd injection, or a sandbox that forbids a
// system call the mechanism needs.
var ErrNotSupported = errors.New("bind capture not supported")

// ErrNoMatch is wrapped by the Err of a Passed event when baton holds a
// socket on the port a program binds but cannot give it that socket: the
// family, address or socket type differ. The program's own bind then most
// likely fails with EADDRINUSE; the message says which listener to add.
var ErrNoMatch = errors.New("held socket does not fit this bind")

// ErrGone is the Err of a Gone event.
var ErrGone = errors.New("the process died, or a signal interrupted its bind, before baton answered")

// Listener is a socket baton holds and offers to the programs it serves.
// Serve reads the family, type, protocol and address from the socket
// itself, so they cannot disagree with it.
type Listener struct {
	Name string // listener name, reported in events
	Fd   int    // baton's descriptor; Serve works on a duplicate
}

// Action is what Serve did with one bind.
type Action string

// Actions.
const (
	// Captured: baton's socket was installed at the program's descriptor
	// and the bind answered with success.
	Captured Action = "captured"
	// Passed: the bind went ahead unchanged, as it would without baton.
	// Err is nil, or wraps ErrNoMatch when baton holds that port.
	Passed Action = "passed"
	// Gone: the caller died, or a signal interrupted its bind, before
	// the answer; a restarted bind arrives as a new notification.
	Gone Action = "gone"
	// Failed: baton could not inspect the bind (Err says why) and let it
	// go ahead unchanged.
	Failed Action = "error"
)

// Event describes one bind a program made under the filter.
type Event struct {
	Time     time.Time
	PID      int    // process (thread group) that called bind
	Fd       int    // the descriptor it bound
	Addr     string // what it asked for: "127.0.0.1:8080", "[::]:80", "/run/app.sock", "@abstract"
	Listener string // the held listener it got, when Captured
	Action   Action
	Err      error
}

func (e Event) String() string {
	addr := e.Addr
	if addr == "" {
		addr = "(address not read)"
	}
	s := fmt.Sprintf("pid %d fd %d bind %s: %s", e.PID, e.Fd, addr, e.Action)
	if e.Listener != "" {
		s += fmt.Sprintf(" (listener %q)", e.Listener)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// The *_linux.go files and capture_others.go implement the same API.
var (
	_ func(int) error                                           = InstallAndSend
	_ func() (bool, error)                                      = InstallFromEnv
	_ func(int) (int, error)                                    = ReceiveNotifFd
	_ func() (int, int, error)                                  = Socketpair
	_ func(context.Context, int, []Listener, func(Event)) error = Serve
	_ func() error                                              = Supported
)
