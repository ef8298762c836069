package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/capture"
	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/outbuf"
	"github.com/baton-dev/baton/internal/spawn"
	"github.com/baton-dev/baton/internal/supervisor"
	"github.com/baton-dev/baton/internal/takeover"
)

func newRunCmd() *cobra.Command {
	var flags config.Settings
	var configPath, takeoverPath string
	c := &cobra.Command{
		Use:   "run [flags] [--config FILE] -- COMMAND [ARGS...]",
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
?mode=0660 and ?owner=USER[:GROUP] (unix socket files), ?balance=shared|reuseport.

--config FILE reads every setting from a TOML file (docs/config.md); each flag
has a key of the same name, and a flag given on the command line wins. A
reload re-reads the file: listeners that did not change keep their socket.

A worker that crashes, or cannot start, is restarted in its slot with
exponential backoff (100ms doubling to 30s). When a worker exits, what it
started and left running gets its stop signal, and SIGKILL at its drain
deadline. If baton dies, every worker receives the stop signal.

Signals:
` + signalHelp(),
		Example: `  baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- ./server
  baton run --config /etc/baton/web.toml
  baton run -l tcp://:9000 --fd0 tcp -- ./fastcgi-app
  baton run -l web=tcp://:80 -l admin=unix:///run/app/admin.sock?mode=0660 --user www-data -- python3 app.py`,
		RunE: func(c *cobra.Command, args []string) error { return run(c, configPath, takeoverPath, &flags, args) },
	}
	fl := c.Flags()
	fl.SetInterspersed(false)
	fl.StringVarP(&configPath, "config", "c", "", "read the settings from this TOML file; flags given on the command line override it")
	fl.StringVar(&takeoverPath, "takeover", "", "take the listeners over from the baton whose control socket is PATH; it drains and exits once these workers are ready")
	config.Register(fl, &flags)
	return c
}

// load reads the configuration (file and flags) and validates it; every
// error in what the user wrote is a usage error.
func load(configPath string, flags *config.Settings, fs *pflag.FlagSet, args []string) (*config.Resolved, error) {
	l, err := config.Load(configPath, flags, fs, args)
	if err != nil {
		return nil, &usageError{err}
	}
	r, err := l.Resolve()
	if err != nil {
		return nil, &usageError{err}
	}
	return r, nil
}

// newLogger is baton's log, in format at level, written to w.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("log level %q: want debug, info, warn or error", level)
	}
	return slog.New(logHandler(w, format, &slog.HandlerOptions{Level: lv})), nil
}

func logHandler(w io.Writer, format string, opts *slog.HandlerOptions) slog.Handler {
	if format == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// output is baton's stdout and stderr behind outbuf Writers: neither
// baton's log nor its workers' lines ever wait for whoever reads them
// (a stopped `| tee`, a log driver that blocks); what does not fit in
// their 1 MiB is dropped, counted in status, and reported by a warning
// in the log's format once the reader reads again.
type output struct{ stdout, stderr *outbuf.Writer }

// flushOnExit bounds how long baton, exiting, waits for its output to
// be read: a stopped reader must not keep it from exiting.
const flushOnExit = time.Second

func newOutput(format string) *output {
	notice := func(d outbuf.Drop) []byte {
		var b bytes.Buffer
		r := slog.NewRecord(time.Now(), slog.LevelWarn, "baton's output lines were dropped: nothing read them", 0)
		r.AddAttrs(slog.String("output", d.Name), slog.Int64("lines", d.Lines), slog.Time("since", d.Since), slog.String("reason", d.Reason()))
		logHandler(&b, format, nil).Handle(context.Background(), r)
		return b.Bytes()
	}
	if sameFile(os.Stdout, os.Stderr) {
		// One file (2>&1, the journal's stream): one buffer, so that lines
		// keep their order and never interleave.
		both := outbuf.New("stdout and stderr", os.Stderr, outbuf.Options{Notice: notice})
		return &output{stdout: both.Alias(os.Stdout), stderr: both}
	}
	return &output{
		stdout: outbuf.New("stdout", os.Stdout, outbuf.Options{Notice: notice}),
		stderr: outbuf.New("stderr", os.Stderr, outbuf.Options{Notice: notice}),
	}
}

// flush writes what is buffered, waiting at most timeout (before baton
// re-executes itself, which would lose the buffers).
func (o *output) flush(timeout time.Duration) {
	o.stdout.Flush(timeout)
	if !o.stdout.Same(o.stderr) {
		o.stderr.Flush(timeout)
	}
}

// close writes what is buffered, at most flushOnExit.
func (o *output) close() {
	var wg sync.WaitGroup
	for _, w := range []*outbuf.Writer{o.stdout, o.stderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Close(flushOnExit) // nothing is left to tell if it fails
		}()
	}
	wg.Wait()
}

