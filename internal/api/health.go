package api

import (
	"fmt"
	"time"
)

// Health states.
const (
	// HealthOK: every slot has a worker and no warning of severity
	// degraded is active (`baton status` exits 0).
	HealthOK = "ok"
	// HealthDegraded: a slot has no worker (its worker crashed or could
	// not start, and baton waits to restart it), or a warning of severity
	// degraded is active: a crash loop, a program that binds its own
	// port, a listener nobody accepts on (`baton status` exits 3).
	HealthDegraded = "degraded"
)

// Health says whether baton serves as configured: what the exit code of
// `baton status` tells a monitor.
type Health struct {
	// State is HealthOK or HealthDegraded.
	State string `json:"state"`
	// Reasons says what degrades the service, a short line each ("slot 0:
	// no worker, restarting in 1.6s (5 restarts)", "crash_loop: slot 0");
	// empty when the state is ok. The warnings (kernel.warnings) say why
	// and what to do.
	Reasons []string `json:"reasons,omitempty"`
}

// Degraded reports whether the state is HealthDegraded.
func (h Health) Degraded() bool { return h.State == HealthDegraded }

// HealthOf judges a status: degraded when a slot of the serving
// generation is in backoff, or when the kernel's view (if the status has
// it) holds a warning of severity degraded. A baton that is stopping is
// not degraded: its slots are stopped on purpose. It is a pure function
// of st, so that a client judges a status from an older baton the same
// way.
func HealthOf(st *Status) Health {
	h := Health{State: HealthOK}
	if !st.Stopping {
		for _, sl := range st.SlotStates {
			if sl.State != SlotBackoff {
				continue
			}
			r := fmt.Sprintf("slot %d: no worker", sl.Slot)
			if !sl.NextStart.IsZero() {
				r += ", restarting in " + time.Duration(sl.NextIn).Round(100*time.Millisecond).String()
			}
			h.Reasons = append(h.Reasons, r+fmt.Sprintf(" (%d restarts)", sl.Restarts))
		}
	}
	if st.Kernel != nil {
		for _, w := range st.Kernel.Warnings {
			sev := w.Severity
			if sev == "" {
				sev = w.Code.Severity()
			}
			if sev != SeverityDegraded {
				continue
			}
			r := string(w.Code)
			switch {
			case w.Listener != "":
				r += ": listener " + w.Listener
			case w.Slot != nil:
				r += fmt.Sprintf(": slot %d", *w.Slot)
			}
			h.Reasons = append(h.Reasons, r)
		}
	}
	if len(h.Reasons) > 0 {
		h.State = HealthDegraded
	}
	return h
}
