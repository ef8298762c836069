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
}

// emit reports an event. It runs on the loop; Options.Events must not
// block.
func (s *Supervisor) emit(e Event) {
	if s.opts.Events != nil {
		s.opts.Events(e)
	}
}
