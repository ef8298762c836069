package sockdiag

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
)

// addrPorts compares netip.AddrPort values by ==, which cmp cannot do on
// its own (unexported fields).
var addrPorts = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

func TestStateString(t *testing.T) {
	for _, tc := range []struct {
		s    State
		want string
	}{
		{Established, "ESTAB"},
		{SynRecv, "SYN-RECV"},
		{FinWait1, "FIN-WAIT-1"},
		{FinWait2, "FIN-WAIT-2"},
		{TimeWait, "TIME-WAIT"},
		{Close, "UNCONN"},
		{CloseWait, "CLOSE-WAIT"},
		{LastAck, "LAST-ACK"},
		{Listen, "LISTEN"},
		{Closing, "CLOSING"},
		{BoundInactive, "BOUND-INACTIVE"},
		{0, "STATE(0)"},
		{12, "STATE(12)"},
		{200, "STATE(200)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(tc.s), got, tc.want)
		}
	}
}

func TestStateMask(t *testing.T) {
	m := States(Listen, CloseWait)
	if m != 1<<10|1<<8 {
		t.Errorf("States(Listen, CloseWait) = %#x, want %#x", uint32(m), 1<<10|1<<8)
	}
	if !m.Has(Listen) || !m.Has(CloseWait) || m.Has(Established) || m.Has(200) {
		t.Errorf("Has is wrong for %v", m)
	}
	if got := m.String(); got != "CLOSE-WAIT|LISTEN" {
		t.Errorf("String() = %q", got)
	}
	if got := StateMask(0).String(); got != "none" {
		t.Errorf("StateMask(0).String() = %q", got)
	}
	// AllStates is Established..Closing: what `ss -a` asks for, less the
	// unused bit 0.
	for s := State(0); s < 32; s++ {
		want := s >= Established && s <= Closing
		if AllStates.Has(s) != want {
			t.Errorf("AllStates.Has(%v) = %v, want %v", s, !want, want)
		}
	}
}

