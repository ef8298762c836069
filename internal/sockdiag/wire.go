package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
)

// The wire format of NETLINK_SOCK_DIAG (linux/sock_diag.h, inet_diag.h,
// unix_diag.h). The values are Linux's on every system, so the encoders and
// parsers here build and run (and are fuzzed) anywhere.
const (
	sockDiagByFamily netlink.HeaderType = 20 // SOCK_DIAG_BY_FAMILY

	afUnix  = 1
	afInet  = 2
	afInet6 = 10

	ipprotoTCP = 6
	ipprotoUDP = 17

	// struct inet_diag_req_v2 and struct inet_diag_msg.
	inetDiagReqLen = 56
	inetDiagMsgLen = 72

	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE

	// Bytecode operations (enum in inet_diag.h).
	bcJmp = 1  // INET_DIAG_BC_JMP
	bcSGE = 2  // INET_DIAG_BC_S_GE
	bcSLE = 3  // INET_DIAG_BC_S_LE
	bcSEQ = 11 // INET_DIAG_BC_S_EQ

	// struct unix_diag_req and struct unix_diag_msg.
	unixDiagReqLen = 24
	unixDiagMsgLen = 16
	udiagShowVFS   = 0x02 // UDIAG_SHOW_VFS
	udiagShowRQLen = 0x10 // UDIAG_SHOW_RQLEN
	unixDiagVFS    = 1    // UNIX_DIAG_VFS: struct unix_diag_vfs
	unixDiagRQLen  = 4    // UNIX_DIAG_RQLEN
	unixDiagVFSLen = 8    // struct unix_diag_vfs: udiag_vfs_ino, udiag_vfs_dev

	noCookie = ^uint32(0) // INET_DIAG_NOCOOKIE
)

var (
	errShort      = errors.New("message too short")
	errFamily     = errors.New("unknown address family")
	errNoRQLen    = errors.New("no UNIX_DIAG_RQLEN attribute")
	errBadMsgType = errors.New("unexpected netlink message type")
)

// inetRequest encodes a struct inet_diag_req_v2 asking for a dump of the
// sockets of one family and protocol in the given states, followed by the
// bytecode filter as an INET_DIAG_REQ_BYTECODE attribute when there is one.
// The socket id (ports, addresses, cookie) stays zero: the kernel applies
// its port fields in dumps, but with the byte order differing between TCP
// and UDP, so the bytecode does that job.
func inetRequest(family, proto uint8, states StateMask, bytecode []byte) []byte {
	b := make([]byte, inetDiagReqLen, inetDiagReqLen+4+len(bytecode))
	b[0] = family
	b[1] = proto
	// b[2] idiag_ext: no extensions asked for; b[3] pad.
	binary.NativeEndian.PutUint32(b[4:], uint32(states))
	if len(bytecode) > 0 {
		var hdr [4]byte
		binary.NativeEndian.PutUint16(hdr[0:], uint16(4+len(bytecode)))
		binary.NativeEndian.PutUint16(hdr[2:], inetDiagReqBytecode)
		b = append(b, hdr[:]...)
		b = append(b, bytecode...)
	}
	return b
}

// bcOp appends one struct inet_diag_bc_op: if the condition holds the
// kernel goes yes bytes forward, otherwise no bytes. It accepts the socket
// when it lands exactly on the end of the program and rejects it when it
// jumps past it.
func bcOp(b []byte, code uint8, yes uint8, no uint16) []byte {
	b = append(b, code, yes, 0, 0)
	binary.NativeEndian.PutUint16(b[len(b)-2:], no)
	return b
}

// sourcePortFilter returns bytecode matching sockets whose local port is
// port. With eq it is one INET_DIAG_BC_S_EQ; without, the S_GE and S_LE
// pair that kernels older than the equality operators understand.
//
// A port comparison is two ops: the operator, then one whose no field holds
// the port. Every op's yes goes to the next op, which keeps the program
// walkable the way inet_diag_bc_audit checks it (valid_cc); a failed test
// jumps 4 bytes past the end, which rejects the socket.
func sourcePortFilter(port uint16, eq bool) []byte {
	b := make([]byte, 0, 16)
	if eq {
		// [S_EQ yes=8 no=12][port]: 8 lands on the end, 12 beyond it.
		b = bcOp(b, bcSEQ, 8, 12)
		return bcOp(b, 0, 0, port)
	}
	// [S_GE yes=8 no=20][port][S_LE yes=8 no=12][port]
	b = bcOp(b, bcSGE, 8, 20)
	b = bcOp(b, 0, 0, port)
	b = bcOp(b, bcSLE, 8, 12)
	return bcOp(b, 0, 0, port)
}

