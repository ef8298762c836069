package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/logring"
	"github.com/baton-dev/baton/internal/notify"
	"github.com/baton-dev/baton/internal/spawn"
)

// ErrStopping is returned for reloads asked for while baton stops.
var ErrStopping = errors.New("baton is stopping")

// Options are what New needs.
type Options struct {
	// Plan is what the first generation runs. The supervisor owns its
	// listeners from then on and closes them when Run ends.
	Plan Plan
	// Prepare, if set, makes the plan of each reload (a re-read config
	// file): it gets the listeners in use, to keep those that did not
	// change, and the number of workers now (after any scale), and returns
	// the new plan or why there is none. It runs off the loop. Without it
	// a reload runs the same plan again.
	Prepare func(current []*listener.Group, workers int) (*Plan, error)
	// Spawner starts, adopts and reaps the workers (through its Starter)
	// and runs the new binary of an upgrade.
	Spawner *spawn.Spawner
	Log     *slog.Logger
	// Logs, if set, keeps the workers' recent output (with Config.LogPrefix
	// on: baton reads it) for `baton logs` (logs.go).
	Logs *logring.Ring
	// Stdout and Stderr receive worker output. With Config.LogPrefix off
	// they must be *os.File or have a File method (outbuf.Writer), whose
	// file workers then inherit directly.
	Stdout, Stderr io.Writer
	// Args is the command line baton re-executes itself with on an
	// upgrade (os.Args), and Control the control socket it hands over.
	Args    []string
	Control *control.Server
	// OnReady, if set, is called from the loop when the first generation
	// is ready, and again after each reload ends; OnReloading when a
	// reload starts; OnStopping when baton begins to stop. baton uses them
	// to tell systemd.
	OnReady, OnReloading, OnStopping func()
	// Inspector, if set, adds the kernel's view to status replies
	// (KernelStatus); it is asked outside the loop.
	Inspector *inspect.Inspector
	// Events, if set, is called from the loop for each Event. It must
	// never block: it runs on the state machine's only goroutine.
	Events func(Event)
	// OnTakenOver, if set, is called when a new instance took over
	// (baton tells systemd its new main pid).
	OnTakenOver func(pid int)
	// TookOver says the listeners were taken over from a running
	// instance: the UDP sockets of this one serve new peers only once its
	// workers are ready (the running instance's serve until then).
	TookOver bool
	// OnListeners, if set, is called on the loop after every event with
	// the serving generation's listeners (baton keeps their sockets in
	// its service manager's fd store). It must never block, and must
	// duplicate a descriptor it wants to use later: the groups close
	// their sockets when the loop says so.
	OnListeners func([]*listener.Group)
	// BeforeExec, if set, is called on the loop just before baton
	// re-executes itself (an upgrade): what is buffered for its output or
	// its service manager must go out first, or be lost. It must return
	// within a second or two.
	BeforeExec func()
}

// Supervisor runs worker generations. Create it with New, then call Run.
type Supervisor struct {
	plan    Plan           // the first generation's
	spawner *spawn.Spawner // for an upgrade's pre-flight and execve
	env     env            // processes and time (env.go)
	log     *slog.Logger
	opts    Options

	stdout, stderr *sink
	devnull        *os.File
	notify         *notify.Server
	workerSock     *control.Server
	handoff        *handoffState // fd store of handed-off connections (handoff.go)
	lineage        *lineage      // who descends from baton (peers.go)

	events chan func()
	done   chan struct{} // closed when Run has finished
	ended  chan struct{} // closed when the loop has ended, before Run's cleanup
	start  time.Time
	// ctx is cancelled when Run returns; goroutines serving workers end.
	ctx    context.Context
	cancel context.CancelFunc

	// Everything below is owned by the loop goroutine.
	active, pending *generation
	nextGen         int
	workers         map[int]*worker          // live workers by pid
	groups          map[*listener.Group]bool // every listener group open
	preparing       bool                     // a reload's plan is being made
	scaleQueue      []scaleRequest           // scale requests waiting for the reload in progress
	reload          reloadState
	roll            *roll // the rolling or canary reload in progress (rolling.go)
	stopping        bool
	everReady       bool
	stats           stats
	takingOver      bool          // a takeover by a new instance is under way
	upgrades        int           // upgrades done since baton started
	lastUpgradeErr  string        // why the last upgrade failed, if it did
	restored        *UpgradeState // set by Restore until Run adopts
	adopted         []*worker     // workers of the restored state

	upgrading upgradeState // the upgrade in progress (upgrade.go)
	applying  int          // plan Applies running (endReload)
	// leftoverSearches counts the searches for what exited workers left
	// running that have not finished (leftovers.go); Run waits for them.
	leftoverSearches int
	searches         map[*leftoverSearch]bool // those of exited workers, for an upgrade
	killing          bool                     // Kill was called: leftovers are killed at once

	leftovers *leftovers // shared with the searches' goroutines

	// UDP flows (flows.go): the last error telling a steering program,
	// logged once; givenAway once a takeover committed (the new instance
	// decides the serving sockets); tookOver in an instance that took
	// over (it decides them once its workers are ready).
	flowErr   string
	givenAway bool
	tookOver  bool

	// recycling is the replacement of a worker baton has under way
	// (recycle.go); sampling counts the reads of /proc that have not
	// reported back (sample.go).
	recycling *recycleState
	sampling  int
}

