package sockdiag

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

var _ diag = &Conn{}

// Conn is a NETLINK_SOCK_DIAG socket. Its methods are safe for concurrent
// use; each asks the kernel afresh.
type Conn struct {
	c *netlink.Conn
	// noEQ is set once the kernel has rejected INET_DIAG_BC_S_EQ (kernels
	// from before the equality operators); port filters then use the
	// S_GE/S_LE pair.
	noEQ atomic.Bool
}

// Dial opens a NETLINK_SOCK_DIAG socket in the calling process's network
// namespace. Close it when done.
func Dial() (*Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		switch {
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			return nil, fmt.Errorf("sock_diag: opening a netlink socket: %w: a sandbox or seccomp profile forbids AF_NETLINK sockets; run on the host or allow NETLINK_SOCK_DIAG", err)
		case errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.EPROTONOSUPPORT):
			return nil, fmt.Errorf("sock_diag: opening a netlink socket: %w (%w): the kernel lacks NETLINK_SOCK_DIAG; build it with CONFIG_INET_DIAG, or load the inet_diag module", ErrNotSupported, err)
		}
		return nil, fmt.Errorf("sock_diag: opening a netlink socket: %w", err)
	}
	return &Conn{c: c}, nil
}

// Close closes the netlink socket.
func (c *Conn) Close() error {
	if err := c.c.Close(); err != nil {
		return fmt.Errorf("sock_diag: %w", err)
	}
	return nil
}

// Query returns the sockets that q selects, in the order the kernel lists
// them (IPv4 before IPv6 when q asks for both). The kernel does the
// filtering: only matching sockets cross into user space. It still looks
// at every socket of the family, once per family: a caller that knows its
// listener's family should say so (an IPv6 listener's connections are all
// IPv6, IPv4-mapped ones included) and halve the cost on a crowded host.
func (c *Conn) Query(q Query) ([]Socket, error) {
	proto := q.Protocol
	if proto == 0 {
		proto = ipprotoTCP
	}
	states := q.States
	if states == 0 {
		states = AllStates
	}
	var families []uint8
	switch q.Family {
	case 0:
		families = []uint8{afInet, afInet6}
	case afInet, afInet6:
		families = []uint8{q.Family}
	default:
		return nil, fmt.Errorf("sock_diag query: address family %d: %w: use unix.AF_INET, unix.AF_INET6 or 0 for both", q.Family, errFamily)
	}
	var socks []Socket
	for _, fam := range families {
		var err error
		socks, err = c.queryFamily(socks, fam, proto, states, q.LocalPort)
		if err != nil {
			return nil, err
		}
	}
	return socks, nil
}

func (c *Conn) queryFamily(dst []Socket, fam, proto uint8, states StateMask, port uint16) ([]Socket, error) {
	var bc []byte
	eq := !c.noEQ.Load()
	if port != 0 {
		bc = sourcePortFilter(port, eq)
	}
	out, err := c.dumpInet(dst, fam, proto, states, bc)
	if err != nil && port != 0 && eq && errors.Is(err, unix.EINVAL) {
		// inet_diag_bc_audit refuses operators it does not know with
		// EINVAL. Remember, and say the same with S_GE and S_LE.
		c.noEQ.Store(true)
		out, err = c.dumpInet(dst, fam, proto, states, sourcePortFilter(port, false))
	}
	return out, err
}

// dumpInet asks for the inet sockets of one family and protocol in states
// that pass the bytecode filter (none when bc is empty).
func (c *Conn) dumpInet(dst []Socket, fam, proto uint8, states StateMask, bc []byte) ([]Socket, error) {
	what := inetName(fam, proto)
	msgs, err := c.c.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | netlink.Dump},
		Data:   inetRequest(fam, proto, states, bc),
	})
	if err != nil {
		return dst, diagError(what, err)
	}
	out, err := decodeInet(dst, msgs, proto)
	if err != nil {
		return dst, fmt.Errorf("sock_diag %s: parsing the kernel's reply: %w", what, err)
	}
	return out, nil
}

// ListenQueues returns the accept queues of the listening TCP sockets
// (IPv4 and IPv6) with the given inodes, keyed by inode. An inode that is
// not a listening TCP socket is absent from the map. The kernel walks only
// its table of listening sockets for this, however many connections the
// host has.
func (c *Conn) ListenQueues(inodes ...uint64) (map[uint64]Queue, error) {
	queues := make(map[uint64]Queue, len(inodes))
	if len(inodes) == 0 {
		return queues, nil
	}
	want := make(map[uint64]bool, len(inodes))
	for _, ino := range inodes {
		want[ino] = true
	}
	socks, err := c.Query(Query{Protocol: ipprotoTCP, States: States(Listen)})
	if err != nil {
		return nil, err
	}
	for _, s := range socks {
		if want[s.Inode] {
			queues[s.Inode] = Queue{State: s.State, RecvQ: s.RecvQ, SendQ: s.SendQ}
		}
	}
	return queues, nil
}

