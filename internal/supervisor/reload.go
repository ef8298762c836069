package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/listener"
)

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
	plan    *Plan // what the pending generation runs
	// opts are the rollout overrides of the reload being prepared or in
	// progress; rollout is how its rollout ended, for its result.
	opts    ReloadOptions
	rollout *api.RolloutStatus

	queued       bool // another reload is wanted after this one
	queuedFor    []chan<- ReloadOutcome
	queuedReason string
	// queuedOpts are the overrides of the last request queued: the
	// reload that serves them all runs with those.
	queuedOpts ReloadOptions

	// prepareSeq numbers the reload being prepared; a Prepare that
	// returns after its reload was abandoned finds another number.
	prepareSeq int
}

// PrepareTimeout bounds a reload's Prepare (reading the config file,
// looking up users and groups, binding new listeners): past it the
// reload fails with the reason, the next reload runs, and the plan, if
// it ever comes, is discarded (its new listeners closed). A Prepare that
// blocks (a config path on a hung network file system, a user lookup
// that never answers) thus costs one reload, never all the later ones.
const PrepareTimeout = 30 * time.Second

// prepareTimeout is PrepareTimeout; tests shorten it.
var prepareTimeout = PrepareTimeout

func (r *reloadState) failQueued(err error) {
	for _, ch := range r.queuedFor {
		ch <- ReloadOutcome{Err: err}
	}
	r.queued, r.queuedFor, r.queuedReason, r.queuedOpts = false, nil, "", ReloadOptions{}
}

// requestReload starts a reload with the rollout its configuration asks
// for, or queues one behind the reload in progress. ch may be nil (a
// signal asks without waiting).
func (s *Supervisor) requestReload(reason string, ch chan<- ReloadOutcome) {
	s.requestReloadWith(reason, ReloadOptions{}, ch)
}

// requestReloadWith is requestReload with the rollout overrides o. A
// reload queued behind the one in progress runs with the overrides of
// the last request queued.
func (s *Supervisor) requestReloadWith(reason string, o ReloadOptions, ch chan<- ReloadOutcome) {
	if s.stopping {
		if ch != nil {
			ch <- ReloadOutcome{Err: ErrStopping}
		}
		return
	}
	if s.takingOver {
		if ch != nil {
			ch <- ReloadOutcome{Err: errors.New("a takeover by a new instance is in progress; reload that one")}
		}
		return
	}
	if s.upgrading.on {
		s.holdReload(reason, o, ch) // upgrade.go: it runs after the upgrade
		return
	}
	if s.reloading() {
		if !s.reload.queued {
			s.log.Info("reload queued behind the one in progress", "reason", reason)
		}
		s.reload.queued = true
		s.reload.queuedReason = reason
		s.reload.queuedOpts = o
		if ch != nil {
			s.reload.queuedFor = append(s.reload.queuedFor, ch)
		}
		return
	}
	var waiters []chan<- ReloadOutcome
	if ch != nil {
		waiters = append(waiters, ch)
	}
	s.reload.opts = o
	s.prepareReload(reason, waiters)
}

