package supervisor

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// Rollout says how a reload replaces the serving generation's workers.
// The zero value replaces them all at once: every new worker starts, and
// the old generation drains once all are ready (twice the workers, for a
// moment).
//
// With Rolling, a reload replaces that many slots at a time. Each new
// worker starts beside the old one of its slot; once every worker of the
// batch is ready, the old ones get the stop signal, and the next batch
// starts only once they have exited: at most slots+Rolling workers run
// at once, counting every live worker (those of earlier generations
// still draining too), which is what bounds memory.
//
// With Canary, the first Canary slots are replaced first, beside their
// old workers (which keep serving), and watched for CanaryWindow once
// ready (canary.go). If they pass, their old workers drain and the
// reload goes on, Rolling at a time or every slot left at once; if not,
// they are stopped, and the old generation, which lost no worker, serves
// on.
//
// A reload that fails after it replaced slots (a new worker exits, or
// one of a later batch cannot become ready) rolls back: the replaced
// slots get workers of the previous generation again, a batch at a time,
// each ready before the new worker of its slot drains. The reload then
// reports its failure; the previous generation serves every slot, as
// after a reload that failed all at once.
type Rollout struct {
	// Rolling is how many slots are replaced at a time; 0, or as many as
	// there are slots, replaces them all at once.
	Rolling int
	// Canary is how many slots (the first ones) are tried first; 0: no
	// canary.
	Canary int
	// CanaryWindow is how long the canaries are watched once every one of
	// them is ready (DefaultCanaryWindow when 0).
	CanaryWindow time.Duration
	// CanaryMaxErrors is how many errors (X_BATON_ERRORS) the canaries
	// may report in all before they fail; CanaryMaxErrorRate, when
	// positive, lets them report more as long as that is at most this
	// percentage of the connections they accepted (X_BATON_ACCEPTED).
	CanaryMaxErrors    int64
	CanaryMaxErrorRate float64
}

// DefaultCanaryWindow is how long a canary is watched when the
// configuration does not say.
const DefaultCanaryWindow = 30 * time.Second

// staged reports whether a reload of n slots with this rollout replaces
// them otherwise than all at once.
func (r Rollout) staged(n int) bool {
	return r.Canary > 0 || (r.Rolling > 0 && r.Rolling < n)
}

// window is the canary window, with its default.
func (r Rollout) window() time.Duration {
	if r.CanaryWindow <= 0 {
		return DefaultCanaryWindow
	}
	return r.CanaryWindow
}

// String says what the rollout does, for the log: "rolling 1 at a
// time", "canary 1 for 30s, then rolling 2 at a time", "all at once".
func (r Rollout) String() string {
	var parts []string
	if r.Canary > 0 {
		parts = append(parts, fmt.Sprintf("canary %d for %s", r.Canary, r.window()))
	}
	switch {
	case r.Rolling > 0:
		parts = append(parts, fmt.Sprintf("rolling %d at a time", r.Rolling))
	case r.Canary > 0:
		parts = append(parts, "the rest at once")
	default:
		parts = append(parts, "all at once")
	}
	return strings.Join(parts, ", then ")
}

// ReloadOptions override, for one reload, the rollout of the
// configuration it loads (baton reload --rolling, --canary,
// --canary-window). A nil field keeps the configuration's.
type ReloadOptions struct {
	Rolling      *int
	Canary       *int
	CanaryWindow *time.Duration
}

// over is r with o's overrides.
func (o ReloadOptions) over(r Rollout) Rollout {
	if o.Rolling != nil {
		r.Rolling = *o.Rolling
	}
	if o.Canary != nil {
		r.Canary = *o.Canary
	}
	if o.CanaryWindow != nil {
		r.CanaryWindow = *o.CanaryWindow
	}
	return r
}

// ReloadWith is Reload with this reload's rollout overrides.
func (s *Supervisor) ReloadWith(reason string, o ReloadOptions) <-chan ReloadOutcome {
	ch := make(chan ReloadOutcome, 1)
	if !s.post(func() { s.requestReloadWith(reason, o, ch) }) {
		ch <- ReloadOutcome{Err: ErrStopping}
	}
	return ch
}

