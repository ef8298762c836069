package supervisor

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/spawn"
)

// slot is a worker position that keeps its identity across generations.
// A slot of the serving generation always has a live worker or a pending
// restart (restart), until baton stops or a scale-down removes it.
type slot struct {
	index    int
	removed  bool // by a scale-down
	restarts int
	backoff  time.Duration
	restart  timer // a pending crash restart
	// nextStart is when the pending restart is due.
	nextStart time.Time
	// lastErr says why the slot's last worker could not start or exited
	// on its own, and lastErrAt when; empty while nothing went wrong.
	lastErr   string
	lastErrAt time.Time
	// recycles counts the slot's workers recycled: restarted at once after
	// exiting 0 on their own, or replaced by baton (recycle.go);
	// lastRecycle says why the last one was (RecycleExited, ...), and
	// lastRecycleAt when. recycleRetry is when baton may try again to
	// replace the slot's worker after a replacement failed.
	recycles      int
	lastRecycle   string
	lastRecycleAt time.Time
	recycleRetry  time.Time
}

func (sl *slot) cancelRestart() {
	if sl.restart != nil {
		sl.restart.Stop()
		sl.restart = nil
	}
	sl.nextStart = time.Time{}
}

// failed records why the slot lost its worker, and when.
func (sl *slot) failed(err string, at time.Time) {
	sl.lastErr, sl.lastErrAt = err, at
}

// generation is the set of workers started by one start or reload, with
// what they run.
type generation struct {
	id        int
	cfg       *Config
	listeners []*listener.Group
	slots     []*slot         // by index
	workers   map[int]*worker // the current worker of each slot, by slot index
	started   time.Time
	// runs is how each slot has fared in this generation, by slot index
	// (comingup.go); made on a slot's first start.
	runs map[int]*slotRun
}

// newGeneration makes the generation that runs plan. Slots that exist in
// prev keep their identity (and restart counts).
func (s *Supervisor) newGeneration(plan *Plan, prev *generation) *generation {
	s.nextGen++
	cfg := plan.Config
	g := &generation{id: s.nextGen, cfg: &cfg, listeners: plan.Listeners, workers: map[int]*worker{}, started: s.now(), runs: map[int]*slotRun{}}
	for i := 0; i < cfg.Workers; i++ {
		if prev != nil && i < len(prev.slots) {
			g.slots = append(g.slots, prev.slots[i])
		} else {
			g.slots = append(g.slots, &slot{index: i})
		}
	}
	return g
}

// allReady reports whether every slot of g has a ready worker.
func (g *generation) allReady() bool {
	for _, sl := range g.slots {
		if w := g.workers[sl.index]; w == nil || w.state != Ready {
			return false
		}
	}
	return true
}

func (g *generation) listener(name string) *listener.Group {
	for _, l := range g.listeners {
		if l.Spec.Name == name {
			return l
		}
	}
	return nil
}

type worker struct {
	slot    *slot
	gen     *generation
	proc    spawn.Child
	pid     int
	state   State
	started time.Time
	readyAt time.Time
	stopAt  time.Time
	status  string // last STATUS= the worker sent
	// accepted is the connection count the worker last reported with
	// X_BATON_ACCEPTED= (baton's library does), -1 when it never did.
	accepted int64
	// errors is the error count it last reported with X_BATON_ERRORS=
	// (a canary is judged by it), -1 when it never did.
	errors   int64
	captures []CaptureStatus // binds baton answered with its own socket
	pipes    []*outPipe      // read ends of its stdout and stderr pipes
	// captureFd is the notification descriptor of its bind-capture
	// filter, -1 without capture (or until the shim sent it).
	captureFd int
	// adoptOutput holds its output pipes' descriptors between Restore and
	// adopt, after an upgrade.
	adoptOutput []int
	// released names the steered UDP listeners whose sockets it released
	// (flows.go).
	released map[string]bool

	// stopped is set when baton asked the worker to stop, so its exit is
	// not a crash; restart is set when baton stopped it to start a
	// replacement in its slot (it missed its readiness deadline).
	stopped, restart bool
	// reaped is set when the reaper has collected it, before its exit is
	// handled (workerExited): the search for its leftovers has begun.
	reaped bool
	// replacing is, while baton recycles a slot's worker (recycle.go),
	// the worker this one is to replace once it is ready; nil otherwise.
	// recycle is, on the worker being replaced, why baton replaces it.
	replacing *worker
	recycle   string
	// seen is what baton last read of the worker in /proc (sample.go);
	// drain is how it was, or will be, stopped (drain.go).
	seen       procState
	drain      drainMode
	timer      timer // readiness or drain deadline
	output     *tail
	spawned    chan struct{} // closed once the start was attempted
	outputDone chan struct{} // closed when its stdout and stderr reached EOF
}

