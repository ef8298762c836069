package supervisor

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
)

// This file is the in-process harness for the supervisor's state machine:
// a fake clock, a fake process starter, and a harness that runs the
// loop's events on the test's goroutine. Nothing in it fakes the kernel:
// the notify and worker sockets the supervisor opens are real; what is
// fake is the worker processes (STYLE.md 5) and the passing of time.

// fakeClock is a clock that moves only when the harness advances it.
// Timers due at the same time fire in the order they were armed.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	seq    int
	timers []*fakeTimer // pending, in no order
}

// fakeTimer is a pending call of a fakeClock.
type fakeTimer struct {
	c    *fakeClock
	when time.Time
	seq  int
	f    func()
}

// Now returns the clock's time.
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc arms a call of f once the clock has moved on by d.
func (c *fakeClock) AfterFunc(d time.Duration, f func()) timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{c: c, when: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop cancels the call; it reports false once made or cancelled.
func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// next takes the first timer due by until off the list and moves the
// clock to its time; it returns nil when none is due.
func (c *fakeClock) next(until time.Time) *fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first *fakeTimer
	for _, t := range c.timers {
		if !t.when.After(until) && (first == nil || t.when.Before(first.when) || t.when.Equal(first.when) && t.seq < first.seq) {
			first = t
		}
	}
	if first == nil {
		return nil
	}
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool { return t == first })
	c.now = first.when
	return first
}

// set moves the clock to t.
func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// fakeWorker is how a fake worker behaves. The zero value starts, sends
// READY=1 at once, and exits with status 0 on its stop signal.
type fakeWorker struct {
	// startErr makes its start fail with this error.
	startErr error
	// ready is when it sends READY=1 after its start; never for not at
	// all.
	ready time.Duration
	// crash makes it exit with status on its own, crashAfter its start.
	crash      bool
	crashAfter time.Duration
	status     int
	// ignoreStop keeps it running on its stop signal (until SIGKILL);
	// otherwise it exits with status 0 drain after the signal.
	ignoreStop bool
	drain      time.Duration
	// rss is its resident memory age after its start, as baton's
	// samples read it (0 when nil); signal what its stop signal does to
	// it (sigCaught when zero).
	rss    func(age time.Duration) uint64
	signal sigDisposition
	// unkillable keeps it running even on SIGKILL, as a process stuck in
	// uninterruptible sleep (D state) is.
	unkillable bool
}

// never is a fakeWorker.ready that never comes.
const never = time.Duration(-1)

// fakePIDBase is above any pid Linux gives (pid_max is at most 2^22): a
// fake pid that reached the kernel by mistake would find no process.
const fakePIDBase = 9_000_000

// fakeProcs is a spawn.Starter that starts nothing: each start makes a
// fakeProc that behaves as the test's behave says, on the fake clock.
// Exits are queued for the harness, which delivers them one at a time.
// It is used from the test's goroutine only (the harness runs the loop
// there).
type fakeProcs struct {
	h        *harness
	behave   func(gen, slot, attempt int) fakeWorker
	nextPID  int
	attempts map[[2]int]int // starts asked for, by generation and slot
	byPID    map[int]*fakeProc
	exits    []*fakeProc // exited, not yet delivered
	// live counts the fake workers started and not exited; maxLive is
	// the most there ever were at once (what a rolling reload bounds).
	live, maxLive int

	// seen is what the samples read of each fake worker, by pid: they
	// read it off the test's goroutine.
	seenMu sync.Mutex
	seen   map[int]fakeSeen
}

// fakeSeen is what a sample reads of a fake worker.
type fakeSeen struct {
	started time.Time
	rss     func(time.Duration) uint64
	signal  sigDisposition
}

// readProc is the harness's env.readProc: what the fake worker's
// behaviour says, at the fake clock's time.
func (p *fakeProcs) readProc(pid int, sig syscall.Signal) (procSample, error) {
	p.seenMu.Lock()
	f, ok := p.seen[pid]
	p.seenMu.Unlock()
	if !ok {
		return procSample{}, os.ErrNotExist
	}
	r := procSample{StartTime: 1, Signal: f.signal}
	if r.Signal == sigUnknown {
		r.Signal = sigCaught
	}
	if f.rss != nil {
		r.RSS = f.rss(p.h.clock.Now().Sub(f.started))
	}
	return r, nil
}