// roll is a reload in progress that replaces slots a batch at a time,
// or after a canary: s.roll while s.pending is its generation. The loop
// owns it. Slots are named by index: a slot keeps its identity across
// generations.
type roll struct {
	g, old  *generation
	rollout Rollout
	// batchSize is how many slots a batch replaces; 0: every slot left.
	batchSize int
	// todo lists the slots not started yet, in order; batch those whose
	// new workers (or, rolling back, the previous generation's) are
	// starting, or are canaries being watched; done the slots the new
	// generation serves, in the order they were replaced.
	todo, batch, done []int
	canary            *canary // nil without one
	// room is armed while the next batch waits for workers to exit
	// (roomFor); past it the batch starts anyway (forced).
	room      timer
	roomSince time.Time
	forced    bool
	// back: the reload failed (failure says why) and the replaced slots
	// go back to the previous generation: restored lists those that have,
	// kept those whose previous worker failed again.
	back           bool
	failure        error
	restored, kept []int
}

// startRoll starts the rollout of generation g, which replaces old:
// the canary first, or the first batch.
func (s *Supervisor) startRoll(g, old *generation, ro Rollout) {
	r := &roll{g: g, old: old, rollout: ro, batchSize: ro.Rolling}
	if r.batchSize >= len(g.slots) {
		r.batchSize = 0
	}
	for _, sl := range g.slots {
		r.todo = append(r.todo, sl.index)
	}
	s.roll = r
	s.log.Info("rolling out", "generation", g.id, "replacing", old.id, "how", ro.String(), "max_workers", r.limit())
	if n := min(ro.Canary, len(g.slots)); n > 0 {
		r.canary = s.newCanary(r, n)
		if !s.roomFor(r, n) {
			s.waitRoom(r)
			return
		}
		s.startBatch(r, n)
		return
	}
	s.nextBatch(r)
}

// limit is the most workers the rollout lets run at once: the slots of
// the larger of the two generations, plus a batch (or the canaries, while
// they run). 0: no bound (every slot left starts at once).
func (r *roll) limit() int {
	if r.batchSize == 0 {
		return 0
	}
	extra := r.batchSize
	if r.canary != nil && r.canary.running() {
		extra = max(extra, len(r.canary.slots))
	}
	return max(len(r.old.slots), len(r.g.slots)) + extra
}

// roomFor reports whether n more workers may start now: a bounded
// rollout counts every live worker, those draining included.
func (s *Supervisor) roomFor(r *roll, n int) bool {
	return r.batchSize == 0 || r.forced || len(s.workers)+n <= r.limit()
}

// roomGrace is how long past the drain timeout a batch waits for room:
// a worker is killed at its drain deadline, so only one the kernel
// cannot end (stuck in uninterruptible sleep) keeps it waiting longer.
const roomGrace = 10 * time.Second

// waitRoom arms the deadline past which the next batch starts even
// without room, once, and says what the rollout waits for.
func (s *Supervisor) waitRoom(r *roll) {
	if r.room != nil {
		return
	}
	r.roomSince = s.now()
	wait := max(r.old.cfg.DrainTimeout, r.g.cfg.DrainTimeout) + roomGrace
	s.log.Info("rolling: the next batch waits for draining workers to exit", "generation", r.g.id, "workers", len(s.workers), "max_workers", r.limit())
	r.room = s.after(wait, func() {
		if s.roll != r || r.room == nil {
			return
		}
		r.room = nil
		r.forced = true
		s.log.Warn("rolling: workers are still running past their drain deadline; the next batch starts anyway, above the bound", "generation", r.g.id, "workers", len(s.workers), "max_workers", r.limit(), "waited", s.since(r.roomSince).Round(time.Millisecond))
		s.nextBatch(r)
	})
}

// stopWaiting disarms the room deadline.
func (r *roll) stopWaiting() {
	if r.room != nil {
		r.room.Stop()
		r.room = nil
	}
	r.forced = false
}

// startBatch starts the new workers of the next n slots of todo.
func (s *Supervisor) startBatch(r *roll, n int) {
	r.stopWaiting()
	r.batch, r.todo = slices.Clone(r.todo[:n]), r.todo[n:]
	s.log.Info("rolling: starting a batch", "generation", r.g.id, "slots", r.batch, "done", len(r.done), "of", len(r.g.slots))
	for _, i := range r.batch {
		w, err := s.spawnWorker(r.g, r.g.slots[i], nil)
		if err != nil {
			return // startFailed has failed the reload
		}
		if s.roll != r || r.back {
			return
		}
		if r.canary != nil && r.canary.running() {
			r.canary.workers = append(r.canary.workers, w)
		}
	}
}