// inOrder lists the workers of ws (by pid, or by slot) in order of
// generation, slot and pid. The loop signals a set of workers in this
// order, so that what it does at one moment happens in the same order
// each time (its tests compare traces), not in a map's.
func inOrder(ws map[int]*worker) []*worker {
	out := make([]*worker, 0, len(ws))
	for _, w := range ws {
		if w != nil {
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b *worker) int {
		return cmp.Or(cmp.Compare(a.gen.id, b.gen.id), cmp.Compare(a.slot.index, b.slot.index), cmp.Compare(a.pid, b.pid))
	})
	return out
}

func (w *worker) attrs(extra ...any) []any {
	return append([]any{"slot", w.slot.index, "generation", w.gen.id, "pid", w.pid}, extra...)
}

func (w *worker) setTimer(t timer) {
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = t
}

// kill sends SIGKILL to the worker's whole process group.
func (w *worker) kill() {
	w.proc.SignalGroup(syscall.SIGKILL)
}

// startWorker starts the worker of slot sl in generation g. It returns the
// error when the process could not be started.
func (s *Supervisor) startWorker(g *generation, sl *slot) error {
	_, err := s.spawnWorker(g, sl, nil)
	return err
}

// spawnWorker starts a worker in slot sl of generation g: the slot's
// worker, or with replacing the worker that is to replace that one once
// ready (recycle.go), which the slot keeps until then.
func (s *Supervisor) spawnWorker(g *generation, sl *slot, replacing *worker) (*worker, error) {
	w := newWorker(g, sl)
	w.replacing = replacing
	defer close(w.spawned)
	files, closeAfter, err := s.workerFiles(w)
	if err != nil {
		return nil, s.startFailed(w, err)
	}
	env := s.workerEnv(g, sl)
	var capt *captureStart
	if g.cfg.CaptureBind {
		if capt, err = newCaptureStart(len(files)); err != nil {
			for _, f := range closeAfter {
				f.Close()
			}
			return nil, s.startFailed(w, err)
		}
		files = append(files, capt.shim)
		env = append(env, capt.env())
	}
	proc, err := s.env.procs.Start(spawn.Spec{
		Path:      g.cfg.Path,
		Args:      g.cfg.Args,
		Env:       env,
		Dir:       g.cfg.Dir,
		Files:     files,
		Pdeathsig: g.cfg.StopSignal,
		User:      g.cfg.User,
		Nofile:    g.cfg.Nofile,
	}, s.onExit(w))
	for _, f := range closeAfter {
		f.Close() // the child has its copies; ours would keep the pipes open
	}
	if capt != nil {
		capt.started(err == nil)
	}
	if err != nil {
		return nil, s.startFailed(w, err)
	}
	w.proc, w.pid, w.started = proc, proc.PID(), s.now()
	if capt != nil {
		go s.serveCapture(w, capt.baton, -1)
	}
	if replacing == nil {
		g.workers[sl.index] = w
	}
	g.run(sl).started(w.started)
	s.addWorker(w)
	s.stats.workersStarted++
	if replacing != nil {
		s.log.Info("worker started", w.attrs("replacing", replacing.pid)...)
	} else {
		s.log.Info("worker started", w.attrs()...)
	}
	s.armReadiness(w)
	return w, nil
}

