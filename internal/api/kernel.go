package api

import "time"

// KernelView is the kernel's view of baton's sockets at one moment, as
// `baton status --json` prints it under "kernel" (internal/inspect makes
// it). docs/status.md documents every field.
type KernelView struct {
	Time time.Time `json:"time"`
	// Took is how long asking the kernel took, in seconds.
	Took      float64          `json:"took"`
	Listeners []KernelListener `json:"listeners"`
	Workers   []KernelWorker   `json:"workers"`
	Host      Host             `json:"host"`
	Warnings  []Warning        `json:"warnings"`
	// Errors are the questions the kernel did not answer; the rest of the
	// view stands.
	Errors []string `json:"errors,omitempty"`
}

// Protocol is a listener's transport, as its URL scheme names it.
type Protocol string

// Protocols.
const (
	ProtocolTCP      Protocol = "tcp"
	ProtocolUDP      Protocol = "udp"
	ProtocolUnix     Protocol = "unix"     // unix stream
	ProtocolUnixGram Protocol = "unixgram" // unix datagram
)

// KernelListener is the kernel's view of one listener.
type KernelListener struct {
	Name     string   `json:"name"`
	Protocol Protocol `json:"protocol"`
	Backlog  int      `json:"backlog,omitempty"`
	// Sockets has one entry per socket: one for a shared listener, one per
	// slot for SO_REUSEPORT.
	Sockets []KernelSocket `json:"sockets"`
	// Connections counts the TCP sockets on the listener's address and
	// port by state, listening sockets left out: connections waiting in
	// the accept queue, accepted ones, half-open ones (SYN-RECV), and
	// those closing or closed (TIME-WAIT). Absent for other protocols.
	Connections map[string]int `json:"connections,omitempty"`
}

// KernelSocket is the kernel's view of one socket, with the queue lengths
// `ss` shows as Recv-Q and Send-Q. For a listening (LISTEN) socket RecvQ
// is the number of connections waiting to be accepted and SendQ the
// accept queue's maximum, min(backlog, net.core.somaxconn); the kernel
// queues one more than that before it drops. For a datagram socket they
// are bytes.
type KernelSocket struct {
	// Slot is the slot a SO_REUSEPORT socket serves; absent when shared.
	Slot  *int   `json:"slot,omitempty"`
	Inode uint64 `json:"inode"`
	// State is the socket's state as ss names it ("LISTEN", "UNCONN"); ""
	// when the kernel did not report the socket (see KernelView.Errors).
	State string `json:"state"`
	RecvQ uint32 `json:"recv_q"`
	SendQ uint32 `json:"send_q"`
}

// Listening reports whether the socket is a listening one, whose queues
// count connections.
func (s KernelSocket) Listening() bool { return s.State == "LISTEN" }

// KernelWorker is the kernel's view of one worker.
type KernelWorker struct {
	PID        int `json:"pid"`
	Slot       int `json:"slot"`
	Generation int `json:"generation"`
	// FDs is the number of open descriptors, FDLimit and FDLimitHard the
	// soft and hard RLIMIT_NOFILE (-1 for unlimited). All three are 0
	// when /proc did not tell (see KernelView.Errors).
	FDs         int   `json:"fds"`
	FDLimit     int64 `json:"fd_limit"`
	FDLimitHard int64 `json:"fd_limit_hard"`
	// Connections counts the TCP connections on baton's listeners that
	// this worker holds (has an fd for), by state.
	Connections map[string]int `json:"connections,omitempty"`
}

// Host is the host's (the network namespace's) counters.
type Host struct {
	// Somaxconn is net.core.somaxconn, the cap on every listen backlog.
	Somaxconn int `json:"somaxconn,omitempty"`
	// MaxTimeWait is net.ipv4.tcp_max_tw_buckets: past it the kernel
	// drops TIME-WAIT state early.
	MaxTimeWait int `json:"tcp_max_tw_buckets,omitempty"`
	// Netstat holds the TcpExt counters of /proc/net/netstat that explain
	// dropped connections, by name; they count since boot.
	Netstat map[string]int64 `json:"netstat,omitempty"`
	// Sockstat is /proc/net/sockstat and sockstat6 by group and name:
	// sockstat["TCP"]["tw"].
	Sockstat map[string]map[string]int64 `json:"sockstat,omitempty"`
}

