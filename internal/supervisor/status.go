package supervisor

import (
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/listener"
)

// Status is a snapshot of a running baton, as `baton status --json` prints
// it. docs/status.md documents every field.
type Status struct {
	PID        int              `json:"pid"`
	Started    time.Time        `json:"started"`
	Uptime     Duration         `json:"uptime"`
	Command    []string         `json:"command"`
	Generation int              `json:"generation"`
	Pending    int              `json:"pending_generation,omitempty"`
	Stopping   bool             `json:"stopping"`
	Ready      string           `json:"ready"`
	Listeners  []ListenerStatus `json:"listeners"`
	Workers    []WorkerStatus   `json:"workers"`
	Slots      int              `json:"slots"`
	// SlotStates lists every slot of the serving generation, with or
	// without a live worker: a slot whose worker crashed or could not
	// start shows its backoff and why.
	SlotStates []SlotStatus  `json:"slot_states"`
	Reloads    ReloadStats   `json:"reloads"`
	Process    ProcessStatus `json:"process"`
	// Upgrades counts baton's re-executions of itself (baton upgrade);
	// UpgradeError says why the last one failed, if it did.
	Upgrades     int    `json:"upgrades"`
	UpgradeError string `json:"upgrade_error,omitempty"`
	WorkersTotal int    `json:"workers_started"`
	// Kernel is the kernel's view of the listeners and workers, added
	// outside the loop by KernelStatus; nil without Options.Inspector.
	Kernel  *inspect.View `json:"kernel,omitempty"`
	Handoff HandoffStatus `json:"handoff"`
	// Output is baton's stdout and stderr: bytes waiting, lines dropped.
	Output OutputStatus `json:"output"`
}

// ListenerStatus describes one listener baton holds.
type ListenerStatus struct {
	Name    string `json:"name"`
	URL     string `json:"url"`
	Kind    string `json:"kind"`
	Balance string `json:"balance"`
	Address string `json:"address"`
	Port    int    `json:"port,omitempty"`
	Backlog int    `json:"backlog,omitempty"`
	// Inode and Fd are those of the first socket (the only one of a
	// shared listener).
	Inode uint64 `json:"inode"`
	Fd    int    `json:"fd"`
	// Sockets lists every socket: one for a shared listener (slot -1),
	// one per slot with balance=reuseport.
	Sockets []SocketStatus `json:"sockets"`
}

// SocketStatus is one socket of a listener.
type SocketStatus struct {
	Slot  int    `json:"slot"`
	Inode uint64 `json:"inode"`
	Fd    int    `json:"fd"`
}

// WorkerStatus describes one live worker.
type WorkerStatus struct {
	Slot       int       `json:"slot"`
	Generation int       `json:"generation"`
	PID        int       `json:"pid"`
	State      State     `json:"state"`
	Started    time.Time `json:"started"`
	Uptime     Duration  `json:"uptime"`
	Restarts   int       `json:"restarts"`
	Status     string    `json:"status,omitempty"`
	// Accepted is the number of connections the worker says it accepted
	// (X_BATON_ACCEPTED=, sent by baton's library); absent when unknown.
	Accepted *int64 `json:"accepted,omitempty"`
	// Captures lists the binds baton answered with its own socket (with
	// --capture-bind).
	Captures []CaptureStatus `json:"captures,omitempty"`
}

// Slot states in SlotStatus.
const (
	// SlotUp: the slot has a live worker of the serving generation.
	SlotUp = "up"
	// SlotBackoff: its worker crashed or could not start; a new one
	// starts at NextStart.
	SlotBackoff = "backoff"
	// SlotStopped: baton is stopping; the slot gets no new worker.
	SlotStopped = "stopped"
)

// SlotStatus describes one slot of the serving generation.
type SlotStatus struct {
	Slot  int    `json:"slot"`
	State string `json:"state"`
	// PID is the slot's live worker, 0 when it has none.
	PID      int `json:"pid,omitempty"`
	Restarts int `json:"restarts"`
	// Backoff is the wait before the slot's last restart; NextStart and
	// NextIn say when the pending one is due (backoff only).
	Backoff   Duration  `json:"backoff"`
	NextStart time.Time `json:"next_start,omitzero"`
	NextIn    Duration  `json:"next_in,omitempty"`
	// LastError says why the slot's last worker could not start or
	// exited on its own, LastErrorTime when; empty while nothing failed.
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
}

// ReloadStats counts reloads.
type ReloadStats struct {
	OK     int           `json:"ok"`
	Failed int           `json:"failed"`
	Queued bool          `json:"queued"`
	Last   *ReloadResult `json:"last,omitempty"`
}

// ProcessStatus is baton's own resource use, for leak checks and capacity.
type ProcessStatus struct {
	FDs         int `json:"fds"`
	Goroutines  int `json:"goroutines"`
	RSSBytes    int `json:"rss_bytes"`
	OrphansReap int `json:"orphans_reaped"`
	// LeftoversSignalled and LeftoversKilled count the processes exited
	// workers left running that baton sent the stop signal, and that it
	// killed (SIGKILL) at the drain deadline.
	LeftoversSignalled int64 `json:"leftovers_signalled"`
	LeftoversKilled    int64 `json:"leftovers_killed"`
}

// Status returns a snapshot. It returns false if baton has finished.
func (s *Supervisor) Status() (Status, bool) {
	var st Status
	ok := s.call(func() { st = s.status() })
	return st, ok
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
		Process:      processStatus(),
		Upgrades:     s.upgrades,
		UpgradeError: s.lastUpgradeErr,
	}
	st.Process.OrphansReap = s.env.procs.Orphans()
	st.Process.LeftoversSignalled = s.leftovers.signalled.Load()
	st.Process.LeftoversKilled = s.leftovers.killed.Load()
	st.Handoff = s.handoffStatus(st.Process.FDs)
	st.Output = s.outputStatus()
	if s.pending != nil {
		st.Pending = s.pending.id
	}
	for _, l := range s.active.listeners {
		socks := l.Sockets()
		first := socks[0]
		ls := ListenerStatus{
			Name: l.Spec.Name, URL: l.Spec.URL(), Kind: string(l.Spec.Kind), Balance: listener.Shared,
			Address: first.Addr().String(), Port: first.Port(), Backlog: first.Backlog(),
			Inode: first.Inode(), Fd: first.Fd(),
		}
		if l.Reuseport() {
			ls.Balance = listener.Reuseport
			for _, sl := range s.active.slots {
				if sock := l.Socket(sl.index); sock != nil {
					ls.Sockets = append(ls.Sockets, SocketStatus{Slot: sl.index, Inode: sock.Inode(), Fd: sock.Fd()})
				}
			}
		} else {
			ls.Sockets = []SocketStatus{{Slot: -1, Inode: first.Inode(), Fd: first.Fd()}}
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
		st.Workers = append(st.Workers, ws)
	}
	for _, sl := range s.active.slots {
		ss := SlotStatus{Slot: sl.index, State: SlotBackoff, Restarts: sl.restarts, Backoff: Duration(sl.backoff),
			LastError: sl.lastErr, LastErrorTime: sl.lastErrAt}
		switch w := s.active.workers[sl.index]; {
		case w != nil && w.state != Exited:
			ss.State, ss.PID = SlotUp, w.pid
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
