package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/logring"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
	"github.com/baton-dev/baton/internal/upgrade"
)

// upgradeReply is the upgrade method's reply (api.UpgradeReply), sent
// just before baton re-executes itself, which AfterReply does.
type upgradeReply struct {
	api.UpgradeReply
	exec func()
}

// AfterReply re-executes baton once the reply is out.
func (r *upgradeReply) AfterReply() { r.exec() }

// upgradeParams are the params of the upgrade method.
type upgradeParams = api.UpgradeParams

// upgradeState is the upgrade in progress; the loop owns it.
type upgradeState struct {
	// on: an upgrade holds reloads back, from when it asks for its
	// snapshot (waiting for a reload in progress to finish first) to its
	// execve or its failure, so that nothing changes between the state the
	// pre-flight checked and the one handed over.
	on bool
	// started is when the upgrade was asked for (History).
	started time.Time
	// held: a reload was asked for meanwhile, for reason; it runs after
	// the upgrade (in the new baton, or in this one if the upgrade fails).
	// waiters wait for its outcome.
	held    bool
	reason  string
	opts    ReloadOptions // the last request's rollout overrides
	waiters []chan<- ReloadOutcome
}

// Upgrade re-executes baton as binary (its own binary when ""), as the
// upgrade method does, for SIGUSR2. Failures are logged.
func (s *Supervisor) Upgrade(binary string, keepWorkers bool) {
	if r, err := s.upgrade(s.ctx, upgradeParams{Binary: binary, KeepWorkers: keepWorkers}); err == nil {
		r.AfterReply()
	}
}

// upgrade checks the new binary (OpenBinary) and its pre-flight and, when
// both pass, returns the reply whose AfterReply re-executes baton as that
// very file (keeping the pid). A refusal is logged as well as returned,
// and changes nothing.
func (s *Supervisor) upgrade(ctx context.Context, p upgradeParams) (*upgradeReply, error) {
	var started time.Time
	s.call(func() { started = s.now() })
	r, err := s.prepareUpgrade(ctx, p)
	if err != nil {
		s.log.Error("upgrade refused", "err", err)
		s.post(func() { s.rememberUpgradeFailure(started, p.Binary, err) })
	}
	return r, err
}

func (s *Supervisor) prepareUpgrade(ctx context.Context, p upgradeParams) (*upgradeReply, error) {
	if s.spawner == nil {
		return nil, errors.New("upgrade refused: this supervisor has no spawner to run the new binary with (Options.Spawner); baton keeps running unchanged")
	}
	if p.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("upgrade: finding baton's own binary: %w; pass --binary", err)
		}
		p.Binary = exe
	}
	bin, err := upgrade.OpenBinary(p.Binary)
	if err != nil {
		return nil, fmt.Errorf("upgrade refused: %w; baton keeps running unchanged", err)
	}
	h, held, err := s.upgradeSnapshot(ctx)
	if err != nil {
		bin.Close()
		return nil, err
	}
	// From here reloads are held until endUpgrade, or the execve.
	want := h.Expect()
	state, err := json.Marshal(h)
	if err == nil {
		s.log.Info("upgrade: pre-flight of the new binary", "binary", p.Binary)
		if err = upgrade.Preflight(ctx, s.spawner, bin, s.opts.Args, state, held, want); err != nil {
			err = fmt.Errorf("upgrade to %s refused: its pre-flight failed: %w; baton keeps running unchanged", p.Binary, err)
		}
	}
	held.Close()
	if err != nil {
		bin.Close()
		s.post(s.endUpgrade)
		return nil, err
	}
	s.log.Info("upgrade: pre-flight passed", "binary", p.Binary, "state_version", want.Version, "listeners", want.Listeners, "workers", want.Workers, "descriptors", want.Descriptors)
	reply := api.UpgradeReply{PID: os.Getpid(), Binary: p.Binary, Upgrades: h.Upgrades, ID: h.Nonce, Preflight: want.Summary(), Generation: h.Active}
	return &upgradeReply{UpgradeReply: reply, exec: func() { s.finishUpgrade(p, bin, h.Nonce) }}, nil
}

