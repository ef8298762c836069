package supervisor

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/spawn"
)

// ReadyKind is how a worker tells baton it is ready.
type ReadyKind uint8

// Ready kinds. The zero value is ReadyDelay, as the zero ReadyMode is
// delay:0s.
const (
	// ReadyDelay: a worker that has stayed up for the mode's delay is
	// ready (delay:DURATION).
	ReadyDelay ReadyKind = iota
	// ReadyNotify: a worker is ready when it sends READY=1 on
	// NOTIFY_SOCKET (notify).
	ReadyNotify
	// ReadyBind: a worker is ready when, under --capture-bind, it has
	// bound every listener (bind).
	ReadyBind
)

// ReadyMode says when a starting worker counts as ready, and how long it
// is given (Deadline). Make one with ParseReady, ReadyWhenNotified,
// ReadyWhenBound or ReadyAfter; the zero value is delay:0s.
type ReadyMode struct {
	kind  ReadyKind
	delay time.Duration // ReadyDelay only
}

// ReadyWhenNotified is the notify mode: ready on READY=1.
func ReadyWhenNotified() ReadyMode { return ReadyMode{kind: ReadyNotify} }

// ReadyWhenBound is the bind mode: ready once every listener is bound
// (with bind capture).
func ReadyWhenBound() ReadyMode { return ReadyMode{kind: ReadyBind} }

// ReadyAfter is the delay:d mode: ready once up for d. A negative d
// counts as 0.
func ReadyAfter(d time.Duration) ReadyMode { return ReadyMode{kind: ReadyDelay, delay: max(d, 0)} }

// ParseReady parses "notify", "bind" or "delay:DURATION".
func ParseReady(s string) (ReadyMode, error) {
	switch s {
	case "notify":
		return ReadyWhenNotified(), nil
	case "bind":
		return ReadyWhenBound(), nil
	}
	if d, ok := strings.CutPrefix(s, "delay:"); ok {
		dur, err := time.ParseDuration(d)
		if err == nil && dur >= 0 {
			return ReadyAfter(dur), nil
		}
	}
	return ReadyMode{}, fmt.Errorf("%q: want notify (wait for READY=1 on NOTIFY_SOCKET), bind (with --capture-bind: wait until the program has bound every listener) or delay:DURATION (for example delay:1s)", s)
}

// Kind says how a worker in this mode tells baton it is ready.
func (r ReadyMode) Kind() ReadyKind { return r.kind }

// String is the mode as ParseReady reads it ("notify", "bind",
// "delay:1s").
func (r ReadyMode) String() string {
	switch r.kind {
	case ReadyNotify:
		return "notify"
	case ReadyBind:
		return "bind"
	}
	return "delay:" + r.delay.String()
}

// Deadline says how long after its start a worker in this mode is given
// to become ready, readyTimeout being --ready-timeout. With notify and
// bind that is readyTimeout, and strict is true: a worker still starting
// then has missed its deadline (a reload fails, a serving slot restarts).
// With delay:D it is D, and strict is false: a worker still up then is
// ready, and there is no deadline to miss. It is the one place that
// decides it: the supervisor arms its readiness timers from it, and a
// takeover asks the running instance to wait that long (plus the time to
// start).
func (r ReadyMode) Deadline(readyTimeout time.Duration) (d time.Duration, strict bool) {
	if r.kind == ReadyDelay {
		return r.delay, false
	}
	return readyTimeout, true
}

// awaited says what a worker in a strict mode had to do, for the error
// when it did not.
func (r ReadyMode) awaited() string {
	if r.kind == ReadyBind {
		return "bind every listener"
	}
	return "send READY=1"
}

// readyModeJSON is how a ReadyMode is encoded in the state an upgrade
// hands over (UpgradeState, StateVersion 1): the struct of flags it once was,
// so that a baton of either shape reads the other's.
type readyModeJSON struct {
	Notify bool
	Bind   bool
	Delay  time.Duration
}

