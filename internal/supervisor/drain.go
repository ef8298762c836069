package supervisor

import (
	"fmt"
	"time"
)

// How a worker is stopped. A program that catches its stop signal drains
// on it (stops accepting, finishes what it accepted, exits). A program
// that does not would die on it at once, with whatever it had accepted
// and not yet answered: python3 -m http.server, most programs written
// with no thought of a graceful stop. baton can tell the two apart
// without asking: /proc/PID/status lists the signals a process catches
// (SigCgt), ignores (SigIgn) and blocks (SigBlk). It reads them when the
// worker is ready and at each sample (sample.go), and for a worker that
// would die on the signal it uses the freeze-and-check drain of
// --stop-when-idle (quiesce.go) by default: the signal goes only once the
// worker's process group, frozen with SIGSTOP, holds no connection on
// baton's TCP listeners, for at most the drain timeout. --stop-when-idle D
// still asks for that drain for every worker, catching or not, for at
// most D.

// DrainMode is how baton stops a worker.
type DrainMode string

// Drain modes, as the status shows them.
const (
	// DrainSignal: the stop signal at once; the worker drains on it.
	DrainSignal DrainMode = "signal"
	// DrainWhenIdle: the stop signal once the worker holds no
	// connection on baton's TCP listeners (checked while its process
	// group is frozen), or at the bound.
	DrainWhenIdle DrainMode = "when-idle"
)

// drainMode is how a worker is, or would be, stopped, and why.
type drainMode struct {
	mode  DrainMode
	why   string
	bound time.Duration // DrainWhenIdle: the longest the signal waits
}

// sigDisposition is what a worker's stop signal does to it.
type sigDisposition uint8

// Dispositions of a stop signal.
const (
	// sigUnknown: baton has not read /proc/PID/status yet (it does once
	// the worker is ready), or could not.
	sigUnknown sigDisposition = iota
	// sigDefault: no handler, and the default action ends the process.
	sigDefault
	// sigCaught: the process has a handler for it (SigCgt).
	sigCaught
	// sigIgnored: the process ignores it (SigIgn).
	sigIgnored
	// sigBlocked: the process blocks it (SigBlk), to take it with
	// sigwait(3) or a signalfd.
	sigBlocked
	// sigHarmless: no handler, and the default action does not end the
	// process (SIGWINCH, SIGCONT, SIGSTOP, ...).
	sigHarmless
	// sigPassed: no handler, and the default action ends the process,
	// but a process it started, in its process group, handles it (a
	// #!/bin/sh wrapper that runs its server without exec): the worker
	// dies at once and what it leaves gets the signal too (leftovers.go),
	// and drains on it.
	sigPassed
)

// String is the disposition as the status shows it.
func (d sigDisposition) String() string {
	switch d {
	case sigDefault:
		return "default"
	case sigCaught:
		return "caught"
	case sigIgnored:
		return "ignored"
	case sigBlocked:
		return "blocked"
	case sigHarmless:
		return "harmless"
	case sigPassed:
		return "passed"
	}
	return ""
}

// chooseDrain says how a worker of cfg whose stop signal does d to it is
// stopped; tcp says whether its generation has TCP listeners, on which
// alone baton can watch connections.
func chooseDrain(cfg *Config, tcp bool, d sigDisposition) drainMode {
	sig := SignalName(cfg.StopSignal)
	switch {
	case !tcp:
		return drainMode{mode: DrainSignal, why: fmt.Sprintf("%s at once: baton can wait for a worker to be idle on TCP listeners only", sig)}
	case cfg.StopWhenIdle > 0:
		return drainMode{mode: DrainWhenIdle, bound: cfg.StopWhenIdle,
			why: fmt.Sprintf("--stop-when-idle %s: %s once it holds no connection (checked while it is frozen), at most %s after the stop", cfg.StopWhenIdle, sig, cfg.StopWhenIdle)}
	case d == sigDefault:
		return drainMode{mode: DrainWhenIdle, bound: cfg.DrainTimeout,
			why: fmt.Sprintf("it has no handler for %s, which would end it at once (/proc/PID/status SigCgt): %s once it holds no connection (checked while it is frozen), at most the drain timeout (%s) after the stop", sig, sig, cfg.DrainTimeout)}
	case d == sigPassed:
		return drainMode{mode: DrainSignal, why: fmt.Sprintf("it dies on %s, but a process it started, in its process group, handles it: %s at once, and what the worker leaves gets %s too and drains on it", sig, sig, sig)}
	case d == sigCaught:
		return drainMode{mode: DrainSignal, why: fmt.Sprintf("it catches %s (SigCgt) and drains on it", sig)}
	case d == sigBlocked:
		return drainMode{mode: DrainSignal, why: fmt.Sprintf("it blocks %s (SigBlk), to take it with sigwait or a signalfd, and drains on it", sig)}
	case d == sigIgnored:
		return drainMode{mode: DrainSignal, why: fmt.Sprintf("it ignores %s (SigIgn): it is killed at the drain timeout (%s); set --stop-signal to one it handles", sig, cfg.DrainTimeout)}
	case d == sigHarmless:
		return drainMode{mode: DrainSignal, why: fmt.Sprintf("%s's default action does not end it: it is killed at the drain timeout (%s) unless it exits on its own", sig, cfg.DrainTimeout)}
	}
	return drainMode{mode: DrainSignal, why: fmt.Sprintf("%s at once: baton had not read how the worker handles it yet (it does once the worker is ready)", sig)}
}