// fakeProc is a fake worker process.
type fakeProc struct {
	p      *fakeProcs
	pid    int
	name   string // g1.s0, or g1.s0#2 for the second start of that slot
	w      fakeWorker
	onExit func(spawn.Exit)
	status syscall.WaitStatus
	exited bool
}

// Start makes a fake worker of the generation and slot its environment
// names (BATON_GENERATION, BATON_SLOT), or fails as it behaves.
func (p *fakeProcs) Start(spec spawn.Spec, onExit func(spawn.Exit)) (spawn.Child, error) {
	gen, slot := envInt(spec.Env, "BATON_GENERATION"), envInt(spec.Env, "BATON_SLOT")
	key := [2]int{gen, slot}
	p.attempts[key]++
	n := p.attempts[key]
	name := fmt.Sprintf("g%d.s%d", gen, slot)
	if n > 1 {
		name += "#" + strconv.Itoa(n)
	}
	w := p.behave(gen, slot, n)
	if w.startErr != nil {
		p.h.tracef("start %s failed", name)
		return nil, fmt.Errorf("start %s: %w", spec.Path, w.startErr)
	}
	p.nextPID++
	proc := &fakeProc{p: p, pid: fakePIDBase + p.nextPID, name: name, w: w, onExit: onExit}
	p.byPID[proc.pid] = proc
	p.seenMu.Lock()
	if p.seen == nil {
		p.seen = map[int]fakeSeen{}
	}
	p.seen[proc.pid] = fakeSeen{started: p.h.clock.Now(), rss: w.rss, signal: w.signal}
	p.seenMu.Unlock()
	p.live++
	p.maxLive = max(p.maxLive, p.live)
	p.h.tracef("start %s", name)
	clk := p.h.clock
	if w.ready >= 0 {
		clk.AfterFunc(w.ready, func() {
			if !proc.exited {
				p.h.tracef("%s sends READY=1", name)
				// What the notify socket's goroutine does with a datagram.
				p.h.s.heard(notify.Message{PID: proc.pid, Fields: map[string]string{"READY": "1"}})
			}
		})
	}
	if w.crash {
		clk.AfterFunc(w.crashAfter, func() { proc.exit(syscall.WaitStatus(w.status << 8)) })
	}
	return proc, nil
}

// Adopt is not used: the harness never restores a state.
func (p *fakeProcs) Adopt(pid int, onExit func(spawn.Exit)) (spawn.Child, error) {
	return nil, fmt.Errorf("adopt pid %d: the fake starter adopts nothing", pid)
}

// Started reports whether pid is a fake worker that has not exited.
func (p *fakeProcs) Started(pid int) bool {
	proc := p.byPID[pid]
	return proc != nil && !proc.exited
}

// Orphans is 0: nothing is re-parented to a test.
func (p *fakeProcs) Orphans() int { return 0 }

// Pause and Resume do nothing: there is no execve.
func (p *fakeProcs) Pause()  {}
func (p *fakeProcs) Resume() {}

var _ spawn.Starter = (*fakeProcs)(nil)

// PID is the fake's pid.
func (f *fakeProc) PID() int { return f.pid }

// Signal records sig and acts on it: SIGKILL ends the worker, the stop
// signal too unless it ignores it. SIGCONT, which follows every stop
// signal, is not recorded.
func (f *fakeProc) Signal(sig syscall.Signal) error {
	if f.exited {
		return os.ErrProcessDone
	}
	if sig == syscall.SIGCONT {
		return nil
	}
	f.p.h.tracef("%s %s", SignalName(sig), f.name)
	f.receive(sig)
	return nil
}

// SignalGroup is Signal for the worker's process group.
func (f *fakeProc) SignalGroup(sig syscall.Signal) error {
	if f.exited {
		return os.ErrProcessDone
	}
	if sig == syscall.SIGCONT {
		return nil
	}
	f.p.h.tracef("%s group %s", SignalName(sig), f.name)
	f.receive(sig)
	return nil
}