// MarshalJSON encodes r as {"Notify":...,"Bind":...,"Delay":nanoseconds},
// the shape of state version 1.
func (r ReadyMode) MarshalJSON() ([]byte, error) {
	return json.Marshal(readyModeJSON{Notify: r.kind == ReadyNotify, Bind: r.kind == ReadyBind, Delay: r.delay})
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (r *ReadyMode) UnmarshalJSON(b []byte) error {
	var j readyModeJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("ready mode %s: %w", b, err)
	}
	switch {
	case j.Notify && j.Bind:
		return fmt.Errorf("ready mode %s: both notify and bind; want one of them, or neither (delay)", b)
	case j.Notify:
		*r = ReadyWhenNotified()
	case j.Bind:
		*r = ReadyWhenBound()
	default:
		if j.Delay < 0 {
			return fmt.Errorf("ready mode %s: negative delay; want 0 or more nanoseconds", b)
		}
		*r = ReadyAfter(j.Delay)
	}
	return nil
}

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
	// Handoff configures the store of handed-off connections.
	Handoff HandoffConfig
	// Rollout says how a reload to this configuration replaces the
	// serving workers: all at once (the zero value), a few slots at a
	// time, after a canary (rolling.go).
	Rollout Rollout

	// StartLimitBurst and StartLimitInterval say when a slot of a
	// generation that is coming up (a reload's) crash-loops: when
	// StartLimitBurst of its workers failed (exited with a status other
	// than 0, were killed by a signal, or exited 0 within
	// MinRecycleUptime of their start) within StartLimitInterval, the
	// reload fails. Clean exits (status 0) never count: they are a
	// program recycling itself. 0 means the default
	// (DefaultStartLimitBurst, DefaultStartLimitInterval), as systemd's
	// StartLimitBurst and StartLimitIntervalSec.
	StartLimitBurst    int           `json:",omitempty"`
	StartLimitInterval time.Duration `json:",omitempty"`
	// MaxRSS, when not 0, is the resident memory in bytes past which
	// baton replaces a serving worker (a new worker in its slot first,
	// then the old one drains); MaxUptime, when not 0, the time after
	// which it does. See recycle.go.
	MaxRSS    uint64        `json:",omitempty"`
	MaxUptime time.Duration `json:",omitempty"`
}

// startLimit is the configuration's StartLimitBurst and
// StartLimitInterval, with their defaults for 0.
func (c *Config) startLimit() (burst int, interval time.Duration) {
	burst, interval = c.StartLimitBurst, c.StartLimitInterval
	if burst <= 0 {
		burst = DefaultStartLimitBurst
	}
	if interval <= 0 {
		interval = DefaultStartLimitInterval
	}
	return burst, interval
}

// Restart backoff for crashed workers: the first restart waits MinBackoff,
// each further one twice as long up to MaxBackoff; a worker that stayed up
// for StableAfter resets the slot's backoff.
const (
	MinBackoff  = 100 * time.Millisecond
	MaxBackoff  = 30 * time.Second
	StableAfter = 10 * time.Second
)

// The crash-loop limit of a slot whose generation is coming up, when
// Config says 0: systemd's defaults for StartLimitBurst and
// StartLimitIntervalSec.
const (
	DefaultStartLimitBurst    = 5
	DefaultStartLimitInterval = 10 * time.Second
)

// MinRecycleUptime is how long a worker that was never ready must have
// run for its exit with status 0 to count as recycling itself (php-cgi
// after PHP_FCGI_MAX_REQUESTS, gunicorn's max_requests, uWSGI's
// max-requests): it is restarted at once, with no backoff. A worker that
// was ready recycles itself whenever it exits 0: readiness says it served.
// One that exits 0 sooner without having been ready gives no sign that it
// served at all: a program that daemonizes (nginx without `daemon off;`),
// or prints its usage and exits, looks like that, and its exit is a
// failure, with the backoff and the crash-loop limit. Uptime is the only
// sign baton has there: a program that reaches its request limit within
// 100ms under load, before it is ready, is taken for one that failed (the
// error says so); give it a higher limit.
const MinRecycleUptime = 100 * time.Millisecond
