package takeover

import "time"

// StartWithin is the time a taking-over instance has, beyond its workers'
// readiness deadline, to bind the listeners the running instance does not
// have and to start its workers.
const StartWithin = time.Minute

// CommitMargin is how much sooner the new instance gives up than the
// running one stops waiting: the new instance's verdict, a commit as well
// as an abort, must cross the control socket and be read while the
// running instance still waits for it.
const CommitMargin = 10 * time.Second

// Window is how long each side of a takeover waits for the new instance's
// workers to be ready. Both durations count from the moment the new
// instance asks: the running instance starts its clock when it reads the
// request, the new one before it sends it, so the new instance's clock is
// never behind, and it gives up at least Commit-GiveUp (CommitMargin)
// before the running instance stops waiting.
type Window struct {
	// Commit is how long the running instance waits for the verdict from
	// the request (TakeoverParams.CommitWithinMS); then it carries on as
	// if the takeover was aborted.
	Commit time.Duration
	// GiveUp is how long the new instance waits for its workers to be
	// ready from before it asks; then it aborts and stops, and the running
	// instance carries on.
	GiveUp time.Duration
}

// WindowFor decides a takeover's Window from how long the new instance's
// workers may take to be ready: their readiness deadline (--ready-timeout)
// with --ready notify or bind, their delay with --ready delay:DURATION.
//
// The running instance waits ready+StartWithin; the new one gives up
// CommitMargin sooner. A new instance whose workers are ready in time
// therefore commits while the running one still waits, and one whose
// workers are late aborts before the running one would have stopped
// waiting: never do both instances serve, each believing the other has
// gone.
func WindowFor(ready time.Duration) Window {
	commit := max(ready, 0) + StartWithin
	return Window{Commit: commit, GiveUp: commit - CommitMargin}
}