type stats struct {
	reloadsOK, reloadsFailed int
	lastReload               *ReloadResult
	workersStarted           int
	// history is the last reloads and upgrades, oldest first
	// (history.go).
	history []HistoryEntry
}

// New prepares a supervisor: it opens the notify socket and the worker
// socket (BATON_SOCKET), both in the abstract namespace under a random
// name, but starts no worker.
func New(o Options) (*Supervisor, error) { return newWithEnv(o, env{}) }

// newWithEnv is New with the seams of e (env.go); its zero fields get the
// real ones.
func newWithEnv(o Options, e env) (*Supervisor, error) {
	s := newSupervisor(o, e)
	if err := o.Plan.check(); err != nil {
		return nil, err
	}
	for _, l := range o.Plan.Listeners {
		s.groups[l] = true
	}
	var err error
	if s.devnull, err = os.Open(os.DevNull); err != nil {
		return nil, err
	}
	id := randomID()
	if s.notify, err = notify.Listen("@baton/" + id + "/notify"); err != nil {
		s.devnull.Close()
		return nil, err
	}
	if s.workerSock, err = control.ListenAbstract("@baton/"+id+"/worker", o.Log); err != nil {
		s.devnull.Close()
		s.notify.Close()
		return nil, err
	}
	return s, nil
}

