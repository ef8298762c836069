package supervisor

import (
	"fmt"
	"time"
)

// Recycling is replacing a slot's worker although nothing went wrong.
// Two kinds:
//
//   - A worker recycles itself: it exits with status 0 on its own after a
//     while (php-cgi after PHP_FCGI_MAX_REQUESTS, gunicorn's
//     max_requests). It is restarted in its slot at once
//     (recycledItself), with no backoff: its exit is the program's own
//     plan, not a crash, and waiting would leave the slot empty under the
//     very load that made it recycle. The slot's backoff neither grows nor
//     resets: a clean exit says nothing about whether the program has
//     stopped crashing, and a worker that ran StableAfter resets it anyway
//     on its next failure.
//
//   - baton recycles a worker: with Config.MaxRSS, once its resident
//     memory passes the limit (uWSGI's reload-on-rss), and with
//     Config.MaxUptime once it has run that long. It is a reload of one
//     slot: a new worker starts in the slot (beside the old one, which
//     keeps the slot), and only once it is ready does the old one get its
//     stop signal and drain, so nothing is refused or cut. One slot at a
//     time, and never during a reload, an upgrade, a takeover or a stop:
//     a service never runs more than one worker beyond its slots for it,
//     and workers started together are not all replaced at once. If the
//     replacement fails (cannot start, exits or misses its readiness
//     deadline) the old worker serves on and baton tries that slot again
//     after RecycleRetry.

// MinRecycleAge is how long a worker runs before baton replaces it for
// its memory, as uWSGI's min-worker-lifetime: a program whose resident
// memory is above --max-rss from its start is replaced at most this
// often, not in a loop.
const MinRecycleAge = 10 * time.Second

// RecycleRetry is how long baton waits before it tries again to replace
// the worker of a slot whose replacement failed.
const RecycleRetry = 30 * time.Second

// recycleState is the replacement of a slot's worker baton has under way.
type recycleState struct {
	old, new *worker
	reason   string // RecycleMaxRSS or RecycleMaxUptime
	why      string // for the log and the status
	started  time.Time
}

// noteRecycle counts a recycle of the worker of slot sl of generation g,
// for reason, and reports it (EventRecycle).
func (s *Supervisor) noteRecycle(g *generation, sl *slot, reason string) {
	sl.recycles++
	sl.lastRecycle, sl.lastRecycleAt = reason, s.now()
	s.emit(Event{Kind: EventRecycle, Slot: sl.index, Generation: g.id, Reason: reason})
}

// recycledItself restarts the slot of w, a worker of the serving
// generation that exited with status 0 on its own (cleanExit): at once,
// or MinRecycleUptime after w's start if it ran less (recyclePause).
func (s *Supervisor) recycledItself(w *worker, how string, uptime time.Duration) {
	g, sl := w.gen, w.slot
	pause := recyclePause(uptime)
	s.log.Info("worker recycled itself; restarting it in its slot", w.attrs("status", how, "uptime", uptime.Round(time.Millisecond), "in", pause)...)
	s.noteRecycle(g, sl, RecycleExited)
	sl.cancelRestart()
	if pause == 0 {
		s.startWorker(g, sl) // startFailed schedules a restart after the backoff if it cannot
		return
	}
	// The backoff is left as it is: this is no failure.
	sl.nextStart = s.now().Add(pause)
	var t timer
	t = s.after(pause, func() {
		if sl.restart != t {
			return // cancelled, or replaced by a later restart
		}
		sl.restart, sl.nextStart = nil, time.Time{}
		if g == s.active && !s.stopping && !sl.removed && g.slotFree(sl) {
			s.startWorker(g, sl)
		}
	})
	sl.restart = t
}

// recyclePause is how long a slot whose worker recycled itself after
// uptime waits before its next start: nothing once the worker ran
// MinRecycleUptime, the rest of it otherwise, so that a program that
// exits 0 at once (ready with delay:0s, or after READY=1) is started at
// most ten times a second, not in a loop.
func recyclePause(uptime time.Duration) time.Duration {
	return max(MinRecycleUptime-uptime, 0)
}

// checkRecycle replaces the first serving worker past Config.MaxRSS or
// Config.MaxUptime, if baton may replace one now. It runs on the loop,
// after each sample (sample.go).
func (s *Supervisor) checkRecycle() {
	g := s.active
	if g == nil || g.cfg.MaxRSS == 0 && g.cfg.MaxUptime == 0 {
		return
	}
	if s.recycling != nil || s.stopping || s.reloading() || s.upgrading.on || s.takingOver {
		return
	}
	now := s.now()
	for _, sl := range g.slots {
		w := g.workers[sl.index]
		if w == nil || w.state != Ready || w.stopped || sl.removed || now.Before(sl.recycleRetry) {
			continue
		}
		if reason, why := recycleReason(g.cfg, w, now); reason != "" {
			s.beginRecycle(w, reason, why)
			return
		}
	}
}

// recycleReason says why w, a ready worker, is to be replaced at now, or
// "" when it is not.
func recycleReason(cfg *Config, w *worker, now time.Time) (reason, why string) {
	up := now.Sub(w.started)
	switch {
	case cfg.MaxUptime > 0 && up >= cfg.MaxUptime:
		return RecycleMaxUptime, fmt.Sprintf("it has run for %s, and --max-uptime is %s", up.Round(time.Second), cfg.MaxUptime)
	case cfg.MaxRSS > 0 && w.seen.rss > cfg.MaxRSS && up >= MinRecycleAge:
		return RecycleMaxRSS, fmt.Sprintf("its resident memory, %s, is above --max-rss %s", sizeText(w.seen.rss), sizeText(cfg.MaxRSS))
	}
	return "", ""
}

