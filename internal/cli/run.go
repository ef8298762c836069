package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/capture"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
	"github.com/baton-dev/baton/internal/supervisor"
)

type runFlags struct {
	control      controlFlags
	listen       []string
	workers      int
	ready        string
	readyTimeout time.Duration
	stopSignal   string
	drainTimeout time.Duration
	fd0          string
	logPrefix    bool
	balance      string
	migrateReq   bool
	captureBind  bool
	stopIdle     time.Duration
	logFormat    string
	logLevel     string
	env          []string
	observe      observeFlags
}

func newRunCmd() *cobra.Command {
	var f runFlags
	c := &cobra.Command{
		Use:   "run [flags] -- COMMAND [ARGS...]",
		Short: "Bind the listeners and run N workers of COMMAND on them",
		Long: `Bind every listener once, then run --workers copies of COMMAND, each of
which receives the listeners as fds 3, 4, ... in the order given, with
LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set (the systemd socket-activation
protocol) and NOTIFY_SOCKET, BATON_SOCKET, BATON_SLOT, BATON_GENERATION.

Listener addresses, --listen [NAME=]ADDRESS (repeatable):
  tcp://HOST:PORT  tcp4://HOST:PORT  tcp6://[::1]:PORT
  udp://HOST:PORT  udp4://HOST:PORT  udp6://[::1]:PORT
  unix:///absolute/path.sock  unix://@abstract  unixgram:///absolute/path
Port 0 picks a free port (see baton status). The name defaults to the scheme.
Options go in query form: ?backlog=N (stream), ?v6only=true|false (IPv6),
?mode=0660 and ?owner=USER[:GROUP] (unix socket files).

Signals: SIGHUP reloads; SIGTERM or SIGINT stops gracefully (a second one
kills the workers at once). A worker that crashes is restarted in its slot
with exponential backoff (100ms doubling to 30s). If baton dies, every worker
receives the stop signal.`,
		Example: `  baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- ./server
  baton run -l tcp://:9000 --fd0 tcp -- ./fastcgi-app
  baton run -l web=tcp://:80 -l admin=unix:///run/app/admin.sock?mode=0660 -- python3 app.py`,
		RunE: func(c *cobra.Command, args []string) error { return run(c, f, args) },
	}
	fl := c.Flags()
	fl.SetInterspersed(false)
	f.control.register(c)
	fl.StringArrayVarP(&f.listen, "listen", "l", nil, "listener [NAME=]ADDRESS, repeatable (see above)")
	fl.IntVarP(&f.workers, "workers", "n", runtime.NumCPU(), "number of worker processes (slots)")
	fl.StringVar(&f.ready, "ready", "delay:1s", "when a worker is ready: notify (READY=1 on NOTIFY_SOCKET), bind (with --capture-bind: it bound every listener) or delay:DURATION")
	fl.DurationVar(&f.readyTimeout, "ready-timeout", 60*time.Second, "with --ready notify: how long a worker may take to send READY=1")
	fl.StringVar(&f.stopSignal, "stop-signal", "TERM", "signal that asks a worker to drain and exit")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "how long a stopping worker may drain before it is killed")
	fl.DurationVar(&f.stopIdle, "stop-when-idle", 0, "hold the stop signal until the worker holds no connection on the TCP listeners (checked with it frozen), at most this long: for programs that die on the stop signal")
	fl.StringVar(&f.fd0, "fd0", "", "also pass listener NAME as fd 0 (the FastCGI convention)")
	fl.StringVar(&f.balance, "balance", listener.Shared, "default for TCP/UDP listeners without ?balance=: shared (one socket for all workers) or reuseport (one SO_REUSEPORT socket per slot)")
	fl.BoolVar(&f.captureBind, "capture-bind", false, "run unmodified programs that bind their own port: their bind(2) of a listener's address gets baton's socket (seccomp user notification; see docs/capture-bind.md)")
	fl.BoolVar(&f.migrateReq, "enable-migrate-req", false, "let a scale-down set net.ipv4.tcp_migrate_req=1 (root), so closing a reuseport slot's socket moves its queue to the other slots")
	fl.BoolVar(&f.logPrefix, "log-prefix", true, "prefix worker output lines with [gGEN sSLOT PID]; false passes it through raw")
	fl.StringVar(&f.logFormat, "log-format", "text", "baton's log format: text or json")
	fl.StringVar(&f.logLevel, "log-level", "info", "baton's log level: debug, info, warn or error")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "KEY=VALUE added to the workers' environment, repeatable")
	f.observe.register(fl)
	return c
}

