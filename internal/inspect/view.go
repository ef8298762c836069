package inspect

import (
	"net/netip"
	"time"

	"github.com/baton-dev/baton/internal/api"
)

// Input is what baton manages: its listeners, its live workers, and the
// slots of the serving generation.
type Input struct {
	Listeners []Listener
	Workers   []Worker
	// Slots are the serving generation's slots, with or without a live
	// worker (a slot whose worker crashed waits in backoff).
	Slots []Slot
	// Command is the worker command as given.
	Command []string
}

// Protocol is a listener's transport, as its URL scheme names it.
type Protocol = api.Protocol

// Protocols.
const (
	TCP      = api.ProtocolTCP
	UDP      = api.ProtocolUDP
	Unix     = api.ProtocolUnix     // unix stream
	UnixGram = api.ProtocolUnixGram // unix datagram
)

// Listener is one listener baton holds.
type Listener struct {
	Name     string
	Protocol Protocol
	// Addr is the bound address of a TCP or UDP listener: an IPv4 or IPv6
	// address (the unspecified one for all addresses) and the real port.
	// An IPv6 listener that also serves IPv4 sees IPv4-mapped addresses.
	Addr netip.AddrPort
	// Backlog is the backlog baton gave listen(2); 0 for datagram sockets.
	Backlog int
	// Sockets are the listener's sockets: one shared by every worker
	// (Slot Shared), or one SO_REUSEPORT socket per slot.
	Sockets []Socket
	// Captured is set when a live worker's bind(2) got this listener's
	// socket (--capture-bind): the program then calls listen(2) on it
	// too.
	Captured bool
}

// Socket is one socket of a listener.
type Socket struct {
	Slot  int // the slot a SO_REUSEPORT socket serves, or Shared
	Inode uint64
}

// Shared is the Slot of a socket every worker shares.
const Shared = -1

// Worker is one live worker process.
type Worker struct {
	PID, Slot, Generation int
	// State is "starting", "ready" or "draining".
	State string
	// Started is when baton started it.
	Started time.Time
}

// Slot is one slot of the serving generation, as the supervisor's
// status shows it.
type Slot struct {
	Slot int
	// State is "up" (it has a live worker), "backoff" (its worker exited
	// or could not start; another starts after Backoff) or "stopped".
	State string
	// PID is its live worker; 0 when it has none.
	PID      int
	Restarts int
	// Backoff is the wait before its last restart: it doubles from the
	// supervisor's MinBackoff with each worker that exited within
	// StableAfter of its start, and starts over after one that stayed up
	// longer.
	Backoff time.Duration
	// NextIn is how long until the pending restart (backoff only).
	NextIn time.Duration
	// LastError says why the slot last lost its worker (with the
	// worker's last output), LastErrorTime when; empty while nothing
	// failed.
	LastError     string
	LastErrorTime time.Time
}

// Slot states, as Slot.State has them.
const (
	SlotUp      = api.SlotUp
	SlotBackoff = api.SlotBackoff
)

// Worker states, as Worker.State has them.
const (
	WorkerStarting = string(api.WorkerStarting)
	WorkerReady    = string(api.WorkerReady)
	WorkerDraining = string(api.WorkerDraining)
)

// The view's types are the control API's (internal/api), which the
// status reply carries: these names are theirs.
type (
	// View is the kernel's view of baton's sockets at one moment.
	View = api.KernelView
	// ListenerView is the kernel's view of one listener.
	ListenerView = api.KernelListener
	// SocketView is the kernel's view of one socket.
	SocketView = api.KernelSocket
	// WorkerView is the kernel's view of one worker.
	WorkerView = api.KernelWorker
	// Host is the host's (the network namespace's) counters.
	Host = api.Host
	// Warning is a trap the view shows baton has fallen into.
	Warning = api.Warning
	// Code names a kind of warning.
	Code = api.WarningCode
	// Severity says how much a warning matters.
	Severity = api.Severity
)

// NetstatCounters are the TcpExt counters Host.Netstat carries.
var NetstatCounters = api.NetstatCounters

// The warnings (api.WarningCodes).
const (
	BacklogClamped     = api.BacklogClamped
	BacklogLowered     = api.BacklogLowered
	AcceptQueueFull    = api.AcceptQueueFull
	ListenOverflows    = api.ListenOverflows
	NofileDefault      = api.NofileDefault
	NofileHeadroom     = api.NofileHeadroom
	CloseWait          = api.CloseWait
	TimeWait           = api.TimeWait
	NotAccepting       = api.NotAccepting
	WrapperWithoutExec = api.WrapperWithoutExec
	BindsOwnPort       = api.BindsOwnPort
	CrashLoop          = api.CrashLoop
)

// The severities (api.Severity).
const (
	SeverityWarning  = api.SeverityWarning
	SeverityDegraded = api.SeverityDegraded
)

// Codes lists every warning code.
var Codes = api.WarningCodes

// warningKey identifies a warning across views: its code and what it is
// about.
func warningKey(w Warning) string {
	k := string(w.Code) + "\x00" + w.Listener
	if w.Slot != nil {
		k += "\x00s" + itoa(*w.Slot)
	}
	if w.PID != 0 {
		k += "\x00p" + itoa(w.PID)
	}
	return k
}
