package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/logring"
	"github.com/baton-dev/baton/internal/upgrade"
)

// StateVersion is the version of UpgradeState this baton writes when a
// UDP listener's flows are kept (ListenerState.Flows: sockets per
// generation and the steering program's descriptors, which a baton of
// version 1 would misread); without one it writes version 1, the same
// format as before, so that an upgrade to an older baton still works. It
// reads both. An upgrade to a binary that cannot read the state stops at
// the pre-flight, changing nothing. Fields added with omitempty, which an
// older reader ignores, keep the version.
const StateVersion = 2

// stateVersionNoFlows is the version of a state without kept flows.
const stateVersionNoFlows = 1

// UpgradeState is everything a baton hands to the binary it re-executes itself
// as (baton upgrade): the sockets, the workers (still its children: the
// pid does not change), their generations and slots, and the descriptors
// that must survive the execve, by number. It is JSON in a memfd.
type UpgradeState struct {
	Version   int       `json:"version"`
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	NextGen   int       `json:"next_generation"`
	Active    int       `json:"active"`
	EverReady bool      `json:"ever_ready"`

	Listeners   []ListenerState   `json:"listeners"`
	Generations []GenerationState `json:"generations"`
	Workers     []WorkerState     `json:"workers"`
	Stats       StatsState        `json:"stats"`
	// Leftovers are the searches for what exited workers left running
	// that were under way: the new baton runs them again.
	Leftovers []LeftoverState `json:"leftovers,omitempty"`
	// Logs are the lines of baton logs' ring (logring.Ring.Restore): a
	// worker's output from before the upgrade stays readable after it.
	Logs []logring.Line `json:"logs,omitempty"`

	// Descriptors of baton's own sockets.
	NotifyFd    int    `json:"notify_fd"`
	NotifyAddr  string `json:"notify_addr"`
	WorkerFd    int    `json:"worker_fd"`
	WorkerAddr  string `json:"worker_addr"`
	ControlFd   int    `json:"control_fd"` // -1: none
	ControlPath string `json:"control_path"`

	// The upgrade itself.
	Binary      string `json:"binary"`
	KeepWorkers bool   `json:"keep_workers"`
	Upgrades    int    `json:"upgrades"` // done before this one
	// Nonce is the pre-flight's: the new binary answers the handshake
	// with it (upgrade.Handshake), which proves it read this state.
	Nonce string `json:"nonce,omitempty"`
	// ReloadQueued says a reload was asked for during the upgrade: the
	// new baton runs it (with reason ReloadReason) once it has taken over.
	ReloadQueued bool   `json:"reload_queued,omitempty"`
	ReloadReason string `json:"reload_reason,omitempty"`
	// ReloadRolling, ReloadCanary and ReloadCanaryWindow are that
	// reload's rollout overrides (baton reload --rolling, --canary,
	// --canary-window), when it had any.
	ReloadRolling      *int           `json:"reload_rolling,omitempty"`
	ReloadCanary       *int           `json:"reload_canary,omitempty"`
	ReloadCanaryWindow *time.Duration `json:"reload_canary_window,omitempty"`
}

// ListenerState is one listener group.
type ListenerState struct {
	ID      int           `json:"id"`
	Spec    string        `json:"spec"`
	Sockets []SocketState `json:"sockets"`
	// Flows is a UDP listener whose flows are kept: its sockets, per
	// generation, are there instead of in Sockets (version 2).
	Flows *listener.FlowState `json:"flows,omitempty"`
	// FlowsError says why a UDP listener's flows are not kept
	// (listener.Group.FlowsErr).
	FlowsError string `json:"flows_error,omitempty"`
}

// SocketState is one socket of a listener.
type SocketState struct {
	Slot    int    `json:"slot"` // -1: the shared socket
	Fd      int    `json:"fd"`
	Backlog int    `json:"backlog"`
	PathIno uint64 `json:"path_ino,omitempty"`
}

// GenerationState is a generation with live workers (or the active one).
type GenerationState struct {
	ID        int         `json:"id"`
	Config    Config      `json:"config"`
	Listeners []int       `json:"listeners"` // ListenerState ids, in order
	Slots     []SlotState `json:"slots"`
}

// SlotState is a slot of a generation.
type SlotState struct {
	Index    int           `json:"index"`
	Removed  bool          `json:"removed"`
	Restarts int           `json:"restarts"`
	Backoff  time.Duration `json:"backoff"`
	// LastError and LastErrorAt: why the slot last lost its worker, and
	// when (slot_states in the status).
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Recycles, LastRecycle and LastRecycleAt: the slot's workers
	// recycled, why the last one was, and when (recycle.go).
	Recycles      int       `json:"recycles,omitempty"`
	LastRecycle   string    `json:"last_recycle,omitempty"`
	LastRecycleAt time.Time `json:"last_recycle_at,omitzero"`
}

// WorkerState is a live worker.
type WorkerState struct {
	PID        int             `json:"pid"`
	Generation int             `json:"generation"`
	Slot       int             `json:"slot"`
	State      State           `json:"state"`
	Started    time.Time       `json:"started"`
	ReadyAt    time.Time       `json:"ready_at"`
	StopAt     time.Time       `json:"stop_at"`
	Status     string          `json:"status,omitempty"`
	Accepted   int64           `json:"accepted"`
	Stopped    bool            `json:"stopped"`
	Restart    bool            `json:"restart"`
	Current    bool            `json:"current"`          // its generation's worker of its slot
	Output     []int           `json:"output,omitempty"` // read ends of its stdout and stderr pipes
	CaptureFd  int             `json:"capture_fd"`       // notification descriptor, -1 without capture
	Captures   []CaptureStatus `json:"captures,omitempty"`
	// Released names the steered UDP listeners whose flows it released.
	Released []string `json:"released,omitempty"`
}

