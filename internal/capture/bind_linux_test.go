package capture

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockaddrIn4 and sockaddrIn6 build struct sockaddr bytes as a program
// would pass them.
func sockaddrIn4(addr string, port uint16) []byte {
	b := make([]byte, 16)
	binary.NativeEndian.PutUint16(b, unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:], port)
	a := netip.MustParseAddr(addr).As4()
	copy(b[4:], a[:])
	return b
}

func sockaddrIn6(addr string, port uint16) []byte {
	b := make([]byte, 28)
	binary.NativeEndian.PutUint16(b, unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], port)
	a := netip.MustParseAddr(addr).As16()
	copy(b[8:], a[:])
	return b
}

func sockaddrUnix(path string) []byte {
	b := make([]byte, 2, 2+len(path)+1)
	binary.NativeEndian.PutUint16(b, unix.AF_UNIX)
	return append(b, path...)
}

func TestParseSockaddr(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want string // String() of the result; "" for an error
	}{
		{"inet4", sockaddrIn4("127.0.0.1", 8080), "127.0.0.1:8080"},
		{"inet4 wildcard", sockaddrIn4("0.0.0.0", 80), "0.0.0.0:80"},
		{"inet6", sockaddrIn6("::1", 443), "[::1]:443"},
		{"inet6 without scope id", sockaddrIn6("::", 443)[:24], "[::]:443"},
		{"inet6 mapped", sockaddrIn6("::ffff:127.0.0.1", 1), "[::ffff:127.0.0.1]:1"},
		{"unix path", sockaddrUnix("/run/app.sock\x00"), "/run/app.sock"},
		{"unix path without NUL", sockaddrUnix("/run/app.sock"), "/run/app.sock"},
		{"unix abstract", sockaddrUnix("\x00name"), "@name"},
		{"unix autobind", sockaddrUnix(""), "(unix autobind)"},
		{"other family", []byte{byte(unix.AF_PACKET), 0, 1, 2}, "(address family 17)"},
		{"short inet4", sockaddrIn4("127.0.0.1", 1)[:15], ""},
		{"short inet6", sockaddrIn6("::1", 1)[:23], ""},
		{"no family", []byte{2}, ""},
		{"too long", make([]byte, maxSockaddr+1), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := parseSockaddr(tc.b)
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("parsed %s, want an error", a)
			case tc.want == "" && !errors.Is(err, errBadSockaddr):
				t.Errorf("error %v, want errBadSockaddr", err)
			case tc.want != "" && err != nil:
				t.Errorf("error %v, want %s", err, tc.want)
			case tc.want != "" && a.String() != tc.want:
				t.Errorf("parsed %s, want %s", a, tc.want)
			}
		})
	}
}

// FuzzParseSockaddr feeds it what a program may put in its memory. Seeds
// are in testdata/fuzz/FuzzParseSockaddr.
func FuzzParseSockaddr(f *testing.F) {
	f.Add(sockaddrIn4("127.0.0.1", 8080))
	f.Add(sockaddrIn6("::", 80))
	f.Add(sockaddrUnix("\x00abstract"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseSockaddr(b)
		if err != nil {
			return
		}
		if len(b) < 2 || len(b) > maxSockaddr {
			t.Fatalf("accepted %d bytes", len(b))
		}
		switch a.family {
		case unix.AF_INET:
			if !a.ap.Addr().Is4() {
				t.Fatalf("AF_INET gave %s", a.ap)
			}
		case unix.AF_INET6:
			if !a.ap.Addr().Is6() || a.ap.Addr().Zone() != "" {
				t.Fatalf("AF_INET6 gave %s", a.ap)
			}
		}
		if a.String() == "" {
			t.Fatal("empty String")
		}
	})
}

func heldOn(name string, family int, sotype int, addr string) heldSocket {
	proto := map[int]int{unix.SOCK_STREAM: unix.IPPROTO_TCP, unix.SOCK_DGRAM: unix.IPPROTO_UDP}[sotype]
	return heldSocket{name: name, kind: sockKind{family, sotype, proto}, addr: netip.MustParseAddrPort(addr)}
}