// upgradeSnapshot begins the upgrade on the loop: it holds reloads back
// from now on, waits for a reload in progress to finish, and takes the
// state for the pre-flight with copies of its descriptors (the caller
// closes them).
func (s *Supervisor) upgradeSnapshot(ctx context.Context) (*UpgradeState, *upgrade.Held, error) {
	for waited := false; ; waited = true {
		var (
			h    *UpgradeState
			held *upgrade.Held
			wait <-chan ReloadOutcome
			err  error
		)
		if !s.call(func() { h, held, wait, err = s.beginUpgrade(waited) }) {
			return nil, nil, ErrStopping
		}
		if err != nil || h != nil {
			return h, held, err
		}
		if !waited {
			s.log.Info("upgrade: waiting for the reload in progress to finish; reloads asked for meanwhile run after the upgrade")
		}
		select {
		case <-wait:
		case <-ctx.Done():
			s.post(s.endUpgrade)
			return nil, nil, fmt.Errorf("upgrade: stopped waiting for the reload in progress to finish (%w); baton keeps running unchanged", ctx.Err())
		case <-s.ended:
			return nil, nil, ErrStopping
		}
	}
}

// beginUpgrade starts holding reloads back and takes the state, with a
// nonce for the handshake and copies of its descriptors. While a reload
// is in progress it returns instead a channel that receives its outcome:
// the caller waits, then calls again with waited set. A refusal changes
// nothing.
func (s *Supervisor) beginUpgrade(waited bool) (*UpgradeState, *upgrade.Held, <-chan ReloadOutcome, error) {
	switch {
	case s.stopping:
		return nil, nil, nil, errors.New("upgrade: baton is stopping")
	case s.upgrading.on && !waited:
		return nil, nil, nil, errors.New("upgrade: another upgrade is in progress; baton status shows when it is done")
	case s.takingOver:
		return nil, nil, nil, errors.New("upgrade: a takeover by a new instance is in progress")
	}
	if !s.upgrading.on {
		s.upgrading.started = s.now()
	}
	s.upgrading.on = true
	s.lastUpgradeErr = ""
	if s.reloading() {
		ch := make(chan ReloadOutcome, 1)
		s.reload.waiters = append(s.reload.waiters, ch)
		return nil, nil, ch, nil
	}
	h, err := s.upgradeState(false)
	if err != nil {
		s.endUpgrade()
		return nil, nil, nil, err
	}
	h.Nonce = upgrade.NewNonce()
	held, err := upgrade.Hold(h.Fds())
	if err != nil {
		s.endUpgrade()
		return nil, nil, nil, fmt.Errorf("upgrade: %w", err)
	}
	return h, held, nil, nil
}

// holdReload keeps a reload asked for during an upgrade until the upgrade
// is over. Every request held is served by one reload, as behind a reload.
func (s *Supervisor) holdReload(reason string, o ReloadOptions, ch chan<- ReloadOutcome) {
	if !s.upgrading.held {
		s.log.Info("reload held until the upgrade in progress is over", "reason", reason)
	}
	s.upgrading.held, s.upgrading.reason, s.upgrading.opts = true, reason, o
	if ch != nil {
		s.upgrading.waiters = append(s.upgrading.waiters, ch)
	}
}

// endUpgrade ends an upgrade that did not happen: reloads are no longer
// held, and the one held, if any, runs now (or behind the reload in
// progress).
func (s *Supervisor) endUpgrade() {
	u := s.upgrading
	s.upgrading = upgradeState{}
	if !u.held {
		return
	}
	switch {
	case s.stopping:
		for _, ch := range u.waiters {
			ch <- ReloadOutcome{Err: ErrStopping}
		}
	case s.reloading():
		s.reload.queued, s.reload.queuedReason, s.reload.queuedOpts = true, u.reason, u.opts
		s.reload.queuedFor = append(s.reload.queuedFor, u.waiters...)
	default:
		s.log.Info("running the reload asked for during the upgrade", "reason", u.reason)
		s.reload.opts = u.opts
		s.prepareReload(u.reason, u.waiters)
	}
}

