package supervisor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/sockdiag"
)

// A canary is the first slots of a reload, started beside their old
// workers (which keep serving: at most slots+canaries workers run) and
// watched, once every one of them is ready, for the canary window. It
// fails, and the reload with it, as soon as
//
//   - a canary exits on its own, unless with status 0 after staying up
//     StableAfter (a worker that recycles itself, as php-cgi does after
//     PHP_FCGI_MAX_REQUESTS: it is restarted in its slot, and the window
//     goes on), or cannot become ready (as any new worker);
//   - the canaries report more errors (X_BATON_ERRORS, summed) than
//     Rollout.CanaryMaxErrors; with CanaryMaxErrorRate set, that is
//     judged at the window's end, and they fail only when the errors are
//     also more than that percentage of the connections they accepted.
//
// At the window's end they also fail when
//
//   - they accepted no connection (X_BATON_ACCEPTED) while the previous
//     generation's workers accepted at least minAcceptedToJudge each on
//     average: the canary does not serve (it may bind a port of its own
//     instead of the socket baton passes);
//   - the kernel's view (with an inspector) shows a warning about a
//     canary worker that no worker of the previous generation has: a
//     CLOSE-WAIT leak (connections it never closes), file descriptors
//     running out.
//
// Otherwise the canaries pass: their slots' old workers drain, and the
// rollout goes on. A failed canary's workers are stopped; the previous
// generation never lost a worker.
//
// Connections the host reset during the window are shown (HostResets),
// not judged: the kernel counts resets for the whole host, not per
// process, so other services' resets would count against the canary. A
// canary that resets connections because it crashes is caught by its
// exit.
type canary struct {
	slots  []int
	window time.Duration
	// verdict is one of api's Canary verdicts; reason says why it failed.
	verdict string
	reason  string
	// until is when the window ends, set once every canary is ready;
	// timer fires then. overdue: the window ended while a recycled
	// canary was starting again: the verdict comes once it is ready.
	until   time.Time
	timer   timer
	overdue bool
	// workers are every canary worker started, restarted ones included:
	// what they reported is summed.
	workers  []*worker
	recycled int
	// prevBase holds what each worker of the previous generation had
	// accepted when the window began; prevAccepted what they accepted
	// during it, once judged (-1: they do not report it).
	prevBase     map[*worker]int64
	prevAccepted int64
	// resetsBase is the host's reset count when the window began, and
	// hostResets the rise at its end (-1: unknown).
	resetsBase, hostResets int64
	// seq numbers the kernel's answers: one that comes for an earlier
	// question is dropped.
	seq int
}

// minAcceptedToJudge is how many connections the previous generation's
// workers must have accepted each, on average, during the window before
// a canary that accepted none fails: with fewer, a canary may have got
// none by chance.
const minAcceptedToJudge = 50

// canaryKernelTimeout bounds the kernel's view asked for a canary's
// verdict: past it the verdict goes without what is missing.
const canaryKernelTimeout = 5 * time.Second

// newCanary makes the canary of the first n slots of r.
func (s *Supervisor) newCanary(r *roll, n int) *canary {
	return &canary{slots: slices.Clone(r.todo[:n]), window: r.rollout.window(), verdict: api.CanaryStarting,
		prevAccepted: -1, resetsBase: -1, hostResets: -1}
}

// running reports whether the canary has no verdict yet.
func (c *canary) running() bool {
	switch c.verdict {
	case api.CanaryStarting, api.CanaryWatching, api.CanaryJudging:
		return true
	}
	return false
}

// fail records the canary's failure.
func (c *canary) fail(reason string) {
	if c.timer != nil {
		c.timer.Stop()
	}
	c.verdict, c.reason = api.CanaryRolledBack, reason
	c.seq++
}

// sums adds up what the canary workers reported: errors and accepted
// connections, each with whether any worker reported it.
func (c *canary) sums() (errs int64, hasErrs bool, accepted int64, hasAccepted bool) {
	for _, w := range c.workers {
		if w.errors >= 0 {
			errs, hasErrs = errs+w.errors, true
		}
		if w.accepted >= 0 {
			accepted, hasAccepted = accepted+w.accepted, true
		}
	}
	return
}

// pids lists the live canary workers.
func (c *canary) pids() []int {
	var out []int
	for _, w := range c.workers {
		if w.state != Exited {
			out = append(out, w.pid)
		}
	}
	return out
}

// canaryReady begins the window once every canary is ready, or gives
// the verdict of a window that ended while one was starting again.
func (s *Supervisor) canaryReady(r *roll) {
	c := r.canary
	if c.verdict == api.CanaryStarting {
		c.verdict, c.until = api.CanaryWatching, s.now().Add(c.window)
		c.prevBase = map[*worker]int64{}
		for _, w := range r.old.workers {
			if w != nil && w.state != Exited && w.accepted >= 0 {
				c.prevBase[w] = w.accepted
			}
		}
		s.log.Info("canary ready: watching it", "generation", r.g.id, "slots", c.slots, "pids", c.pids(), "window", c.window)
		c.timer = s.after(c.window, func() { s.canaryWindowOver(r, c) })
		s.askKernel(r, c, false)
		// Errors reported before the window count too.
		s.canaryHeard(r, nil)
		return
	}
	if c.overdue {
		c.overdue = false
		s.canaryJudge(r)
	}
}