func (f *fakeProc) receive(sig syscall.Signal) {
	switch {
	case sig == syscall.SIGKILL && f.w.unkillable:
	case sig == syscall.SIGKILL:
		f.exit(syscall.WaitStatus(syscall.SIGKILL))
	case f.w.ignoreStop:
	case f.w.drain > 0:
		f.p.h.clock.AfterFunc(f.w.drain, func() { f.exit(0) })
	default:
		f.exit(0)
	}
}

// exit ends the fake worker; the harness tells the supervisor.
func (f *fakeProc) exit(status syscall.WaitStatus) {
	if f.exited {
		return
	}
	f.exited, f.status = true, status
	f.p.live--
	f.p.h.tracef("%s %s", f.name, describeExit(status))
	f.p.exits = append(f.p.exits, f)
}

// envInt reads a number from an environment list.
func envInt(env []string, key string) int {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// harness runs a supervisor's loop on the test's goroutine, with fake
// workers and a fake clock, and keeps a trace of what happened: what the
// fake workers did and were sent, and the answers to the requests the
// test made, each with the fake time since the start.
type harness struct {
	t     *testing.T
	s     *Supervisor
	clock *fakeClock
	procs *fakeProcs
	t0    time.Time
	trace []string
	log   *syncBuffer

	reloads []reloadWait
	scales  []scaleWait
}

type reloadWait struct {
	name string
	ch   chan ReloadOutcome
}

type scaleWait struct {
	n  int
	ch chan scaleOutcome
}

// newHarness starts the first generation of cfg (without listeners) with
// fake workers that behave as behave says, and stops the supervisor when
// the test ends.
func newHarness(t *testing.T, cfg Config, behave func(gen, slot, attempt int) fakeWorker) *harness {
	t.Helper()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devnull.Close() })
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	h := &harness{t: t, clock: &fakeClock{now: t0}, t0: t0, log: &syncBuffer{}}
	h.procs = &fakeProcs{h: h, behave: behave, attempts: map[[2]int]int{}, byPID: map[int]*fakeProc{}}
	h.s, err = newWithEnv(Options{
		Plan:   Plan{Config: cfg},
		Log:    slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Stdout: devnull, Stderr: devnull,
	}, env{procs: h.procs, clock: h.clock, endLeftovers: func(*leftoverSearch) {}, readProc: h.procs.readProc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.close)
	h.step(h.s.begin)
	h.settle()
	return h
}

// testConfig is a notify-mode configuration of n workers.
func testConfig(n int) Config {
	return Config{
		Path: "/srv/app/worker", Args: []string{"worker"}, Workers: n,
		Ready: ReadyWhenNotified(), ReadyTimeout: 10 * time.Second,
		StopSignal: syscall.SIGTERM, DrainTimeout: 30 * time.Second,
		Handoff: HandoffConfig{Timeout: handoff.DefaultTimeout, MaxState: handoff.DefaultMaxState},
	}
}

// close releases what New opened, as Run does when it ends.
func (h *harness) close() {
	s := h.s
	close(s.ended)
	s.cancel()
	s.workerSock.Close()
	s.closeHandoff()
	s.notify.Close()
	s.devnull.Close()
	s.closeGroups(true)
	if h.t.Failed() {
		h.t.Logf("trace:\n%s\nlog:\n%s", strings.Join(h.trace, "\n"), h.log)
	}
}

// tracef adds a line to the trace, after the fake time since the start.
func (h *harness) tracef(format string, args ...any) {
	h.trace = append(h.trace, h.clock.Now().Sub(h.t0).String()+" "+fmt.Sprintf(format, args...))
}

// step runs one event as the loop does, then records the answers it gave.
func (h *harness) step(f func()) {
	h.s.handle(f)
	h.answers()
}