// prepareReload gets the reload's plan (off the loop: it may read a file,
// resolve names and bind sockets) and then starts the new generation,
// with the rollout overrides in s.reload.opts.
func (s *Supervisor) prepareReload(reason string, waiters []chan<- ReloadOutcome) {
	s.reload.waiters, s.reload.reason, s.reload.started = waiters, reason, s.now()
	if s.opts.OnReloading != nil {
		s.opts.OnReloading()
	}
	if s.opts.Prepare == nil {
		plan := Plan{Config: *s.active.cfg, Listeners: s.active.listeners}
		s.beginReload(&plan)
		return
	}
	s.preparing = true
	s.reload.prepareSeq++
	seq := s.reload.prepareSeq
	current := append([]*listener.Group(nil), s.active.listeners...)
	workers := len(s.active.slots)
	timeout := prepareTimeout
	deadline := s.after(timeout, func() {
		if !s.preparing || s.reload.prepareSeq != seq {
			return // it returned in time
		}
		s.preparing = false
		s.reload.prepareSeq++ // what it returns now is discarded
		err := fmt.Errorf("preparing it (reading the config file, looking up users, binding new listeners) took more than %s, so baton stopped waiting; a plan that comes later is discarded", timeout)
		s.log.Error("reload failed", "err", err)
		s.finishReload(0, s.active.id, fmt.Errorf("reload failed: %w; generation %d keeps serving, unchanged", err, s.active.id))
	})
	go func() {
		start := time.Now()
		plan, err := s.opts.Prepare(current, workers)
		if !s.post(func() {
			switch {
			case s.reload.prepareSeq != seq || !s.preparing:
				// Abandoned at its deadline: another reload may run now.
				s.log.Warn("a reload's preparation finished after it was abandoned; its result is discarded", "took", time.Since(start).Round(time.Millisecond), "err", err)
				if plan != nil {
					s.discardPlan(plan, current)
				}
				return
			case s.stopping:
				s.preparing = false
				deadline.Stop()
				if plan != nil {
					s.discardPlan(plan, current)
				}
				s.finishReload(0, s.active.id, ErrStopping)
				return
			}
			s.preparing = false
			deadline.Stop()
			if err != nil {
				s.log.Error("reload failed", "err", err)
				s.finishReload(0, s.active.id, fmt.Errorf("reload failed: %w; generation %d keeps serving, unchanged", err, s.active.id))
				return
			}
			s.beginReload(plan)
		}) && plan != nil {
			s.discardPlan(plan, current)
		}
	}()
}

// discardPlan closes the listeners a plan opened that nothing uses.
func (s *Supervisor) discardPlan(plan *Plan, kept []*listener.Group) {
	for _, l := range plan.Listeners {
		if !slices.Contains(kept, l) {
			l.Close()
		}
	}
}

// beginReload starts the generation that runs plan.
func (s *Supervisor) beginReload(plan *Plan) {
	old := s.active
	for _, l := range plan.Listeners {
		s.groups[l] = true
	}
	if err := plan.check(); err != nil {
		s.failPlan(plan, err)
		return
	}
	// Fewer slots: the removed slots' reuseport sockets close when the
	// old generation has drained, which must not reset their queues.
	if plan.Config.Workers < len(old.slots) {
		for _, l := range plan.Listeners {
			if l.Reuseport() && l.Spec.Kind == listener.Stream && slices.Contains(old.listeners, l) {
				if err := listener.MigrateReq(plan.Config.EnableMigrateReq); err != nil {
					s.failPlan(plan, fmt.Errorf("going from %d to %d workers would close reuseport sockets of listener %s: %w", len(old.slots), plan.Config.Workers, l.Spec.Name, err))
					return
				}
			}
		}
	}
	// More slots: every reuseport listener needs a socket per slot.
	for _, l := range plan.Listeners {
		if err := l.Grow(plan.Config.Workers); err != nil {
			s.releaseSlots(plan.Listeners, len(old.slots))
			s.failPlan(plan, err)
			return
		}
	}
	// A steered UDP listener gives the new generation sockets of its own.
	if err := claimFlows(plan.Listeners, s.nextGen+1, plan.Config.Workers); err != nil {
		s.releaseSlots(plan.Listeners, len(old.slots))
		s.failPlan(plan, err)
		return
	}
	g := s.newGeneration(plan, old)
	s.pending = g
	s.reload.plan = plan
	s.log.Info("reload started", "generation", g.id, "replacing", old.id, "reason", s.reload.reason, "workers", len(g.slots))
	if ro := s.reload.opts.over(g.cfg.Rollout); ro.staged(len(g.slots)) {
		s.startRoll(g, old, ro) // rolling.go
		return
	}
	for _, sl := range g.slots {
		if err := s.startWorker(g, sl); err != nil {
			return // startFailed has ended the reload
		}
	}
}

// failPlan ends a reload whose plan could not even start.
func (s *Supervisor) failPlan(plan *Plan, err error) {
	s.finishReload(0, s.active.id, fmt.Errorf("reload failed: %w; generation %d keeps serving, unchanged", err, s.active.id))
	s.closeGroups(false)
}

// releaseSlots closes the reuseport sockets of slots from index n on, in
// the given listeners.
func (s *Supervisor) releaseSlots(ls []*listener.Group, n int) {
	for _, l := range ls {
		l.Shrink(n)
	}
}

