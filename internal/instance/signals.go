package instance

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/supervisor"
)

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

// SignalDoc is one row of the signal table, as `baton run --help` and
// the README show it: signals by name, and what baton does on them.
type SignalDoc struct {
	Names []string
	Doc   string
}

// SignalDocs lists what baton does on each signal an operator may send
// it, then on those it does not catch (SIGKILL) or leaves to Go's runtime.
func SignalDocs() []SignalDoc {
	var out []SignalDoc
	for _, e := range signalTable {
		names := make([]string, len(e.sigs))
		for i, sig := range e.sigs {
			names[i] = supervisor.SignalName(sig)
		}
		out = append(out, SignalDoc{Names: names, Doc: e.doc})
	}
	return append(out,
		SignalDoc{[]string{"SIGKILL"}, "cannot be caught: the workers get their stop signal (parent-death signal), and the control socket file stays until the next baton removes it"},
		SignalDoc{[]string{"others"}, "SIGCHLD reaps; real-time signals are ignored; the fault signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS) report a bug in baton, which crashes with a stack dump"},
	)
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

// toOS converts sigs for os/signal.
func toOS(sigs []syscall.Signal) []os.Signal {
	out := make([]os.Signal, len(sigs))
	for i, s := range sigs {
		out[i] = s
	}
	return out
}

// actionOf is what baton does on sig.
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

// signalDoc is the meaning logged for a signal baton ignores.
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