// sameFile reports whether a and b are the same file (device and inode),
// read with fstat on their descriptors.
func sameFile(a, b *os.File) bool {
	var sa, sb unix.Stat_t
	return fstat(a, &sa) == nil && fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func fstat(f *os.File, st *unix.Stat_t) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), st) }); err != nil {
		return err
	}
	return os.NewSyscallError("fstat", serr)
}

func run(c *cobra.Command, configPath, takeoverPath string, flags *config.Settings, args []string) error {
	// A previous baton may have re-executed itself as this binary (an
	// upgrade), or runs it to check that it could (the pre-flight).
	in, err := takeover.Inherited()
	if err != nil {
		return err
	}
	if in != nil && in.Preflight {
		return preflight(c, in, func() error {
			_, err := load(configPath, flags, c.Flags(), args)
			return err
		})
	}
	r, err := load(configPath, flags, c.Flags(), args)
	if err != nil {
		return err
	}
	var h *supervisor.Handover
	if in != nil {
		h = &supervisor.Handover{}
		if err := json.Unmarshal(in.State, h); err != nil {
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
	log, err := newLogger(out.stderr, r.LogFormat, r.LogLevel)
	if err != nil {
		return err
	}
	sd := systemdNotifier(log)
	defer sd.Close(time.Second) // STOPPING=1 and the like go out first
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

	// Taking over from a running instance: its sockets, checked against
	// this configuration, replace binding them.
	var taken *takeover.Taken
	takenCtl := -1
	if takeoverPath != "" {
		if taken, takenCtl, err = takeOver(takeoverPath, r, log); err != nil {
			return err
		}
	}

	var ctl *control.Server
	switch {
	case h != nil && h.ControlFd >= 0:
		if ctl, err = control.FromFd(h.ControlFd, h.ControlPath, log); err == nil {
			ctl.Own()
		}
	case takenCtl >= 0:
		ctl, err = control.FromFd(takenCtl, r.ControlPath, log)
	default:
		ctl, err = control.Listen(r.ControlPath, log)
	}
	if err != nil {
		taken.Abort(err.Error())
		return err
	}
	defer ctl.Close()
	ctl.ConnMethods("takeover")
	if r.ControlGID >= 0 {
		if err := ctl.AllowGroup(r.ControlGID); err != nil {
			return err
		}
	}

	// With a takeover, the old instance may hold the metrics address
	// until it has let go: the server then starts once it is free.
	obs, err := startObserver(r.Metrics, r.InspectInterval, log, taken != nil)
	if err != nil {
		taken.Abort(err.Error())
		return err
	}
	defer obs.close()
	// prev is the configuration serving now. A Prepare abandoned at its
	// deadline may still run beside the next one: prev is locked, and
	// set only when a reload to a plan has succeeded (its Apply).
	var prevMu sync.Mutex
	prev := r
	opts := supervisor.Options{
		Prepare: func(current []*listener.Group, workers int) (*supervisor.Plan, error) {
			next, err := load(configPath, flags, c.Flags(), args)
			if err != nil {
				return nil, err
			}
			prevMu.Lock()
			before := prev
			prevMu.Unlock()
			if next.Supervisor.Workers == before.Supervisor.Workers {
				next.Supervisor.Workers = workers // keep a `baton scale` the config did not overrule
			}
			warnFixed(log, before, next)
			plan, err := planListeners(next, current, log)
			if err != nil {
				return nil, err
			}
			apply := plan.Apply
			plan.Apply = func() (func(), error) {
				prevMu.Lock()
				prev = next
				prevMu.Unlock()
				if apply != nil {
					return apply()
				}
				return nil, nil
			}
			return plan, nil
		},
		Spawner:     spawn.New(),
		Log:         log,
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
		OnStopping: func() { sd.Notify("STOPPING=1") },
		BeforeExec: func() {
			sd.Flush(time.Second)
			out.flush(time.Second)
		},
	}
	opts.Inspector, opts.Events = obs.options()
	var sup *supervisor.Supervisor
	if h != nil {
		if sup, err = supervisor.Restore(h, opts); err != nil {
			return fmt.Errorf("upgrade: taking over from the previous baton: %w", err)
		}
	} else {
		var listeners []*listener.Group
		if taken != nil {
			listeners, err = taken.Listeners(r.Specs, r.Supervisor.Workers, r.Supervisor.EnableMigrateReq, log)
		} else {
			listeners, err = bindAll(r.Specs, r.Supervisor.Workers, log)
		}
		if err != nil {
			taken.Abort(err.Error())
			return err
		}
		opts.Plan = supervisor.Plan{Config: r.Supervisor, Listeners: listeners}
		if sup, err = supervisor.New(opts); err != nil {
			for _, l := range listeners {
				l.Close()
			}
			taken.Abort(err.Error())
			return err
		}
	}
	log.Info("baton running", "pid", os.Getpid(), "control", ctl.Path(), "config", configPath, "version", Version)

	if taken != nil {
		// The old instance serves the control socket until this one's
		// workers are ready and it has let go.
		opts.OnReady = commitOnReady(taken, sup, ctl, log, opts.OnReady)
		sup.SetOnReady(opts.OnReady)
	} else {
		go ctl.Serve(sup.Handle)
	}
	obs.run(sup)
	go handleSignals(sigs, sup, ctl, log)
	return sup.Run()
}

// preflight is a pre-flight run: it checks the state a running baton
// handed over and the configuration it would run with, answers the
// running baton's handshake with what it checked (or why it cannot take
// over), and changes nothing.
func preflight(c *cobra.Command, in *takeover.Inheritance, loadConfig func() error) error {
	hs, err := supervisor.CheckState(in.State)
	if err == nil {
		if err = loadConfig(); err != nil {
			err = fmt.Errorf("the configuration: %w", err)
			hs.Error = err.Error()
		}
	}
	if aerr := in.Answer(hs); aerr != nil && err == nil {
		err = aerr
	}
	if err != nil {
		return fmt.Errorf("pre-flight: %w", err)
	}
	fmt.Fprintf(c.OutOrStdout(), "pre-flight ok: %s\n", hs.Summary())
	return nil
}

// signalAction is what baton does on a signal.
type signalAction int

const (
	sigReload  signalAction = iota // a reload, as `baton reload`
	sigUpgrade                     // an upgrade, as `baton upgrade`
	// sigStop: a graceful stop; one while baton stops kills the workers.
	sigStop
	// sigDrain: a graceful stop that a repeat never turns into a kill.
	sigDrain
	sigAbort   // dump the goroutines, remove the control socket, exit
	sigLog     // ignored, and logged
	sigDebug   // ignored, logged at debug level (routine: a terminal resize)
	sigSilent  // ignored without a word (logging could raise it again)
	sigIgnored // ignored by the kernel: never delivered (signal.Ignore)
)

// signalTable is the meaning of every signal an operator may send baton.
// `baton run --help` and the README's signal table list it; a signal not
// here is one Go's runtime handles: SIGCHLD (the reaper), SIGURG and
// SIGPROF (the runtime's own), real-time signals (ignored), and the fault
// signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS), which report
// a bug in baton: it crashes with a stack dump.
var signalTable = []struct {
	sigs   []syscall.Signal
	action signalAction
	doc    string
}{
	{[]syscall.Signal{syscall.SIGHUP}, sigReload, "reload: a new generation (re-reading --config), as baton reload"},
	{[]syscall.Signal{syscall.SIGUSR2}, sigUpgrade, "upgrade: re-execute baton's binary in place, as baton upgrade"},
	{[]syscall.Signal{syscall.SIGTERM, syscall.SIGINT}, sigStop, "stop: every worker drains, baton exits 0 when they and what they left have gone; a second SIGTERM or SIGINT kills them all at once"},
	{[]syscall.Signal{syscall.SIGQUIT}, sigDrain, "graceful stop, as nginx's SIGQUIT: as SIGTERM, but a repeat never kills"},
	{[]syscall.Signal{syscall.SIGABRT}, sigAbort, "abort: goroutine stacks to stderr, the control socket removed, exit 134 at once; the workers get their stop signal (parent-death signal) and drain unsupervised"},
	{[]syscall.Signal{syscall.SIGUSR1, syscall.SIGALRM, syscall.SIGTSTP, syscall.SIGPWR, syscall.SIGVTALRM, syscall.SIGXCPU}, sigLog, "ignored, with a log line (SIGUSR1: baton logs to stderr, it has no file to reopen; SIGTSTP: baton does not suspend, its workers would run unsupervised)"},
	{[]syscall.Signal{syscall.SIGWINCH}, sigDebug, "ignored (a terminal resize), a debug log line"},
	{[]syscall.Signal{syscall.SIGPIPE, syscall.SIGXFSZ}, sigSilent, "ignored: the write fails instead (EPIPE, EFBIG)"},
	{[]syscall.Signal{syscall.SIGTTIN, syscall.SIGTTOU}, sigIgnored, "ignored: baton in a terminal's background neither stops nor blocks writing to it"},
}

// signalHelp is the signal table as `baton run --help` shows it.
func signalHelp() string {
	var b strings.Builder
	for _, e := range signalTable {
		names := make([]string, len(e.sigs))
		for i, sig := range e.sigs {
			names[i] = supervisor.SignalName(sig)
		}
		first, indent := fmt.Sprintf("  %-17s", strings.Join(names, " ")), strings.Repeat(" ", 20)
		if len(first) > 19 {
			b.WriteString(strings.TrimRight(first, " ") + "\n")
			first = indent
		}
		b.WriteString(strings.Join(wrap(e.doc, 78, first, indent), "\n") + "\n")
	}
	for _, row := range [][2]string{
		{"SIGKILL", "cannot be caught: the workers get their stop signal (parent-death signal), and the control socket file stays until the next baton removes it"},
		{"others", "SIGCHLD reaps; real-time signals are ignored; the fault signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) report a bug in baton, which crashes with a stack dump"},
	} {
		b.WriteString(strings.Join(wrap(row[1], 78, fmt.Sprintf("  %-17s", row[0]), strings.Repeat(" ", 20)), "\n") + "\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// catchSignals takes over every signal of signalTable, from now on: one
// that arrives before the supervisor runs waits for it.
func catchSignals() chan os.Signal {
	sigs := make(chan os.Signal, 16)
	for _, e := range signalTable {
		if e.action == sigIgnored {
			signal.Ignore(toOS(e.sigs)...)
		} else {
			signal.Notify(sigs, toOS(e.sigs)...)
		}
	}
	return sigs
}

func toOS(sigs []syscall.Signal) []os.Signal {
	out := make([]os.Signal, len(sigs))
	for i, s := range sigs {
		out[i] = s
	}
	return out
}

func actionOf(sig syscall.Signal) signalAction {
	for _, e := range signalTable {
		if slices.Contains(e.sigs, sig) {
			return e.action
		}
	}
	return sigSilent
}

// handleSignals gives each signal its meaning until the supervisor has
// finished.
func handleSignals(sigs chan os.Signal, sup *supervisor.Supervisor, ctl *control.Server, log *slog.Logger) {
	stopping := false
	for {
		var sig syscall.Signal
		select {
		case s := <-sigs:
			sig = s.(syscall.Signal)
		case <-sup.Done():
			return
		}
		name := supervisor.SignalName(sig)
		switch actionOf(sig) {
		case sigReload:
			sup.Reload(name)
		case sigUpgrade:
			go sup.Upgrade("", false)
		case sigStop:
			if stopping {
				log.Warn("second stop signal: killing every worker now", "signal", name)
				sup.Kill()
				continue
			}
			stopping = true
			sup.Stop(name)
		case sigDrain:
			if stopping {
				log.Info("already stopping; SIGTERM or SIGINT kills every worker now", "signal", name)
				continue
			}
			stopping = true
			sup.Stop(name)
		case sigAbort:
			abort(name, ctl, log)
		case sigLog:
			log.Info("signal ignored", "signal", name, "meaning", signalDoc(sig))
		case sigDebug:
			log.Debug("signal ignored", "signal", name)
		}
	}
}

func signalDoc(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGUSR1:
		return "none: baton logs to stderr and has no file to reopen; SIGHUP reloads, SIGUSR2 upgrades"
	case syscall.SIGTSTP:
		return "none: baton does not suspend, its workers would run unsupervised; SIGSTOP stops it if you must"
	}
	return "none"
}

// abort is SIGABRT: what an abort is for, a picture of a baton that may be
// stuck, without waiting on anything that could be: every goroutine's
// stack to stderr, the control socket removed (so that nothing is left
// behind), then exit 134 (128+SIGABRT, as a shell reports an abort). The
// workers get their stop signal from the parent-death signal as baton
// exits, and drain on their own.
func abort(name string, ctl *control.Server, log *slog.Logger) {
	// Whatever blocks below, baton exits: an abort never hangs.
	time.AfterFunc(5*time.Second, func() { os.Exit(134) })
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	fmt.Fprintf(os.Stderr, "baton: %s: aborting; the stacks of its goroutines:\n\n%s\n", name, buf)
	log.Error("aborting: the workers get their stop signal as baton exits and drain unsupervised", "signal", name)
	// Closing the listener unlinks the socket file first; Close then waits
	// for requests in progress, which a stuck loop would hold up.
	closed := make(chan struct{})
	go func() {
		ctl.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(time.Second):
	}
	os.Exit(134)
}

// warnFixed logs the settings a reload cannot change.
func warnFixed(log *slog.Logger, prev, next *config.Resolved) {
	fixed := map[string][2]string{
		"name":             {prev.Name, next.Name},
		"control":          {prev.ControlPath, next.ControlPath},
		"control_group":    {prev.ControlGroup, next.ControlGroup},
		"log_format":       {prev.LogFormat, next.LogFormat},
		"log_level":        {prev.LogLevel, next.LogLevel},
		"metrics":          {prev.Metrics, next.Metrics},
		"inspect_interval": {prev.InspectInterval.String(), next.InspectInterval.String()},
	}
	for key, v := range fixed {
		if v[0] != v[1] {
			log.Warn("this setting changed, but a reload cannot apply it: it takes effect when baton restarts", "key", key, "now", v[0], "configured", v[1])
		}
	}
}

// planListeners builds a reload's listener list: a listener whose
// specification did not change keeps its socket (same inode); one that
// differs only in what can change in place (backlog, a socket file's mode
// and owner) keeps it too, changed once the reload succeeds; a new or
// changed one gets a new socket, bound now. On an error the sockets bound
// here are closed again and nothing else has changed.
func planListeners(r *config.Resolved, current []*listener.Group, log *slog.Logger) (*supervisor.Plan, error) {
	plan := &supervisor.Plan{Config: r.Supervisor}
	var opened []*listener.Group
	var adjust []func() (func(), error)
	fail := func(err error) (*supervisor.Plan, error) {
		for _, g := range opened {
			g.Close()
		}
		return nil, err
	}
	for _, spec := range r.Specs {
		var old *listener.Group
		for _, g := range current {
			if g.Spec.Name == spec.Name {
				old = g
			}
		}
		switch {
		case old != nil && old.Spec.URL() == spec.URL():
			plan.Listeners = append(plan.Listeners, old)
		case old != nil && listener.InPlace(old.Spec, spec):
			plan.Listeners = append(plan.Listeners, old)
			adjust = append(adjust, func() (func(), error) { return old.Adjust(spec) })
			log.Info("reload: listener changes in place", "name", spec.Name, "from", old.Spec.URL(), "to", spec.URL())
		default:
			g, err := listener.OpenGroup(spec, r.Supervisor.Workers)
			if err != nil {
				for _, c := range current {
					if errors.Is(err, unix.EADDRINUSE) && c.Spec.Address() == spec.Address() {
						return fail(fmt.Errorf("listener %s: its new settings need a new socket, but listener %s still holds %s; change the address, or restart baton to change it in place: %w", spec.Name, c.Spec.Name, spec.Address(), err))
					}
				}
				return fail(fmt.Errorf("listener %s: %w", spec.Name, err))
			}
			opened = append(opened, g)
			plan.Listeners = append(plan.Listeners, g)
			log.Info("reload: new listener bound", "name", spec.Name, "address", g.Sockets()[0].Addr().String())
			if w := g.Sockets()[0].Warning; w != nil {
				log.Warn("listener's directory lets another user replace its socket file", "name", spec.Name, "err", w)
			}
		}
	}
	if len(adjust) > 0 {
		plan.Apply = func() (func(), error) {
			var commits []func()
			var errs []error
			for _, f := range adjust {
				commit, err := f()
				commits, errs = append(commits, commit), append(errs, err)
			}
			return func() {
				for _, c := range commits {
					c()
				}
			}, errors.Join(errs...)
		}
	}
	return plan, nil
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
		if w := socks[0].Warning; w != nil {
			log.Warn("listener's directory lets another user replace its socket file", "name", spec.Name, "err", w)
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

// systemdNotifier tells baton's own service manager, when there is one
// (NOTIFY_SOCKET), from a goroutine of its own: a manager that does not
// read never blocks the supervisor's loop.
func systemdNotifier(log *slog.Logger) *notify.Notifier {
	return notify.NewNotifier(os.Getenv("NOTIFY_SOCKET"), func(state string, err error) {
		log.Warn("cannot notify the service manager", "state", strings.ReplaceAll(state, "\n", " "), "err", err)
	})
}