// nextBatch goes on with the rollout: the next batch when there is room,
// or the end once every slot is replaced.
func (s *Supervisor) nextBatch(r *roll) {
	if s.roll != r {
		return
	}
	if r.back {
		s.nextBack(r)
		return
	}
	if len(r.batch) > 0 {
		return
	}
	if r.canary != nil && r.canary.verdict == api.CanaryStarting {
		// The canary's start waited for room.
		if n := len(r.canary.slots); s.roomFor(r, n) {
			s.startBatch(r, n)
		}
		return
	}
	if len(r.todo) == 0 {
		s.rollDone(r)
		return
	}
	n := len(r.todo)
	if r.batchSize > 0 {
		n = min(r.batchSize, n)
	}
	if !s.roomFor(r, n) {
		s.waitRoom(r)
		return
	}
	s.startBatch(r, n)
}

// batchReady reports whether every slot of the batch has a ready worker
// of the generation the batch starts.
func (r *roll) batchReady() bool {
	g := r.g
	if r.back {
		g = r.old
	}
	for _, i := range r.batch {
		if w := g.workers[i]; w == nil || w.state != Ready || w.stopped {
			return false
		}
	}
	return true
}

// inSlot lists the live workers of slot index i, of every generation, in
// order.
func (s *Supervisor) inSlot(i int) []*worker {
	var out []*worker
	for _, w := range inOrder(s.workers) {
		if w.slot.index == i && w.state != Exited {
			out = append(out, w)
		}
	}
	return out
}

// rollReady handles a worker that became ready (workerReady's hook). A
// worker of the rolling generation completes its batch or its canary; it
// reports true, and workerReady does nothing more. A worker of the
// serving generation retires what else serves its slot: a worker of the
// rolling generation when rolling back, or one a rollback left there.
func (s *Supervisor) rollReady(w *worker) bool {
	r := s.roll
	if w.gen == s.active {
		s.retire(w)
		if r != nil && r.back && slices.Contains(r.batch, w.slot.index) && r.old.workers[w.slot.index] == w {
			for _, x := range s.inSlot(w.slot.index) {
				if x.gen == r.g && !x.stopped {
					s.stopWorker(x, fmt.Sprintf("rolled back to generation %d", r.old.id))
				}
			}
			r.batch = slices.DeleteFunc(r.batch, func(i int) bool { return i == w.slot.index })
			r.restored = append(r.restored, w.slot.index)
			s.nextBack(r)
		}
		return false
	}
	if r == nil || w.gen != r.g {
		return false
	}
	if !slices.Contains(r.batch, w.slot.index) || !r.batchReady() {
		return true
	}
	if c := r.canary; c != nil && c.running() {
		s.canaryReady(r)
		return true
	}
	s.promote(r)
	s.nextBatch(r)
	return true
}

// retire stops what else serves the slot of w, a ready worker of the
// serving generation: the live workers of any generation but the serving
// and the rolling one that were not asked to stop (a worker a rollback
// left in the slot).
func (s *Supervisor) retire(w *worker) {
	for _, x := range s.inSlot(w.slot.index) {
		if x != w && !x.stopped && x.gen != s.active && x.gen != s.pending {
			s.stopWorker(x, fmt.Sprintf("generation %d serves its slot again", w.gen.id))
		}
	}
}

// promote makes the batch's new workers serve their slots: every other
// live worker there gets the stop signal, and a crash restart the old
// generation had pending there is dropped.
func (s *Supervisor) promote(r *roll) {
	r.done = append(r.done, r.batch...)
	s.syncFlows() // the new workers' UDP sockets serve before the old ones stop
	for _, i := range r.batch {
		for _, x := range s.inSlot(i) {
			if x.gen != r.g && !x.stopped {
				x.restart = false // replaced: its exit is no crash to restart
				s.stopWorker(x, fmt.Sprintf("replaced by generation %d", r.g.id))
			}
		}
		r.g.slots[i].cancelRestart()
	}
	s.log.Info("rolling: slots replaced", "generation", r.g.id, "slots", r.batch, "done", len(r.done), "of", len(r.g.slots))
	r.batch = nil
}

// rollDone ends a rollout that replaced every slot: the reload succeeds
// (endReload makes the new generation the serving one).
func (s *Supervisor) rollDone(r *roll) {
	r.stopWaiting()
	s.reload.rollout = s.rolloutStatus(r, api.RolloutDone)
	s.roll = nil
	s.endReload(nil)
}