// answers records the reload and scale outcomes that have come.
func (h *harness) answers() {
	h.reloads = slices.DeleteFunc(h.reloads, func(r reloadWait) bool {
		select {
		case o := <-r.ch:
			switch {
			case o.Err != nil:
				h.tracef("reload %s: %s", r.name, h.names(o.Err.Error()))
			default:
				h.tracef("reload %s: ok, generation %d replaces %d", r.name, o.Result.Generation, o.Result.Previous)
			}
			return true
		default:
			return false
		}
	})
	h.scales = slices.DeleteFunc(h.scales, func(sc scaleWait) bool {
		select {
		case o := <-sc.ch:
			switch {
			case o.err != nil:
				h.tracef("scale to %d: %s", sc.n, o.err)
			default:
				h.tracef("scale to %d: from %d, started %v, stopped %v", sc.n, o.res.From, o.res.Started, o.res.Stopped)
			}
			return true
		default:
			return false
		}
	})
}

// names replaces the fake pids in s with the workers' names.
func (h *harness) names(s string) string {
	for pid, f := range h.procs.byPID {
		s = strings.ReplaceAll(s, "pid "+strconv.Itoa(pid), f.name)
	}
	return s
}

// settle runs the loop until nothing is left to do at this moment: every
// queued event has run, every exit of a fake worker has been delivered
// and handled (one at a time, in the order they happened), and every
// search for leftovers and every sample of /proc has reported back.
func (h *harness) settle() {
	h.t.Helper()
	for {
		select {
		case f := <-h.s.events:
			h.step(f)
			continue
		default:
		}
		if len(h.procs.exits) > 0 {
			f := h.procs.exits[0]
			h.procs.exits = h.procs.exits[1:]
			f.onExit(spawn.Exit{Pid: f.pid, Status: f.status})
			h.until(f.name+"'s exit to be handled", func() bool { return h.s.workers[f.pid] == nil })
			continue
		}
		if h.s.leftoverSearches > 0 {
			h.until("the leftover searches to report", func() bool { return h.s.leftoverSearches == 0 })
			continue
		}
		if h.s.sampling > 0 {
			h.until("the samples of /proc to report", func() bool { return h.s.sampling == 0 })
			continue
		}
		return
	}
}

// until runs the loop's events as they come until cond holds. What it
// waits for is on its way from a goroutine the supervisor started (the
// exit of a worker, a leftover search), so it comes at once; 10 seconds
// without it is a failure.
func (h *harness) until(what string, cond func() bool) {
	h.t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for !cond() {
		select {
		case f := <-h.s.events:
			h.step(f)
		case <-timeout.C:
			h.t.Fatalf("waiting for %s: nothing came in 10s", what)
		}
	}
}

// advance moves the fake clock on by d, firing each timer due on the way
// at its time and settling the loop after each.
func (h *harness) advance(d time.Duration) {
	h.t.Helper()
	until := h.clock.Now().Add(d)
	for t := h.clock.next(until); t != nil; t = h.clock.next(until) {
		t.f()
		h.settle()
	}
	h.clock.set(until)
	h.settle()
}

// at advances the fake clock to d after the start.
func (h *harness) at(d time.Duration) {
	h.t.Helper()
	if now := h.clock.Now().Sub(h.t0); d > now {
		h.advance(d - now)
	}
}

// reload asks for a reload named name, as `baton reload` does; the
// trace gets its answer.
func (h *harness) reload(name string) {
	h.t.Helper()
	h.tracef("reload %s asked", name)
	ch := make(chan ReloadOutcome, 1)
	h.reloads = append(h.reloads, reloadWait{name, ch})
	h.step(func() { h.s.requestReload(name, ch) })
	h.settle()
}

// signalReload asks for a reload nobody waits for, as SIGHUP does.
func (h *harness) signalReload() {
	h.t.Helper()
	h.tracef("SIGHUP")
	h.step(func() { h.s.requestReload("SIGHUP", nil) })
	h.settle()
}

// scale asks for n slots, as `baton scale` does; the trace gets its
// answer.
func (h *harness) scale(n int) {
	h.t.Helper()
	h.tracef("scale to %d asked", n)
	ch := make(chan scaleOutcome, 1)
	h.scales = append(h.scales, scaleWait{n, ch})
	h.step(func() { h.s.requestScale(n, ch) })
	h.settle()
}