// unixRequest encodes a struct unix_diag_req asking for the unix socket with
// inode ino (an exact lookup; states are then ignored) or, with ino 0, a
// dump of the unix sockets in states. Either way with their queue lengths.
func unixRequest(ino uint32, states StateMask) []byte {
	return unixRequestShow(ino, states, udiagShowRQLen)
}

// unixRequestShow is unixRequest asking for the attributes in show
// (UDIAG_SHOW_* bits) instead of the queue lengths.
func unixRequestShow(ino uint32, states StateMask, show uint32) []byte {
	b := make([]byte, unixDiagReqLen)
	b[0] = afUnix
	binary.NativeEndian.PutUint32(b[4:], uint32(states))
	binary.NativeEndian.PutUint32(b[8:], ino)
	binary.NativeEndian.PutUint32(b[12:], show)
	// No cookie: the kernel then matches on the inode alone.
	binary.NativeEndian.PutUint32(b[16:], noCookie)
	binary.NativeEndian.PutUint32(b[20:], noCookie)
	return b
}

// decodeInet appends the sockets in the replies to a dump to dst. The
// protocol is not in an inet_diag_msg; it is the one asked for.
func decodeInet(dst []Socket, msgs []netlink.Message, proto uint8) ([]Socket, error) {
	for i, m := range msgs {
		if m.Header.Type != sockDiagByFamily {
			return dst, fmt.Errorf("reply %d: %w %d", i, errBadMsgType, m.Header.Type)
		}
		s, err := parseInetMsg(m.Data, proto)
		if err != nil {
			return dst, fmt.Errorf("reply %d: %w", i, err)
		}
		dst = append(dst, s)
	}
	return dst, nil
}

// parseInetMsg parses a struct inet_diag_msg. The attributes after it are
// not asked for and are ignored.
func parseInetMsg(b []byte, proto uint8) (Socket, error) {
	if len(b) < inetDiagMsgLen {
		return Socket{}, fmt.Errorf("inet_diag_msg: %w: %d bytes, want %d", errShort, len(b), inetDiagMsgLen)
	}
	s := Socket{Family: b[0], Protocol: proto, State: State(b[1])}
	// struct inet_diag_sockid at offset 4: ports and addresses in network
	// byte order, the rest in host order.
	sport := binary.BigEndian.Uint16(b[4:])
	dport := binary.BigEndian.Uint16(b[6:])
	var src, dst netip.Addr
	switch s.Family {
	case afInet:
		src = netip.AddrFrom4([4]byte(b[8:12]))
		dst = netip.AddrFrom4([4]byte(b[24:28]))
	case afInet6:
		src = netip.AddrFrom16([16]byte(b[8:24]))
		dst = netip.AddrFrom16([16]byte(b[24:40]))
	default:
		return Socket{}, fmt.Errorf("inet_diag_msg: %w %d", errFamily, s.Family)
	}
	s.Local = netip.AddrPortFrom(src, sport)
	s.Remote = netip.AddrPortFrom(dst, dport)
	// b[40:44] idiag_if, b[44:52] idiag_cookie as two host-order halves.
	s.Cookie = uint64(binary.NativeEndian.Uint32(b[44:])) | uint64(binary.NativeEndian.Uint32(b[48:]))<<32
	// b[52:56] idiag_expires.
	s.RecvQ = binary.NativeEndian.Uint32(b[56:])
	s.SendQ = binary.NativeEndian.Uint32(b[60:])
	s.UID = binary.NativeEndian.Uint32(b[64:])
	s.Inode = uint64(binary.NativeEndian.Uint32(b[68:]))
	return s, nil
}

// unixSocket is a struct unix_diag_msg with its UNIX_DIAG_RQLEN attribute.
type unixSocket struct {
	Inode uint64
	Type  uint8 // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
	Queue
}

// decodeUnix appends the unix sockets in the replies to dst.
func decodeUnix(dst []unixSocket, msgs []netlink.Message) ([]unixSocket, error) {
	for i, m := range msgs {
		if m.Header.Type != sockDiagByFamily {
			return dst, fmt.Errorf("reply %d: %w %d", i, errBadMsgType, m.Header.Type)
		}
		u, err := parseUnixMsg(m.Data)
		if err != nil {
			return dst, fmt.Errorf("reply %d: %w", i, err)
		}
		dst = append(dst, u)
	}
	return dst, nil
}

