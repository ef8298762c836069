package api

import (
	"fmt"
	"time"
)

// Status is a snapshot of a running baton: the reply of MethodStatus, as
// `baton status --json` prints it. docs/status.md documents every field.
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
	SlotStates []SlotStatus `json:"slot_states"`
	// Health says whether baton serves as configured (HealthOf): the
	// slots, and the warnings of the kernel's view when the status has
	// it.
	Health  Health      `json:"health"`
	Reloads ReloadStats `json:"reloads"`
	// History lists the last reloads and upgrades as they ended, oldest
	// first: at most MaxHistory.
	History []HistoryEntry `json:"history"`
	Process ProcessStatus  `json:"process"`
	// Upgrades counts baton's re-executions of itself (baton upgrade);
	// UpgradeError says why the last one failed, if it did.
	Upgrades     int    `json:"upgrades"`
	UpgradeError string `json:"upgrade_error,omitempty"`
	WorkersTotal int    `json:"workers_started"`
	// Kernel is the kernel's view of the listeners and workers; nil when
	// not asked for (StatusParams) or when baton has no inspector.
	Kernel  *KernelView   `json:"kernel,omitempty"`
	Handoff HandoffStatus `json:"handoff"`
	// Output is baton's stdout and stderr: bytes waiting, lines dropped.
	Output OutputStatus `json:"output"`

	// Rollout is the progress of a rolling or canary reload under way
	// (Pending is its generation); absent otherwise.
	Rollout *RolloutStatus `json:"rollout,omitempty"`
	// StartLimitBurst and StartLimitInterval: a slot of a generation
	// coming up whose workers fail this many times within this interval
	// crash-loops, and the reload fails.
	StartLimitBurst    int      `json:"start_limit_burst"`
	StartLimitInterval Duration `json:"start_limit_interval"`
	// MaxRSS and MaxUptime are when baton recycles a worker (--max-rss,
	// --max-uptime); absent when off.
	MaxRSS    uint64   `json:"max_rss_bytes,omitempty"`
	MaxUptime Duration `json:"max_uptime,omitempty"`
	// Recycling is the replacement of a worker baton has under way;
	// absent when none.
	Recycling *RecyclingStatus `json:"recycling,omitempty"`
}

// RecyclingStatus is a worker baton is replacing: a new worker is
// starting in its slot, and the old one drains once that one is ready.
type RecyclingStatus struct {
	Slot int `json:"slot"`
	// PID is the worker being replaced, NewPID its replacement (0 while
	// it is being started).
	PID    int `json:"pid"`
	NewPID int `json:"new_pid,omitempty"`
	// Reason is max_rss or max_uptime; Why says it in words.
	Reason string    `json:"reason"`
	Why    string    `json:"why"`
	Since  time.Time `json:"since"`
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
	// one per slot with balance=reuseport; for a UDP listener whose
	// flows are kept, those of each generation.
	Sockets []SocketStatus `json:"sockets"`
	// Flows is the steering of a UDP listener's flows (docs/udp.md);
	// absent for other listeners.
	Flows *FlowsStatus `json:"flows,omitempty"`
}

// SocketStatus is one socket of a listener.
type SocketStatus struct {
	Slot  int    `json:"slot"`
	Inode uint64 `json:"inode"`
	Fd    int    `json:"fd"`
	// Generation is the generation a socket of a steered UDP listener
	// belongs to.
	Generation int `json:"generation,omitempty"`
}

// FlowsStatus says whether baton keeps the flows of a UDP listener across
// reloads, and what its steering program did (docs/udp.md).
type FlowsStatus struct {
	// Mode is the listener's flows option (auto, on, quic); Kept whether the
	// flows are kept; Error, when they are not, says why and the fix.
	Mode  string `json:"mode"`
	Kept  bool   `json:"kept"`
	Error string `json:"error,omitempty"`
	// Capacity is the flow table's size; Tracked the peers in it whose
	// socket is there, Stale those whose socket has gone (they move on
	// their next datagram); Evicted estimates the peers forgotten to make
	// room (the least recently seen go first).
	Capacity int    `json:"capacity,omitempty"`
	Tracked  int    `json:"tracked"`
	Stale    int    `json:"stale"`
	Evicted  uint64 `json:"evicted"`
	// Datagrams counts what the program did: known peers to their
	// socket, new peers to a serving one, moved peers (their socket had
	// gone), and fallbacks (no serving socket: the kernel's hash chose).
	Known    uint64 `json:"known"`
	New      uint64 `json:"new"`
	Moved    uint64 `json:"moved"`
	Fallback uint64 `json:"fallback"`
	// QUIC counts the QUIC packets steered by the cookie of their
	// connection ID (flows=quic), from whatever address they came.
	QUIC uint64 `json:"quic,omitempty"`
	// Draining counts the datagrams steered to generations that no
	// longer served: the peers old workers kept while they drained.
	Draining uint64 `json:"draining_datagrams"`
	// ProgramRuns and ProgramNS are the kernel's statistics of the
	// program (zero unless kernel.bpf_stats_enabled is 1).
	ProgramRuns uint64 `json:"program_runs"`
	ProgramNS   uint64 `json:"program_ns"`
	// Generations is the part each generation has, oldest first.
	Generations []FlowGeneration `json:"generations,omitempty"`
}

