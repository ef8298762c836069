package instance

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/capture"
	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/logring"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
	"github.com/baton-dev/baton/internal/supervisor"
	"github.com/baton-dev/baton/internal/takeover"
	"github.com/baton-dev/baton/internal/upgrade"
	"github.com/baton-dev/baton/internal/watch"
)

// Options are what Run needs.
type Options struct {
	// Config is the configuration to run, read and validated.
	Config *config.Resolved
	// Load reads the configuration again (the file and the flags), for
	// each reload; its errors are the user's to fix, and fail the reload.
	Load func() (*config.Resolved, error)
	// ConfigPath is the configuration file, for the log; "" for flags
	// only.
	ConfigPath string
	// Takeover is the control socket of a running baton whose listeners
	// this one takes over (baton run --takeover); "" for none. It is
	// ignored after an upgrade (Inherited), which re-executes baton with
	// the argv it started with.
	Takeover string
	// Inherited is what the previous baton handed over when it
	// re-executed itself as this one (an upgrade, upgrade.Inherited);
	// nil for none. A pre-flight is Preflight's, not Run's.
	Inherited *upgrade.Inheritance
	// Version is baton's version, for the log and the metrics.
	Version string
	// Watch are files (absolute paths) whose lasting change reloads
	// (baton run --watch), once unchanged for Settle.
	Watch  []string
	Settle time.Duration
}

// Run runs baton until it stops: it takes every signal of the signal
// table over, puts its output behind buffers that never block it, binds
// the listeners (or adopts those an upgrade handed over, or takes them
// over from the running baton at o.Takeover), serves the control socket
// and runs the supervisor. It returns nil once baton has stopped
// gracefully (its workers drained), or why it could not start; a
// takeover that fails before it committed leaves the running baton
// serving, unchanged.
func Run(o Options) error {
	r := o.Config
	var h *supervisor.UpgradeState
	if o.Inherited != nil {
		h = &supervisor.UpgradeState{}
		if err := json.Unmarshal(o.Inherited.State, h); err != nil {
			return fmt.Errorf("reading the state the previous baton handed over: %w", err)
		}
	}
	// From here on no signal takes Go's default action (a stack dump, or
	// an exit that leaves the control socket behind): each has its meaning
	// once the supervisor runs, and waits for it until then.
	sigs := catchSignals()
	defer signal.Stop(sigs)
	out := newOutput(r.LogFormat)
	defer out.close() // last: everything else logs before it
	// The ring keeps baton's log and its workers' output for `baton logs`.
	ring := logring.New(logring.DefaultLimit)
	if h != nil {
		ring.Restore(h.Logs) // what the previous baton held: still readable
	}
	log, err := newLogger(io.MultiWriter(out.stderr, logring.Writer{Ring: ring, Source: logring.SourceBaton, Stream: "log"}), r.LogFormat, r.LogLevel)
	if err != nil {
		return err
	}
	sd := systemdNotifier(log)
	defer sd.Close(time.Second) // STOPPING=1 and the like go out first
	if err := prepareProcess(r, log); err != nil {
		return err
	}
	var watcher *watch.Watcher
	if len(o.Watch) > 0 {
		if watcher, err = watch.New(o.Watch, o.Settle, log); err != nil {
			return err
		}
		defer watcher.Close()
	}

	// Taking over from a running instance: its sockets, checked against
	// this configuration, replace binding them. Until it commits, every
	// failure aborts it (Abort: a no-op without a takeover), and the
	// running instance carries on. A takeover happens when the instance
	// starts, not again when it upgrades itself: the argv it re-executes
	// with still says --takeover, but the listeners are the ones the
	// previous baton handed over (h), and the instance at that path is
	// this one.
	// The sockets baton's own service manager handed it: a socket unit's,
	// or its fd store's after a restart. A takeover gets its sockets
	// from the running instance instead.
	handed, err := handedSockets(h != nil)
	if err != nil {
		return err
	}
	if len(handed) > 0 && o.Takeover != "" {
		closeHanded(handed)
		return fmt.Errorf("--takeover %s: baton was also handed %d sockets by its service manager (LISTEN_FDS); a takeover takes its sockets from the running instance: run it outside the socket-activated unit, or without --takeover", o.Takeover, len(handed))
	}

	var taken *takeover.Taken
	takenCtl := -1
	if o.Takeover != "" && h == nil {
		if taken, takenCtl, err = takeOver(o.Takeover, r, log); err != nil {
			return err
		}
	}

	ctl, err := openControl(r, h, takenCtl, log)
	if err != nil {
		taken.Abort(err.Error())
		closeHanded(handed)
		return err
	}
	defer ctl.Close()

	// With a takeover, the old instance may hold the metrics address
	// until it has let go: the server then starts once it is free.
	obs, err := startObserver(r.Metrics, r.InspectInterval, o.Version, log, taken != nil)
	if err != nil {
		taken.Abort(err.Error())
		closeHanded(handed)
		return err
	}
	defer obs.close()
	plans := &planner{load: o.Load, log: log, prev: r}
	var act *listener.Activation
	var activated []*listener.Group
	if len(handed) > 0 {
		if activated, act, err = activate(r, handed, sd, log); err != nil {
			return err
		}
	}
	// With FileDescriptorStoreMax=, the serving listeners' sockets wait
	// in the service manager across a restart of baton.
	store := newFDStore(sd.NotifyFds, storeMax(os.Getenv), act, log)
	opts := supervisor.Options{
		Prepare:     plans.prepare,
		Spawner:     spawn.New(),
		Log:         log,
		Logs:        ring,
		Stdout:      out.stdout,
		Stderr:      out.stderr,
		Args:        os.Args,
		Control:     ctl,
		OnReady:     func() { sd.Notify("READY=1") },
		OnTakenOver: func(pid int) { sd.Notify(fmt.Sprintf("MAINPID=%d", pid)) },
		OnReloading: func() {
			var ts unix.Timespec
			unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
			sd.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
		},
		OnStopping: func() {
			store.disown() // the store keeps the sockets, and so their files
			sd.Notify("STOPPING=1")
		},
		BeforeExec: func() {
			sd.Flush(time.Second)
			out.flush(time.Second)
		},
	}
	if store != nil {
		opts.OnListeners = store.sync
		log.Info("keeping the listeners in the service manager's fd store across restarts", "max", store.max)
	}
	opts.Inspector, opts.Events = obs.options()
	sup, err := newSupervisor(r, h, taken, activated, opts, log)
	if err != nil {
		taken.Abort(err.Error())
		return err
	}
	log.Info("baton running", "pid", os.Getpid(), "control", ctl.Path(), "config", o.ConfigPath, "version", o.Version)

	if taken != nil {
		// The old instance serves the control socket until this one's
		// workers are ready and it has let go.
		sup.SetOnReady(commitOnReady(taken, sup, ctl, log, opts.OnReady))
	} else {
		go ctl.Serve(sup.Handle)
	}
	obs.run(sup)
	go handleSignals(sigs, sup, ctl, log)
	if watcher != nil {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go watcher.Run(ctx, reloadOnChange(sup, log))
		log.Info("watching files: a change that lasts reloads", "paths", o.Watch, "settle", o.Settle)
	}
	return sup.Run()
}