func TestCountByState(t *testing.T) {
	got := CountByState([]Socket{{State: Listen}, {State: Established}, {State: Established}, {State: TimeWait}})
	want := map[State]int{Listen: 1, Established: 2, TimeWait: 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// The bytecode, byte for byte, as iproute2's ss builds it for
// `sport = :8080` (S_EQ) and for `sport >= :8080 and sport <= :8080`.
func TestSourcePortFilter(t *testing.T) {
	le16 := func(v uint16) (byte, byte) { return byte(v), byte(v >> 8) }
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the expected bytes are written for a little-endian host")
	}
	p0, p1 := le16(8080)
	for _, tc := range []struct {
		name string
		eq   bool
		want []byte
	}{
		{"eq", true, []byte{bcSEQ, 8, 12, 0, 0, 0, p0, p1}},
		{"ge and le", false, []byte{bcSGE, 8, 20, 0, 0, 0, p0, p1, bcSLE, 8, 12, 0, 0, 0, p0, p1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := sourcePortFilter(8080, tc.eq)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if err := auditBytecode(got); err != nil {
				t.Errorf("the kernel's audit would refuse it: %v", err)
			}
			for _, tt := range []struct {
				port uint16
				want bool
			}{{8080, true}, {8079, false}, {8081, false}, {0, false}, {65535, false}} {
				if got := runBytecode(got, tt.port); got != tt.want {
					t.Errorf("port %d: accepted %v, want %v", tt.port, got, tt.want)
				}
			}
		})
	}
}

// auditBytecode is inet_diag_bc_audit for the operators used here: every
// jump a multiple of 4, within the program or exactly 4 past its end, and
// every "no" target reachable by following "yes" jumps from the start.
func auditBytecode(bc []byte) error {
	reachable := func(off int) bool {
		for at := 0; at <= len(bc)-4; {
			if at == off {
				return true
			}
			yes := int(bc[at+1])
			if yes < 4 || yes%4 != 0 {
				return false
			}
			at += yes
		}
		return off == len(bc)
	}
	for at := 0; at < len(bc); {
		if len(bc)-at < 4 {
			return errors.New("truncated op")
		}
		code, yes, no := bc[at], int(bc[at+1]), int(binary.NativeEndian.Uint16(bc[at+2:]))
		minLen := 4
		switch code {
		case bcSEQ, bcSGE, bcSLE:
			minLen = 8
		case bcJmp:
		default:
			return errors.New("unknown op")
		}
		rest := len(bc) - at
		if rest < minLen {
			return errors.New("op longer than the program")
		}
		if no < minLen || no > rest+4 || no%4 != 0 {
			return errors.New("bad no jump")
		}
		if no < rest && !reachable(at+no) {
			return errors.New("no jump to an unreachable op")
		}
		if yes < minLen || yes > rest+4 || yes%4 != 0 {
			return errors.New("bad yes jump")
		}
		at += yes
	}
	return nil
}

// runBytecode is inet_diag_bc_run for the port operators.
func runBytecode(bc []byte, sport uint16) bool {
	at := 0
	for at < len(bc) {
		code := bc[at]
		arg := binary.NativeEndian.Uint16(bc[at+6:])
		var ok bool
		switch code {
		case bcSEQ:
			ok = sport == arg
		case bcSGE:
			ok = sport >= arg
		case bcSLE:
			ok = sport <= arg
		}
		if ok {
			at += int(bc[at+1])
		} else {
			at += int(binary.NativeEndian.Uint16(bc[at+2:]))
		}
	}
	return at == len(bc)
}

func TestInetRequest(t *testing.T) {
	bc := sourcePortFilter(443, true)
	b := inetRequest(afInet6, ipprotoTCP, States(Listen), bc)
	if len(b) != inetDiagReqLen+4+len(bc) {
		t.Fatalf("length %d, want %d", len(b), inetDiagReqLen+4+len(bc))
	}
	if b[0] != afInet6 || b[1] != ipprotoTCP || b[2] != 0 {
		t.Errorf("family/protocol/ext = %d/%d/%d", b[0], b[1], b[2])
	}
	if got := binary.NativeEndian.Uint32(b[4:]); got != 1<<10 {
		t.Errorf("idiag_states = %#x, want LISTEN", got)
	}
	for i, v := range b[8:inetDiagReqLen] {
		if v != 0 {
			t.Fatalf("socket id byte %d = %d, want an all-zero id", i, v)
		}
	}
	ad, err := netlink.NewAttributeDecoder(b[inetDiagReqLen:])
	if err != nil {
		t.Fatal(err)
	}
	if !ad.Next() || ad.Type() != inetDiagReqBytecode || !cmp.Equal(ad.Bytes(), bc) {
		t.Errorf("attribute: type %d, %x; want INET_DIAG_REQ_BYTECODE %x", ad.Type(), ad.Bytes(), bc)
	}
	if got := inetRequest(afInet, ipprotoUDP, AllStates, nil); len(got) != inetDiagReqLen {
		t.Errorf("without a filter: %d bytes, want %d", len(got), inetDiagReqLen)
	}
}

func TestUnixRequest(t *testing.T) {
	b := unixRequest(12345, 0)
	want := make([]byte, unixDiagReqLen)
	want[0] = afUnix
	binary.NativeEndian.PutUint32(want[8:], 12345)
	binary.NativeEndian.PutUint32(want[12:], udiagShowRQLen)
	binary.NativeEndian.PutUint32(want[16:], noCookie)
	binary.NativeEndian.PutUint32(want[20:], noCookie)
	if diff := cmp.Diff(want, b); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// encodeInetMsg is the kernel's side: a struct inet_diag_msg for s,
// followed by attrs.
func encodeInetMsg(s Socket, attrs []byte) []byte {
	b := make([]byte, inetDiagMsgLen, inetDiagMsgLen+len(attrs))
	b[0], b[1] = s.Family, uint8(s.State)
	binary.BigEndian.PutUint16(b[4:], s.Local.Port())
	binary.BigEndian.PutUint16(b[6:], s.Remote.Port())
	if s.Family == afInet {
		a, r := s.Local.Addr().As4(), s.Remote.Addr().As4()
		copy(b[8:], a[:])
		copy(b[24:], r[:])
	} else {
		a, r := s.Local.Addr().As16(), s.Remote.Addr().As16()
		copy(b[8:], a[:])
		copy(b[24:], r[:])
	}
	binary.NativeEndian.PutUint32(b[44:], uint32(s.Cookie))
	binary.NativeEndian.PutUint32(b[48:], uint32(s.Cookie>>32))
	binary.NativeEndian.PutUint32(b[56:], s.RecvQ)
	binary.NativeEndian.PutUint32(b[60:], s.SendQ)
	binary.NativeEndian.PutUint32(b[64:], s.UID)
	binary.NativeEndian.PutUint32(b[68:], uint32(s.Inode))
	return append(b, attrs...)
}

func msg(data []byte) netlink.Message {
	return netlink.Message{Header: netlink.Header{Type: sockDiagByFamily, Flags: netlink.Multi}, Data: data}
}

func TestDecodeInet(t *testing.T) {
	v4 := Socket{
		Family: afInet, Protocol: ipprotoTCP, State: CloseWait,
		Local:  netip.MustParseAddrPort("127.0.0.1:8080"),
		Remote: netip.MustParseAddrPort("10.1.2.3:54321"),
		RecvQ:  69, SendQ: 0, UID: 1000, Inode: 4294967295, Cookie: 1<<40 | 7,
	}
	v6 := Socket{
		Family: afInet6, Protocol: ipprotoTCP, State: Listen,
		Local:  netip.MustParseAddrPort("[::1]:443"),
		Remote: netip.MustParseAddrPort("[::]:0"),
		RecvQ:  3, SendQ: 4096, Inode: 42,
	}
	// INET_DIAG_SHUTDOWN, as the kernel appends unasked: ignored.
	attr := []byte{5, 0, 8, 0, 0, 0, 0, 0}
	for _, tc := range []struct {
		name    string
		msgs    []netlink.Message
		want    []Socket
		wantErr bool
	}{
		{name: "ipv4 and ipv6", msgs: []netlink.Message{msg(encodeInetMsg(v4, attr)), msg(encodeInetMsg(v6, nil))}, want: []Socket{v4, v6}},
		{name: "empty", msgs: nil, want: nil},
		{name: "short", msgs: []netlink.Message{msg(encodeInetMsg(v4, nil)[:71])}, wantErr: true},
		{name: "unknown family", msgs: []netlink.Message{msg(append([]byte{7}, encodeInetMsg(v4, nil)[1:]...))}, wantErr: true},
		{name: "wrong message type", msgs: []netlink.Message{{Header: netlink.Header{Type: 3}, Data: encodeInetMsg(v4, nil)}}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeInet(nil, tc.msgs, ipprotoTCP)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if diff := cmp.Diff(tc.want, got, addrPorts); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// encodeUnixMsg is a struct unix_diag_msg with an UNIX_DIAG_RQLEN
// attribute when rq is not nil, then extra attributes.
func encodeUnixMsg(ino uint32, state State, rq *[2]uint32, extra []byte) []byte {
	b := make([]byte, unixDiagMsgLen)
	b[0], b[1], b[2] = afUnix, 1, uint8(state)
	binary.NativeEndian.PutUint32(b[4:], ino)
	if rq != nil {
		a := make([]byte, 12)
		binary.NativeEndian.PutUint16(a[0:], 12)
		binary.NativeEndian.PutUint16(a[2:], unixDiagRQLen)
		binary.NativeEndian.PutUint32(a[4:], rq[0])
		binary.NativeEndian.PutUint32(a[8:], rq[1])
		b = append(b, a...)
	}
	return append(b, extra...)
}

func TestDecodeUnix(t *testing.T) {
	// UNIX_DIAG_SHUTDOWN (u8, padded), which comes unasked.
	shutdown := []byte{5, 0, 6, 0, 0, 0, 0, 0}
	for _, tc := range []struct {
		name    string
		data    []byte
		want    unixSocket
		wantErr bool
	}{
		{name: "listening", data: encodeUnixMsg(99, Listen, &[2]uint32{3, 7}, shutdown),
			want: unixSocket{Inode: 99, Type: 1, Queue: Queue{State: Listen, RecvQ: 3, SendQ: 7}}},
		{name: "rqlen after another attribute", data: append(encodeUnixMsg(5, Established, nil, shutdown), encodeUnixMsg(0, 0, &[2]uint32{5, 0}, nil)[unixDiagMsgLen:]...),
			want: unixSocket{Inode: 5, Type: 1, Queue: Queue{State: Established, RecvQ: 5}}},
		{name: "no rqlen", data: encodeUnixMsg(5, Established, nil, shutdown), wantErr: true},
		{name: "short rqlen", data: append(encodeUnixMsg(5, Established, nil, nil), 8, 0, 4, 0, 1, 0, 0, 0), wantErr: true},
		{name: "attribute longer than the message", data: append(encodeUnixMsg(5, Established, nil, nil), 200, 0, 4, 0), wantErr: true},
		{name: "short", data: make([]byte, 15), wantErr: true},
		{name: "not unix", data: append([]byte{afInet}, encodeUnixMsg(5, Listen, &[2]uint32{0, 1}, nil)[1:]...), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeUnix(nil, []netlink.Message{msg(tc.data)})
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if diff := cmp.Diff([]unixSocket{tc.want}, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUserDev(t *testing.T) {
	for _, tt := range []struct{ major, minor uint32 }{{0, 0}, {8, 1}, {253, 3}, {0, 0x1234}, {0xabc, 0xfffff}, {0xfff, 0x12345}} {
		k := tt.major<<20 | tt.minor
		want := uint64(tt.major&0xfff)<<8 | uint64(tt.minor&0xff) | uint64(tt.minor&^0xff)<<12
		if got := userDev(k); got != want {
			t.Errorf("userDev(%d:%d) = %#x, want %#x", tt.major, tt.minor, got, want)
		}
	}
}

// encodeUnixVFS is an UNIX_DIAG_VFS attribute.
func encodeUnixVFS(ino, kdev uint32) []byte {
	a := make([]byte, 12)
	binary.NativeEndian.PutUint16(a[0:], 12)
	binary.NativeEndian.PutUint16(a[2:], unixDiagVFS)
	binary.NativeEndian.PutUint32(a[4:], ino)
	binary.NativeEndian.PutUint32(a[8:], kdev)
	return a
}

func TestDecodeUnixFile(t *testing.T) {
	tests := []struct {
		name    string
		msgs    []netlink.Message
		wantIno uint64
		want    UnixFile
		wantOK  bool
		wantErr bool
	}{
		{name: "bound", msgs: []netlink.Message{msg(encodeUnixMsg(99, Listen, nil, encodeUnixVFS(1234, 8<<20|1)))},
			wantIno: 99, want: UnixFile{Dev: 8<<8 | 1, Ino: 1234}, wantOK: true},
		{name: "abstract", msgs: []netlink.Message{msg(encodeUnixMsg(99, Listen, &[2]uint32{0, 1}, nil))}, wantIno: 99},
		{name: "short attribute", msgs: []netlink.Message{msg(append(encodeUnixMsg(99, Listen, nil, nil), 8, 0, 1, 0, 1, 0, 0, 0))}, wantErr: true},
		{name: "two replies", msgs: []netlink.Message{msg(encodeUnixMsg(1, Listen, nil, nil)), msg(encodeUnixMsg(2, Listen, nil, nil))}, wantErr: true},
		{name: "none", wantErr: true},
		{name: "not unix", msgs: []netlink.Message{msg(append([]byte{afInet}, encodeUnixMsg(5, Listen, nil, nil)[1:]...))}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ino, f, ok, err := decodeUnixFile(tt.msgs)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want an error: %v", err, tt.wantErr)
			}
			if err == nil && (ino != tt.wantIno || f != tt.want || ok != tt.wantOK) {
				t.Errorf("decodeUnixFile = %d, %+v, %v; want %d, %+v, %v", ino, f, ok, tt.wantIno, tt.want, tt.wantOK)
			}
		})
	}
}
