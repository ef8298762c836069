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
	Health  Health        `json:"health"`
	Reloads ReloadStats   `json:"reloads"`
	Process ProcessStatus `json:"process"`
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
	// Captures lists the binds baton answered with its own socket (with
	// --capture-bind).
	Captures []CaptureStatus `json:"captures,omitempty"`
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