func parseUnixMsg(b []byte) (unixSocket, error) {
	if len(b) < unixDiagMsgLen {
		return unixSocket{}, fmt.Errorf("unix_diag_msg: %w: %d bytes, want %d", errShort, len(b), unixDiagMsgLen)
	}
	if b[0] != afUnix {
		return unixSocket{}, fmt.Errorf("unix_diag_msg: %w %d", errFamily, b[0])
	}
	u := unixSocket{
		Type:  b[1],
		Queue: Queue{State: State(b[2])},
		Inode: uint64(binary.NativeEndian.Uint32(b[4:])),
	}
	ad, err := netlink.NewAttributeDecoder(b[unixDiagMsgLen:])
	if err != nil {
		return unixSocket{}, fmt.Errorf("unix_diag_msg attributes: %w", err)
	}
	found := false
	for ad.Next() {
		if ad.Type() != unixDiagRQLen {
			continue
		}
		v := ad.Bytes()
		if len(v) < 8 {
			return unixSocket{}, fmt.Errorf("UNIX_DIAG_RQLEN: %w: %d bytes, want 8", errShort, len(v))
		}
		u.RecvQ = binary.NativeEndian.Uint32(v[0:])
		u.SendQ = binary.NativeEndian.Uint32(v[4:])
		found = true
	}
	if err := ad.Err(); err != nil {
		return unixSocket{}, fmt.Errorf("unix_diag_msg attributes: %w", err)
	}
	if !found {
		return unixSocket{}, fmt.Errorf("unix_diag_msg inode %d: %w", u.Inode, errNoRQLen)
	}
	return u, nil
}

// UnixFile is the file a unix socket is bound to, as the kernel recorded it
// at bind(2) (UNIX_DIAG_VFS): the filesystem's device and the inode.
type UnixFile struct {
	// Dev is the device of the filesystem the file was created on,
	// encoded as stat(2) reports st_dev (unix.Mkdev of its major and
	// minor). It is the superblock's device: on btrfs, where stat reports
	// a subvolume's own device, and on overlayfs it can differ from the
	// file's st_dev; /proc/self/mountinfo lists it for the mount.
	Dev uint64
	// Ino is the inode number. The kernel reports its low 32 bits.
	Ino uint64
}

// decodeUnixFile reads the reply to an exact lookup with UDIAG_SHOW_VFS:
// the socket's inode, and the file it is bound to (ok false when it is
// bound to none: unbound, abstract, or a socket of a socketpair).
func decodeUnixFile(msgs []netlink.Message) (ino uint64, f UnixFile, ok bool, err error) {
	if len(msgs) != 1 {
		return 0, f, false, fmt.Errorf("%d replies to an exact lookup, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Header.Type != sockDiagByFamily {
		return 0, f, false, fmt.Errorf("%w %d", errBadMsgType, m.Header.Type)
	}
	b := m.Data
	if len(b) < unixDiagMsgLen {
		return 0, f, false, fmt.Errorf("unix_diag_msg: %w: %d bytes, want %d", errShort, len(b), unixDiagMsgLen)
	}
	if b[0] != afUnix {
		return 0, f, false, fmt.Errorf("unix_diag_msg: %w %d", errFamily, b[0])
	}
	ino = uint64(binary.NativeEndian.Uint32(b[4:]))
	ad, err := netlink.NewAttributeDecoder(b[unixDiagMsgLen:])
	if err != nil {
		return 0, f, false, fmt.Errorf("unix_diag_msg attributes: %w", err)
	}
	for ad.Next() {
		if ad.Type() != unixDiagVFS {
			continue
		}
		v := ad.Bytes()
		if len(v) < unixDiagVFSLen {
			return 0, f, false, fmt.Errorf("UNIX_DIAG_VFS: %w: %d bytes, want %d", errShort, len(v), unixDiagVFSLen)
		}
		f.Ino = uint64(binary.NativeEndian.Uint32(v[0:]))
		f.Dev = userDev(binary.NativeEndian.Uint32(v[4:]))
		ok = true
	}
	if err := ad.Err(); err != nil {
		return 0, f, false, fmt.Errorf("unix_diag_msg attributes: %w", err)
	}
	return ino, f, ok, nil
}

// userDev converts a device number as the kernel keeps it (dev_t inside
// the kernel: major in the top 12 bits, minor in the low 20) to the
// encoding stat(2) reports, which glibc's makedev and unix.Mkdev produce.
func userDev(k uint32) uint64 {
	major, minor := uint64(k>>20), uint64(k&(1<<20-1))
	return major&0xfff<<8 | major&^0xfff<<32 | minor&0xff | minor&^0xff<<12
}