var (
	tcp4   = sockKind{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP}
	tcp6   = sockKind{unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP}
	udp4   = sockKind{unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDP}
	mptcp4 = sockKind{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_MPTCP}
)

func TestMatch(t *testing.T) {
	held := []heldSocket{
		heldOn("one", unix.AF_INET, unix.SOCK_STREAM, "127.0.0.1:80"),
		heldOn("any4", unix.AF_INET, unix.SOCK_STREAM, "0.0.0.0:80"),
		heldOn("other", unix.AF_INET, unix.SOCK_STREAM, "10.0.0.1:81"),
		heldOn("any6", unix.AF_INET6, unix.SOCK_STREAM, "[::]:82"),
		heldOn("dns", unix.AF_INET, unix.SOCK_DGRAM, "0.0.0.0:53"),
	}
	for _, tc := range []struct {
		name string
		bind []byte
		prog sockKind
		want string // listener name; "" when the bind goes ahead
		why  string // part of the explanation when it goes ahead; "" for none
	}{
		{"exact address first", sockaddrIn4("127.0.0.1", 80), tcp4, "one", ""},
		{"held wildcard", sockaddrIn4("192.0.2.1", 80), tcp4, "any4", ""},
		{"program wildcard, held wildcard", sockaddrIn4("0.0.0.0", 80), tcp4, "any4", ""},
		{"program wildcard, held one address", sockaddrIn4("0.0.0.0", 81), tcp4, "other", ""},
		{"held IPv6 wildcard", sockaddrIn6("::1", 82), tcp6, "any6", ""},
		{"udp", sockaddrIn4("127.0.0.1", 53), udp4, "dns", ""},
		{"MPTCP program, TCP listener", sockaddrIn4("127.0.0.1", 80), mptcp4, "one", ""},
		{"port not held", sockaddrIn4("127.0.0.1", 8080), tcp4, "", ""},
		{"port 0", sockaddrIn4("127.0.0.1", 0), tcp4, "", ""},
		{"unix", sockaddrUnix("/run/x.sock"), tcp4, "", ""},
		{"other address", sockaddrIn4("127.0.0.1", 81), tcp4, "", `listener "other" is on 10.0.0.1:81`},
		{"other family", sockaddrIn4("0.0.0.0", 82), tcp4, "", "add a listener tcp4://0.0.0.0:82"},
		{"IPv4-mapped is IPv6", sockaddrIn6("::ffff:127.0.0.1", 80), tcp6, "", "cannot change family"},
		{"other type", sockaddrIn4("127.0.0.1", 80), udp4, "", "is a tcp4 socket and the program's is udp4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := parseSockaddr(tc.bind)
			if err != nil {
				t.Fatal(err)
			}
			got, why := "", error(nil)
			if cands := candidates(a, held); len(cands) > 0 {
				var i int
				if i, why = choose(a, tc.prog, held, cands); i >= 0 {
					got = held[i].name
				}
			} else {
				why = miss(a, held)
			}
			if got != tc.want {
				t.Errorf("matched %q, want %q", got, tc.want)
			}
			switch {
			case tc.why == "" && why != nil:
				t.Errorf("explanation %v, want none", why)
			case tc.why != "" && (why == nil || !errors.Is(why, ErrNoMatch) || !strings.Contains(why.Error(), tc.why)):
				t.Errorf("explanation %v, want ErrNoMatch saying %q", why, tc.why)
			}
		})
	}
}

// runFilter interprets the few classic BPF instructions the filter uses.
func runFilter(t *testing.T, prog []unix.SockFilter, d seccompData) uint32 {
	t.Helper()
	raw := (*[unsafe.Sizeof(seccompData{})]byte)(unsafe.Pointer(&d))[:]
	var acc uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			acc = binary.NativeEndian.Uint32(raw[in.K:])
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K:
			if acc == in.K {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		default:
			t.Fatalf("instruction %d: opcode %#x not interpreted", pc, in.Code)
		}
	}
	t.Fatal("the filter ran off its end")
	return 0
}