// FlowGeneration is one generation's part of a steered UDP listener.
type FlowGeneration struct {
	Generation int  `json:"generation"`
	Serving    bool `json:"serving"`
	// Sockets are its sockets in the program's array; Flows the peers
	// steered to them; Draining the datagrams they got since it stopped
	// serving.
	Sockets  int    `json:"sockets"`
	Flows    int    `json:"flows"`
	Draining uint64 `json:"draining_datagrams"`
}

// WorkerState is where a worker is in its life.
type WorkerState string

// Worker states. Status lists live workers only: an exited one is gone
// from it.
const (
	WorkerStarting WorkerState = "starting"
	WorkerReady    WorkerState = "ready"
	WorkerDraining WorkerState = "draining"
	WorkerExited   WorkerState = "exited"
)

// WorkerStatus describes one live worker.
type WorkerStatus struct {
	Slot       int         `json:"slot"`
	Generation int         `json:"generation"`
	PID        int         `json:"pid"`
	State      WorkerState `json:"state"`
	Started    time.Time   `json:"started"`
	Uptime     Duration    `json:"uptime"`
	Restarts   int         `json:"restarts"`
	Status     string      `json:"status,omitempty"`
	// Accepted is the number of connections the worker says it accepted
	// (X_BATON_ACCEPTED=, sent by baton's library); absent when unknown.
	Accepted *int64 `json:"accepted,omitempty"`
	// Errors is the number of errors the worker says it has had
	// (X_BATON_ERRORS=, cumulative: an HTTP worker counts its 5xx
	// answers); absent when it never said. A canary is judged by it.
	Errors *int64 `json:"errors,omitempty"`
	// Captures lists the binds baton answered with its own socket (with
	// --capture-bind).
	Captures []CaptureStatus `json:"captures,omitempty"`
	// RSSBytes is the worker's resident memory and CPUSeconds the user
	// and system CPU time it has used, as baton last read them in /proc
	// (each second); CPUPercent is its CPU use between its last two
	// reads, 100 for a whole core. Absent until baton has read them.
	RSSBytes   uint64  `json:"rss_bytes,omitempty"`
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
	CPUPercent float64 `json:"cpu_percent,omitempty"`
	// SignalHandling says what its stop signal does to it, from
	// /proc/PID/status: caught, blocked (taken with sigwait or a
	// signalfd), ignored, default (it ends the process at once) or
	// harmless (a default action that does not end it); absent until
	// baton has read it, once the worker is ready.
	SignalHandling string `json:"signal_handling,omitempty"`
	// Drain is how baton stops the worker, or stopped it (draining):
	// signal (the stop signal at once) or when-idle (the stop signal once
	// it holds no connection, checked while it is frozen); DrainReason
	// says why.
	Drain       string `json:"drain"`
	DrainReason string `json:"drain_reason"`
	// Recycle says why baton is replacing this worker (max_rss: ...,
	// max_uptime: ...); Replaces, on its replacement while it starts, the
	// pid it replaces.
	Recycle  string `json:"recycle,omitempty"`
	Replaces int    `json:"replaces,omitempty"`
}

// CaptureStatus is one bind of a worker that baton answered with its own
// socket.
type CaptureStatus struct {
	Listener string    `json:"listener"`
	Addr     string    `json:"addr"`
	PID      int       `json:"pid"` // the process that bound (the worker or a child it forked)
	Fd       int       `json:"fd"`
	Time     time.Time `json:"time"`
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
	// Recycles counts the slot's workers recycled since baton started:
	// restarted at once after exiting 0 on their own, or replaced by
	// baton (--max-rss, --max-uptime). LastRecycle says why the last one
	// was (exited, max_rss, max_uptime), LastRecycleTime when.
	Recycles        int       `json:"recycles"`
	LastRecycle     string    `json:"last_recycle,omitempty"`
	LastRecycleTime time.Time `json:"last_recycle_time,omitzero"`

	// Generation is the generation of the slot's live worker: during a
	// rolling reload a slot already replaced is served by the new one.
	// Absent when the slot has no worker.
	Generation int `json:"generation,omitempty"`
}