// rollFailed handles the failure of a rollout (endReload's, when s.roll
// is set): the new workers not serving yet are stopped, and the slots
// already replaced roll back to the previous generation, or, with none
// (or baton stopping), the reload ends at once.
func (s *Supervisor) rollFailed(r *roll, err error) {
	if r.back && s.stopping {
		s.rollEnd(r) // beginStop stops every worker
		return
	}
	if r.back {
		// A worker of the new generation exited while its slot waits to
		// roll back: the slot has none now, so it goes back first.
		s.log.Warn("rolling back: a worker of the failed generation exited; its slot goes back first", "generation", r.g.id, "err", err)
		return
	}
	r.stopWaiting()
	r.failure = err
	if c := r.canary; c != nil && c.running() {
		c.fail(err.Error())
	}
	for _, i := range r.batch {
		if w := r.g.workers[i]; w != nil && w.state != Exited && !w.stopped {
			s.stopWorker(w, "its generation failed to start")
		}
	}
	r.batch, r.todo = nil, nil
	if s.stopping || len(r.done) == 0 {
		s.rollEnd(r)
		return
	}
	r.back = true
	// Slots left empty (their new worker exited) first, then the others,
	// the last replaced first.
	var empty, serving []int
	for _, i := range slices.Backward(r.done) {
		if w := r.g.workers[i]; w == nil || w.state == Exited {
			empty = append(empty, i)
		} else {
			serving = append(serving, i)
		}
	}
	r.todo = append(empty, serving...)
	s.log.Error("rolling back: the reload failed after replacing slots; they go back to the previous generation", "generation", r.g.id, "previous", r.old.id, "slots", r.todo, "err", err)
	s.nextBack(r)
}

// nextBack goes on rolling back: the next batch of slots gets workers of
// the previous generation, or, with every slot handled, the reload ends.
func (s *Supervisor) nextBack(r *roll) {
	if s.roll != r || len(r.batch) > 0 {
		return
	}
	if len(r.todo) == 0 {
		s.rollEnd(r)
		return
	}
	// An empty slot first: the exit that emptied it may have come since
	// the order was made.
	slices.SortStableFunc(r.todo, func(a, b int) int {
		return boolInt(!r.slotEmpty(a)) - boolInt(!r.slotEmpty(b))
	})
	n := len(r.todo)
	if r.batchSize > 0 {
		n = min(r.batchSize, n)
	}
	if !s.roomFor(r, n) && !r.slotEmpty(r.todo[0]) {
		s.waitRoom(r)
		return
	}
	r.stopWaiting()
	take := slices.Clone(r.todo[:n])
	r.todo = r.todo[n:]
	for _, i := range take {
		if i >= len(r.old.slots) {
			// A slot this reload added: the previous generation has none,
			// so its new worker just goes.
			if w := r.g.workers[i]; w != nil && w.state != Exited && !w.stopped {
				s.stopWorker(w, "its generation failed; the previous one has no such slot")
			}
			r.restored = append(r.restored, i)
			continue
		}
		if err := s.startWorker(r.old, r.old.slots[i]); err != nil {
			// startFailed has scheduled the slot's restart, as for any
			// slot of the serving generation; the new worker serves on.
			r.kept = append(r.kept, i)
			continue
		}
		r.batch = append(r.batch, i)
	}
	if len(r.batch) == 0 {
		s.nextBack(r)
	}
}