// finishUpgrade re-executes baton as bin once the reply is out. The
// clients waiting for a held reload are told first: the execve closes
// their connections.
func (s *Supervisor) finishUpgrade(p upgradeParams, bin *upgrade.Binary, id string) {
	defer bin.Close() // still here: the execve did not happen
	for range 3 {
		var told []chan<- ReloadOutcome
		if !s.call(func() { told = s.tellHeldWaiters(p.Binary) }) {
			return
		}
		if len(told) == 0 {
			break
		}
		// Until their handlers have taken the news (then they write it).
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline) && slices.ContainsFunc(told, func(ch chan<- ReloadOutcome) bool { return len(ch) > 0 }); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	s.call(func() { s.execUpgrade(p, bin, id) })
}

// tellHeldWaiters answers the clients waiting for the held reload, which
// still runs after the upgrade.
func (s *Supervisor) tellHeldWaiters(binary string) []chan<- ReloadOutcome {
	told := s.upgrading.waiters
	s.upgrading.waiters = nil
	for _, ch := range told {
		ch <- ReloadOutcome{Err: fmt.Errorf("reload not run yet: baton is re-executing itself as %s (baton upgrade); the reload runs once that is over, in the new baton, or in this one if the upgrade fails: see baton status", binary)}
	}
	return told
}

// execUpgrade re-executes baton as bin, handing over everything. It
// returns only when that failed, and then nothing has changed (the held
// reload runs now).
func (s *Supervisor) execUpgrade(p upgradeParams, bin *upgrade.Binary, id string) {
	// From here on exit statuses wait for the new program: a worker that
	// exits now stays a zombie until the new baton reaps it.
	s.env.procs.Pause()
	fail := func(err error) {
		s.env.procs.Resume()
		err = fmt.Errorf("%w; baton (pid %d) keeps running unchanged", err, os.Getpid())
		s.lastUpgradeErr = err.Error()
		s.log.Error("upgrade failed", "err", err)
		s.rememberUpgradeFailure(s.upgrading.started, p.Binary, err)
		s.endUpgrade()
	}
	h, err := s.upgradeState(true)
	if err != nil {
		fail(err)
		return
	}
	h.KeepWorkers = p.KeepWorkers
	h.Binary = p.Binary
	h.ReloadQueued, h.ReloadReason = s.upgrading.held, s.upgrading.reason
	h.ReloadRolling, h.ReloadCanary, h.ReloadCanaryWindow = s.upgrading.opts.Rolling, s.upgrading.opts.Canary, s.upgrading.opts.CanaryWindow
	state, err := json.Marshal(h)
	if err != nil {
		fail(err)
		return
	}
	s.log.Info("upgrade: re-executing baton", "binary", p.Binary, "pid", os.Getpid(), "workers", len(s.workers), "keep_workers", p.KeepWorkers)
	if s.opts.BeforeExec != nil {
		s.opts.BeforeExec()
	}
	err = upgrade.Exec(s.spawner, bin, s.opts.Args, state, h.Fds(), id)
	// Still here: the execve failed.
	for _, w := range s.workers {
		for _, pp := range w.pipes {
			pp.release()
		}
	}
	fail(err)
}

