package supervisor

import "time"

// EventKind says what an Event reports.
type EventKind string

// Event kinds.
const (
	// EventReload: a reload finished. OK says whether the new generation
	// took over; Duration is how long it took; Generation is the new one.
	EventReload EventKind = "reload"
	// EventRestart: a worker that exited on its own (or missed its
	// readiness deadline) is restarted in its slot after the backoff.
	EventRestart EventKind = "restart"
	// EventExit: a worker exited. OK is true when baton had asked it to
	// stop, false when it exited on its own (a crash).
	EventExit EventKind = "exit"
	// EventHandoff: a draining worker handed Count live connections on
	// to the next generation.
	EventHandoff EventKind = "handoff"
	// EventRecycle: a slot's worker was recycled, for Reason: it exited
	// with status 0 on its own (RecycleExited) and was restarted at once,
	// or baton replaced it for its memory (RecycleMaxRSS) or its age
	// (RecycleMaxUptime).
	EventRecycle EventKind = "recycle"
)

// Why a worker exited, in EventExit's Reason.
const (
	// ExitStopped: baton asked it to stop (a reload, a stop, a recycle,
	// its readiness or drain deadline).
	ExitStopped = "stopped"
	// ExitCrashed: it exited on its own with a status other than 0, was
	// killed by a signal baton did not send, or exited 0 within
	// MinRecycleUptime of its start.
	ExitCrashed = "crashed"
	// ExitRecycled: it exited with status 0 on its own after running a
	// while: it recycled itself (MinRecycleUptime).
	ExitRecycled = "recycled"
)

// Why a slot's worker was recycled, in EventRecycle's Reason and in the
// status.
const (
	// RecycleExited: the worker exited with status 0 on its own
	// (PHP_FCGI_MAX_REQUESTS, max_requests) and was restarted at once.
	RecycleExited = "exited"
	// RecycleMaxRSS: its resident memory passed Config.MaxRSS.
	RecycleMaxRSS = "max_rss"
	// RecycleMaxUptime: it had run for Config.MaxUptime.
	RecycleMaxUptime = "max_uptime"
)

// Event is something the supervisor did, reported to Options.Events for
// counters a status snapshot does not keep (reload durations, restarts,
// exits, handoffs).
type Event struct {
	Kind       EventKind
	Slot       int
	Generation int
	OK         bool
	Duration   time.Duration
	Count      int
	// Reason says why, for EventExit (ExitStopped, ExitCrashed,
	// ExitRecycled) and EventRecycle (RecycleExited, RecycleMaxRSS,
	// RecycleMaxUptime).
	Reason string
}

// emit reports an event. It runs on the loop; Options.Events must not
// block.
func (s *Supervisor) emit(e Event) {
	if s.opts.Events != nil {
		s.opts.Events(e)
	}
}
