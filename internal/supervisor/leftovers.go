package supervisor

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/spawn"
)

// This file ends what workers leave behind. A worker runs in a process
// group of its own (pgid = its pid) and baton is a child subreaper, so
// when a worker exits, what it started is either still in its process
// group, or was re-parented to baton when its parent exited. A shell
// script that runs its server without exec is the common case: the shell
// takes the stop signal and exits, the server keeps the listening socket.
//
// When a worker has exited (stopped or crashed), its leftovers get the
// worker's stop signal at once, so that they drain as the worker would
// have, and what still runs at the worker's drain deadline (or
// drain_timeout after a crash) is killed. The search runs off the loop
// (it reads /proc); processes are held by pidfd and checked by start
// time, so no signal reaches a recycled pid. Run, and so `baton stop`,
// waits for them.
//
// Which worker left a process is known for its process group only. A
// process that left the group and the session (setsid: a daemon that
// detaches) and whose parent then exited is re-parented to baton with no
// trace of its worker: baton ends it when it stops. One that stayed in
// baton's session (a plain fork whose parent exited) is a leftover of
// whichever worker exits next when no other worker's group holds it.

// leftovers is what the searches share; they run on goroutines of their
// own.
type leftovers struct {
	mu      sync.Mutex
	claimed map[leftoverKey]bool // processes a search is ending
	// kill is closed by Kill: every leftover is killed now.
	kill     chan struct{}
	killOnce sync.Once
	// signalled and killed count leftovers given the stop signal and
	// SIGKILL since baton started.
	signalled, killed atomic.Int64
}

type leftoverKey struct {
	pid   int
	start uint64
}

func newLeftovers() *leftovers {
	return &leftovers{claimed: map[leftoverKey]bool{}, kill: make(chan struct{})}
}

// claim marks p as ended by the caller, and reports false when another
// search has it.
func (l *leftovers) claim(p spawn.ProcInfo) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := leftoverKey{p.PID, p.StartTime}
	if l.claimed[k] {
		return false
	}
	l.claimed[k] = true
	return true
}

func (l *leftovers) release(p spawn.ProcInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.claimed, leftoverKey{p.PID, p.StartTime})
}

// leftoverSearch ends what one exited worker left behind, or with pgid 0
// (final) what was re-parented to baton when it stops.
type leftoverSearch struct {
	pgid     int   // the exited worker's process group; 0: none
	attrs    []any // the worker's, for the log
	signal   syscall.Signal
	deadline time.Time
	// workers holds the process groups of the other workers baton knows,
	// running or just reaped (with a search of their own): what is in
	// them is theirs.
	workers map[int]bool
	// final: baton stops and no worker runs: everything re-parented to
	// baton is a leftover, in whatever session.
	final bool
	self  int // baton's pid
	sid   int // baton's session
}

// reaped handles the reaper's news that w has exited, at once (its exit
// is handled once its output has been read): what it left behind is
// looked for now, before it can do harm.
func (s *Supervisor) reaped(w *worker) {
	if w.reaped {
		return
	}
	w.reaped = true
	cfg := w.gen.cfg
	deadline := s.now().Add(cfg.DrainTimeout)
	if w.stopped && !w.stopAt.IsZero() {
		deadline = w.stopAt.Add(cfg.DrainTimeout)
	}
	s.searchLeftovers(w.pid, w.attrs(), cfg.StopSignal, deadline)
}

// searchLeftovers starts a search for the leftovers of the worker whose
// process group is pgid (0: the final search when baton stops), on a
// goroutine of its own; Run waits for it.
func (s *Supervisor) searchLeftovers(pgid int, attrs []any, sig syscall.Signal, deadline time.Time) {
	workers, running := map[int]bool{}, 0
	for pid, w := range s.workers {
		if pid != pgid {
			workers[pid] = true
		}
		if !w.reaped {
			running++
		}
	}
	if s.killing {
		deadline = s.now()
	}
	j := &leftoverSearch{pgid: pgid, attrs: attrs, signal: sig, deadline: deadline, workers: workers,
		final: s.stopping && running == 0, self: os.Getpid()}
	s.leftoverSearches++
	if pgid != 0 {
		s.searches[j] = true
	}
	go func() {
		s.env.endLeftovers(j)
		s.post(func() {
			s.leftoverSearches--
			delete(s.searches, j)
		})
	}()
}

// pendingLeftovers lists the searches under way, for an upgrade to run
// them again after its execve.
func (s *Supervisor) pendingLeftovers() []LeftoverState {
	var out []LeftoverState
	for j := range s.searches {
		out = append(out, LeftoverState{PGID: j.pgid, Signal: int(j.signal), Deadline: j.deadline})
	}
	return out
}