// slotEmpty reports whether slot i has no live worker of the new
// generation.
func (r *roll) slotEmpty(i int) bool {
	w := r.g.workers[i]
	return w == nil || w.state == Exited
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// rollEnd ends a failed rollout: the new generation's workers stop (but
// where a slot's previous worker failed again), the previous generation
// serves, and the reload reports why, and what was rolled back.
func (s *Supervisor) rollEnd(r *roll) {
	r.stopWaiting()
	g, old := r.g, r.old
	s.reload.rollout = s.rolloutStatus(r, api.RolloutFailed)
	s.roll = nil
	s.pending = nil
	s.reload.plan = nil
	for _, w := range inOrder(g.workers) {
		if w.state != Exited && !w.stopped && !slices.Contains(r.kept, w.slot.index) {
			s.stopWorker(w, "its generation failed to start")
		}
	}
	s.releaseSlots(g.listeners, len(old.slots))
	what := fmt.Sprintf("generation %d keeps serving", old.id)
	switch {
	case s.stopping:
		what = "every worker drains"
	case r.canary != nil && len(r.done) == 0:
		what = fmt.Sprintf("the canary was stopped; generation %d keeps serving, untouched", old.id)
	case len(r.done) == 0:
	case len(r.kept) == 0:
		what = fmt.Sprintf("slots %v were rolled back: generation %d serves every slot again", slices.Sorted(slices.Values(r.restored)), old.id)
	default:
		what = fmt.Sprintf("generation %d's workers failed again in slots %v, which generation %d's workers serve until generation %d's restart there is ready (baton status shows why)",
			old.id, slices.Sorted(slices.Values(r.kept)), g.id, old.id)
		if len(r.restored) > 0 {
			what = fmt.Sprintf("slots %v were rolled back to generation %d; ", slices.Sorted(slices.Values(r.restored)), old.id) + what
		}
	}
	err := fmt.Errorf("reload to generation %d failed: %w; %s", g.id, r.failure, what)
	s.log.Error("reload failed", "generation", g.id, "err", err)
	s.finishReload(g.id, old.id, err)
	s.closeGroups(false)
}

// rollExit handles the exit of a worker during a rollout (workerExited's
// hook, before its own handling) and reports whether it did all there is
// to do. The exit of a worker the rollout stopped is expected; a
// canary's is judged (canary.go); any exit may leave room for the next
// batch. An exit it does not handle (a new worker that exited on its own
// fails the reload) is left to workerExited.
func (s *Supervisor) rollExit(w *worker, status syscall.WaitStatus) bool {
	r := s.roll
	if r == nil {
		return false
	}
	i := w.slot.index
	switch {
	case w.gen == r.g && w.stopped:
		s.nextBatch(r)
		return true
	case w.gen == r.g && r.canary != nil && r.canary.running() && slices.Contains(r.batch, i) && r.g.workers[i] == w && !w.readyAt.IsZero():
		s.canaryExited(r, w, status)
		return true
	case w.gen == r.g:
		return false
	case r.back && w.gen == r.old && r.old.workers[i] == w && slices.Contains(r.batch, i) && (!w.stopped || w.restart):
		// The previous generation's worker did not come back: the slot
		// keeps the new one, and gets the serving generation's restart
		// (workerExited schedules it).
		s.log.Warn("rolling back: the previous generation's worker failed too; the slot keeps the new generation's worker until its restart is ready", "slot", i, "generation", r.g.id, "previous", r.old.id)
		r.batch = slices.DeleteFunc(r.batch, func(j int) bool { return j == i })
		r.kept = append(r.kept, i)
	}
	s.nextBatch(r)
	return false
}

// serving reports whether w serves its slot now, for the handoff store
// (which workers may adopt handed-off connections): a ready worker of
// the serving generation, or during a rollout the new workers of the
// slots already replaced, when there are any.
func (s *Supervisor) serving(w *worker) bool {
	if r := s.roll; r != nil && !r.back && len(r.done) > 0 {
		return w.gen == r.g && slices.Contains(r.done, w.slot.index)
	}
	return w.gen == s.active
}

// slotWorker is the worker serving slot sl of the serving generation:
// its own, or during a rollout the new generation's once the slot is
// replaced.
func (s *Supervisor) slotWorker(sl *slot) *worker {
	w := s.active.workers[sl.index]
	if w != nil && w.state != Exited {
		return w
	}
	if r := s.roll; r != nil && slices.Contains(r.done, sl.index) {
		if nw := r.g.workers[sl.index]; nw != nil && nw.state != Exited {
			return nw
		}
	}
	return w
}

// rolloutStatus is the rollout's progress for the status, or, with phase
// set, how it ended.
func (s *Supervisor) rolloutStatus(r *roll, phase string) *api.RolloutStatus {
	st := &api.RolloutStatus{
		Generation: r.g.id, Previous: r.old.id, Batch: r.batchSize, MaxWorkers: r.limit(), Phase: phase,
		Done: slices.Clone(r.done), Starting: slices.Clone(r.batch), Waiting: slices.Clone(r.todo),
		RolledBack: slices.Clone(r.restored), Kept: slices.Clone(r.kept),
	}
	if st.Done == nil {
		st.Done = []int{}
	}
	if st.Starting == nil {
		st.Starting = []int{}
	}
	if st.Waiting == nil {
		st.Waiting = []int{}
	}
	if r.failure != nil {
		st.Error = r.failure.Error()
	}
	if phase == "" {
		switch {
		case r.back:
			st.Phase = api.RolloutRollingBack
		case r.canary != nil && r.canary.running():
			st.Phase = api.RolloutCanary
		case len(r.batch) == 0 && len(r.todo) > 0:
			st.Phase = api.RolloutWaiting
		default:
			st.Phase = api.RolloutRolling
		}
	}
	if r.canary != nil {
		st.Canary = canaryStatus(r)
	}
	return st
}