// upgradeState snapshots the state. With hold, output pipes are held open for
// the execve. It fails while a reload or baton's stop is under way.
func (s *Supervisor) upgradeState(hold bool) (*UpgradeState, error) {
	if s.stopping {
		return nil, errors.New("upgrade: baton is stopping")
	}
	if s.reloading() {
		return nil, errors.New("upgrade: a reload is in progress; upgrade when it has finished")
	}
	if err := s.handoffBusy(); err != nil {
		return nil, err
	}
	if err := s.recycleBusy(); err != nil {
		return nil, err
	}
	if s.takingOver {
		return nil, errors.New("upgrade: a takeover by a new instance is in progress")
	}
	h := &UpgradeState{
		Leftovers: s.pendingLeftovers(),
		Version:   stateVersionNoFlows, PID: os.Getpid(), Started: s.start, NextGen: s.nextGen,
		Active: s.active.id, EverReady: s.everReady, Upgrades: s.upgrades,
		Stats: StatsState{
			ReloadsOK: s.stats.reloadsOK, ReloadsFailed: s.stats.reloadsFailed,
			LastReload: s.stats.lastReload, WorkersStarted: s.stats.workersStarted,
			History: boundHistory(s.stats.history), UpgradeStarted: s.upgrading.started,
		},
		NotifyFd: s.notify.Fd(), NotifyAddr: s.notify.Addr(),
		WorkerFd: s.workerSock.Fd(), WorkerAddr: s.workerSock.Path(),
		ControlFd: -1,
	}
	if s.opts.Control != nil {
		h.ControlFd, h.ControlPath = s.opts.Control.Fd(), s.opts.Control.Path()
	}
	if s.opts.Logs != nil {
		h.Logs = s.opts.Logs.Tail(logring.Filter{}, 0)
	}
	ids := map[*listener.Group]int{}
	for g := range s.groups {
		ids[g] = len(ids) + 1
		ls := ListenerState{ID: ids[g], Spec: g.Spec.String()}
		if g.FlowsErr != nil {
			ls.FlowsError = g.FlowsErr.Error()
		}
		if fs := g.FlowState(); fs != nil {
			ls.Flows, h.Version = fs, StateVersion
			h.Listeners = append(h.Listeners, ls)
			continue
		}
		for slot, sock := range g.Sockets() {
			if !g.Reuseport() {
				slot = -1
			} else {
				slot = g.SlotOf(sock)
			}
			ls.Sockets = append(ls.Sockets, SocketState{Slot: slot, Fd: sock.Fd(), Backlog: sock.Backlog(), PathIno: sock.PathIno()})
		}
		h.Listeners = append(h.Listeners, ls)
	}
	gens := []*generation{s.active}
	for _, w := range s.workers {
		if !slices.Contains(gens, w.gen) {
			gens = append(gens, w.gen)
		}
	}
	for _, g := range gens {
		gs := GenerationState{ID: g.id, Config: *g.cfg}
		for _, l := range g.listeners {
			gs.Listeners = append(gs.Listeners, ids[l])
		}
		for _, sl := range g.slots {
			gs.Slots = append(gs.Slots, SlotState{Index: sl.index, Removed: sl.removed, Restarts: sl.restarts, Backoff: sl.backoff,
				LastError: sl.lastErr, LastErrorAt: sl.lastErrAt,
				Recycles: sl.recycles, LastRecycle: sl.lastRecycle, LastRecycleAt: sl.lastRecycleAt})
		}
		h.Generations = append(h.Generations, gs)
	}
	for _, w := range s.workers {
		ws := WorkerState{
			PID: w.pid, Generation: w.gen.id, Slot: w.slot.index, State: w.state,
			Started: w.started, ReadyAt: w.readyAt, StopAt: w.stopAt, Status: w.status,
			Accepted: w.accepted, Stopped: w.stopped, Restart: w.restart,
			Current: w.gen.workers[w.slot.index] == w, CaptureFd: w.captureFd, Captures: w.captures,
		}
		for name := range w.released {
			ws.Released = append(ws.Released, name)
		}
		if hold {
			for _, p := range w.pipes {
				if fd, ok := p.hold(); ok {
					ws.Output = append(ws.Output, fd)
				}
			}
		}
		h.Workers = append(h.Workers, ws)
	}
	return h, nil
}