// armReadiness arms the readiness timer of w, a starting worker, at its
// ready mode's Deadline counted from its start (a worker adopted after an
// upgrade has used part of it): a worker still starting then has missed
// its deadline (notify, bind) or is ready (delay). In a generation that
// is coming up, a strict deadline counts from the slot's first start in
// it (or the first since it was last ready), whatever its workers did
// since: a slot has --ready-timeout to become ready. With delay:D, it counts from the start of the slot's run
// of workers without a failure (comingup.go): a worker that replaces one
// that recycled itself carries on its run.
func (s *Supervisor) armReadiness(w *worker) {
	cfg := w.gen.cfg
	d, strict := cfg.Ready.Deadline(cfg.ReadyTimeout)
	from := w.started
	if r := w.gen.runs[w.slot.index]; r != nil && w.replacing == nil {
		switch {
		case strict && w.gen == s.pending:
			from = r.first
		case !strict && !r.upSince.IsZero() && r.upSince.Before(from):
			from = r.upSince
		}
	}
	w.setTimer(s.after(max(d-s.since(from), 0), func() {
		switch {
		case w.state != Starting:
		case strict:
			s.readyDeadline(w)
		default:
			s.workerReady(w)
		}
	}))
}

func newWorker(g *generation, sl *slot) *worker {
	return &worker{slot: sl, gen: g, state: Starting, accepted: -1, errors: -1, captureFd: -1, output: &tail{},
		spawned: make(chan struct{}), outputDone: make(chan struct{})}
}

// onExit is the reaper's callback for w.
func (s *Supervisor) onExit(w *worker) func(spawn.Exit) {
	return func(e spawn.Exit) {
		go func() {
			// What it left running is looked for at once.
			s.post(func() { s.reaped(w) })
			// Let the output readers drain what the worker wrote before it
			// exited, so its last lines come before the exit in the log
			// and can be quoted in an error.
			select {
			case <-w.outputDone:
			case <-time.After(200 * time.Millisecond):
			}
			s.post(func() { s.workerExited(w, e.Status) })
		}()
	}
}

// startFailed handles a worker that could not be started at all. In a
// starting generation that fails the reload; in the serving one the slot
// tries again after its backoff, as after a crash: it never goes without
// a worker or a pending restart. A replacement baton was starting to
// recycle a worker leaves that worker serving.
func (s *Supervisor) startFailed(w *worker, err error) error {
	err = fmt.Errorf("starting worker slot %d of generation %d: %w", w.slot.index, w.gen.id, err)
	s.log.Error("cannot start worker", "slot", w.slot.index, "generation", w.gen.id, "err", err)
	switch {
	case w.replacing != nil:
		s.recycleFailed(w, err.Error())
	case w.gen == s.pending:
		s.endReload(err)
	case w.gen == s.active && !s.stopping && !w.slot.removed:
		w.slot.failed(err.Error(), s.now())
		s.scheduleRestart(w.gen, w.slot, time.Time{})
	}
	return err
}

// workerFiles lays out a worker's descriptors: fd 0 is /dev/null (or the
// --fd0 listener), 1 and 2 its output, 3.. the listeners in order. It
// returns the files to close once the worker has started.
func (s *Supervisor) workerFiles(w *worker) (files []int, closeAfter []*os.File, err error) {
	g := w.gen
	stdin := int(s.devnull.Fd())
	if g.cfg.Fd0 != "" {
		sock := g.listener(g.cfg.Fd0).SocketOf(g.id, w.slot.index)
		if sock == nil {
			return nil, nil, fmt.Errorf("listener %s has no socket for generation %d, slot %d", g.cfg.Fd0, g.id, w.slot.index)
		}
		stdin = sock.Fd()
	}
	files = []int{stdin, -1, -1}
	for _, l := range g.listeners {
		sock := l.SocketOf(g.id, w.slot.index)
		if sock == nil {
			return nil, nil, fmt.Errorf("listener %s has no socket for generation %d, slot %d", l.Spec.Name, g.id, w.slot.index)
		}
		files = append(files, sock.Fd())
	}
	if !g.cfg.LogPrefix {
		close(w.outputDone)
		files[1] = int(outputFile(s.opts.Stdout).Fd())
		files[2] = int(outputFile(s.opts.Stderr).Fd())
		return files, nil, nil
	}
	var readers []*os.File
	for i := range 2 {
		r, wr, err := os.Pipe()
		if err != nil {
			for _, f := range append(readers, closeAfter...) {
				f.Close() // no reader was started: release what was made
			}
			close(w.outputDone)
			return nil, nil, fmt.Errorf("output pipe: %w", err)
		}
		readers = append(readers, r)
		closeAfter = append(closeAfter, wr)
		// Fd switches the child's end to blocking mode, which is what
		// programs expect of their stdout and stderr.
		files[1+i] = int(wr.Fd())
	}
	s.copyOutput(w, readers)
	return files, closeAfter, nil
}