// canaryWindowOver ends the window: the verdict, unless a recycled
// canary is starting again (then once it is ready).
func (s *Supervisor) canaryWindowOver(r *roll, c *canary) {
	if s.roll != r || r.canary != c || c.verdict != api.CanaryWatching {
		return
	}
	c.timer = nil
	if !r.batchReady() {
		c.overdue = true
		return
	}
	s.canaryJudge(r)
}

// canaryHeard checks what a canary worker reported (w; nil: all of
// them) against the error threshold, at once, unless a rate is set
// (judged at the window's end, when there is enough to judge). It is
// the notify socket's hook.
func (s *Supervisor) canaryHeard(r *roll, w *worker) {
	if r == nil || r.canary == nil || !r.canary.running() || r.rollout.CanaryMaxErrorRate > 0 {
		return
	}
	c := r.canary
	if w != nil && !slices.Contains(c.workers, w) {
		return
	}
	if reason := s.canaryErrors(r); reason != "" {
		s.canaryFail(r, reason)
	}
}

// canaryErrors says why the canary's errors fail it, or "".
func (s *Supervisor) canaryErrors(r *roll) string {
	ro := r.rollout
	errs, hasErrs, acc, hasAcc := r.canary.sums()
	if !hasErrs || errs <= ro.CanaryMaxErrors {
		return ""
	}
	of := " and did not report the connections it accepted (X_BATON_ACCEPTED)"
	if hasAcc {
		of = fmt.Sprintf(" for %d connections accepted", acc)
		if acc > 0 {
			of += fmt.Sprintf(" (%.3g%%)", float64(errs)*100/float64(acc))
		}
	}
	if ro.CanaryMaxErrorRate > 0 {
		if hasAcc && acc > 0 && float64(errs)*100/float64(acc) <= ro.CanaryMaxErrorRate {
			return ""
		}
		return fmt.Sprintf("it reported %d errors (X_BATON_ERRORS)%s: more than canary_max_errors (%d) and than canary_max_error_rate (%g%% of its connections); fix the new version, or raise them if that is its normal rate",
			errs, of, ro.CanaryMaxErrors, ro.CanaryMaxErrorRate)
	}
	return fmt.Sprintf("it reported %d errors (X_BATON_ERRORS)%s: more than canary_max_errors (%d); fix the new version, or raise canary_max_errors (or set canary_max_error_rate) if that is its normal rate",
		errs, of, ro.CanaryMaxErrors)
}

// canaryExited judges the exit of a canary that had been ready, during
// its window: a recycling worker's clean exit restarts it in its slot,
// any other exit fails the canary.
func (s *Supervisor) canaryExited(r *roll, w *worker, status syscall.WaitStatus) {
	c := r.canary
	up := s.since(w.started)
	if status.Exited() && status.ExitStatus() == 0 && up >= StableAfter {
		c.recycled++
		s.log.Warn("canary exited with status 0 after staying up; restarted in its slot (a worker that recycles itself), the window goes on", w.attrs("uptime", up.Round(time.Millisecond))...)
		if nw, err := s.spawnWorker(r.g, w.slot, nil); err == nil && s.roll == r {
			c.workers = append(c.workers, nw)
		}
		return
	}
	why := fmt.Sprintf("its worker in slot %d (pid %d) %s after %s up", w.slot.index, w.pid, describeExit(status), up.Round(time.Millisecond))
	if status.Exited() && status.ExitStatus() == 0 {
		why += fmt.Sprintf(" (a clean exit counts as a worker recycling itself only after %s up)", StableAfter)
	}
	if out := w.output.String(); out != "" {
		why += "; its last output: " + out
	}
	s.canaryFail(r, why)
}

// canaryFail fails the canary, and so the reload, for reason.
func (s *Supervisor) canaryFail(r *roll, reason string) {
	r.canary.fail(reason)
	s.log.Error("canary failed: rolling back", "generation", r.g.id, "slots", r.canary.slots, "reason", reason)
	s.endReload(fmt.Errorf("the canary (%s) failed: %s", slotList(r.canary.slots), reason))
}

// canaryJudge gives the verdict at the window's end: what the canaries
// reported, then (with an inspector, off the loop) the kernel's view.
func (s *Supervisor) canaryJudge(r *roll) {
	c := r.canary
	c.verdict = api.CanaryJudging
	if reason := s.canaryErrors(r); reason != "" {
		s.canaryFail(r, reason)
		return
	}
	var prev int64
	reported := false
	for w, base := range c.prevBase {
		if w.accepted >= base {
			prev += w.accepted - base
			reported = true
		}
	}
	if reported {
		c.prevAccepted = prev
	}
	if _, _, acc, hasAcc := c.sums(); hasAcc && acc == 0 && reported && prev >= minAcceptedToJudge*int64(len(c.prevBase)) {
		s.canaryFail(r, fmt.Sprintf("it accepted no connection (X_BATON_ACCEPTED) in its %s window while generation %d's workers accepted %d: it is not serving the socket baton passes it (does it bind a port of its own, or ignore LISTEN_FDS?)",
			c.window, r.old.id, prev))
		return
	}
	if s.opts.Inspector == nil {
		s.canaryPass(r)
		return
	}
	s.askKernel(r, c, true)
}