// Restore rebuilds a supervisor from the state a previous baton handed
// over when it re-executed itself as this binary. Run then adopts the
// workers and, unless the upgrade keeps them, starts a new generation.
func Restore(h *UpgradeState, o Options) (*Supervisor, error) {
	s := newSupervisor(o, env{})
	s.start, s.nextGen, s.everReady, s.upgrades = h.Started, h.NextGen, h.EverReady, h.Upgrades+1
	s.restored = h
	s.stats = stats{reloadsOK: h.Stats.ReloadsOK, reloadsFailed: h.Stats.ReloadsFailed, lastReload: h.Stats.LastReload, workersStarted: h.Stats.WorkersStarted,
		history: boundHistory(h.Stats.History)}
	s.rememberUpgrade(h.Stats.UpgradeStarted, h.Binary, h.Active)
	var err error
	if s.notify, err = notify.FromFd(h.NotifyFd, h.NotifyAddr); err != nil {
		return nil, err
	}
	if s.workerSock, err = control.AbstractFromFd(h.WorkerFd, h.WorkerAddr, o.Log); err != nil {
		return nil, err
	}
	if s.devnull, err = os.Open(os.DevNull); err != nil {
		return nil, err
	}
	byID := map[int]*listener.Group{}
	for _, ls := range h.Listeners {
		spec, err := listener.Parse(ls.Spec)
		if err != nil {
			return nil, fmt.Errorf("upgrade: listener %q: %w", ls.Spec, err)
		}
		if ls.Flows != nil {
			g, err := listener.AdoptFlows(spec, ls.Flows)
			if err != nil {
				return nil, fmt.Errorf("upgrade: %w", err)
			}
			byID[ls.ID] = g
			s.groups[g] = true
			continue
		}
		socks := map[int]*listener.Socket{}
		for _, ss := range ls.Sockets {
			if socks[ss.Slot], err = listener.Adopt(spec, ss.Fd, ss.Backlog, ss.PathIno); err != nil {
				return nil, fmt.Errorf("upgrade: listener %s: %w", spec.Name, err)
			}
		}
		g := listener.AdoptGroup(spec, socks)
		if ls.FlowsError != "" {
			g.FlowsErr = errors.New(ls.FlowsError)
		}
		byID[ls.ID] = g
		s.groups[g] = true
	}
	slots := map[int]*slot{}
	gens := map[int]*generation{}
	for _, gs := range h.Generations {
		cfg := gs.Config
		g := &generation{id: gs.ID, cfg: &cfg, workers: map[int]*worker{}, started: s.now()}
		for _, id := range gs.Listeners {
			g.listeners = append(g.listeners, byID[id])
		}
		for _, ss := range gs.Slots {
			sl := slots[ss.Index]
			if sl == nil || gs.ID == h.Active {
				sl = &slot{index: ss.Index, removed: ss.Removed, restarts: ss.Restarts, backoff: ss.Backoff,
					lastErr: ss.LastError, lastErrAt: ss.LastErrorAt,
					recycles: ss.Recycles, lastRecycle: ss.LastRecycle, lastRecycleAt: ss.LastRecycleAt}
				slots[ss.Index] = sl
			}
			g.slots = append(g.slots, sl)
		}
		gens[gs.ID] = g
	}
	s.active = gens[h.Active]
	if s.active == nil {
		return nil, fmt.Errorf("upgrade: the state has no active generation %d", h.Active)
	}
	for _, ws := range h.Workers {
		g := gens[ws.Generation]
		if g == nil {
			continue
		}
		sl := g.slotAt(ws.Slot)
		w := newWorker(g, sl)
		w.pid, w.state, w.started, w.readyAt, w.stopAt = ws.PID, ws.State, ws.Started, ws.ReadyAt, ws.StopAt
		w.status, w.accepted, w.stopped, w.restart = ws.Status, ws.Accepted, ws.Stopped, ws.Restart
		w.captureFd, w.captures = ws.CaptureFd, ws.Captures
		w.adoptOutput = ws.Output
		for _, name := range ws.Released {
			if w.released == nil {
				w.released = map[string]bool{}
			}
			w.released[name] = true
		}
		if ws.Current {
			g.workers[ws.Slot] = w
		}
		s.adopted = append(s.adopted, w)
	}
	return s, nil
}

