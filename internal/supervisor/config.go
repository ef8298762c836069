package supervisor

import (
	"fmt"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/spawn"
)

// ReadyMode says when a starting worker counts as ready.
type ReadyMode struct {
	// Notify waits for READY=1 on NOTIFY_SOCKET; Bind (with bind capture)
	// waits until the program has bound every listener; otherwise a
	// worker is ready once it has stayed up for Delay.
	Notify bool
	Bind   bool
	Delay  time.Duration
}

// ParseReady parses "notify", "bind" or "delay:DURATION".
func ParseReady(s string) (ReadyMode, error) {
	switch s {
	case "notify":
		return ReadyMode{Notify: true}, nil
	case "bind":
		return ReadyMode{Bind: true}, nil
	}
	if d, ok := strings.CutPrefix(s, "delay:"); ok {
		dur, err := time.ParseDuration(d)
		if err == nil && dur >= 0 {
			return ReadyMode{Delay: dur}, nil
		}
	}
	return ReadyMode{}, fmt.Errorf("%q: want notify (wait for READY=1 on NOTIFY_SOCKET), bind (with --capture-bind: wait until the program has bound every listener) or delay:DURATION (for example delay:1s)", s)
}

func (r ReadyMode) String() string {
	switch {
	case r.Notify:
		return "notify"
	case r.Bind:
		return "bind"
	}
	return "delay:" + r.Delay.String()
}

// deadline reports whether the mode has a readiness deadline (the
// ready timeout); delay has none, it only waits.
func (r ReadyMode) deadline() bool { return r.Notify || r.Bind }

// ParseSignal parses a signal name ("TERM", "SIGQUIT") or number.
func ParseSignal(s string) (syscall.Signal, error) {
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err == nil && n > 0 && n < 65 && fmt.Sprint(n) == s {
		return syscall.Signal(n), nil
	}
	return 0, fmt.Errorf("signal %q: want a name such as TERM, QUIT, INT or a number", s)
}

// SignalName is the conventional name of sig ("SIGTERM").
func SignalName(sig syscall.Signal) string {
	if n := unix.SignalName(sig); n != "" {
		return n
	}
	return fmt.Sprintf("signal %d", int(sig))
}

// Config is what the supervisor runs. Listener sockets are given
// separately, already bound.
type Config struct {
	// Path is the resolved command; Args its argv (Args[0] as the user
	// wrote it).
	Path string
	Args []string
	// Env is added to baton's own environment for every worker.
	Env []string
	// Dir is the workers' working directory; empty means baton's.
	Dir string

	Workers      int
	Ready        ReadyMode
	ReadyTimeout time.Duration
	StopSignal   syscall.Signal
	DrainTimeout time.Duration
	// Fd0 names a listener also handed over as fd 0 (the FastCGI
	// convention).
	Fd0 string
	// User, when set, is the identity workers run as (baton as root);
	// Nofile, when not 0, their RLIMIT_NOFILE.
	User   *spawn.Credential
	Nofile uint64
	// StopWhenIdle, when positive, holds the stop signal back until the
	// worker holds no connection on baton's TCP listeners (checked while
	// it is stopped with SIGSTOP, so it cannot accept one in between), for
	// at most this long: for programs that die on the stop signal.
	StopWhenIdle time.Duration
	// CaptureBind starts workers under a seccomp filter that hands their
	// bind(2) calls to baton, which installs its held socket when the
	// address matches a listener: unmodified programs share baton's
	// sockets.
	CaptureBind bool
	// EnableMigrateReq lets a scale-down set net.ipv4.tcp_migrate_req=1
	// when it is off, so closing a reuseport slot's socket moves its
	// queued connections to the other slots instead of resetting them.
	EnableMigrateReq bool
	// LogPrefix prefixes each line of worker output with generation, slot
	// and pid; without it workers write to baton's stdout and stderr
	// directly.
	LogPrefix bool
}

// Restart backoff for crashed workers: the first restart waits MinBackoff,
// each further one twice as long up to MaxBackoff; a worker that stayed up
// for StableAfter resets the slot's backoff.
const (
	MinBackoff  = 100 * time.Millisecond
	MaxBackoff  = 30 * time.Second
	StableAfter = 10 * time.Second
)