// sizeText writes a byte count as the docs write sizes: "512 MiB",
// "1.5 GiB", "600.3 MiB", "64 KiB".
func sizeText(n uint64) string {
	exact := func(unit uint64) bool { return n%unit == 0 }
	switch {
	case n >= 1<<30 && exact(1<<30):
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20 && exact(1<<20):
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// beginRecycle starts the replacement of old, a ready worker of the
// serving generation, for reason.
func (s *Supervisor) beginRecycle(old *worker, reason, why string) {
	sl := old.slot
	if reason == RecycleMaxRSS && sl.lastRecycle == RecycleMaxRSS && s.since(sl.lastRecycleAt) < 2*MinRecycleAge {
		s.log.Warn("worker passed --max-rss again soon after baton replaced its slot's last one: the limit is below what the program needs, and baton replaces it every "+MinRecycleAge.String()+"; raise --max-rss",
			old.attrs("rss", sizeText(old.seen.rss), "max_rss", sizeText(old.gen.cfg.MaxRSS))...)
	}
	s.log.Info("recycling worker: a new worker starts in its slot, and this one drains once that one is ready", old.attrs("reason", reason, "why", why)...)
	old.recycle = reason + ": " + why
	s.recycling = &recycleState{old: old, reason: reason, why: why, started: s.now()}
	nw, err := s.spawnWorker(old.gen, sl, old)
	if err != nil {
		return // startFailed has called recycleFailed
	}
	s.recycling.new = nw
}

// recycleDone hands the slot to nw, a replacement that is ready, and
// stops the worker it replaces.
func (s *Supervisor) recycleDone(nw *worker) {
	r, old := s.recycling, nw.replacing
	nw.replacing = nil
	if r == nil || r.new != nw {
		s.stopWorker(nw, "the recycle it was started for was given up")
		return
	}
	s.recycling = nil
	g, sl := nw.gen, nw.slot
	if g != s.active || s.stopping || sl.removed || g.workers[sl.index] != old || old.stopped {
		// Something else (a reload, a scale-down, baton's stop) has
		// replaced or stopped the slot's worker meanwhile.
		s.stopWorker(nw, "its slot's worker was replaced or stopped meanwhile")
		return
	}
	g.workers[sl.index] = nw
	s.noteRecycle(g, sl, r.reason)
	s.log.Info("worker recycled: its replacement is ready", old.attrs("reason", r.reason, "replacement", nw.pid, "took", s.since(r.started).Round(time.Millisecond))...)
	s.stopWorker(old, fmt.Sprintf("recycled (%s); pid %d serves in its place", r.why, nw.pid))
}

// recycleFailed gives up the replacement nw: it could not start (then it
// has no pid), exited, or missed its readiness deadline. The worker it
// was to replace serves on, and baton tries that slot again after
// RecycleRetry.
func (s *Supervisor) recycleFailed(nw *worker, why string) {
	r, old := s.recycling, nw.replacing
	nw.replacing = nil
	if r == nil || r.new != nil && r.new != nw {
		return
	}
	s.recycling = nil
	old.recycle = ""
	old.slot.recycleRetry = s.now().Add(RecycleRetry)
	s.log.Warn("recycling failed: the worker serves on; baton tries its slot again later", old.attrs("reason", r.reason, "err", why, "retry_in", RecycleRetry)...)
}

// replacementExited handles the exit of nw, a replacement that was not
// ready yet.
func (s *Supervisor) replacementExited(nw *worker, how string) {
	why := fmt.Sprintf("its replacement, pid %d, %s before it was ready", nw.pid, how)
	if out := nw.output.String(); out != "" {
		why += "; its last output: " + out
	}
	s.recycleFailed(nw, why)
}

// takeOverSlot handles the exit on its own of w, the serving worker of
// its slot, while baton was replacing it: the replacement, still
// starting, becomes the slot's worker (and is ready when its mode says),
// instead of a new worker. It reports whether there was one.
func (s *Supervisor) takeOverSlot(w *worker) bool {
	r := s.recycling
	if r == nil || r.old != w || r.new == nil {
		return false
	}
	nw := r.new
	s.recycling = nil
	nw.replacing = nil
	w.gen.workers[w.slot.index] = nw
	s.log.Info("worker exited while baton was replacing it: its replacement takes the slot", w.attrs("replacement", nw.pid)...)
	return true
}

// abandonRecycle gives up the replacement of w, when w is being stopped
// for another reason than its replacement: a reload, a scale-down or
// baton's stop replaces the slot's worker in its own way. The replacement,
// still starting, is stopped.
func (s *Supervisor) abandonRecycle(w *worker, reason string) {
	r := s.recycling
	if r == nil || r.old != w {
		return
	}
	s.recycling = nil
	w.recycle = ""
	if nw := r.new; nw != nil {
		nw.replacing = nil
		s.log.Info("recycling given up: the worker it replaces is stopping", w.attrs("reason", reason, "replacement", nw.pid)...)
		s.stopWorker(nw, "the worker it was to replace is stopping: "+reason)
	}
}

// recycleBusy says why an upgrade must wait: baton is replacing a worker
// (the replacement is no slot's worker yet, which the upgrade's state
// cannot say).
func (s *Supervisor) recycleBusy() error {
	if r := s.recycling; r != nil {
		return fmt.Errorf("upgrade: baton is replacing the worker of slot %d (%s); try again once its replacement is ready, in at most the readiness deadline", r.old.slot.index, r.reason)
	}
	return nil
}