// stop begins a graceful stop, as `baton stop` does.
func (h *harness) stop() {
	h.t.Helper()
	h.tracef("stop asked")
	h.step(func() { h.s.beginStop("the test") })
	h.settle()
}

// crash makes the worker named name exit on its own with status.
func (h *harness) crash(name string, status int) {
	h.t.Helper()
	for _, f := range h.procs.byPID {
		if f.name == name {
			f.exit(syscall.WaitStatus(status << 8))
			h.settle()
			return
		}
	}
	h.t.Fatalf("no worker %s", name)
}

// state adds the supervisor's state to the trace: the serving
// generation's slots, the pending generation, the other live workers,
// and whether baton has finished.
func (h *harness) state() {
	s := h.s
	now := s.now()
	name := func(w *worker) string { return h.procs.byPID[w.pid].name }
	var slots []string
	for _, sl := range s.active.slots {
		w := s.active.workers[sl.index]
		switch {
		case w != nil && w.state != Exited:
			slots = append(slots, fmt.Sprintf("s%d %s %s", sl.index, name(w), w.state))
		case !sl.nextStart.IsZero():
			slots = append(slots, fmt.Sprintf("s%d backoff %s, next start in %s (%s)", sl.index, sl.backoff, sl.nextStart.Sub(now), h.names(sl.lastErr)))
		default:
			slots = append(slots, fmt.Sprintf("s%d empty", sl.index))
		}
	}
	line := fmt.Sprintf("state: generation %d serves [%s]", s.active.id, strings.Join(slots, ", "))
	if s.pending != nil {
		line += fmt.Sprintf(", generation %d pending", s.pending.id)
	}
	var others []string
	for _, w := range s.workers {
		if w.gen != s.active || w.gen.workers[w.slot.index] != w {
			others = append(others, name(w)+" "+string(w.state))
		}
	}
	sort.Strings(others)
	if len(others) > 0 {
		line += ", also " + strings.Join(others, ", ")
	}
	if s.finished() {
		line += ", finished"
	}
	h.tracef("%s", line)
}

// reloadWith asks for a reload named name with rollout overrides, as
// `baton reload --rolling --canary` does; the trace gets its answer.
func (h *harness) reloadWith(name string, o ReloadOptions) {
	h.t.Helper()
	h.tracef("reload %s asked", name)
	ch := make(chan ReloadOutcome, 1)
	h.reloads = append(h.reloads, reloadWait{name, ch})
	h.step(func() { h.s.requestReloadWith(name, o, ch) })
	h.settle()
}

// send makes the worker named name send a datagram on NOTIFY_SOCKET
// with fields (X_BATON_ERRORS=3), as the notify socket's goroutine
// hands it to the supervisor.
func (h *harness) send(name string, fields map[string]string) {
	h.t.Helper()
	for _, f := range h.procs.byPID {
		if f.name == name && !f.exited {
			var kv []string
			for k, v := range fields {
				kv = append(kv, k+"="+v)
			}
			sort.Strings(kv)
			h.tracef("%s sends %s", name, strings.Join(kv, " "))
			h.s.heard(notify.Message{PID: f.pid, Fields: fields})
			h.settle()
			return
		}
	}
	h.t.Fatalf("no live worker %s", name)
}

// rollout adds the rollout in progress to the trace: its phase, the
// slots done, starting and waiting, and the canary's verdict; or that
// there is none. It also says how many fake workers are live.
func (h *harness) rollout() {
	s := h.s
	if s.roll == nil {
		h.tracef("rollout: none, %d workers live", h.procs.live)
		return
	}
	st := s.rolloutStatus(s.roll, "")
	line := fmt.Sprintf("rollout: %s, done %v, starting %v, waiting %v", st.Phase, st.Done, st.Starting, st.Waiting)
	if len(st.RolledBack) > 0 || len(st.Kept) > 0 {
		line += fmt.Sprintf(", rolled back %v, kept %v", st.RolledBack, st.Kept)
	}
	if c := st.Canary; c != nil {
		line += ", canary " + c.Verdict
	}
	h.tracef("%s, %d workers live", line, h.procs.live)
}