// runConfig is everything `baton run` needs, validated.
type runConfig struct {
	specs   []listener.Spec
	sup     supervisor.Config
	control string
	log     *slog.Logger
}

// validate checks every flag and the command before anything is bound or
// started; each error is a usage error.
func (f runFlags) validate(args []string) (runConfig, error) {
	var rc runConfig
	if len(args) == 0 {
		return rc, usagef("no command: give the worker command after --, for example: baton run -l tcp://127.0.0.1:8080 -- ./server")
	}
	if f.balance != listener.Shared && f.balance != listener.Reuseport {
		return rc, usagef("--balance %q: want %s or %s", f.balance, listener.Shared, listener.Reuseport)
	}
	for _, l := range f.listen {
		spec, err := listener.Parse(l)
		if err != nil {
			return rc, &usageError{err}
		}
		if spec.Balance == "" && spec.IsInet() {
			spec.Balance = f.balance
		}
		rc.specs = append(rc.specs, spec)
	}
	if err := listener.CheckNames(rc.specs); err != nil {
		return rc, &usageError{err}
	}
	if f.workers < 1 || f.workers > 4096 {
		return rc, usagef("--workers %d: want 1 to 4096", f.workers)
	}
	ready, err := supervisor.ParseReady(f.ready)
	if err != nil {
		return rc, &usageError{err}
	}
	if ready.Bind && !f.captureBind {
		return rc, usagef("--ready bind needs --capture-bind: without it baton does not see the program's binds")
	}
	sig, err := supervisor.ParseSignal(f.stopSignal)
	if err != nil {
		return rc, usagef("--stop-signal: %w", err)
	}
	if f.stopIdle < 0 || f.stopIdle > f.drainTimeout {
		return rc, usagef("--stop-when-idle %s: want 0 (off) up to the drain timeout (%s)", f.stopIdle, f.drainTimeout)
	}
	if f.readyTimeout <= 0 || f.drainTimeout <= 0 {
		return rc, usagef("--ready-timeout and --drain-timeout must be positive durations such as 30s")
	}
	if f.fd0 != "" {
		found := false
		for _, s := range rc.specs {
			found = found || s.Name == f.fd0
		}
		if !found {
			return rc, usagef("--fd0 %s: no listener has that name; name one with -l %s=ADDRESS", f.fd0, f.fd0)
		}
	}
	for _, kv := range f.env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return rc, usagef("--env %q: want KEY=VALUE", kv)
		}
	}
	if err := f.observe.validate(); err != nil {
		return rc, err
	}
	if rc.log, err = newLogger(f.logFormat, f.logLevel); err != nil {
		return rc, err
	}
	path, err := resolveCommand(args[0])
	if err != nil {
		return rc, err
	}
	if rc.control, err = f.control.socketPath(); err != nil {
		return rc, err
	}
	rc.sup = supervisor.Config{
		Path: path, Args: args, Env: f.env,
		Workers: f.workers, Ready: ready, ReadyTimeout: f.readyTimeout,
		StopSignal: sig, DrainTimeout: f.drainTimeout,
		Fd0: f.fd0, LogPrefix: f.logPrefix, EnableMigrateReq: f.migrateReq, CaptureBind: f.captureBind, StopWhenIdle: f.stopIdle,
	}
	return rc, nil
}

// resolveCommand finds the worker command as the shell would and makes
// its path absolute.
func resolveCommand(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		switch {
		case errors.Is(err, exec.ErrNotFound) && !strings.Contains(name, "/"):
			return "", usagef("command %q not found in PATH: give its path (./%s) or install it", name, name)
		case errors.Is(err, os.ErrNotExist):
			return "", usagef("command %s: no such file", name)
		case errors.Is(err, os.ErrPermission), errors.Is(err, exec.ErrNotFound):
			return "", usagef("command %s is not an executable file: check the path, or chmod +x it", name)
		}
		return "", usagef("command %s: %w", name, err)
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return "", usagef("command %s is a directory", name)
	}
	return filepath.Abs(path)
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", format)
}

