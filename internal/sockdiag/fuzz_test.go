package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
)

// The fuzz targets take what a recvmsg(2) on the netlink socket returns:
// netlink messages back to back. testdata/fuzz/<Name>/kernel-* are real
// replies captured from Linux (see TestCaptureSeeds), with the NLMSG_DONE
// that netlink.Conn consumes left out.

// splitMessages frames b into netlink messages the way netlink.Conn does.
func splitMessages(b []byte) ([]netlink.Message, error) {
	var msgs []netlink.Message
	for len(b) >= 16 {
		n := int(binary.NativeEndian.Uint32(b))
		if n < 16 {
			return nil, errors.New("nlmsg_len below the header's size")
		}
		aligned := (n + 3) &^ 3
		if aligned > len(b) {
			return nil, errors.New("nlmsg_len beyond the datagram")
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(b[:aligned]); err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
		b = b[aligned:]
	}
	return msgs, nil
}

// joinMessages is the inverse of splitMessages.
func joinMessages(msgs []netlink.Message) []byte {
	var b []byte
	for _, m := range msgs {
		m.Header.Length = uint32(16 + len(m.Data))
		m.Header.Length = (m.Header.Length + 3) &^ 3
		pad := make([]byte, int(m.Header.Length)-16-len(m.Data))
		m.Data = append(bytes.Clone(m.Data), pad...)
		mb, err := m.MarshalBinary()
		if err != nil {
			panic(err)
		}
		b = append(b, mb...)
	}
	return b
}

func FuzzParseInetDiag(f *testing.F) {
	v4 := Socket{Family: afInet, State: Listen, Local: netip.MustParseAddrPort("127.0.0.1:80"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), RecvQ: 1, SendQ: 128, Inode: 7}
	v6 := Socket{Family: afInet6, State: TimeWait, Local: netip.MustParseAddrPort("[::1]:80"), Remote: netip.MustParseAddrPort("[::1]:5000")}
	f.Add(joinMessages([]netlink.Message{msg(encodeInetMsg(v4, []byte{5, 0, 8, 0, 1, 0, 0, 0})), msg(encodeInetMsg(v6, nil))}))
	f.Add(joinMessages([]netlink.Message{msg(encodeInetMsg(v4, nil)[:40])}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := splitMessages(b)
		if err != nil {
			return // netlink.Conn drops such datagrams before decodeInet
		}
		socks, err := decodeInet(nil, msgs, ipprotoTCP)
		if err != nil {
			return
		}
		if len(socks) != len(msgs) {
			t.Fatalf("%d messages gave %d sockets", len(msgs), len(socks))
		}
		for _, s := range socks {
			if s.Local.Addr().Is4() != (s.Family == afInet) || s.Remote.Addr().Is4() != (s.Family == afInet) {
				t.Fatalf("family %d with addresses %v %v", s.Family, s.Local, s.Remote)
			}
			if s.Inode > 1<<32-1 {
				t.Fatalf("inode %d does not fit the 32-bit field", s.Inode)
			}
		}
		// Encoding what was parsed and parsing it again gives the same.
		var again []netlink.Message
		for _, s := range socks {
			again = append(again, msg(encodeInetMsg(s, nil)))
		}
		socks2, err := decodeInet(nil, again, ipprotoTCP)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(socks, socks2, addrPorts); diff != "" {
			t.Fatalf("re-encoded sockets differ (-first +second):\n%s", diff)
		}
	})
}

func FuzzParseUnixDiag(f *testing.F) {
	f.Add(joinMessages([]netlink.Message{msg(encodeUnixMsg(99, Listen, &[2]uint32{3, 7}, []byte{5, 0, 6, 0, 0, 0, 0, 0}))}))
	f.Add(joinMessages([]netlink.Message{msg(encodeUnixMsg(99, Listen, nil, []byte{255, 0, 4, 0}))}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := splitMessages(b)
		if err != nil {
			return
		}
		socks, err := decodeUnix(nil, msgs)
		if err != nil {
			return
		}
		if len(socks) != len(msgs) {
			t.Fatalf("%d messages gave %d sockets", len(msgs), len(socks))
		}
		for _, u := range socks {
			again, err := parseUnixMsg(encodeUnixMsg(uint32(u.Inode), u.State, &[2]uint32{u.RecvQ, u.SendQ}, nil))
			if err != nil {
				t.Fatal(err)
			}
			again.Type = u.Type
			if again != u {
				t.Fatalf("re-encoded %+v as %+v", u, again)
			}
		}
	})
}

func FuzzParseProc(f *testing.F) {
	f.Add("TcpExt: A B\nTcpExt: 1 2\n")
	f.Add("TCP: inuse 5 orphan 0 tw 2\n")
	f.Add("Max open files            1024                 524288               files     \n")
	f.Fuzz(func(t *testing.T, s string) {
		parseNetstat(make(map[string]map[string]int64), bytes.NewBufferString(s))
		parseSockstat(make(map[string]map[string]int64), bytes.NewBufferString(s))
		parseNofile(bytes.NewBufferString(s))
		socketInode([]byte(s))
	})
}

func FuzzParseUnixFile(f *testing.F) {
	f.Add(joinMessages([]netlink.Message{msg(encodeUnixMsg(99, Listen, nil, encodeUnixVFS(1234, 8<<20|1)))}))
	f.Add(joinMessages([]netlink.Message{msg(encodeUnixMsg(99, Listen, nil, []byte{8, 0, 1, 0, 1, 0, 0, 0}))}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := splitMessages(b)
		if err != nil {
			return
		}
		ino, file, ok, err := decodeUnixFile(msgs)
		if err != nil {
			return
		}
		if !ok && file != (UnixFile{}) {
			t.Fatalf("no file, but %+v", file)
		}
		if ok {
			ino2, again, ok2, err := decodeUnixFile([]netlink.Message{msg(encodeUnixMsg(uint32(ino), Listen, nil, encodeUnixVFS(uint32(file.Ino), kernelDev(file.Dev))))})
			if err != nil || !ok2 || ino2 != ino || again != file {
				t.Fatalf("re-encoded %d %+v as %d %+v (%v, %v)", ino, file, ino2, again, ok2, err)
			}
		}
	})
}

// kernelDev is userDev undone: a stat(2) device number as the kernel keeps
// it, major in the top 12 bits and minor in the low 20.
func kernelDev(d uint64) uint32 {
	major := uint32(d>>8&0xfff | d>>32&^0xfff)
	minor := uint32(d&0xff | d>>12&^0xff)
	return major<<20 | minor&(1<<20-1)
}