func TestFilter(t *testing.T) {
	prog := filterProgram()
	for _, tc := range []struct {
		name string
		arch uint32
		nr   int32
		want uint32
	}{
		{"native bind", auditArch, int32(sysBind), unix.SECCOMP_RET_USER_NOTIF},
		{"native connect", auditArch, unix.SYS_CONNECT, unix.SECCOMP_RET_ALLOW},
		{"native listen", auditArch, unix.SYS_LISTEN, unix.SECCOMP_RET_ALLOW},
		{"x32 bind", auditArch, int32(sysBind) | 0x40000000, unix.SECCOMP_RET_ALLOW},
		{"i386 bind", unix.AUDIT_ARCH_I386, 361, unix.SECCOMP_RET_ALLOW},
		{"i386 socketcall", unix.AUDIT_ARCH_I386, 102, unix.SECCOMP_RET_ALLOW},
		{"arm bind", unix.AUDIT_ARCH_ARM, 282, unix.SECCOMP_RET_ALLOW},
		{"foreign syscall numbered like bind", unix.AUDIT_ARCH_I386, int32(sysBind), unix.SECCOMP_RET_ALLOW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runFilter(t, prog, seccompData{Nr: tc.nr, Arch: tc.arch}); got != tc.want {
				t.Errorf("filter returned %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestArchConstants(t *testing.T) {
	if auditArch == 0 {
		t.Skip("bind capture has no constants for this architecture")
	}
	if sysBind != unix.SYS_BIND {
		t.Errorf("sysBind = %d, x/sys/unix says %d", sysBind, unix.SYS_BIND)
	}
	want := map[string]uint32{"amd64": unix.AUDIT_ARCH_X86_64, "arm64": unix.AUDIT_ARCH_AARCH64}[runtime.GOARCH]
	if auditArch != want {
		t.Errorf("auditArch = %#x, want %#x", auditArch, want)
	}
}

// TestStructSizes compares the structures with the sizes encoded in the
// ioctl numbers (_IOC_SIZE).
func TestStructSizes(t *testing.T) {
	size := func(req uint) uintptr { return uintptr(req>>16) & 0x3fff }
	for _, tc := range []struct {
		name string
		req  uint
		got  uintptr
	}{
		{"seccomp_notif", unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Sizeof(seccompNotif{})},
		{"seccomp_notif_resp", unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Sizeof(seccompNotifResp{})},
		{"seccomp_notif_addfd", unix.SECCOMP_IOCTL_NOTIF_ADDFD, unsafe.Sizeof(seccompNotifAddfd{})},
		{"notification id", unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Sizeof(uint64(0))},
	} {
		if want := size(tc.req); tc.got != want {
			t.Errorf("%s is %d bytes, the ioctl says %d", tc.name, tc.got, want)
		}
	}
	if unsafe.Sizeof(seccompData{}) != 64 {
		t.Errorf("seccomp_data is %d bytes, want 64", unsafe.Sizeof(seccompData{}))
	}
}

func TestEventString(t *testing.T) {
	for _, tc := range []struct {
		ev   Event
		want string
	}{
		{Event{PID: 7, Fd: 3, Addr: "127.0.0.1:80", Listener: "http", Action: Captured}, `pid 7 fd 3 bind 127.0.0.1:80: captured (listener "http")`},
		{Event{PID: 7, Fd: 3, Action: Gone, Err: ErrGone}, "pid 7 fd 3 bind (address not read): gone: " + ErrGone.Error()},
		{Event{PID: 7, Fd: 4, Addr: "/run/a.sock", Action: Passed}, "pid 7 fd 4 bind /run/a.sock: passed"},
	} {
		if got := tc.ev.String(); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}