// copyOutput copies a worker's stdout and stderr (the read ends of its
// pipes) to baton's, line by line, and closes outputDone at their end.
func (s *Supervisor) copyOutput(w *worker, readers []*os.File) {
	var wg sync.WaitGroup
	dsts := []*sink{s.stdout, s.stderr}
	streams := []string{"stdout", "stderr"}
	for i, r := range readers {
		p := &outPipe{f: r}
		w.pipes = append(w.pipes, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer p.close()
			<-w.spawned // the prefix needs the pid
			copyLines(r, dsts[i], fmt.Sprintf("[g%d s%d %d] ", w.gen.id, w.slot.index, w.pid), w.output, s.keepLine(w, streams[i]))
		}()
	}
	go func() {
		wg.Wait()
		close(w.outputDone)
	}()
}

// outPipe is the read end of a worker's output pipe. An upgrade holds it
// open across the execve even if its copier reaches the end meanwhile.
type outPipe struct {
	mu           sync.Mutex
	f            *os.File
	closed, held bool
}

func (p *outPipe) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if !p.held {
		p.f.Close()
	}
}

// hold returns the descriptor for a handover, or false once closed.
func (p *outPipe) hold() (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return -1, false
	}
	p.held = true
	return rawFd(p.f), true
}

// release undoes hold (the execve failed).
func (p *outPipe) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = false
	if p.closed {
		p.f.Close()
	}
}

// rawFd is f's descriptor, read without os.File.Fd (which would switch a
// pipe the runtime polls to blocking mode).
func rawFd(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// workerEnv is baton's environment without what belongs to baton's own
// supervisor (systemd's LISTEN_*, NOTIFY_SOCKET and FDSTORE: a worker's
// notifications go to baton, whose fd store is not for them), plus the
// socket activation variables and baton's own.
func (s *Supervisor) workerEnv(g *generation, sl *slot) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID", "NOTIFY_SOCKET", "FDSTORE", "WATCHDOG_USEC", "WATCHDOG_PID",
			"BATON_SOCKET", "BATON_SLOT", "BATON_GENERATION", "BATON_STOP_SIGNAL", "BATON_QUIC_COOKIE":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, g.cfg.Env...)
	if len(g.listeners) > 0 {
		names := make([]string, len(g.listeners))
		for i, l := range g.listeners {
			names[i] = l.Spec.Name
		}
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(g.listeners)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	if c := quicCookies(g, sl); c != "" {
		env = append(env, "BATON_QUIC_COOKIE="+c)
	}
	return append(env,
		"NOTIFY_SOCKET="+s.notify.Addr(),
		"BATON_SOCKET="+s.workerSock.Path(),
		"BATON_SLOT="+strconv.Itoa(sl.index),
		"BATON_GENERATION="+strconv.Itoa(g.id),
		"BATON_STOP_SIGNAL="+SignalName(g.cfg.StopSignal),
	)
}

// quicCookies is BATON_QUIC_COOKIE for the worker of g in slot sl: for
// each listener with flows=quic, its name, "=" and the cookie (8
// hexadecimal digits) of the socket the worker receives, separated by
// commas; empty when there is none. The worker starts its QUIC
// connection IDs with it (docs/udp.md).
func quicCookies(g *generation, sl *slot) string {
	var out []string
	for _, l := range g.listeners {
		if c, ok := l.QUICCookie(g.id, sl.index); ok {
			out = append(out, l.Spec.Name+"="+c.String())
		}
	}
	return strings.Join(out, ",")
}

