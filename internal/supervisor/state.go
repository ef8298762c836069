package supervisor

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
)

// StateVersion is the version of Handover this baton writes and reads. A
// baton reads the states of its own version only; an upgrade to a binary
// that cannot read it stops at the pre-flight, changing nothing.
const StateVersion = 1

// Handover is everything a baton hands to the binary it re-executes itself
// as (baton upgrade): the sockets, the workers (still its children: the
// pid does not change), their generations and slots, and the descriptors
// that must survive the execve, by number. It is JSON in a memfd.
type Handover struct {
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
}

// ListenerState is one listener group.
type ListenerState struct {
	ID      int           `json:"id"`
	Spec    string        `json:"spec"`
	Sockets []SocketState `json:"sockets"`
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
}

// StatsState carries the counters.
type StatsState struct {
	ReloadsOK      int           `json:"reloads_ok"`
	ReloadsFailed  int           `json:"reloads_failed"`
	LastReload     *ReloadResult `json:"last_reload,omitempty"`
	WorkersStarted int           `json:"workers_started"`
}

// Fds lists every descriptor the state names, which must survive the
// execve (close-on-exec cleared) and be handed to the pre-flight.
func (st *Handover) Fds() []int {
	fds := []int{st.NotifyFd, st.WorkerFd}
	if st.ControlFd >= 0 {
		fds = append(fds, st.ControlFd)
	}
	for _, l := range st.Listeners {
		for _, s := range l.Sockets {
			fds = append(fds, s.Fd)
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

// Check validates a state before a new binary takes it over: its version,
// and that every listener descriptor is a socket of the recorded kind on
// the recorded address. The pre-flight runs it in the new binary.
func (st *Handover) Check() error {
	if st.Version != StateVersion {
		return fmt.Errorf("state version %d; this baton reads version %d", st.Version, StateVersion)
	}
	for _, l := range st.Listeners {
		spec, err := listener.Parse(l.Spec)
		if err != nil {
			return fmt.Errorf("listener %q: %w", l.Spec, err)
		}
		for _, s := range l.Sockets {
			if _, err := listener.Adopt(spec, s.Fd, s.Backlog, 0); err != nil {
				return fmt.Errorf("listener %s, slot %d: %w", spec.Name, s.Slot, err)
			}
		}
	}
	for _, w := range st.Workers {
		if err := unix.Kill(w.PID, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("worker %d: %w", w.PID, err)
		}
	}
	for _, fd := range []int{st.NotifyFd, st.WorkerFd} {
		if _, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
			return fmt.Errorf("baton's own socket at fd %d: %w", fd, os.NewSyscallError("getsockopt", err))
		}
	}
	return nil
}