// UnixQueues returns the queue lengths of the unix sockets with the given
// inodes, keyed by inode; an inode that is not a unix socket is absent.
// For a listening socket Queue.RecvQ is the number of connections waiting
// to be accepted and Queue.SendQ the backlog. Each inode is one exact
// lookup; the kernel does not copy out the host's other unix sockets.
func (c *Conn) UnixQueues(inodes ...uint64) (map[uint64]Queue, error) {
	queues := make(map[uint64]Queue, len(inodes))
	missing := 0
	for _, ino := range inodes {
		if ino == 0 || ino > math.MaxUint32 {
			// Socket inodes are 32 bits (get_next_ino); this one cannot be.
			missing++
			continue
		}
		msgs, err := c.c.Execute(netlink.Message{
			Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request},
			Data:   unixRequest(uint32(ino), 0),
		})
		if errors.Is(err, unix.ENOENT) {
			missing++
			continue
		}
		if err != nil {
			return nil, diagError("unix", err)
		}
		socks, err := decodeUnix(nil, msgs)
		if err != nil {
			return nil, fmt.Errorf("sock_diag unix inode %d: parsing the kernel's reply: %w", ino, err)
		}
		for _, u := range socks {
			if u.Inode == ino {
				queues[ino] = u.Queue
			}
		}
	}
	if missing > 0 && len(queues) == 0 {
		// ENOENT is also the answer of a kernel without unix_diag. Ask
		// for a dump that matches nothing: it fails the same way then.
		_, err := c.c.Execute(netlink.Message{
			Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | netlink.Dump},
			Data:   unixRequest(0, 0),
		})
		if err != nil {
			return nil, diagError("unix", err)
		}
	}
	return queues, nil
}

// UnixFile returns the file the unix socket with inode ino is bound to, as
// the kernel recorded it when the socket was bound: one exact lookup
// (UDIAG_SHOW_VFS). ok is false, with no error, when no such socket
// exists or it is bound to no file (unbound, or an abstract name). This
// is how a process that bound a socket at a path learns which file on
// disk is really its socket: the file now at the path may have been
// replaced since.
func (c *Conn) UnixFile(ino uint64) (f UnixFile, ok bool, err error) {
	if ino == 0 || ino > math.MaxUint32 {
		// Socket inodes are 32 bits (get_next_ino); this one cannot be.
		return f, false, nil
	}
	msgs, err := c.c.Execute(netlink.Message{
		Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request},
		Data:   unixRequestShow(uint32(ino), 0, udiagShowVFS),
	})
	if errors.Is(err, unix.ENOENT) {
		// No such socket, or a kernel without unix_diag: a dump that
		// matches nothing fails the same way on the latter.
		if _, err := c.c.Execute(netlink.Message{
			Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Request | netlink.Dump},
			Data:   unixRequest(0, 0),
		}); err != nil {
			return f, false, diagError("unix", err)
		}
		return f, false, nil
	}
	if err != nil {
		return f, false, diagError("unix", err)
	}
	got, f, ok, err := decodeUnixFile(msgs)
	if err != nil {
		return f, false, fmt.Errorf("sock_diag unix inode %d: parsing the kernel's reply: %w", ino, err)
	}
	if got != ino {
		return UnixFile{}, false, fmt.Errorf("sock_diag unix inode %d: the kernel answered for inode %d", ino, got)
	}
	return f, ok, nil
}

// inetName names a family and protocol for error messages: "tcp IPv6".
func inetName(fam, proto uint8) string {
	p := fmt.Sprintf("protocol %d", proto)
	switch proto {
	case ipprotoTCP:
		p = "tcp"
	case ipprotoUDP:
		p = "udp"
	}
	if fam == afInet6 {
		return p + " IPv6"
	}
	return p + " IPv4"
}

// diagError adds what was asked for and, where the cause is known, the fix.
func diagError(what string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		mod := "inet_diag and tcp_diag"
		switch {
		case what == "unix":
			mod = "unix_diag"
		case strings.HasPrefix(what, "udp"):
			mod = "udp_diag"
		}
		return fmt.Errorf("sock_diag %s: %w: the kernel has no diag handler for it (%w): load %s (modprobe) or build the kernel with it", what, ErrNotSupported, err, mod)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("sock_diag %s: %w: a sandbox or security module forbids socket diagnostics; run on the host or allow NETLINK_SOCK_DIAG", what, err)
	}
	return fmt.Errorf("sock_diag %s: %w", what, err)
}