// NetstatCounters are the TcpExt counters Host.Netstat carries.
var NetstatCounters = []string{
	"ListenOverflows", "ListenDrops",
	"SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed",
	"TCPReqQFullDrop", "TCPReqQFullDoCookies",
	"TCPMigrateReqSuccess", "TCPMigrateReqFailure",
	"TCPTimeWaitOverflow",
}

// Warning is a trap the kernel's view shows baton has fallen into.
type Warning struct {
	Code WarningCode `json:"code"`
	// Listener, Slot and PID say what the warning is about, where it is
	// about one listener, SO_REUSEPORT socket or worker.
	Listener string `json:"listener,omitempty"`
	Slot     *int   `json:"slot,omitempty"`
	PID      int    `json:"pid,omitempty"`
	// Severity is SeverityDegraded for a warning that means the service
	// does not serve as configured (`baton status` exits 3), else
	// SeverityWarning.
	Severity Severity `json:"severity"`
	// Message says what is wrong, why it matters and what to do.
	Message string `json:"message"`
	// Since is when the warning first appeared (and was logged).
	Since time.Time `json:"since"`
}

// WarningCode names a kind of warning.
type WarningCode string

// The warnings.
const (
	// BacklogClamped: a listener's backlog is above net.core.somaxconn,
	// which caps it.
	BacklogClamped WarningCode = "backlog_clamped"
	// BacklogLowered: a listen(2) call on baton's socket after baton's own
	// (a worker's: under --capture-bind the program's listen) lowered
	// its accept queue below the backlog baton gave it; somaxconn does
	// not explain it.
	BacklogLowered WarningCode = "backlog_lowered"
	// AcceptQueueFull: an accept queue is above 80% full.
	AcceptQueueFull WarningCode = "accept_queue_full"
	// ListenOverflows: the host's ListenOverflows counter rose recently.
	ListenOverflows WarningCode = "listen_overflows"
	// NofileDefault: a worker runs with the 1024 default RLIMIT_NOFILE.
	NofileDefault WarningCode = "nofile_default"
	// NofileHeadroom: a worker has 80% or more of its fds open.
	NofileHeadroom WarningCode = "nofile_headroom"
	// CloseWait: a worker holds connections that stay in CLOSE-WAIT.
	CloseWait WarningCode = "close_wait"
	// TimeWait: TIME-WAIT sockets pile up on a listener's port.
	TimeWait WarningCode = "time_wait"
	// NotAccepting: connections wait in a listener's accept queue and no
	// worker accepts them, while workers are ready.
	NotAccepting WarningCode = "not_accepting"
	// WrapperWithoutExec: a worker is a shell that runs the program as
	// its child instead of exec-ing it, so LISTEN_PID names the shell.
	WrapperWithoutExec WarningCode = "wrapper_without_exec"
	// BindsOwnPort: a slot's workers keep exiting with "address already
	// in use": the program binds a port of its own.
	BindsOwnPort WarningCode = "binds_own_port"
	// CrashLoop: a slot's workers keep exiting soon after they start.
	CrashLoop WarningCode = "crash_loop"
)

// WarningCodes lists every warning code.
var WarningCodes = []WarningCode{
	BacklogClamped, BacklogLowered, AcceptQueueFull, ListenOverflows, NofileDefault, NofileHeadroom, CloseWait, TimeWait,
	NotAccepting, WrapperWithoutExec, BindsOwnPort, CrashLoop,
}

// Severity says how much a warning matters to whoever monitors baton.
type Severity string

// Severities.
const (
	// SeverityWarning: a trap that costs connections or capacity under
	// some load, or will; the service runs as configured.
	SeverityWarning Severity = "warning"
	// SeverityDegraded: the service does not serve as configured (a slot
	// without a working worker, a listener nobody accepts on); `baton
	// status` exits 3 while one is active.
	SeverityDegraded Severity = "degraded"
)

// Severity is the severity of warnings with this code: SeverityDegraded
// for NotAccepting, BindsOwnPort and CrashLoop, SeverityWarning for the
// others.
func (c WarningCode) Severity() Severity {
	switch c {
	case NotAccepting, BindsOwnPort, CrashLoop:
		return SeverityDegraded
	}
	return SeverityWarning
}