func run(c *cobra.Command, f runFlags, args []string) error {
	rc, err := f.validate(args)
	if err != nil {
		return err
	}
	log := rc.log
	// Descriptors baton inherited by accident (a shell's, a CI runner's)
	// must not reach the workers: mark every one above stderr
	// close-on-exec. Those baton hands over are passed explicitly.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		log.Warn("cannot mark inherited descriptors close-on-exec; they may leak into workers", "err", err)
	}

	if rc.sup.CaptureBind {
		// Probed before anything is bound or started: a kernel or sandbox
		// without seccomp user notification fails here, with the reason.
		if err := capture.Supported(); err != nil {
			return fmt.Errorf("--capture-bind: %w", err)
		}
	}

	ctl, err := control.Listen(rc.control, log)
	if err != nil {
		return err
	}
	defer ctl.Close()

	listeners, err := bindAll(rc.specs, rc.sup.Workers, log)
	if err != nil {
		return err
	}
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()

	obs, err := f.observe.start(log)
	if err != nil {
		return err
	}
	defer obs.close()
	inspector, events := obs.options()
	sup, err := supervisor.New(supervisor.Options{
		Config:    rc.sup,
		Listeners: listeners,
		Spawner:   spawn.New(),
		Log:       log,
		Stdout:    os.Stdout,
		Stderr:    os.Stderr,
		OnReady:   func() { tellSystemd(log, "READY=1") },
		OnReloading: func() {
			var ts unix.Timespec
			unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
			tellSystemd(log, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
		},
		OnStopping: func() { tellSystemd(log, "STOPPING=1") },
		Inspector:  inspector,
		Events:     events,
	})
	if err != nil {
		return err
	}
	log.Info("baton running", "pid", os.Getpid(), "control", rc.control, "version", Version)

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPIPE)
	defer signal.Stop(sigs)
	go ctl.Serve(sup.Handle)
	obs.run(sup)
	go func() {
		stops := 0
		for {
			select {
			case sig := <-sigs:
				switch sig {
				case syscall.SIGHUP:
					sup.Reload("SIGHUP")
				case syscall.SIGTERM, syscall.SIGINT:
					stops++
					if stops == 1 {
						sup.Stop(supervisor.SignalName(sig.(syscall.Signal)))
					} else {
						log.Warn("second stop signal: killing every worker now", "signal", sig)
						sup.Kill()
					}
				}
			case <-sup.Done():
				return
			}
		}
	}()
	return sup.Run()
}

// bindAll binds every listener (one socket per slot for reuseport ones),
// or none: on an error the sockets already bound are closed.
func bindAll(specs []listener.Spec, slots int, log *slog.Logger) ([]*listener.Group, error) {
	var out []*listener.Group
	for _, spec := range specs {
		g, err := listener.OpenGroup(spec, slots)
		if err != nil {
			for _, b := range out {
				b.Close()
			}
			return nil, err
		}
		socks := g.Sockets()
		if socks[0].StaleRemoved {
			log.Info("removed a stale socket file nothing answered on", "path", spec.Path)
		}
		attrs := []any{"name", spec.Name, "address", socks[0].Addr().String(), "kind", spec.Kind, "backlog", socks[0].Backlog()}
		if g.Reuseport() {
			attrs = append(attrs, "balance", listener.Reuseport, "sockets", len(socks))
			if spec.Kind == listener.Stream {
				if err := listener.MigrateReq(false); err != nil {
					log.Info("a scale-down will need net.ipv4.tcp_migrate_req=1 (or --enable-migrate-req) to close a slot's socket without resetting its queue", "listener", spec.Name)
				}
			}
		} else {
			attrs = append(attrs, "inode", socks[0].Inode())
		}
		log.Info("listening", attrs...)
		out = append(out, g)
	}
	return out, nil
}

// tellSystemd notifies baton's own supervisor, when there is one.
func tellSystemd(log *slog.Logger, state string) {
	if sent, err := notify.Notify(state); err != nil {
		log.Warn("cannot notify the service manager", "err", err)
	} else if sent {
		log.Debug("notified the service manager", "state", state)
	}
}
