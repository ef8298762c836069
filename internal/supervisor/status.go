package supervisor

import (
	"cmp"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
)

// The control API's reply types (internal/api) under the names the
// supervisor has always used for them; aliases, so that nothing converts.
type (
	// Status is a snapshot of a running baton (api.Status).
	Status = api.Status
	// ListenerStatus describes one listener baton holds.
	ListenerStatus = api.ListenerStatus
	// SocketStatus is one socket of a listener.
	SocketStatus = api.SocketStatus
	// WorkerStatus describes one live worker.
	WorkerStatus = api.WorkerStatus
	// SlotStatus describes one slot of the serving generation.
	SlotStatus = api.SlotStatus
	// ReloadStats counts reloads.
	ReloadStats = api.ReloadStats
	// RecyclingStatus is a worker baton is replacing.
	RecyclingStatus = api.RecyclingStatus
	// ProcessStatus is baton's own resource use.
	ProcessStatus = api.ProcessStatus
	// CaptureStatus is one bind of a worker that baton answered with its
	// own socket.
	CaptureStatus = api.CaptureStatus
	// HandoffStatus is the fd store's counts, its settings, and the room
	// baton's RLIMIT_NOFILE leaves for it.
	HandoffStatus = api.HandoffStatus
	// OutputStatus is the state of baton's stdout and stderr.
	OutputStatus = api.OutputStatus
	// OutputStream is one of baton's outputs.
	OutputStream = api.OutputStream
	// ReloadResult describes a finished reload.
	ReloadResult = api.ReloadResult
	// ScaleResult describes a scale request once applied.
	ScaleResult = api.ScaleResult
	// Duration is a time.Duration that encodes in JSON as seconds.
	Duration = api.Duration
	// State is where a worker is in its life.
	State = api.WorkerState
)

// Worker states.
const (
	Starting = api.WorkerStarting
	Ready    = api.WorkerReady
	Draining = api.WorkerDraining
	Exited   = api.WorkerExited
)

// Slot states in SlotStatus.
const (
	SlotUp      = api.SlotUp
	SlotBackoff = api.SlotBackoff
	SlotStopped = api.SlotStopped
)

// Status returns a snapshot. It returns false if baton has finished.
//
// The flows of steered UDP listeners are read after the loop's snapshot,
// off the loop: walking a flow table takes about 12 ms for 100,000 peers
// (steer's BenchmarkStats).
func (s *Supervisor) Status() (Status, bool) {
	var st Status
	var groups []*listener.Group
	ok := s.call(func() {
		st = s.status()
		groups = append(groups, s.active.listeners...)
	})
	if ok {
		for i := range st.Listeners {
			if i < len(groups) {
				st.Listeners[i].Flows = flowsStatus(groups[i])
			}
		}
	}
	return st, ok
}

// flowsStatus is the flows part of a listener's status, nil for a
// listener that is not UDP.
func flowsStatus(l *listener.Group) *api.FlowsStatus {
	if l.Spec.Kind != listener.Datagram || !l.Spec.IsInet() {
		return nil
	}
	fs := &api.FlowsStatus{Mode: cmp.Or(l.Spec.Flows, listener.FlowsAuto), Kept: l.Steered()}
	switch {
	case l.FlowsErr != nil:
		fs.Error = l.FlowsErr.Error()
	case !l.Steered() && l.Spec.WantsFlows():
		fs.Error = "UDP flows are not kept across reloads: they could not be when baton bound the listener; restart baton where it may load the steering program"
	case !l.Steered():
		fs.Error = "UDP flows are not kept across reloads: flows=off"
	}
	if !l.Steered() {
		return fs
	}
	st, err := l.FlowStats()
	if err != nil {
		fs.Error = "reading the steering program: " + err.Error()
		return fs
	}
	fs.Capacity, fs.Stale, fs.Evicted = st.Capacity, st.Stale, st.Evicted
	fs.Known, fs.New, fs.Moved, fs.Fallback, fs.Draining = st.Known, st.New, st.Moved, st.Fallback, st.Draining
	fs.QUIC = st.QUIC
	fs.ProgramRuns, fs.ProgramNS = st.Runs, uint64(st.Runtime)
	for _, g := range st.Generations {
		fs.Tracked += g.Flows
		fs.Generations = append(fs.Generations, api.FlowGeneration{Generation: g.Gen, Serving: g.Serving, Sockets: g.Sockets, Flows: g.Flows, Draining: g.Draining})
	}
	return fs
}