// reloadOnChange is what a lasting change of watched files does: a
// reload, logged with what changed, whose outcome it waits for (the
// next change is looked at after it). A reload that fails (a config
// that does not validate) changed nothing: a warning says so.
func reloadOnChange(sup *supervisor.Supervisor, log *slog.Logger) func([]watch.Change) {
	return func(cs []watch.Change) {
		what := watch.Summary(cs)
		log.Info("watched files changed: reloading", "changed", what)
		if o := <-sup.Reload("watched files changed: " + what); o.Err != nil {
			log.Warn("the reload for changed files failed: nothing changed, the serving generation serves on", "changed", what, "err", o.Err)
		}
	}
}

// prepareProcess readies baton's own process before anything is bound:
// inherited descriptors close-on-exec, the descriptor limit raised for
// the fd store, and with capture_bind the kernel's support checked.
func prepareProcess(r *config.Resolved, log *slog.Logger) error {
	// Descriptors baton inherited by accident (a shell's, a CI runner's)
	// must not reach the workers: mark every one above stderr
	// close-on-exec. Those baton hands over are passed explicitly.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		log.Warn("cannot mark inherited descriptors close-on-exec; they may leak into workers", "err", err)
	}
	// Handed-off connections wait in baton's fd store: take all the room
	// the hard limit allows (workers keep the soft limit baton was given).
	if lim, err := handoff.RaiseNOFILE(); err != nil {
		log.Warn("cannot raise the descriptor limit", "err", err, "soft", lim.Soft, "hard", lim.Hard)
	} else {
		log.Debug("descriptor limit", "soft", lim.Soft, "hard", lim.Hard)
	}
	if r.Supervisor.CaptureBind {
		// Probed before anything is bound or started: a kernel or sandbox
		// without seccomp user notification fails here, with the reason.
		if err := capture.Supported(); err != nil {
			return fmt.Errorf("capture_bind (--capture-bind): %w", err)
		}
	}

	return nil
}