// slotAt finds the generation's slot of index i (a removed slot's workers
// keep theirs).
func (g *generation) slotAt(i int) *slot {
	for _, sl := range g.slots {
		if sl.index == i {
			return sl
		}
	}
	return &slot{index: i, removed: true}
}

// adopt takes over the workers of a restored state: registers them with
// the reaper, restarts the copying of their output and the serving of
// their binds, and re-arms their deadlines. It runs on the loop, first.
func (s *Supervisor) adopt() {
	for _, w := range s.adopted {
		var files []*os.File
		for _, fd := range w.adoptOutput {
			files = append(files, os.NewFile(uintptr(fd), "worker output"))
		}
		if len(files) > 0 {
			s.copyOutput(w, files)
		} else {
			close(w.outputDone)
		}
		proc, err := s.env.procs.Adopt(w.pid, s.onExit(w))
		close(w.spawned)
		if err != nil {
			// It exited and was reaped just before baton re-executed
			// itself (its exit was still on its way to the old loop):
			// handle its exit now.
			s.log.Info("worker exited during the upgrade", w.attrs("state", w.state)...)
			w.proc = deadProcess(w.pid)
			s.addWorker(w)
			s.workerExited(w, 0)
			continue
		}
		w.proc = proc
		s.addWorker(w)
		if w.captureFd >= 0 {
			go s.serveCapture(w, -1, w.captureFd)
		}
		cfg := w.gen.cfg
		switch w.state {
		case Starting:
			s.armReadiness(w)
		case Draining:
			w.setTimer(s.after(max(cfg.DrainTimeout-s.since(w.stopAt), 0), func() {
				if w.state != Exited {
					s.log.Warn("worker did not exit within the drain timeout; killing it", w.attrs("drain_timeout", cfg.DrainTimeout)...)
					w.kill()
				}
			}))
		}
		s.log.Info("worker adopted", w.attrs("state", w.state)...)
	}
	s.adopted = nil
	s.env.procs.Resume() // collect what exited during the execve
	// A slot of the serving generation whose worker crashed and was
	// waiting for its restart gets it now.
	for _, sl := range s.active.slots {
		if w := s.active.workers[sl.index]; w == nil || w.state == Exited {
			s.startWorker(s.active, sl)
		}
	}
	h := s.restored
	s.restored = nil
	// What exited workers left running was being ended by searches the
	// execve cut short: they start again here, with the same deadlines.
	for _, l := range h.Leftovers {
		s.searchLeftovers(l.PGID, []any{"pgid", l.PGID, "across", "an upgrade"}, syscall.Signal(l.Signal), l.Deadline)
	}
	s.log.Info("upgrade done: baton re-executed itself", "binary", h.Binary, "pid", os.Getpid(), "workers", len(s.workers), "generation", s.active.id)
	switch {
	case !h.KeepWorkers:
		if h.ReloadQueued {
			s.log.Info("the reload asked for during the upgrade is the upgrade's own", "reason", h.ReloadReason)
		}
		s.requestReload("upgrade", nil)
	case h.ReloadQueued:
		s.log.Info("running the reload asked for during the upgrade", "reason", h.ReloadReason)
		s.requestReloadWith(h.ReloadReason, ReloadOptions{Rolling: h.ReloadRolling, Canary: h.ReloadCanary, CanaryWindow: h.ReloadCanaryWindow}, nil)
	}
}

// deadProcess stands for a worker that exited before it could be adopted.
func deadProcess(pid int) *processGone { return &processGone{pid} }

// processGone is a Child that has been reaped already.
type processGone struct{ pid int }

// PID is the pid the child had.
func (p *processGone) PID() int { return p.pid }

// Signal returns os.ErrProcessDone: there is nothing to signal.
func (p *processGone) Signal(syscall.Signal) error { return os.ErrProcessDone }

// SignalGroup returns os.ErrProcessDone: the group may be another's now.
func (p *processGone) SignalGroup(syscall.Signal) error { return os.ErrProcessDone }

var _ spawn.Child = (*processGone)(nil)