// endReload finishes the pending reload. On success the new generation
// becomes active and the old one drains; on failure the new one is stopped
// and the old one keeps serving. Then a queued reload, if any, starts. A
// rolling reload's failure is its own to handle (rollFailed: it may roll
// back slots first); its success comes through here once every slot is
// replaced.
func (s *Supervisor) endReload(err error) {
	g := s.pending
	if g == nil {
		return
	}
	if r := s.roll; r != nil {
		if err == nil {
			panic("supervisor: endReload(nil) during a rollout; rollDone ends it")
		}
		s.rollFailed(r, err)
		return
	}
	s.pending = nil
	old := s.active
	plan := s.reload.plan
	s.reload.plan = nil
	if err == nil {
		s.active = g
		for _, w := range inOrder(old.workers) {
			if w != nil && w.state != Exited {
				s.stopWorker(w, fmt.Sprintf("replaced by generation %d", g.id))
			}
		}
		// And any worker a rollback left serving a slot.
		for _, w := range inOrder(s.workers) {
			if w.gen != g && !w.stopped {
				s.stopWorker(w, fmt.Sprintf("replaced by generation %d", g.id))
			}
		}
		// A crash restart pending for the old generation is moot now,
		// and slots the new generation does not have are gone.
		for _, sl := range old.slots {
			sl.cancelRestart()
			if sl.index >= len(g.slots) {
				sl.removed = true
			}
		}
		s.releaseSlots(g.listeners, len(g.slots))
		finished := func() {
			s.log.Info("reload finished", "generation", g.id, "took", s.since(s.reload.started).Round(time.Millisecond), "draining", old.id)
			s.finishReload(g.id, old.id, nil)
		}
		if plan != nil && plan.Apply != nil {
			// In-place changes to kept listeners act on paths: off the
			// loop. The reload is over once they are recorded.
			s.applying++
			go func() {
				commit, aerr := plan.Apply()
				s.post(func() {
					s.applying--
					if commit != nil {
						commit()
					}
					if aerr != nil {
						s.log.Warn("reload: changing a kept listener in place failed", "err", aerr)
					}
					finished()
					s.closeGroups(false)
				})
			}()
		} else {
			finished()
		}
	} else {
		err = fmt.Errorf("reload to generation %d failed: %w; generation %d keeps serving", g.id, err, old.id)
		s.log.Error("reload failed", "generation", g.id, "err", err)
		for _, w := range inOrder(g.workers) {
			if w != nil && w.state != Exited {
				s.stopWorker(w, "its generation failed to start")
			}
		}
		s.releaseSlots(g.listeners, len(old.slots))
		s.finishReload(g.id, old.id, err)
	}
	s.closeGroups(false)
}

// finishReload reports a reload's outcome to its waiters and starts a
// queued reload. gen is the generation it started (0: none), prev the one
// serving before.
func (s *Supervisor) finishReload(gen, prev int, err error) {
	res := ReloadResult{
		Generation: gen,
		Previous:   prev,
		Started:    s.reload.started,
		Duration:   Duration(s.since(s.reload.started)),
		OK:         err == nil,
		Reason:     s.reload.reason,
		Rollout:    s.reload.rollout,
	}
	s.reload.rollout, s.reload.opts = nil, ReloadOptions{}
	if err != nil {
		res.Error = err.Error()
		s.stats.reloadsFailed++
	} else {
		s.stats.reloadsOK++
	}
	s.stats.lastReload = &res
	s.emit(Event{Kind: EventReload, OK: err == nil, Duration: time.Duration(res.Duration), Generation: gen})
	for _, ch := range s.reload.waiters {
		ch <- ReloadOutcome{Result: res, Err: err}
	}
	s.reload.waiters = nil
	if s.opts.OnReady != nil && s.everReady {
		s.opts.OnReady()
	}
	s.applyQueuedScales()
	if s.reload.queued && !s.stopping {
		waiters, reason, opts := s.reload.queuedFor, s.reload.queuedReason, s.reload.queuedOpts
		s.reload.queued, s.reload.queuedFor, s.reload.queuedReason, s.reload.queuedOpts = false, nil, "", ReloadOptions{}
		s.reload.opts = opts
		s.prepareReload(reason, waiters)
	}
}

// reloading reports whether a reload is under way: its plan being made,
// its generation starting, or its in-place changes being applied.
func (s *Supervisor) reloading() bool { return s.pending != nil || s.preparing || s.applying > 0 }