// LeftoverState is a search for what an exited worker left running.
type LeftoverState struct {
	PGID     int       `json:"pgid"`     // the exited worker's process group
	Signal   int       `json:"signal"`   // its stop signal
	Deadline time.Time `json:"deadline"` // when what is left is killed
}

// StatsState carries the counters.
type StatsState struct {
	ReloadsOK      int           `json:"reloads_ok"`
	ReloadsFailed  int           `json:"reloads_failed"`
	LastReload     *ReloadResult `json:"last_reload,omitempty"`
	WorkersStarted int           `json:"workers_started"`
	// History is the last reloads and upgrades (Status.History).
	History []HistoryEntry `json:"history,omitempty"`
	// UpgradeStarted is when the upgrade handing this state over was
	// asked for: the new baton adds it to History.
	UpgradeStarted time.Time `json:"upgrade_started,omitzero"`
}

// Fds lists every descriptor the state names, which must survive the
// execve (close-on-exec cleared) and be handed to the pre-flight.
func (st *UpgradeState) Fds() []int {
	fds := []int{st.NotifyFd, st.WorkerFd}
	if st.ControlFd >= 0 {
		fds = append(fds, st.ControlFd)
	}
	for _, l := range st.Listeners {
		for _, s := range l.Sockets {
			fds = append(fds, s.Fd)
		}
		if l.Flows != nil {
			fds = append(fds, l.Flows.Fds()...)
		}
	}
	for _, w := range st.Workers {
		fds = append(fds, w.Output...)
		if w.CaptureFd >= 0 {
			fds = append(fds, w.CaptureFd)
		}
	}
	return fds
}

// Expect is the handshake a pre-flight of this state must answer: its
// nonce and version, and how many of each thing Check checks.
func (st *UpgradeState) Expect() upgrade.Handshake {
	h := upgrade.Handshake{Nonce: st.Nonce, Version: st.Version, Listeners: len(st.Listeners), Workers: len(st.Workers), Descriptors: len(st.Fds())}
	for _, l := range st.Listeners {
		h.Sockets += len(l.Sockets)
		if l.Flows != nil {
			h.Sockets += len(l.Flows.Sockets)
		}
	}
	return h
}

// Check validates a state before a new binary takes it over: its version,
// that every descriptor it names is open, that every listener descriptor
// is a socket of the recorded kind on the recorded address, and that
// baton's own sockets are sockets. It returns what it checked; the
// pre-flight runs it in the new binary and answers with that.
func (st *UpgradeState) Check() (upgrade.Handshake, error) {
	got := upgrade.Handshake{Nonce: st.Nonce, Version: st.Version}
	if st.Version != StateVersion && st.Version != stateVersionNoFlows {
		return got, fmt.Errorf("state version %d; this baton reads versions %d and %d", st.Version, stateVersionNoFlows, StateVersion)
	}
	for _, fd := range st.Fds() {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return got, fmt.Errorf("descriptor %d named in the state: %w", fd, os.NewSyscallError("fcntl", err))
		}
		got.Descriptors++
	}
	for _, l := range st.Listeners {
		spec, err := listener.Parse(l.Spec)
		if err != nil {
			return got, fmt.Errorf("listener %q: %w", l.Spec, err)
		}
		for _, s := range l.Sockets {
			if _, err := listener.Adopt(spec, s.Fd, s.Backlog, 0); err != nil {
				return got, fmt.Errorf("listener %s, slot %d: %w", spec.Name, s.Slot, err)
			}
			got.Sockets++
		}
		if l.Flows != nil {
			// The pre-flight's copies: checked by adopting them, then
			// closed with the group.
			g, err := listener.AdoptFlows(spec, l.Flows)
			if err != nil {
				return got, err
			}
			g.Close()
			got.Sockets += len(l.Flows.Sockets)
		}
		got.Listeners++
	}
	for _, w := range st.Workers {
		if err := unix.Kill(w.PID, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return got, fmt.Errorf("worker %d: %w", w.PID, err)
		}
		got.Workers++
	}
	for _, fd := range []int{st.NotifyFd, st.WorkerFd} {
		if _, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
			return got, fmt.Errorf("baton's own socket at fd %d: %w", fd, os.NewSyscallError("getsockopt", err))
		}
	}
	return got, nil
}

// CheckState is the pre-flight of this binary: it decodes the state a
// running baton handed over and checks it (Check). The handshake it
// returns, its error included, is the pre-flight's answer: even a state
// this binary cannot decode is answered with the nonce and version found
// in it, so that the running baton can say why.
func CheckState(state []byte) (upgrade.Handshake, error) {
	var head struct {
		Version int    `json:"version"`
		Nonce   string `json:"nonce"`
	}
	if err := json.Unmarshal(state, &head); err != nil {
		return upgrade.Handshake{}, fmt.Errorf("the state the running baton handed over is not JSON: %w", err)
	}
	var h UpgradeState
	if err := json.Unmarshal(state, &h); err != nil {
		err = fmt.Errorf("reading the state the running baton handed over (version %d; this baton reads versions %d and %d): %w", head.Version, stateVersionNoFlows, StateVersion, err)
		return upgrade.Handshake{Nonce: head.Nonce, Version: head.Version, Error: err.Error()}, err
	}
	got, err := h.Check()
	if err != nil {
		got.Error = err.Error()
	}
	return got, err
}
