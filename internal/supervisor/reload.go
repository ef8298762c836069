package supervisor

import (
	"fmt"
	"time"
)

// ReloadResult describes a finished reload.
type ReloadResult struct {
	Generation int       `json:"generation"`
	Previous   int       `json:"previous"`
	Started    time.Time `json:"started"`
	Duration   Duration  `json:"duration"`
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
	Reason     string    `json:"reason"`
}

// ReloadOutcome is what a caller of Reload receives.
type ReloadOutcome struct {
	Result ReloadResult
	Err    error
}

// reloadState tracks the reload in progress and the requests queued behind
// it.
type reloadState struct {
	waiters []chan<- ReloadOutcome // served by the reload in progress
	reason  string
	started time.Time

	queued       bool // another reload is wanted after this one
	queuedFor    []chan<- ReloadOutcome
	queuedReason string
}

func (r *reloadState) failQueued(err error) {
	for _, ch := range r.queuedFor {
		ch <- ReloadOutcome{Err: err}
	}
	r.queued, r.queuedFor, r.queuedReason = false, nil, ""
}

// requestReload starts a reload, or queues one behind the reload in
// progress. ch may be nil (a signal asks without waiting).
func (s *Supervisor) requestReload(reason string, ch chan<- ReloadOutcome) {
	if s.stopping {
		if ch != nil {
			ch <- ReloadOutcome{Err: ErrStopping}
		}
		return
	}
	if s.pending != nil {
		if !s.reload.queued {
			s.log.Info("reload queued behind the one in progress", "reason", reason, "in_progress", s.pending.id)
		}
		s.reload.queued = true
		s.reload.queuedReason = reason
		if ch != nil {
			s.reload.queuedFor = append(s.reload.queuedFor, ch)
		}
		return
	}
	var waiters []chan<- ReloadOutcome
	if ch != nil {
		waiters = append(waiters, ch)
	}
	s.beginReload(reason, waiters)
}

func (s *Supervisor) beginReload(reason string, waiters []chan<- ReloadOutcome) {
	g := s.newGeneration()
	s.pending = g
	s.reload.waiters, s.reload.reason, s.reload.started = waiters, reason, time.Now()
	s.log.Info("reload started", "generation", g.id, "replacing", s.active.id, "reason", reason)
	if s.opts.OnReloading != nil {
		s.opts.OnReloading()
	}
	for _, sl := range s.slots {
		if err := s.startWorker(g, sl); err != nil {
			return // startFailed has ended the reload
		}
	}
}

// endReload finishes the pending reload. On success the new generation
// becomes active and the old one drains; on failure the new one is stopped
// and the old one keeps serving. Then a queued reload, if any, starts.
func (s *Supervisor) endReload(err error) {
	g := s.pending
	if g == nil {
		return
	}
	s.pending = nil
	res := ReloadResult{
		Generation: g.id,
		Previous:   s.active.id,
		Started:    s.reload.started,
		Duration:   Duration(time.Since(s.reload.started)),
		OK:         err == nil,
		Reason:     s.reload.reason,
	}
	if err == nil {
		old := s.active
		s.active = g
		s.stats.reloadsOK++
		s.log.Info("reload finished", "generation", g.id, "took", time.Duration(res.Duration).Round(time.Millisecond), "draining", old.id)
		for _, w := range old.workers {
			if w != nil && w.state != Exited {
				s.stopWorker(w, fmt.Sprintf("replaced by generation %d", g.id))
			}
		}
		// A crash restart pending for the old generation is moot now.
		for _, sl := range s.slots {
			sl.cancelRestart()
		}
	} else {
		err = fmt.Errorf("reload to generation %d failed: %w; generation %d keeps serving", g.id, err, s.active.id)
		res.Error = err.Error()
		s.stats.reloadsFailed++
		s.log.Error("reload failed", "generation", g.id, "err", err)
		for _, w := range g.workers {
			if w != nil && w.state != Exited {
				s.stopWorker(w, "its generation failed to start")
			}
		}
	}
	s.stats.lastReload = &res
	s.emit(Event{Kind: EventReload, OK: err == nil, Duration: time.Duration(res.Duration), Generation: g.id})
	for _, ch := range s.reload.waiters {
		ch <- ReloadOutcome{Result: res, Err: err}
	}
	s.reload.waiters = nil
	if s.opts.OnReady != nil && s.everReady {
		s.opts.OnReady()
	}
	s.applyQueuedScales()
	if s.reload.queued && !s.stopping {
		waiters, reason := s.reload.queuedFor, s.reload.queuedReason
		s.reload.queued, s.reload.queuedFor, s.reload.queuedReason = false, nil, ""
		s.beginReload(reason, waiters)
	}
}

// Duration is a time.Duration that encodes in JSON as seconds.
type Duration time.Duration

// MarshalJSON encodes d as a number of seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.3f", time.Duration(d).Seconds())), nil
}

// UnmarshalJSON decodes a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var f float64
	if _, err := fmt.Sscanf(string(b), "%g", &f); err != nil {
		return fmt.Errorf("duration %s: want seconds", b)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}