// workerReady marks w ready and completes a reload waiting for it.
func (s *Supervisor) workerReady(w *worker) {
	w.state, w.readyAt = Ready, s.now()
	w.setTimer(nil)
	s.log.Info("worker ready", w.attrs("after", w.readyAt.Sub(w.started).Round(time.Millisecond))...)
	// How it handles its stop signal is read now that it has set up
	// (drain.go), off the loop.
	s.sample([]*worker{w})
	if r := w.gen.runs[w.slot.index]; r != nil && w.replacing == nil {
		r.ready()
	}
	if w.replacing != nil {
		s.recycleDone(w) // recycle.go: a worker baton replaces
		return
	}
	if s.rollReady(w) { // rolling.go: a rolling or canary reload goes on
		return
	}
	switch {
	case w.gen == s.pending && w.gen.allReady():
		s.endReload(nil)
	case w.gen == s.active && !s.everReady && w.gen.allReady():
		s.everReady = true
		s.log.Info("all workers ready", "generation", w.gen.id, "after", s.since(s.start).Round(time.Millisecond))
		if s.opts.OnReady != nil {
			s.opts.OnReady()
		}
	}
}

// readyDeadline handles a worker still starting at its readiness deadline
// (armReadiness).
func (s *Supervisor) readyDeadline(w *worker) {
	cfg := w.gen.cfg
	err := fmt.Errorf("worker slot %d (pid %d) of generation %d did not %s within %s", w.slot.index, w.pid, w.gen.id, cfg.Ready.awaited(), cfg.ReadyTimeout)
	s.log.Warn("worker missed its readiness deadline", w.attrs("timeout", cfg.ReadyTimeout)...)
	switch {
	case w.replacing != nil:
		s.stopWorker(w, "missed its readiness deadline")
		s.recycleFailed(w, err.Error())
		return
	case w.gen == s.pending:
		s.endReload(s.slotHistory(w.gen, w.slot, err))
		return
	}
	w.restart = true
	s.stopWorker(w, "missed its readiness deadline")
}

// stopWorker sends the stop signal and arms the drain deadline, after which
// the worker's process group is killed.
func (s *Supervisor) stopWorker(w *worker, reason string) {
	if w.stopped || w.state == Exited {
		return
	}
	s.syncFlows() // new peers go to the serving generation before the signal
	w.stopped, w.state, w.stopAt = true, Draining, s.now()
	cfg := w.gen.cfg
	// A worker baton was replacing goes, and so does its replacement
	// still starting: whatever stops the one (a reload, a scale-down,
	// baton's stop) replaces the slot's worker its own way.
	s.abandonRecycle(w, reason)
	ports := w.gen.tcpPorts()
	w.drain = chooseDrain(cfg, len(ports) > 0, w.seen.signal)
	s.log.Info("stopping worker", w.attrs("signal", SignalName(cfg.StopSignal), "reason", reason, "drain", w.drain.mode, "why", w.drain.why)...)
	if w.seen.signal == sigIgnored {
		s.log.Warn("worker ignores its stop signal: it will be killed at the drain timeout; give --stop-signal a signal it handles", w.attrs("signal", SignalName(cfg.StopSignal), "drain_timeout", cfg.DrainTimeout)...)
	}
	if w.drain.mode == DrainWhenIdle {
		go s.quiesceThenSignal(w, ports, w.drain.bound)
	} else {
		s.signalStop(w)
	}
	w.setTimer(s.after(cfg.DrainTimeout, func() {
		if w.state == Exited {
			return
		}
		s.log.Warn("worker did not exit within the drain timeout; killing it", w.attrs("drain_timeout", cfg.DrainTimeout)...)
		w.kill()
	}))
}

