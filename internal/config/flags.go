package config

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/listener"
)

// Register adds the flags of `baton run` to fs, bound to s. Each flag is
// named after its key in the config file.
func Register(fs *pflag.FlagSet, s *Settings) {
	d := Defaults()
	*s = d
	fs.StringVar(&s.Name, "name", d.Name, "instance name: picks the control socket file, so several batons can run")
	fs.StringVar(&s.Control, "control", "", "control socket path (default /run/baton/NAME.sock as root, else $XDG_RUNTIME_DIR/baton/NAME.sock, else $TMPDIR/baton-UID/NAME.sock)")
	fs.StringVar(&s.ControlGroup, "control-group", "", "let members of this group use the control socket (mode 0660)")
	fs.StringArrayVarP(&s.Listen, "listen", "l", nil, "listener [NAME=]ADDRESS, repeatable (see above)")
	fs.BoolVar(&s.NoListeners, "no-listeners", false, "run the workers without sockets (baton refuses a configuration without listeners unless this is given)")
	fs.StringVar(&s.Balance, "balance", d.Balance, "default for TCP/UDP listeners without ?balance=: shared (one socket for all workers) or reuseport (one SO_REUSEPORT socket per slot)")
	fs.StringVar(&s.Fd0, "fd0", "", "also pass listener NAME as fd 0, blocking (the FastCGI convention of spawn-fcgi: php-cgi, libfcgi)")
	fs.IntVarP(&s.Workers, "workers", "n", d.Workers, fmt.Sprintf("number of worker processes (slots) (default: one per CPU baton may run on, %d here)", d.Workers))
	// The default depends on the host (and on baton's CPU affinity): the
	// usage says so, instead of pflag's "(default N)" with the N of the
	// host that printed it.
	fs.Lookup("workers").DefValue = "0"
	fs.StringVar(&s.Ready, "ready", d.Ready, "when a worker is ready: notify (READY=1 on NOTIFY_SOCKET), bind (with --capture-bind: it bound every listener) or delay:DURATION")
	durationVar(fs, &s.ReadyTimeout, "ready-timeout", d.ReadyTimeout, "with --ready notify or bind: how long a worker may take to be ready")
	fs.StringVar(&s.StopSignal, "stop-signal", d.StopSignal, "signal that asks a worker to drain and exit")
	durationVar(fs, &s.DrainTimeout, "drain-timeout", d.DrainTimeout, "how long a stopping worker may drain before it is killed")
	durationVar(fs, &s.StopWhenIdle, "stop-when-idle", 0, "hold the stop signal until the worker holds no connection on the TCP listeners (checked with it frozen), at most this long, for every worker (0: only for workers that would die on the stop signal, which /proc says, for at most --drain-timeout)")
	fs.IntVar(&s.StartLimitBurst, "start-limit-burst", d.StartLimitBurst, "a reload fails when this many workers of one slot fail within --start-limit-interval while their generation comes up (exits 0 after 100ms are recycling, not failures)")
	durationVar(fs, &s.StartLimitInterval, "start-limit-interval", d.StartLimitInterval, "the window --start-limit-burst counts failures in")
	fs.StringVar(&s.MaxRSS, "max-rss", "", "replace a worker whose resident memory passes this (512MiB, 2GiB) once it has run 10s: a new worker in its slot first, then the old one drains")
	durationVar(fs, &s.MaxUptime, "max-uptime", 0, "replace a worker that has run this long (24h), as --max-rss does (0: never)")
	fs.BoolVar(&s.CaptureBind, "capture-bind", false, "run unmodified programs that bind their own port: their bind(2) of a listener's address gets baton's socket (seccomp user notification; see docs/capture-bind.md)")
	fs.BoolVar(&s.EnableMigrateReq, "enable-migrate-req", false, "let a scale-down set net.ipv4.tcp_migrate_req=1 (root), so closing a reuseport slot's socket moves its queue to the other slots")
	durationVar(fs, &s.HandoffTimeout, "handoff-timeout", d.HandoffTimeout, "how long a connection a worker handed off waits for a worker of the next generation to adopt it before baton closes it")
	fs.IntVar(&s.HandoffMaxState, "handoff-max-state", d.HandoffMaxState, "the most bytes of state a worker may hand off with one connection")
	fs.IntVar(&s.Rolling, "rolling", 0, "reloads replace this many slots at a time, each new worker ready before the old one drains (at most workers+K at once); 0: all at once")
	fs.IntVar(&s.Canary, "canary", 0, "reloads first replace this many slots beside their old workers and watch them for --canary-window before going on or rolling back; 0: no canary")
	durationVar(fs, &s.CanaryWindow, "canary-window", d.CanaryWindow, "how long a reload's canaries are watched once ready")
	fs.Int64Var(&s.CanaryMaxErrors, "canary-max-errors", 0, "the most errors the canaries may report (X_BATON_ERRORS) before they are rolled back")
	fs.Float64Var(&s.CanaryMaxErrorRate, "canary-max-error-rate", 0, "when set, canaries over --canary-max-errors fail only if their errors are also over this percentage of the connections they accepted")
	fs.StringVar(&s.Dir, "dir", "", "the workers' working directory (default: baton's)")
	fs.VarP((*envFlag)(&s.Env), "env", "e", "KEY=VALUE added to the workers' environment, repeatable")
	fs.StringVar(&s.User, "user", "", "run the workers as this user (baton started as root)")
	fs.StringVar(&s.Group, "group", "", "run the workers with this group (default: the user's)")
	fs.BoolVar(&s.LogPrefix, "log-prefix", d.LogPrefix, "prefix worker output lines with [gGEN sSLOT PID]; false passes it through raw")
	fs.StringVar(&s.LogFormat, "log-format", d.LogFormat, "baton's log format: text or json")
	fs.StringVar(&s.LogLevel, "log-level", d.LogLevel, "baton's log level: debug, info, warn or error")
	fs.StringVar(&s.Metrics, "metrics", "", "serve Prometheus metrics at http://HOST:PORT/metrics (:PORT for every address; see docs/metrics.md)")
	durationVar(fs, &s.InspectInterval, "inspect-interval", d.InspectInterval, "how often baton checks the kernel's view of its sockets and logs new warnings (0: only when asked); a connection that stays in CLOSE-WAIT this long counts as never closed")
}

// durationVar defines a duration flag like pflag's DurationVar, whose
// error for a value without a unit ("30") says how to write it.
func durationVar(fs *pflag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*durationFlag)(p), name, usage)
}

// durationFlag is a time.Duration flag parsed by ParseDuration.
type durationFlag time.Duration

func (d *durationFlag) Set(s string) error {
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = durationFlag(v)
	return nil
}

// String is the value as Go writes durations; "0" for none, which pflag
// takes as no default worth showing.
func (d *durationFlag) String() string {
	if *d == 0 {
		return "0"
	}
	return time.Duration(*d).String()
}

func (d *durationFlag) Type() string { return "duration" }

// envFlag is a repeatable KEY=VALUE flag.
type envFlag map[string]string

func (e *envFlag) String() string {
	keys := make([]string, 0, len(*e))
	for k := range *e {
		keys = append(keys, k+"="+(*e)[k])
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func (e *envFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE", v)
	}
	if *e == nil {
		*e = map[string]string{}
	}
	(*e)[k] = val
	return nil
}

func (e *envFlag) Type() string { return "KEY=VALUE" }

// ListenerOptionsHelp is the help of the listener options, for `baton run
// --help` (from listener's table of options).
func ListenerOptionsHelp() string { return listener.OptionsHelp() }