func (s *Supervisor) status() Status {
	now := s.now()
	st := Status{
		PID:          os.Getpid(),
		Started:      s.start,
		Uptime:       Duration(now.Sub(s.start)),
		Command:      s.active.cfg.Args,
		Generation:   s.active.id,
		Stopping:     s.stopping,
		Ready:        s.active.cfg.Ready.String(),
		WorkersTotal: s.stats.workersStarted,
		Slots:        len(s.active.slots),
		Reloads: ReloadStats{
			OK:     s.stats.reloadsOK,
			Failed: s.stats.reloadsFailed,
			Queued: s.reload.queued,
			Last:   s.stats.lastReload,
		},
		History:      boundHistory(s.stats.history),
		Process:      processStatus(),
		Upgrades:     s.upgrades,
		UpgradeError: s.lastUpgradeErr,
		MaxRSS:       s.active.cfg.MaxRSS,
		MaxUptime:    Duration(s.active.cfg.MaxUptime),
	}
	burst, interval := s.active.cfg.startLimit()
	st.StartLimitBurst, st.StartLimitInterval = burst, Duration(interval)
	if r := s.recycling; r != nil {
		st.Recycling = &RecyclingStatus{Slot: r.old.slot.index, PID: r.old.pid, Reason: r.reason, Why: r.why, Since: r.started}
		if r.new != nil {
			st.Recycling.NewPID = r.new.pid
		}
	}
	st.Process.OrphansReap = s.env.procs.Orphans()
	st.Process.LeftoversSignalled = s.leftovers.signalled.Load()
	st.Process.LeftoversKilled = s.leftovers.killed.Load()
	st.Handoff = s.handoffStatus(st.Process.FDs)
	st.Output = s.outputStatus()
	if s.pending != nil {
		st.Pending = s.pending.id
	}
	if s.roll != nil {
		st.Rollout = s.rolloutStatus(s.roll, "")
	}
	for _, l := range s.active.listeners {
		ls := ListenerStatus{
			Name: l.Spec.Name, URL: l.Spec.URL(), Kind: string(l.Spec.Kind), Balance: listener.Shared,
			Address: l.Spec.Address(), Fd: -1,
		}
		// A listener whose UDP flows baton keeps has sockets only while a
		// generation holds some: none between a takeover's handing them
		// over and the old workers' exit, say.
		if socks := l.Sockets(); len(socks) > 0 {
			first := socks[0]
			ls.Address, ls.Port, ls.Backlog = first.Addr().String(), first.Port(), first.Backlog()
			ls.Inode, ls.Fd = first.Inode(), first.Fd()
		}
		if l.Steered() {
			if l.Reuseport() {
				ls.Balance = listener.Reuseport
			}
			for _, k := range l.FlowKeys() {
				if sock := l.SocketOf(k.Gen, max(k.Slot, 0)); sock != nil {
					ls.Sockets = append(ls.Sockets, SocketStatus{Slot: k.Slot, Generation: k.Gen, Inode: sock.Inode(), Fd: sock.Fd()})
				}
			}
		} else if l.Reuseport() {
			ls.Balance = listener.Reuseport
			for _, sl := range s.active.slots {
				if sock := l.Socket(sl.index); sock != nil {
					ls.Sockets = append(ls.Sockets, SocketStatus{Slot: sl.index, Inode: sock.Inode(), Fd: sock.Fd()})
				}
			}
		} else if ls.Fd >= 0 {
			ls.Sockets = []SocketStatus{{Slot: -1, Inode: ls.Inode, Fd: ls.Fd}}
		}
		st.Listeners = append(st.Listeners, ls)
	}
	for _, w := range s.workers {
		ws := WorkerStatus{
			Slot: w.slot.index, Generation: w.gen.id, PID: w.pid, State: w.state,
			Started: w.started, Uptime: Duration(now.Sub(w.started)),
			Restarts: w.slot.restarts, Status: w.status, Captures: w.captures,
		}
		if w.accepted >= 0 {
			n := w.accepted
			ws.Accepted = &n
		}
		s.workerResources(w, &ws)
		if w.errors >= 0 {
			n := w.errors
			ws.Errors = &n
		}
		st.Workers = append(st.Workers, ws)
	}
	for _, sl := range s.active.slots {
		ss := SlotStatus{Slot: sl.index, State: SlotBackoff, Restarts: sl.restarts, Backoff: Duration(sl.backoff),
			LastError: sl.lastErr, LastErrorTime: sl.lastErrAt,
			Recycles: sl.recycles, LastRecycle: sl.lastRecycle, LastRecycleTime: sl.lastRecycleAt}
		switch w := s.slotWorker(sl); {
		case w != nil && w.state != Exited:
			ss.State, ss.PID, ss.Generation = SlotUp, w.pid, w.gen.id
		case s.stopping:
			ss.State = SlotStopped
		case !sl.nextStart.IsZero():
			ss.NextStart, ss.NextIn = sl.nextStart, Duration(max(sl.nextStart.Sub(now), 0))
		}
		st.SlotStates = append(st.SlotStates, ss)
	}
	sort.Slice(st.Workers, func(i, j int) bool {
		a, b := st.Workers[i], st.Workers[j]
		if a.Generation != b.Generation {
			return a.Generation > b.Generation
		}
		return a.Slot < b.Slot
	})
	st.Health = api.HealthOf(&st) // the slots' part; KernelStatus adds the kernel's
	return st
}

// processStatus reads baton's own descriptor count and resident memory.
func processStatus() ProcessStatus {
	p := ProcessStatus{Goroutines: runtime.NumGoroutine()}
	p.FDs, _ = handoff.CountFDs() // 0 if /proc cannot say
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.Atoi(f[1])
			p.RSSBytes = pages * os.Getpagesize()
		}
	}
	return p
}

// workerResources fills in what baton read of w in /proc, and how it is,
// or would be, stopped.
func (s *Supervisor) workerResources(w *worker, ws *WorkerStatus) {
	if p := w.seen; p.sampled {
		ws.RSSBytes, ws.CPUSeconds, ws.CPUPercent = p.rss, p.cpu.Seconds(), p.cpuPercent
		ws.SignalHandling = p.signal.String()
	}
	d := w.drain
	if !w.stopped {
		d = chooseDrain(w.gen.cfg, len(w.gen.tcpPorts()) > 0, w.seen.signal)
	}
	ws.Drain, ws.DrainReason = string(d.mode), d.why
	ws.Recycle = w.recycle
	if w.replacing != nil {
		ws.Replaces = w.replacing.pid
	}
}