// openControl is the control socket: the one the previous baton handed
// over (an upgrade; this baton removes its file when it stops), the one
// taken over (takenCtl, when not -1; the running instance removes its
// file until it lets go), or a new one at r.ControlPath.
func openControl(r *config.Resolved, h *supervisor.UpgradeState, takenCtl int, log *slog.Logger) (*control.Server, error) {
	var ctl *control.Server
	var err error
	switch {
	case h != nil && h.ControlFd >= 0:
		if ctl, err = control.FromFd(h.ControlFd, h.ControlPath, log); err == nil {
			ctl.Own()
		}
	case takenCtl >= 0:
		ctl, err = control.FromFd(takenCtl, r.ControlPath, log)
	default:
		// baton creates its default directory (/run/baton, ...); a
		// directory given with --control must exist (config checked it,
		// and control.Listen refuses it if it has gone since).
		if r.ControlDefault {
			if err := control.CreateDir(filepath.Dir(r.ControlPath)); err != nil {
				return nil, err
			}
		}
		ctl, err = control.Listen(r.ControlPath, log)
	}
	if err != nil {
		return nil, err
	}
	ctl.ConnMethods(api.MethodTakeover, api.MethodLogs)
	if r.ControlGID >= 0 {
		if err := ctl.AllowGroup(r.ControlGID); err != nil {
			ctl.Close()
			return nil, err
		}
	}
	return ctl, nil
}

// newSupervisor makes the supervisor: restored from the state the
// previous baton handed over (h), or new, on the listeners taken over,
// made from the sockets the service manager handed (activated, when not
// nil), or bound here. On an error the listeners bound or adopted here
// are closed.
func newSupervisor(r *config.Resolved, h *supervisor.UpgradeState, taken *takeover.Taken, activated []*listener.Group, opts supervisor.Options, log *slog.Logger) (*supervisor.Supervisor, error) {
	if h != nil {
		sup, err := supervisor.Restore(h, opts)
		if err != nil {
			return nil, fmt.Errorf("upgrade: taking over from the previous baton: %w", err)
		}
		return sup, nil
	}
	var listeners []*listener.Group
	var err error
	switch {
	case taken != nil:
		listeners, err = taken.Listeners(r.Specs, r.Supervisor.Workers, r.Supervisor.EnableMigrateReq, log)
	case activated != nil:
		listeners = activated
	default:
		listeners, err = bindAll(r, log)
	}
	if err != nil {
		return nil, err
	}
	opts.Plan = supervisor.Plan{Config: r.Supervisor, Listeners: listeners}
	opts.TookOver = taken != nil
	sup, err := supervisor.New(opts)
	if err != nil {
		for _, l := range listeners {
			l.Close()
		}
		return nil, err
	}
	return sup, nil
}

// Preflight is a pre-flight run (in.Preflight: a running baton checks
// that this binary could take over from it): it checks the state the
// running baton handed over and, with load, the configuration it would
// run with, answers the running baton's handshake with what it checked
// (or why it cannot take over), and changes nothing. It returns the
// summary of what it checked.
func Preflight(in *upgrade.Inheritance, load func() error) (string, error) {
	hs, err := supervisor.CheckState(in.State)
	if err == nil {
		if err = load(); err != nil {
			err = fmt.Errorf("the configuration: %w", err)
			hs.Error = err.Error()
		}
	}
	if aerr := in.Answer(hs); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		return "", fmt.Errorf("pre-flight: %w", err)
	}
	return hs.Summary(), nil
}

// systemdNotifier tells baton's own service manager, when there is one
// (NOTIFY_SOCKET), from a goroutine of its own: a manager that does not
// read never blocks the supervisor's loop.
func systemdNotifier(log *slog.Logger) *notify.Notifier {
	return notify.NewNotifier(os.Getenv("NOTIFY_SOCKET"), func(state string, err error) {
		log.Warn("cannot notify the service manager", "state", strings.ReplaceAll(state, "\n", " "), "err", err)
	})
}
