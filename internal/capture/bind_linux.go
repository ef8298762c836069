package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSockaddr is sizeof(struct sockaddr_storage): the kernel refuses a
// longer address with EINVAL before looking at it.
const maxSockaddr = 128

// Sizes below which the kernel refuses an address of the family with
// EINVAL: sizeof(struct sockaddr_in) and SIN6_LEN_RFC2133.
const (
	minSockaddrInet4 = 16
	minSockaddrInet6 = 24
)

// bindAddr is the address a program passed to bind(2).
type bindAddr struct {
	family int
	ap     netip.AddrPort // AF_INET, AF_INET6; no zone
	path   string         // AF_UNIX: "/path", "@abstract", "" for autobind
}

// errBadSockaddr marks an address the kernel itself will refuse: baton
// lets the bind go ahead so that the program sees the kernel's error.
var errBadSockaddr = errors.New("malformed sockaddr")

// parseSockaddr decodes a struct sockaddr read from a program's memory.
// Only the family is required; inet addresses must be as long as the
// kernel requires.
func parseSockaddr(b []byte) (bindAddr, error) {
	if len(b) < 2 || len(b) > maxSockaddr {
		return bindAddr{}, fmt.Errorf("%w: %d bytes", errBadSockaddr, len(b))
	}
	a := bindAddr{family: int(binary.NativeEndian.Uint16(b))}
	switch a.family {
	case unix.AF_INET:
		if len(b) < minSockaddrInet4 {
			return bindAddr{}, fmt.Errorf("%w: AF_INET address of %d bytes", errBadSockaddr, len(b))
		}
		a.ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
	case unix.AF_INET6:
		if len(b) < minSockaddrInet6 {
			return bindAddr{}, fmt.Errorf("%w: AF_INET6 address of %d bytes", errBadSockaddr, len(b))
		}
		a.ap = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[2:4]))
	case unix.AF_UNIX:
		p := b[2:]
		switch {
		case len(p) == 0:
		case p[0] == 0:
			a.path = "@" + string(p[1:])
		default:
			if i := strings.IndexByte(string(p), 0); i >= 0 {
				p = p[:i]
			}
			a.path = string(p)
		}
	}
	return a, nil
}

func (a bindAddr) inet() bool { return a.family == unix.AF_INET || a.family == unix.AF_INET6 }

func (a bindAddr) String() string {
	switch {
	case a.inet():
		return a.ap.String()
	case a.family == unix.AF_UNIX && a.path == "":
		return "(unix autobind)"
	case a.family == unix.AF_UNIX:
		return a.path
	}
	return fmt.Sprintf("(address family %d)", a.family)
}

// sockKind is what a socket is: family, type and protocol.
type sockKind struct{ family, sotype, proto int }

func (k sockKind) String() string {
	n := map[[2]int]string{
		{unix.SOCK_STREAM, unix.IPPROTO_TCP}:   "tcp",
		{unix.SOCK_STREAM, unix.IPPROTO_MPTCP}: "mptcp",
		{unix.SOCK_DGRAM, unix.IPPROTO_UDP}:    "udp",
	}[[2]int{k.sotype, k.proto}]
	v := map[int]string{unix.AF_INET: "4", unix.AF_INET6: "6"}[k.family]
	if n == "" || v == "" {
		return fmt.Sprintf("family %d type %d protocol %d", k.family, k.sotype, k.proto)
	}
	return n + v
}

// fits reports whether a program that made a socket of kind prog can
// use a held socket of kind k. An MPTCP socket (Go 1.24 and later make
// one for every TCP listener where the kernel has MPTCP) gets a TCP one:
// to the program both are stream sockets with the same calls, and it
// would fall back to TCP itself once baton's port made its bind fail.
func (k sockKind) fits(prog sockKind) bool {
	if k == prog {
		return true
	}
	return k.family == prog.family && k.sotype == unix.SOCK_STREAM && prog.sotype == unix.SOCK_STREAM &&
		k.proto == unix.IPPROTO_TCP && prog.proto == unix.IPPROTO_MPTCP
}

// heldSocket is a socket baton holds, as Serve sees it.
type heldSocket struct {
	name  string
	fd    int // Serve's duplicate, closed when Serve returns
	kind  sockKind
	addr  netip.AddrPort // bound address, no zone
	ino   uint64
	netns uint64 // inode of its network namespace
}

// candidates lists the held sockets whose address serves a bind to a,
// best first: the same address; then a held wildcard of the family
// (0.0.0.0, [::]), which already receives connections to every address;
// then, when the program asks for the wildcard, a socket baton holds on
// one address of the family (the program asked for every address and gets
// the one baton was configured with). The family and port must be equal:
// a socket cannot change family, and a program that gets an IPv6 socket
// where it made an IPv4 one misreads every peer address. Ties go to the
// order of held.
func candidates(a bindAddr, held []heldSocket) []int {
	if !a.inet() || a.ap.Port() == 0 {
		return nil
	}
	var exact, heldAny, progAny []int
	for i, h := range held {
		if h.kind.family != a.family || h.addr.Port() != a.ap.Port() {
			continue
		}
		switch {
		case h.addr.Addr() == a.ap.Addr():
			exact = append(exact, i)
		case h.addr.Addr().IsUnspecified():
			heldAny = append(heldAny, i)
		case a.ap.Addr().IsUnspecified():
			progAny = append(progAny, i)
		}
	}
	return append(append(exact, heldAny...), progAny...)
}

// choose picks the first candidate whose socket fits the program's.
// Without one it explains, wrapping ErrNoMatch, why baton's socket on that
// port does not fit; it returns -1 and nil when baton holds nothing there.
func choose(a bindAddr, prog sockKind, held []heldSocket, cands []int) (int, error) {
	for _, i := range cands {
		if held[i].kind.fits(prog) {
			return i, nil
		}
	}
	if len(cands) > 0 {
		h := held[cands[0]]
		return -1, fmt.Errorf("%w: listener %q is a %s socket and the program's is %s: give baton a %s listener on %s",
			ErrNoMatch, h.name, h.kind, prog, prog, a.ap)
	}
	return -1, miss(a, held)
}

// miss explains why no held socket on a's port serves a bind to a, or
// returns nil when baton holds nothing on that port.
func miss(a bindAddr, held []heldSocket) error {
	if !a.inet() || a.ap.Port() == 0 {
		return nil
	}
	for _, h := range held {
		if h.addr.Port() != a.ap.Port() {
			continue
		}
		if h.kind.family != a.family {
			want := sockKind{a.family, h.kind.sotype, h.kind.proto}
			return fmt.Errorf("%w: listener %q is %s %s and the program binds an %s socket to %s; a socket cannot change family: add a listener %s://%s (a program that binds both families needs one listener for each, the IPv6 one with ?v6only=true)",
				ErrNoMatch, h.name, h.kind, h.addr, familyName(a.family), a.ap, want, a.ap)
		}
		return fmt.Errorf("%w: listener %q is on %s and the program binds %s: bind the listener to %s or to the wildcard address, or configure the program for %s",
			ErrNoMatch, h.name, h.addr, a.ap, a.ap.Addr(), h.addr)
	}
	return nil
}

func familyName(f int) string {
	switch f {
	case unix.AF_INET:
		return "IPv4"
	case unix.AF_INET6:
		return "IPv6"
	}
	return fmt.Sprintf("family %d", f)
}
