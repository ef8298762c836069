package supervisor

import (
	"fmt"
	"slices"
	"time"
)

// A generation that is coming up (a reload's, pending until every slot
// has a ready worker) no longer fails at the first exit of one of its
// workers. Programs that recycle themselves (php-cgi after
// PHP_FCGI_MAX_REQUESTS, gunicorn's max_requests, uWSGI's max-requests)
// exit with status 0 at any moment, readiness delay or not; under load a
// new worker may do so before it counts as ready. So:
//
//   - a worker that exits 0 on its own after MinRecycleUptime recycled
//     itself: it is restarted in its slot at once, and with delay:D its
//     replacement carries on the slot's run (slotRun.upSince), so that a
//     slot whose workers keep recycling still comes up after D;
//   - any other exit on its own is a failure: the slot restarts after a
//     backoff of its own in this generation (MinBackoff doubling), and
//     when Config.StartLimitBurst failures fall within
//     Config.StartLimitInterval the slot crash-loops and the reload fails,
//     as systemd's StartLimitBurst counts;
//   - a slot has --ready-timeout from its first start in the generation
//     (or the first since it was last ready) to become ready (notify,
//     bind), or the delay plus --ready-timeout (delay:D), whatever its
//     workers did meanwhile; past it the reload fails.
//
// The serving generation keeps its own rules (worker.go: a failure
// restarts after the slot's backoff, forever), but a clean exit there too
// is restarted at once without growing the backoff (recycledItself).

// slotRun is how one slot has fared in one generation.
type slotRun struct {
	// first is when the slot's first worker in the generation started,
	// or the first since one of its workers was last ready: the start of
	// its attempt to come up, which its readiness deadline counts from.
	first time.Time
	// upSince is when the slot's current run of workers without a
	// failure began; zero after a failure, until the next start.
	upSince time.Time
	// failures are the times of the failures that count toward the
	// crash-loop limit (the last StartLimitInterval's); failCount counts
	// them all, lastErr says how the last one went.
	failures  []time.Time
	failCount int
	lastErr   string
	// backoff, restart and nextStart: the restart pending after a
	// failure while the generation comes up.
	backoff   time.Duration
	restart   timer
	nextStart time.Time
}

// run is how slot sl has fared in g, made on first use.
func (g *generation) run(sl *slot) *slotRun {
	if g.runs == nil {
		g.runs = map[int]*slotRun{} // a generation restored after an upgrade
	}
	r := g.runs[sl.index]
	if r == nil {
		r = &slotRun{}
		g.runs[sl.index] = r
	}
	return r
}

// started records a worker's start in the slot.
func (r *slotRun) started(at time.Time) {
	if r.first.IsZero() {
		r.first = at
	}
	if r.upSince.IsZero() {
		r.upSince = at
	}
}

// ready records that a worker of the slot became ready: a later worker
// (one that replaces it after it exited) has a readiness deadline of its
// own again.
func (r *slotRun) ready() { r.first = time.Time{} }

// failed records a failure at at: the run without failures is over.
func (r *slotRun) failed(at time.Time, why string) {
	r.upSince = time.Time{}
	r.failures = append(r.failures, at)
	r.failCount++
	r.lastErr = why
}

// recent drops the failures older than interval before now and returns
// how many are left.
func (r *slotRun) recent(now time.Time, interval time.Duration) int {
	r.failures = slices.DeleteFunc(r.failures, func(t time.Time) bool { return !t.After(now.Add(-interval)) })
	return len(r.failures)
}

// nextBackoff is the wait before the next restart after a failure: the
// last one doubled, from MinBackoff up to MaxBackoff, and MinBackoff
// again after a worker that ran for StableAfter.
func nextBackoff(last, ran time.Duration) time.Duration {
	if last == 0 || ran >= StableAfter {
		return MinBackoff
	}
	return min(2*last, MaxBackoff)
}

// slotDeadline is when slot run r of g, coming up, must have a ready
// worker: --ready-timeout after its first start (notify, bind), the
// delay and --ready-timeout after it (delay:D).
func slotDeadline(g *generation, r *slotRun) time.Time {
	d, strict := g.cfg.Ready.Deadline(g.cfg.ReadyTimeout)
	if !strict {
		d += g.cfg.ReadyTimeout
	}
	return r.first.Add(d)
}

// comingUpExited handles the exit on its own of worker w of the
// generation that is coming up; prev is the state it was in, how says how
// it ended, clean whether it recycled itself (cleanExit). workerExited has
// recorded a failure in the slot's run already.
func (s *Supervisor) comingUpExited(w *worker, prev State, how string, clean bool) {
	g, sl := w.gen, w.slot
	r := g.run(sl)
	if clean {
		pause := recyclePause(s.since(w.started))
		s.log.Info("worker recycled itself while its generation comes up; restarting it in its slot", w.attrs("status", how, "was", prev, "in", pause)...)
		s.noteRecycle(g, sl, RecycleExited)
		if pause == 0 {
			s.startWorker(g, sl) // startFailed ends the reload if it cannot
		} else {
			s.restartComingUp(g, sl, r, pause)
		}
		return
	}
	burst, interval := g.cfg.startLimit()
	if n := r.recent(s.now(), interval); n >= burst {
		s.endReload(fmt.Errorf("worker slot %d of generation %d is crash-looping: %d of its workers failed within %s (start_limit_burst %d in start_limit_interval %s), the last: %s",
			sl.index, g.id, n, interval, burst, interval, r.lastErr))
		return
	}
	r.backoff = nextBackoff(r.backoff, s.since(w.started))
	deadline := slotDeadline(g, r)
	if due := s.now().Add(r.backoff); due.After(deadline) {
		s.endReload(fmt.Errorf("worker slot %d of generation %d could not become ready within %s of its first start: %d of its workers failed, the last: %s",
			sl.index, g.id, deadline.Sub(r.first), r.failCount, r.lastErr))
		return
	}
	s.emit(Event{Kind: EventRestart, Slot: sl.index, Generation: g.id})
	s.log.Warn("restarting worker of the generation coming up", "slot", sl.index, "generation", g.id, "in", r.backoff,
		"failures", fmt.Sprintf("%d of %d within %s", len(r.failures), burst, interval))
	s.restartComingUp(g, sl, r, r.backoff)
}

// restartComingUp starts a worker in slot sl of g, coming up, after wait.
func (s *Supervisor) restartComingUp(g *generation, sl *slot, r *slotRun, wait time.Duration) {
	if r.restart != nil {
		r.restart.Stop()
	}
	r.nextStart = s.now().Add(wait)
	var t timer
	t = s.after(wait, func() {
		if r.restart != t {
			return // replaced by a later restart
		}
		r.restart, r.nextStart = nil, time.Time{}
		// It may have become the serving generation meanwhile (a reload
		// that replaces slots one at a time): the slot needs its worker
		// all the same.
		if (g == s.pending || g == s.active) && !s.stopping && !sl.removed && g.slotFree(sl) {
			s.startWorker(g, sl)
		}
	})
	r.restart = t
}

// slotHistory adds to err, about slot sl of g coming up, how its earlier
// workers failed, if any did.
func (s *Supervisor) slotHistory(g *generation, sl *slot, err error) error {
	r := g.runs[sl.index]
	if r == nil || r.failCount == 0 {
		return err
	}
	return fmt.Errorf("%w; before it, %d workers of the slot failed in this generation, the last: %s", err, r.failCount, r.lastErr)
}