// askKernel asks the kernel's view and the host's reset counter off the
// loop, at the window's start (to remember what it saw: a CLOSE-WAIT
// connection counts as leaked once seen for the inspector's
// CloseWaitAge, inspect_interval) or its end (judge),
// and posts the answer. Without an inspector there is no kernel's view.
func (s *Supervisor) askKernel(r *roll, c *canary, judge bool) {
	if s.opts.Inspector == nil {
		return
	}
	in := KernelInput(s.status())
	prev := map[int]bool{}
	for _, w := range r.old.workers {
		if w != nil && w.state != Exited {
			prev[w.pid] = true
		}
	}
	pids := c.pids()
	seq := c.seq
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, canaryKernelTimeout)
		v := s.opts.Inspector.Inspect(ctx, in)
		cancel()
		resets, known := hostResets()
		s.post(func() {
			if s.roll != r || r.canary != c || c.seq != seq {
				return
			}
			switch {
			case !judge:
				if known {
					c.resetsBase = resets
				}
				return
			case c.verdict != api.CanaryJudging:
				return
			}
			if known && c.resetsBase >= 0 {
				c.hostResets = resets - c.resetsBase
			}
			if reason := kernelVerdict(v, pids, prev); reason != "" {
				s.canaryFail(r, reason)
				return
			}
			s.canaryPass(r)
		})
	}()
}

// kernelVerdict says why the kernel's view fails the canary workers
// (pids), or "": a warning about one of them whose code no worker of the
// previous generation (prev) has. A trap both generations share (the
// 1024 fd default of their unit) is no reason to roll back.
func kernelVerdict(v *inspect.View, pids []int, prev map[int]bool) string {
	if v == nil {
		return ""
	}
	prevCodes := map[api.WarningCode]bool{}
	for _, w := range v.Warnings {
		if prev[w.PID] {
			prevCodes[w.Code] = true
		}
	}
	var why []string
	for _, w := range v.Warnings {
		if w.PID != 0 && slices.Contains(pids, w.PID) && !prevCodes[w.Code] {
			why = append(why, fmt.Sprintf("%s: %s", w.Code, w.Message))
		}
	}
	if len(why) == 0 {
		return ""
	}
	return "the kernel's view shows what the previous generation does not: " + strings.Join(why, "; ")
}

// hostResetCounters are the TcpExt counters of connections the host
// reset: closed with unread data, closed while in use, closed with a
// zero linger.
var hostResetCounters = []string{"TCPAbortOnData", "TCPAbortOnClose", "TCPAbortOnLinger"}

// hostResets reads how many connections the host has reset since boot,
// and whether /proc said.
func hostResets() (int64, bool) {
	m, err := sockdiag.ReadNetstat()
	if err != nil || m["TcpExt"] == nil {
		return 0, false
	}
	var n int64
	for _, k := range hostResetCounters {
		n += m["TcpExt"][k]
	}
	return n, true
}

// slotList names slots for a message: "slot 0", "slots 0, 1".
func slotList(slots []int) string {
	if len(slots) == 1 {
		return fmt.Sprintf("slot %d", slots[0])
	}
	var s []string
	for _, i := range slots {
		s = append(s, fmt.Sprint(i))
	}
	return "slots " + strings.Join(s, ", ")
}

// canaryPass promotes the canaries: their slots' old workers drain, and
// the rollout goes on.
func (s *Supervisor) canaryPass(r *roll) {
	c := r.canary
	c.verdict = api.CanaryPromoted
	errs, _, acc, _ := c.sums()
	s.log.Info("canary passed: going on", "generation", r.g.id, "slots", c.slots, "errors", errs, "accepted", acc, "recycled", c.recycled)
	s.promote(r)
	s.nextBatch(r)
}

// canaryStatus is the canary's part of the rollout's status.
func canaryStatus(r *roll) *api.CanaryStatus {
	c := r.canary
	st := &api.CanaryStatus{
		Slots: slices.Clone(c.slots), PIDs: c.pids(), Window: Duration(c.window), Until: c.until,
		Verdict: c.verdict, Reason: c.reason, Recycled: c.recycled,
		MaxErrors: r.rollout.CanaryMaxErrors, MaxErrorRate: r.rollout.CanaryMaxErrorRate,
	}
	errs, hasErrs, acc, hasAcc := c.sums()
	if hasErrs {
		st.Errors = &errs
	}
	if hasAcc {
		st.Accepted = &acc
	}
	if c.prevAccepted >= 0 {
		n := c.prevAccepted
		st.PreviousAccepted = &n
	}
	if c.hostResets >= 0 {
		n := c.hostResets
		st.HostResets = &n
	}
	return st
}