// searchFinal starts the final search when baton stops and no worker
// runs any more (the last one's search is the final one otherwise).
func (s *Supervisor) searchFinal() {
	for _, w := range s.workers {
		if !w.reaped {
			return
		}
	}
	s.searchLeftovers(0, nil, s.active.cfg.StopSignal, s.now().Add(s.active.cfg.DrainTimeout))
}

// killLeftovers kills every leftover now (Kill).
func (s *Supervisor) killLeftovers() {
	s.killing = true
	s.leftovers.killOnce.Do(func() { close(s.leftovers.kill) })
}

// endLeftovers finds the search's leftovers, sends them the stop signal
// and SIGCONT (as a stopped worker gets), waits for them until the
// deadline, then kills what remains and whatever they started meanwhile.
// It runs off the loop.
func (s *Supervisor) endLeftovers(j *leftoverSearch) {
	l := s.leftovers
	var held []*spawn.Handle
	defer func() {
		for _, h := range held {
			h.Close()
			l.release(h.Info)
		}
	}()
	found := s.findLeftovers(j)
	held = append(held, found...)
	if len(found) == 0 {
		return
	}
	sig, why := j.signal, "killed: the worker's stop signal is SIGKILL"
	select {
	case <-l.kill:
		sig, why = syscall.SIGKILL, "killed: baton was told to kill every worker"
	default:
		if !time.Now().Before(j.deadline) {
			sig, why = syscall.SIGKILL, "killed: the worker's drain deadline had passed"
		}
	}
	for _, h := range found {
		if err := h.Signal(sig); err != nil {
			continue
		}
		if sig == syscall.SIGKILL {
			l.killed.Add(1)
			s.leftoverLog(j, h, why)
			continue
		}
		h.Signal(syscall.SIGCONT)
		l.signalled.Add(1)
		s.leftoverLog(j, h, "sent "+SignalName(sig))
	}
	if sig != syscall.SIGKILL && spawn.WaitExit(found, j.deadline, l.kill) {
		return
	}
	// Past the deadline: kill what remains, and look again for what they
	// forked in the meantime, until nothing is left.
	for round := 0; round < 5; round++ {
		var left []*spawn.Handle
		for _, h := range held {
			if !h.Exited() {
				left = append(left, h)
			}
		}
		more := s.findLeftovers(j)
		held = append(held, more...)
		left = append(left, more...)
		if len(left) == 0 {
			return
		}
		for _, h := range left {
			if h.Signal(syscall.SIGKILL) == nil {
				l.killed.Add(1)
				s.leftoverLog(j, h, "still ran at the drain deadline: killed")
			}
		}
		spawn.WaitExit(left, time.Now().Add(5*time.Second), nil)
	}
}

// findLeftovers lists the leftovers of a search that no other search
// holds, held by pidfd. A process is one when it is in the exited
// worker's process group, or was re-parented to baton, which did not
// start it, and is in no other worker's group and (but for the final
// search) in baton's session.
func (s *Supervisor) findLeftovers(j *leftoverSearch) []*spawn.Handle {
	if j.sid == 0 {
		j.sid, _ = unix.Getsid(0)
	}
	procs, err := spawn.Processes()
	if err != nil {
		s.log.Warn("cannot look for what exited workers left running", append(j.attrs, "err", err)...)
		return nil
	}
	// The worker was reaped, so no process has its pid; if one does now,
	// the pid was recycled and so may its group id have been: its group
	// is not the worker's any more (while a process is in a group, the
	// group's id is not given to another process).
	group := j.pgid > 0
	if group {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", j.pgid))
		group = errors.Is(err, os.ErrNotExist)
	}
	var out []*spawn.Handle
	for _, p := range procs {
		if p.Zombie() || p.PID == j.self || j.workers[p.PID] {
			continue
		}
		inGroup := group && p.PGID == j.pgid
		stray := p.PPID == j.self && !j.workers[p.PGID] && (j.final || p.SID == j.sid) && !s.env.procs.Started(p.PID)
		if !inGroup && !stray || !s.leftovers.claim(p) {
			continue
		}
		h, err := spawn.Open(p)
		if err != nil {
			s.leftovers.release(p)
			continue
		}
		out = append(out, h)
	}
	return out
}

// leftoverLog logs what was done to a leftover.
func (s *Supervisor) leftoverLog(j *leftoverSearch, h *spawn.Handle, what string) {
	how := "re-parented to baton"
	if j.pgid > 0 && h.Info.PGID == j.pgid {
		how = "in its process group"
	}
	whose := "worker's leftover"
	if j.pgid == 0 {
		whose = "leftover" // of a worker that cannot be told
	}
	msg := fmt.Sprintf("%s process pid %d (%s), %s: %s", whose, h.Info.PID, h.Info.Comm, how, what)
	s.log.Warn(msg, append(j.attrs[:len(j.attrs):len(j.attrs)], "leftover", h.Info.PID, "comm", h.Info.Comm)...)
}