// workerExited handles a reaped worker.
func (s *Supervisor) workerExited(w *worker, status syscall.WaitStatus) {
	prev := w.state
	s.reaped(w) // a worker that exited during an upgrade was not seen by the reaper
	w.state = Exited
	w.setTimer(nil)
	s.removeWorker(w)
	how := describeExit(status)
	uptime := s.since(w.started)
	// A worker that exits 0 on its own, having been ready or run a
	// while, recycled itself: not a crash (config.go, MinRecycleUptime).
	clean := !w.stopped && cleanExit(status, prev == Ready, uptime)
	level, reason := slog.LevelInfo, ExitStopped
	switch {
	case clean:
		reason = ExitRecycled
	case !w.stopped:
		level, reason = slog.LevelWarn, ExitCrashed
	}
	s.log.Log(context.Background(), level, "worker exited", w.attrs("status", how, "uptime", uptime.Round(time.Millisecond))...)
	s.emit(Event{Kind: EventExit, Slot: w.slot.index, Generation: w.gen.id, OK: w.stopped, Reason: reason})
	if !w.stopped && !clean {
		w.gen.run(w.slot).failed(s.now(), s.exitError(w, status, uptime))
	}
	if s.rollExit(w, status) { // rolling.go: an exit a rollout expects, or a canary's
		s.closeGroups(false)
		return
	}

	switch {
	case w.replacing != nil:
		s.replacementExited(w, how)
	case w.gen == s.pending:
		s.comingUpExited(w, prev, how, clean)
	case w.gen == s.active && !s.stopping && !w.slot.removed && (!w.stopped || w.restart) && w.gen.workers[w.slot.index] == w:
		switch {
		case s.takeOverSlot(w):
			// Baton was replacing it: the replacement has the slot now.
			if !clean {
				w.slot.failed(s.exitError(w, status, uptime), s.now())
			}
		case clean:
			s.recycledItself(w, how, uptime)
		case !w.stopped:
			w.slot.failed(s.exitError(w, status, uptime), s.now())
			s.scheduleRestart(w.gen, w.slot, w.started)
		default:
			w.slot.failed(fmt.Sprintf("worker pid %d missed its readiness deadline (%s)", w.pid, w.gen.cfg.ReadyTimeout), s.now())
			s.scheduleRestart(w.gen, w.slot, w.started)
		}
	}
	s.closeGroups(false)
}

// cleanExit reports whether a worker that exited on its own after uptime
// with status recycled itself: status 0, once it was ready (it served),
// or after at least MinRecycleUptime.
func cleanExit(status syscall.WaitStatus, wasReady bool, uptime time.Duration) bool {
	return status.Exited() && status.ExitStatus() == 0 && (wasReady || uptime >= MinRecycleUptime)
}

// exitError says how a worker exited on its own, with its last output,
// for an error or a slot's last error.
func (s *Supervisor) exitError(w *worker, status syscall.WaitStatus, uptime time.Duration) string {
	why := fmt.Sprintf("worker pid %d %s after %s", w.pid, describeExit(status), uptime.Round(time.Millisecond))
	if status.Exited() && status.ExitStatus() == 0 && uptime < MinRecycleUptime {
		why += fmt.Sprintf(" (before it was ready and within %s of its start, too soon to count as recycling itself: does the program daemonize, or print its usage and exit?)", MinRecycleUptime)
	}
	if out := w.output.String(); out != "" {
		why += "; its last output: " + out
	}
	return why
}

// scheduleRestart starts a new worker in slot sl of generation g after the
// slot's backoff: its worker crashed (it had started at started), or could
// not be started at all (started is zero). The backoff doubles with each
// restart, from MinBackoff up to MaxBackoff, and starts over after a
// worker that stayed up for StableAfter.
func (s *Supervisor) scheduleRestart(g *generation, sl *slot, started time.Time) {
	if !started.IsZero() && s.since(started) >= StableAfter {
		sl.backoff = 0
	}
	if sl.backoff == 0 {
		sl.backoff = MinBackoff
	} else {
		sl.backoff = min(2*sl.backoff, MaxBackoff)
	}
	sl.restarts++
	s.emit(Event{Kind: EventRestart, Slot: sl.index, Generation: g.id})
	s.log.Warn("restarting worker", "slot", sl.index, "generation", g.id, "in", sl.backoff, "restarts", sl.restarts)
	sl.cancelRestart()
	sl.nextStart = s.now().Add(sl.backoff)
	var t timer
	t = s.after(sl.backoff, func() {
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

// slotFree reports whether slot sl of g has no live worker: it never had
// one, or its worker has exited.
func (g *generation) slotFree(sl *slot) bool {
	w := g.workers[sl.index]
	return w == nil || w.state == Exited
}

// describeExit says how a process ended, as a shell would.
func describeExit(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		s := "killed by " + SignalName(ws.Signal())
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("ended (wait status %#x)", uint32(ws))
}

// parentPID reads a process's parent pid from /proc, or 0.
func parentPID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may contain spaces and parentheses: fields start
	// after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}