// newSupervisor makes the supervisor's state, with the seams of e; its
// zero fields get the real ones: o.Spawner's Starter, the system's clock,
// endLeftovers, readProcSample.
func newSupervisor(o Options, e env) *Supervisor {
	if e.procs == nil && o.Spawner != nil {
		e.procs = o.Spawner.Starter()
	}
	if e.clock == nil {
		e.clock = realClock{}
	}
	s := &Supervisor{
		plan:     o.Plan,
		groups:   map[*listener.Group]bool{},
		spawner:  o.Spawner,
		log:      o.Log,
		opts:     o,
		stdout:   &sink{w: o.Stdout},
		stderr:   &sink{w: o.Stderr},
		events:   make(chan func(), 1024),
		done:     make(chan struct{}),
		ended:    make(chan struct{}),
		workers:  map[int]*worker{},
		env:      e,
		tookOver: o.TookOver,
		start:    e.clock.Now(),
	}
	if s.env.endLeftovers == nil {
		s.env.endLeftovers = s.endLeftovers
	}
	if s.env.readProc == nil {
		s.env.readProc = readProcSample
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.handoff = newHandoff(s.log)
	s.lineage = newLineage()
	s.leftovers = newLeftovers()
	s.searches = map[*leftoverSearch]bool{}
	return s
}

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Run starts the first generation and supervises until Stop has finished:
// every worker has exited. It closes the notify and worker sockets and
// every listener before returning.
func (s *Supervisor) Run() error {
	defer close(s.done)
	defer s.cancel()
	if err := s.notify.RefusesDescriptors(); err != nil {
		s.log.Warn("the notify and worker sockets cannot refuse descriptors on this kernel; what a local process sends is closed off the supervisor's loop", "err", err)
	}
	go s.notify.Serve(s.heard)
	s.workerSock.ConnMethods(handoff.MethodHandoff, handoff.MethodAdopt)
	s.workerSock.Admit(s.lineage.admit)
	go s.workerSock.Serve(s.handleWorker)
	defer s.workerSock.Close()
	defer s.closeHandoff()
	defer s.notify.Close()
	defer s.devnull.Close()
	defer s.closeGroups(true)

	s.handle(s.begin)
	for !s.finished() {
		s.handle(<-s.events)
	}
	// Before the deferred closes wait for the sockets' handlers: one of
	// them waiting in call must learn now that the loop is gone.
	close(s.ended)
	s.log.Info("all workers exited")
	return nil
}

// begin starts the first generation, or adopts the workers of the
// restored state after an upgrade. It is the loop's first event.
func (s *Supervisor) begin() {
	s.startSampling()
	if s.restored != nil {
		s.adopt()
		return
	}
	s.active = s.newGeneration(&s.plan, nil)
	cfg := s.active.cfg
	if err := claimFlows(s.active.listeners, s.active.id, cfg.Workers); err != nil {
		s.log.Error("UDP flows: the first generation's sockets", "err", err)
	}
	s.log.Info("starting workers", "generation", s.active.id, "workers", cfg.Workers, "command", cfg.Args, "ready", cfg.Ready.String())
	for _, sl := range s.active.slots {
		s.startWorker(s.active, sl)
	}
}

// handle runs one event on the loop, then tells the fd store what it
// changed, and OnListeners which listeners serve.
func (s *Supervisor) handle(f func()) {
	f()
	s.syncHandoff()
	s.syncFlows()
	if s.opts.OnListeners != nil && s.active != nil {
		s.opts.OnListeners(s.active.listeners)
	}
}

// closeGroups closes the listener groups no generation needs any more:
// not the serving or the starting generation's, and none a live worker
// holds. With all, it closes every group (baton is exiting).
func (s *Supervisor) closeGroups(all bool) {
	if s.applying > 0 && !all {
		return // a plan's Apply acts on the groups: after it
	}
	used := map[*listener.Group]bool{}
	if !all {
		for _, g := range []*generation{s.active, s.pending} {
			if g != nil {
				for _, l := range g.listeners {
					used[l] = true
				}
			}
		}
		for _, w := range s.workers {
			for _, l := range w.gen.listeners {
				used[l] = true
			}
		}
	}
	var closing []*listener.Group
	for l := range s.groups {
		if !used[l] {
			if !all {
				s.log.Info("listener closed", "name", l.Spec.Name, "url", l.Spec.URL())
			}
			closing = append(closing, l)
			delete(s.groups, l)
		}
	}
	if len(closing) == 0 {
		return
	}
	// Closing a unix listener removes its socket file, which works on a
	// path: off the loop. Nothing else refers to these groups any more.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, l := range closing {
			l.Close()
		}
	}()
	if all {
		// baton is exiting: give the files a moment to go, no more.
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
}

// finished reports whether baton has stopped, every worker is gone and so
// is what they left running.
func (s *Supervisor) finished() bool {
	return s.stopping && len(s.workers) == 0 && s.leftoverSearches == 0
}

// post runs f on the loop. It returns false, without running f, when the
// loop has ended.
func (s *Supervisor) post(f func()) bool {
	select {
	case s.events <- f:
		return true
	case <-s.ended:
		return false
	}
}

// call runs f on the loop and waits for it. It returns false when the loop
// has ended.
func (s *Supervisor) call(f func()) bool {
	ran := make(chan struct{})
	if !s.post(func() { f(); close(ran) }) {
		return false
	}
	select {
	case <-ran:
		return true
	case <-s.ended:
		// The loop may have run f just before finishing.
		select {
		case <-ran:
			return true
		default:
			return false
		}
	}
}

// after runs f on the loop once d has passed by the loop's clock.
// Callbacks check that what they act on is still current, so a timer that
// fires late is harmless.
func (s *Supervisor) after(d time.Duration, f func()) timer {
	return s.env.clock.AfterFunc(d, func() { s.post(f) })
}

// Reload asks for a reload and returns a channel that receives its outcome.
// A reload asked for while one runs is queued; all queued requests are
// served by one more reload.
func (s *Supervisor) Reload(reason string) <-chan ReloadOutcome {
	ch := make(chan ReloadOutcome, 1)
	if !s.post(func() { s.requestReload(reason, ch) }) {
		ch <- ReloadOutcome{Err: ErrStopping}
	}
	return ch
}

// Stop begins a graceful stop: every worker gets the stop signal and has
// the drain timeout to exit. Run returns when all have exited.
func (s *Supervisor) Stop(reason string) {
	s.post(func() { s.beginStop(reason) })
}

// Kill sends SIGKILL to every worker's process group at once, and to
// what exited workers left running.
func (s *Supervisor) Kill() {
	s.post(func() {
		s.beginStop("killed")
		s.killLeftovers()
		for _, w := range inOrder(s.workers) {
			w.kill()
		}
	})
}