// Rollout phases (RolloutStatus.Phase).
const (
	// RolloutCanary: the canaries are starting, or being watched.
	RolloutCanary = "canary"
	// RolloutRolling: slots are being replaced a batch at a time.
	RolloutRolling = "rolling"
	// RolloutWaiting: the next batch waits for the workers it must not
	// outnumber to exit (at most slots+batch workers at once).
	RolloutWaiting = "waiting"
	// RolloutRollingBack: the reload failed after replacing slots, which
	// go back to the previous generation a batch at a time.
	RolloutRollingBack = "rolling back"
	// RolloutDone: the new generation serves every slot (a result).
	RolloutDone = "done"
	// RolloutFailed: the reload failed; the previous generation serves
	// (a result; RolledBack lists the slots it got back).
	RolloutFailed = "failed"
)

// RolloutStatus is the progress of a rolling or canary reload (in
// Status.Rollout while it runs) or how it ended (in ReloadResult.Rollout).
type RolloutStatus struct {
	// Generation is the generation rolling out; Previous the one it
	// replaces.
	Generation int `json:"generation"`
	Previous   int `json:"previous"`
	// Batch is how many slots are replaced at a time; 0: every slot left
	// at once (after the canary).
	Batch int `json:"batch"`
	// MaxWorkers is the most workers the rollout lets run at once:
	// slots+batch (or slots+canary slots while the canary runs); 0 when
	// not bounded (no batch).
	MaxWorkers int `json:"max_workers,omitempty"`
	// Phase is one of the Rollout phases.
	Phase string `json:"phase"`
	// Done lists the slots the new generation serves, in the order they
	// were replaced; Starting those whose new workers are starting (or
	// are canaries being watched); Waiting those not started yet.
	Done     []int `json:"done"`
	Starting []int `json:"starting"`
	Waiting  []int `json:"waiting"`
	// RolledBack lists the slots given back to the previous generation
	// after a failure; Kept those that could not be (the previous
	// generation's worker failed there too): the new generation's worker
	// serves them until the previous generation's restart of the slot is
	// ready.
	RolledBack []int `json:"rolled_back,omitempty"`
	Kept       []int `json:"kept,omitempty"`
	// Error says why the rollout failed (rolling back, or failed).
	Error string `json:"error,omitempty"`
	// Canary is the canary's progress or verdict; absent without one.
	Canary *CanaryStatus `json:"canary,omitempty"`
}

// Canary verdicts (CanaryStatus.Verdict).
const (
	CanaryStarting   = "starting"    // the canaries are not all ready yet
	CanaryWatching   = "watching"    // the window runs
	CanaryJudging    = "judging"     // the window is over; baton asks the kernel
	CanaryPromoted   = "promoted"    // it passed: the rollout went on
	CanaryRolledBack = "rolled back" // it failed: its workers were stopped
)

// CanaryStatus is a canary: the first slots of a reload, started beside
// their old workers and watched for a window before the rest.
type CanaryStatus struct {
	Slots []int `json:"slots"`
	// PIDs are the canary workers now.
	PIDs   []int    `json:"pids,omitempty"`
	Window Duration `json:"window"`
	// Until is when the window ends: set once every canary is ready.
	Until time.Time `json:"until,omitzero"`
	// Verdict is one of the Canary verdicts; Reason says why it failed.
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
	// Errors and Accepted are what the canaries reported (X_BATON_ERRORS,
	// X_BATON_ACCEPTED), summed over every canary worker; absent when none
	// reported it. MaxErrors and MaxErrorRate are the thresholds.
	Errors       *int64  `json:"errors,omitempty"`
	Accepted     *int64  `json:"accepted,omitempty"`
	MaxErrors    int64   `json:"max_errors"`
	MaxErrorRate float64 `json:"max_error_rate,omitempty"`
	// PreviousAccepted is how many connections the previous generation's
	// workers reported accepting during the window; absent when they do
	// not report it.
	PreviousAccepted *int64 `json:"previous_accepted,omitempty"`
	// Recycled counts canaries that exited with status 0 after staying
	// up 10s and were restarted in their slot (a worker that recycles
	// itself); any other exit fails the canary.
	Recycled int `json:"recycled,omitempty"`
	// HostResets is how many connections the host reset during the window
	// (TcpExt TCPAbortOnData + TCPAbortOnClose + TCPAbortOnLinger: the
	// kernel counts them for the whole host, not per process); shown, not
	// judged. Absent when unknown.
	HostResets *int64 `json:"host_resets,omitempty"`
}

// ReloadStats counts reloads.
type ReloadStats struct {
	OK     int           `json:"ok"`
	Failed int           `json:"failed"`
	Queued bool          `json:"queued"`
	Last   *ReloadResult `json:"last,omitempty"`
}

