package sockdiag

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// ErrNotSupported is wrapped by every error that says this system cannot
// answer at all: not Linux, or a kernel without the sock_diag handler asked
// for.
var ErrNotSupported = errors.New("not supported")

// State is a socket state as the kernel numbers it (include/net/tcp_states.h).
// UDP and unix sockets use the same numbers: an unconnected one is Close, a
// connected one Established, a listening unix socket Listen.
type State uint8

// The states, named as ss(8) names them.
const (
	Established   State = 1
	SynSent       State = 2
	SynRecv       State = 3
	FinWait1      State = 4
	FinWait2      State = 5
	TimeWait      State = 6
	Close         State = 7
	CloseWait     State = 8
	LastAck       State = 9
	Listen        State = 10
	Closing       State = 11
	BoundInactive State = 13 // bound, neither listening nor connected (Linux 6.5)
)

var stateNames = [...]string{
	Established:   "ESTAB",
	SynSent:       "SYN-SENT",
	SynRecv:       "SYN-RECV",
	FinWait1:      "FIN-WAIT-1",
	FinWait2:      "FIN-WAIT-2",
	TimeWait:      "TIME-WAIT",
	Close:         "UNCONN",
	CloseWait:     "CLOSE-WAIT",
	LastAck:       "LAST-ACK",
	Listen:        "LISTEN",
	Closing:       "CLOSING",
	BoundInactive: "BOUND-INACTIVE",
}

// String is the state's name in ss(8) output, such as "ESTAB" or
// "CLOSE-WAIT"; a number the kernel may add later prints as "STATE(n)".
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return "STATE(" + strconv.Itoa(int(s)) + ")"
}

// StateMask is a set of states, bit 1<<State for each, the form the kernel
// takes in idiag_states and udiag_states.
type StateMask uint32

// AllStates is every state of a socket that listens or has (or had) a
// connection: Established through Closing. It leaves out BoundInactive,
// which makes the kernel walk its whole bind table; add it when wanted.
const AllStates StateMask = 1<<(Closing+1) - 1<<Established

// States returns the mask holding the given states.
func States(states ...State) StateMask {
	var m StateMask
	for _, s := range states {
		m |= 1 << (s & 31)
	}
	return m
}

// Has reports whether s is in the mask.
func (m StateMask) Has(s State) bool { return s < 32 && m&(1<<s) != 0 }

// String lists the states joined by "|", such as "ESTAB|LISTEN".
func (m StateMask) String() string {
	var names []string
	for s := State(0); s < 32; s++ {
		if m.Has(s) {
			names = append(names, s.String())
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "|")
}

// Socket is one TCP or UDP socket as sock_diag reports it (an inet_diag_msg).
type Socket struct {
	Family   uint8 // unix.AF_INET or unix.AF_INET6
	Protocol uint8 // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	State    State
	// Local and Remote are the socket's addresses. An IPv6 socket that
	// talks to an IPv4 peer shows IPv4-mapped addresses (::ffff:a.b.c.d).
	Local, Remote netip.AddrPort
	// RecvQ and SendQ mean what ss shows as Recv-Q and Send-Q. For a
	// listening TCP socket RecvQ is the number of connections waiting to be
	// accepted and SendQ the accept queue's maximum (the listen(2) backlog
	// capped at net.core.somaxconn). For another TCP socket they are the
	// bytes not yet read by the application and the bytes not yet
	// acknowledged by the peer; for UDP, the memory charged to the receive
	// and send queues.
	RecvQ, SendQ uint32
	UID          uint32
	// Inode is the inode of the socket's file, 0 for sockets no process
	// holds: connections not yet accepted, SYN-RECV requests, TIME-WAIT
	// and other orphans.
	Inode uint64
	// Cookie is the kernel's unique, never reused id for the socket.
	Cookie uint64
}

// Query selects the sockets Conn.Query returns. The zero value asks for
// every TCP socket, IPv4 and IPv6, in AllStates.
type Query struct {
	Family    uint8     // unix.AF_INET, unix.AF_INET6, or 0 for both
	Protocol  uint8     // unix.IPPROTO_TCP (also when 0) or unix.IPPROTO_UDP
	States    StateMask // 0 means AllStates
	LocalPort uint16    // 0 means any port
}

// Queue is the queue lengths of a socket looked up by inode. For a
// listening socket RecvQ is the number of connections waiting to be
// accepted and SendQ the accept queue's maximum. Otherwise they count
// bytes: for a unix stream socket the bytes waiting to be read and those
// sent but not yet read by the peer.
type Queue struct {
	State        State
	RecvQ, SendQ uint32
}

// Owner is a process holding a socket, at file descriptor FD.
type Owner struct{ PID, FD int }

// diag is the method set of Conn. Both conn_linux.go and conn_others.go
// assert it, so the two cannot drift apart.
type diag interface {
	Query(Query) ([]Socket, error)
	ListenQueues(inodes ...uint64) (map[uint64]Queue, error)
	UnixQueues(inodes ...uint64) (map[uint64]Queue, error)
	UnixFile(ino uint64) (UnixFile, bool, error)
	Close() error
}

// The process and host functions have the same signatures on every system.
var (
	_ func(...int) (map[uint64][]Owner, error)    = Owners
	_ func(int) (int, uint64, uint64, error)      = FDUsage
	_ func() (map[string]map[string]int64, error) = ReadNetstat
	_ func() (map[string]map[string]int64, error) = ReadSockstat
)