// SetOnReady replaces Options.OnReady before Run.
func (s *Supervisor) SetOnReady(f func()) { s.opts.OnReady = f }

// Done is closed when Run has returned.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

func (s *Supervisor) beginStop(reason string) {
	if s.stopping {
		return
	}
	s.stopping = true
	s.log.Info("stopping", "reason", reason, "workers", len(s.workers), "drain_timeout", s.active.cfg.DrainTimeout)
	if s.opts.OnStopping != nil {
		s.opts.OnStopping()
	}
	if s.pending != nil {
		s.endReload(ErrStopping)
	}
	s.reload.failQueued(ErrStopping)
	s.applyQueuedScales() // they fail: baton is stopping
	for _, sl := range s.active.slots {
		sl.cancelRestart()
	}
	for _, w := range inOrder(s.workers) {
		s.stopWorker(w, "baton is stopping")
	}
	// With no worker left to exit, nothing else would look for what was
	// re-parented to baton.
	s.searchFinal()
}

// heard takes a datagram from NOTIFY_SOCKET, on the notify socket's
// goroutine: one from a process that does not descend from baton is
// dropped there, before it reaches the loop (any local user can send to
// the abstract socket).
func (s *Supervisor) heard(m notify.Message) {
	child := s.lineage.child(m.PID)
	if child == 0 {
		return
	}
	s.post(func() { s.notified(m, child) })
}

// notified handles a datagram on NOTIFY_SOCKET from a process that is, or
// descends from, baton's child pid child.
func (s *Supervisor) notified(m notify.Message, child int) {
	w := s.workers[child]
	if w == nil {
		s.log.Debug("notification from a process that is not a worker", "pid", m.PID)
		return
	}
	if st, ok := m.Fields["STATUS"]; ok {
		w.status = st
	}
	if n, err := strconv.ParseInt(m.Fields["X_BATON_ACCEPTED"], 10, 64); err == nil && n >= 0 {
		w.accepted = n
	}
	if n, err := strconv.ParseInt(m.Fields["X_BATON_ERRORS"], 10, 64); err == nil && n >= 0 {
		w.errors = n
		s.canaryHeard(s.roll, w) // canary.go: a canary's errors may fail it at once
	}
	if m.Fields["READY"] == "1" && w.state == Starting && w.gen.cfg.Ready.Kind() == ReadyNotify {
		s.workerReady(w)
	}
	if m.Fields["X_BATON_FLOWS"] == "released" {
		s.releaseFlows(w, nil) // flows.go
	}
	if m.Fields["STOPPING"] == "1" {
		s.log.Debug("worker says it is stopping", w.attrs()...)
	}
}

// addWorker registers a live worker; removeWorker forgets a reaped one.
func (s *Supervisor) addWorker(w *worker) {
	s.workers[w.pid] = w
	s.lineage.setWorker(w.pid, true)
}

func (s *Supervisor) removeWorker(w *worker) {
	delete(s.workers, w.pid)
	s.lineage.setWorker(w.pid, false)
}

// workerOf finds, from the loop, the live worker a peer belongs to: the
// worker itself or a process it started. It returns nil for any other
// process. Call lineage.child off the loop and this on it.
func (s *Supervisor) workerOf(child int) *worker {
	if child == 0 {
		return nil
	}
	return s.workers[child]
}

// Plan is what a generation runs: its configuration and the listeners its
// workers receive, in order (fds 3, 4, ...).
type Plan struct {
	Config    Config
	Listeners []*listener.Group
	// Apply, if set, runs once a reload to this plan has succeeded, off
	// the loop (it acts on socket files, whose paths can block), and
	// returns what to record on the loop (commit, which may be nil).
	// Changes made in place to kept sockets (a new backlog, a socket
	// file's mode) wait for it, so that a failed reload changes nothing.
	// No listener group is closed while it runs.
	Apply func() (commit func(), err error)
}

// check validates what the supervisor itself relies on.
func (p *Plan) check() error {
	if p.Config.Workers < 1 {
		return fmt.Errorf("workers %d: want at least 1", p.Config.Workers)
	}
	if p.Config.Fd0 != "" && p.listener(p.Config.Fd0) == nil {
		return fmt.Errorf("fd0 %s: no listener has that name", p.Config.Fd0)
	}
	return nil
}

func (p *Plan) listener(name string) *listener.Group {
	for _, l := range p.Listeners {
		if l.Spec.Name == name {
			return l
		}
	}
	return nil
}