// MaxHistory bounds Status.History: baton keeps the last MaxHistory
// reloads and upgrades, across upgrades.
const MaxHistory = 20

// Kinds of HistoryEntry.
const (
	HistoryReload  = "reload"
	HistoryUpgrade = "upgrade"
)

// HistoryEntry is a reload or an upgrade, as it ended.
type HistoryEntry struct {
	// Kind is HistoryReload or HistoryUpgrade.
	Kind string `json:"kind"`
	// Started is when it was asked for; Duration how long it took: a
	// reload until its generation was ready (or it failed), an upgrade
	// until the new baton had taken over the state (or it failed).
	Started  time.Time `json:"started"`
	Duration Duration  `json:"duration"`
	OK       bool      `json:"ok"`
	// Generation is the generation a reload started, Previous the one
	// serving before it; for an upgrade both are the generation serving
	// when it began.
	Generation int `json:"generation"`
	Previous   int `json:"previous"`
	// Reason says who asked (a reload's), or the binary (an upgrade's);
	// Error why it failed.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
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

// HandoffStats counts connections through the fd store of handed-off
// connections (internal/handoff). Held is a gauge; the other counts grow
// from zero when baton starts.
type HandoffStats struct {
	// Held is how many connections the store holds now, waiting for a
	// worker or on their way to one.
	Held int `json:"held"`
	// Stored counts connections received from workers.
	Stored int `json:"stored"`
	// Adopted counts connections a worker acknowledged.
	Adopted int `json:"adopted"`
	// Expired counts connections closed without being adopted: at their
	// deadline, or when baton stopped.
	Expired int `json:"expired"`
	// Refused counts transfers the store refused, for room or for their
	// size; their connections stayed with the worker that sent them.
	Refused int `json:"refused"`
	// Unconfirmed counts connections pushed to a worker that did not
	// answer within the transfer timeout: baton closed its copies, and
	// the worker may or may not hold them. Never sent twice.
	Unconfirmed int `json:"unconfirmed"`
	// Rejected counts descriptors a worker handed off that were not
	// connections accepted on its listeners: baton closed its copies and
	// told the worker, which keeps its own.
	Rejected int `json:"rejected"`
	// Senders and Subscribers are the handoff and adopt connections open
	// now.
	Senders     int `json:"senders"`
	Subscribers int `json:"subscribers"`
	// MaxState is the bound on one connection's state, in bytes.
	MaxState int `json:"max_state"`
}

// HandoffStatus is the fd store's counts, its settings, and the room
// baton's RLIMIT_NOFILE leaves for it.
type HandoffStatus struct {
	HandoffStats
	Timeout Duration `json:"timeout"`
	// FDLimit and FDLimitHard are baton's soft and hard RLIMIT_NOFILE;
	// FDHeadroom is the soft limit minus the descriptors baton holds.
	FDLimit     uint64 `json:"fd_limit"`
	FDLimitHard uint64 `json:"fd_limit_hard"`
	FDHeadroom  int    `json:"fd_headroom"`
}

// OutputStatus is the state of baton's stdout and stderr: what waits to
// be written and what was dropped because nothing read it.
type OutputStatus struct {
	Stdout OutputStream `json:"stdout"`
	Stderr OutputStream `json:"stderr"`
}

// OutputStream is one of baton's outputs (docs/status.md).
type OutputStream struct {
	// BufferedBytes waits to be written, of at most LimitBytes.
	BufferedBytes int `json:"buffered_bytes"`
	LimitBytes    int `json:"limit_bytes"`
	// DroppedLines were dropped since baton started: the buffer was full,
	// or writing failed.
	DroppedLines int64 `json:"dropped_lines"`
	// DroppingSince is when the first line was dropped that no notice in
	// the output has reported yet.
	DroppingSince *time.Time `json:"dropping_since,omitempty"`
	// BlockedFor is how long the write in progress has waited for the
	// reader.
	BlockedFor Duration `json:"blocked_for,omitempty"`
	// Error is the last write's error, until a write works.
	Error string `json:"error,omitempty"`
	// Shared: stdout and stderr are one file, written through one buffer;
	// both fields show it (do not add them up).
	Shared bool `json:"shared,omitempty"`
}

// Duration is a time.Duration that encodes in JSON as seconds, with
// millisecond precision.
type Duration time.Duration

// MarshalJSON encodes d as a number of seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.3f", time.Duration(d).Seconds())), nil
}

// UnmarshalJSON decodes a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var f float64
	if _, err := fmt.Sscanf(string(b), "%g", &f); err != nil {
		return fmt.Errorf("duration %s: want seconds", b)
	}
	*d = Duration(f * float64(time.Second))
	return nil
}
