package listener

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/sockdiag"
)

func TestStoreNames(t *testing.T) {
	tests := []struct {
		fdname   string
		listener string
		slot     int
		ok       bool
	}{
		{"baton/http", "http", -1, true},
		{"baton/http/0", "http", 0, true},
		{"baton/web.v2/12", "web.v2", 12, true},
		{"http", "", 0, false},
		{"baton/", "", 0, false},
		{"baton/http/", "", 0, false},
		{"baton/http/-1", "", 0, false},
		{"baton/http/01", "", 0, false},
		{"baton/http/1/2", "", 0, false},
		{"baton/a b", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.fdname, func(t *testing.T) {
			l, slot, ok := ParseStoreName(tt.fdname)
			if l != tt.listener || slot != tt.slot || ok != tt.ok {
				t.Errorf("ParseStoreName(%q) = %q, %d, %v; want %q, %d, %v", tt.fdname, l, slot, ok, tt.listener, tt.slot, tt.ok)
			}
			if ok && StoreName(l, slot) != tt.fdname {
				t.Errorf("StoreName(%q, %d) = %q, want %q", l, slot, StoreName(l, slot), tt.fdname)
			}
		})
	}
}

// rawSocket is a socket as a service manager would hand it: made with
// raw system calls, bound, listening unless listen is false.
type rawSocket struct {
	fd  int
	ino uint64
	url string // as a listener address
}

func newRawSocket(t *testing.T, family, typ int, sa unix.Sockaddr, listen, reuseport bool, backlog int) *rawSocket {
	t.Helper()
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawSocket{fd: fd}
	t.Cleanup(func() {
		if r.fd >= 0 {
			unix.Close(r.fd)
		}
	})
	if reuseport {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}
	if family != unix.AF_UNIX {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	if listen {
		if err := unix.Listen(fd, backlog); err != nil {
			t.Fatal(err)
		}
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	r.ino, r.url = st.Ino, describe(Inherited{Fd: fd}).url()
	return r
}

// tcpSocket is a listening TCP socket on 127.0.0.1 (port 0: a free one).
func tcpSocket(t *testing.T, port int, reuseport bool) *rawSocket {
	t.Helper()
	return newRawSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}, true, reuseport, 128)
}

// hand is a duplicate of the socket, as Match takes it (and closes or
// keeps it).
func (r *rawSocket) hand(t *testing.T, name string) Inherited {
	t.Helper()
	fd, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return Inherited{Name: name, Fd: fd}
}

// port is the socket's port.
func (r *rawSocket) port() int {
	_, p, _ := net.SplitHostPort(strings.TrimPrefix(r.url, "tcp://"))
	var n int
	fmt.Sscan(p, &n)
	return n
}

// logTo is a logger into a buffer.
func logTo() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

// groupInodes lists a group's sockets' inodes by slot.
func groupInodes(gs []*Group) [][]uint64 {
	var out [][]uint64
	for _, g := range gs {
		out = append(out, inodes(g))
	}
	return out
}

// activate is Match and Bind, for the tests that expect both to work.
func activate(t *testing.T, specs []string, slots int, handed ...Inherited) (*Activation, []*Group, string) {
	t.Helper()
	var ss []Spec
	for _, s := range specs {
		ss = append(ss, mustParse(t, s))
	}
	log, buf := logTo()
	a, err := Match(ss, slots, handed, log)
	if err != nil {
		t.Fatalf("Match: %v", err)
	}
	gs, err := a.Bind(time.Second)
	if err != nil {
		t.Fatalf("Bind: %v", err)
	}
	t.Cleanup(func() {
		for _, g := range gs {
			g.Close()
		}
	})
	return a, gs, buf.String()
}

// TestMatchAdoptsHandedSockets: sockets of a socket unit are adopted by
// name or by address, the very sockets (same inode); what no socket was
// handed for is bound; nothing handed by a unit goes to the store.
func TestMatchAdoptsHandedSockets(t *testing.T) {
	before := batontest.NumFDs(t)
	dir := t.TempDir()
	web := tcpSocket(t, 0, false)
	api := tcpSocket(t, 0, false)
	path := filepath.Join(dir, "admin.sock")
	admin := newRawSocket(t, unix.AF_UNIX, unix.SOCK_STREAM, &unix.SockaddrUnix{Name: path}, true, false, 64)
	dns := newRawSocket(t, unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false, 0)
	specs := []string{
		"http=" + web.url,
		"api=" + api.url,
		"admin=unix://" + path,
		"dns=" + dns.url,
		"extra=tcp://127.0.0.1:0",
	}
	a, gs, log := activate(t, specs, 2,
		web.hand(t, "http"),             // by name
		api.hand(t, ""),                 // unnamed (systemd-socket-activate): by address
		admin.hand(t, "baton@x.socket"), // a unit's default name: by address
		dns.hand(t, "dns"),
	)
	got := groupInodes(gs)
	want := [][]uint64{{web.ino}, {api.ino}, {admin.ino}, {dns.ino}, got[4]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}
	if got[4][0] == 0 {
		t.Error("the listener no socket was handed for was not bound")
	}
	if gs[3].Steered() || gs[3].FlowsErr == nil || !strings.Contains(gs[3].FlowsErr.Error(), "socket unit") {
		t.Errorf("UDP listener on a unit's socket: steered %v, FlowsErr %v; want its flows not kept, saying why", gs[3].Steered(), gs[3].FlowsErr)
	}
	if diff := cmp.Diff(map[uint64]bool{web.ino: true, api.ino: true, admin.ino: true, dns.ino: true}, a.Held); diff != "" {
		t.Errorf("held by the unit (-want +got):\n%s", diff)
	}
	if len(a.Stale) != 0 || len(a.Stored) != 0 {
		t.Errorf("stale %v, stored %v; want none", a.Stale, a.Stored)
	}
	if !strings.Contains(log, `from="socket unit"`) {
		t.Errorf("log does not say where the sockets came from:\n%s", log)
	}
	// The unit made the socket file: baton's Close leaves it.
	for _, g := range gs {
		g.Close()
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("closing the listener removed the unit's socket file: %v", err)
	}
	if after := batontest.NumFDs(t); after != before+4 { // the test's own copies
		t.Errorf("descriptors: %d before, %d after; want %d", before, after, before+4)
	}
}

// TestMatchRefusesWhatItCannotUse: a unit's socket that differs from the
// listener it is named after, matches no listener, is not listening, or
// is one too many, is refused with its descriptor, name and address and
// the fix; every handed descriptor is closed.
func TestMatchRefusesWhatItCannotUse(t *testing.T) {
	web := tcpSocket(t, 0, false)
	other := tcpSocket(t, 0, false)
	notListening := newRawSocket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false, 0)
	udp := newRawSocket(t, unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false, 0)
	tests := []struct {
		name   string
		specs  []string
		slots  int
		handed func() []Inherited
		want   []string
	}{
		{
			name:   "named after a listener on another port",
			specs:  []string{"http=tcp://127.0.0.1:1"},
			handed: func() []Inherited { return []Inherited{web.hand(t, "http")} },
			want:   []string{`fd `, `"http" (tcp 127.0.0.1:`, "listener http=tcp://127.0.0.1:1", "wants 1", "FileDescriptorName="},
		},
		{
			name:   "matches no listener",
			specs:  []string{"http=" + web.url},
			handed: func() []Inherited { return []Inherited{web.hand(t, "http"), other.hand(t, "")} },
			want:   []string{"unnamed (" + strings.Replace(other.url, "://", " ", 1) + ")", "matches no listener", "-l NAME=" + other.url, "remove it from the socket unit"},
		},
		{
			name:   "not listening",
			specs:  []string{"http=" + notListening.url},
			handed: func() []Inherited { return []Inherited{notListening.hand(t, "http")} },
			want:   []string{"not listening", "Accept=no"},
		},
		{
			name:   "datagram for a stream listener",
			specs:  []string{"http=tcp://" + strings.TrimPrefix(udp.url, "udp://")},
			handed: func() []Inherited { return []Inherited{udp.hand(t, "http")} },
			want:   []string{"it is a udp socket, the listener wants tcp"},
		},
		{
			name:   "reuseport without SO_REUSEPORT",
			specs:  []string{"http=" + web.url + "?balance=reuseport"},
			slots:  2,
			handed: func() []Inherited { return []Inherited{web.hand(t, "http")} },
			want:   []string{"SO_REUSEPORT", "ReusePort=yes"},
		},
		{
			name:   "two for a shared listener",
			specs:  []string{"http=tcp://127.0.0.1:0"},
			handed: func() []Inherited { return []Inherited{web.hand(t, "http"), other.hand(t, "http")} },
			want:   []string{"2 sockets are handed for listener http, which takes 1"},
		},
		{
			name:  "not a socket",
			specs: []string{"http=tcp://127.0.0.1:0"},
			handed: func() []Inherited {
				var p [2]int
				unix.Pipe2(p[:], unix.O_CLOEXEC)
				unix.Close(p[1])
				return []Inherited{{Name: "fifo", Fd: p[0]}}
			},
			want: []string{`"fifo"`, "not a socket", "remove it from the socket unit"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := batontest.NumFDs(t)
			var specs []Spec
			for _, s := range tt.specs {
				specs = append(specs, mustParse(t, s))
			}
			log, _ := logTo()
			a, err := Match(specs, max(tt.slots, 1), tt.handed(), log)
			if err == nil {
				a.Close()
				t.Fatal("Match succeeded; want a refusal")
			}
			if !errors.Is(err, ErrHanded) {
				t.Errorf("error does not wrap ErrHanded: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
			if after := batontest.NumFDs(t); after != before {
				t.Errorf("descriptors: %d before, %d after; a refused activation must close every handed descriptor", before, after)
			}
		})
	}
}

// TestMatchStore: sockets of baton's fd store come back to their
// listeners, reuseport slots by the slot in their name (the missing slots
// bound beside them, on the same port); a socket whose listener is gone
// or changed is stale (closed, for the caller to remove from the store);
// a listener renamed since takes its socket by address; a listener on
// port 0 keeps the port it had.
func TestMatchStore(t *testing.T) {
	before := batontest.NumFDs(t)
	web := tcpSocket(t, 0, false)
	slot0 := tcpSocket(t, 0, true)
	slot1 := tcpSocket(t, slot0.port(), true)
	slot5 := tcpSocket(t, slot0.port(), true)
	gone := tcpSocket(t, 0, false)
	renamed := tcpSocket(t, 0, false)
	moved := tcpSocket(t, 0, false)
	anyPort := tcpSocket(t, 0, false)
	a, gs, log := activate(t, []string{
		"http=" + web.url,
		"rp=" + slot0.url + "?balance=reuseport",
		"new=" + renamed.url,
		"moved=tcp://127.0.0.2:0",
		"p0=tcp://127.0.0.1:0",
	}, 3,
		web.hand(t, "baton/http"),
		slot1.hand(t, "baton/rp/1"),
		slot0.hand(t, "baton/rp/0"),
		slot5.hand(t, "baton/rp/5"),
		gone.hand(t, "baton/gone"),
		renamed.hand(t, "baton/old"),
		moved.hand(t, "baton/moved"),
		anyPort.hand(t, "baton/p0"),
	)
	got := groupInodes(gs)
	if len(got) != 5 || len(got[1]) != 3 {
		t.Fatalf("groups %v; want 5, the second with 3 slots", got)
	}
	want := [][]uint64{{web.ino}, {slot0.ino, slot1.ino, got[1][2]}, {renamed.ino}, got[3], {anyPort.ino}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}
	if got[3][0] == moved.ino {
		t.Error("listener moved took a socket bound to another address")
	}
	if p := gs[1].Socket(2).Port(); p != slot0.port() {
		t.Errorf("slot 2 bound to port %d, the group's is %d", p, slot0.port())
	}
	wantStored := map[string]uint64{"baton/http": web.ino, "baton/rp/0": slot0.ino, "baton/rp/1": slot1.ino, "baton/old": renamed.ino, "baton/p0": anyPort.ino}
	if diff := cmp.Diff(wantStored, a.Stored); diff != "" {
		t.Errorf("stored (-want +got):\n%s", diff)
	}
	var stale []string
	for _, s := range a.Stale {
		stale = append(stale, s.Name+": "+s.Reason)
	}
	for _, w := range []string{"baton/rp/5: slot 5 is beyond the 3 workers", "baton/gone: no listener", "baton/moved: listener moved is now tcp://127.0.0.2:0: it is bound to 127.0.0.1, the listener wants 127.0.0.2"} {
		if !strings.Contains(strings.Join(stale, "\n"), w) {
			t.Errorf("stale:\n%s\nwant %q", strings.Join(stale, "\n"), w)
		}
	}
	if len(a.Held) != 0 {
		t.Errorf("held %v; sockets of the store are not a unit's", a.Held)
	}
	if !strings.Contains(log, `from="fd store"`) {
		t.Errorf("log:\n%s", log)
	}
	for _, g := range gs {
		g.Close()
	}
	if after := batontest.NumFDs(t); after != before+8 { // the test's own copies
		t.Errorf("descriptors: %d before, %d after; want %d", before, after, before+8)
	}
}

// TestMatchUDPFlows: a UDP listener with flows=on refuses a socket
// unit's socket (baton keeps flows on sockets of its own); the store's
// socket of a listener that keeps its flows is stale (its sockets are
// bound per generation), one with flows=off comes back.
func TestMatchUDPFlows(t *testing.T) {
	udp := func() *rawSocket {
		return newRawSocket(t, unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, false, false, 0)
	}
	on := udp()
	log, _ := logTo()
	a, err := Match([]Spec{mustParse(t, "dns="+on.url+"?flows=on")}, 1, []Inherited{on.hand(t, "dns")}, log)
	if err == nil {
		_, err = a.Bind(time.Second)
	}
	if err == nil || !errors.Is(err, ErrHanded) || !strings.Contains(err.Error(), "flows=on") {
		t.Errorf("flows=on on a unit's socket: %v; want a refusal that names flows=on", err)
	}

	auto, off := udp(), udp()
	storedAuto := auto.hand(t, "baton/auto")
	unix.Close(auto.fd) // the store's copy, which FDSTOREREMOVE releases
	auto.fd = -1
	a, gs, _ := activate(t, []string{"auto=" + auto.url, "off=" + off.url + "?flows=off"}, 1, storedAuto, off.hand(t, "baton/off"))
	if len(a.Stale) != 1 || a.Stale[0].Name != "baton/auto" || !strings.Contains(a.Stale[0].Reason, "flows") {
		t.Errorf("stale %+v; want baton/auto, for its flows", a.Stale)
	}
	if got := inodes(gs[1]); got[0] != off.ino {
		t.Errorf("flows=off: inode %d, want the stored %d", got[0], off.ino)
	}
}

// TestMatchSameSocketTwice: a socket a unit hands that the store has too
// (stored by a baton that did not know it was the unit's) is used once,
// as the unit's; the store's entry is stale.
func TestMatchSameSocketTwice(t *testing.T) {
	web := tcpSocket(t, 0, false)
	a, gs, _ := activate(t, []string{"http=" + web.url}, 1, web.hand(t, "baton/http"), web.hand(t, "http"))
	if got := inodes(gs[0]); len(got) != 1 || got[0] != web.ino {
		t.Errorf("inodes %v", got)
	}
	if len(a.Stale) != 1 || a.Stale[0].Name != "baton/http" || !a.Held[web.ino] || len(a.Stored) != 0 {
		t.Errorf("stale %+v held %v stored %v; want the store's entry stale, the socket the unit's", a.Stale, a.Held, a.Stored)
	}
}

// TestMatchBacklog: a stored socket gets the listener's backlog again
// (a restart applies a changed backlog); a unit's keeps its own, with a
// warning.
func TestMatchBacklog(t *testing.T) {
	stored := tcpSocket(t, 0, false) // backlog 128
	unit := tcpSocket(t, 0, false)
	_, gs, log := activate(t, []string{"a=" + stored.url + "?backlog=32", "b=" + unit.url + "?backlog=32"}, 1,
		stored.hand(t, "baton/a"), unit.hand(t, "b"))
	c, err := sockdiag.Dial()
	if err != nil {
		t.Skipf("sock_diag: %v", err)
	}
	defer c.Close()
	q, err := c.ListenQueues(stored.ino, unit.ino)
	if err != nil {
		t.Fatal(err)
	}
	if q[stored.ino].SendQ != 32 || gs[0].Socket(0).Backlog() != 32 {
		t.Errorf("stored socket's backlog %d (recorded %d), want 32", q[stored.ino].SendQ, gs[0].Socket(0).Backlog())
	}
	if q[unit.ino].SendQ != 128 || gs[1].Socket(0).Backlog() != 128 {
		t.Errorf("unit's socket's backlog %d (recorded %d), want its own 128", q[unit.ino].SendQ, gs[1].Socket(0).Backlog())
	}
	if !strings.Contains(log, "backlog differs") || !strings.Contains(log, "Backlog=") {
		t.Errorf("no warning about the unit's backlog:\n%s", log)
	}
}

// TestMatchStoredUnixSocket: a unix socket comes back from the store and
// its file is baton's again (a reload that drops it removes it); one
// whose file is gone is stale, and Bind makes a new one.
func TestMatchStoredUnixSocket(t *testing.T) {
	dir := t.TempDir()
	kept, lost := filepath.Join(dir, "kept.sock"), filepath.Join(dir, "lost.sock")
	k := newRawSocket(t, unix.AF_UNIX, unix.SOCK_STREAM, &unix.SockaddrUnix{Name: kept}, true, false, 16)
	l := newRawSocket(t, unix.AF_UNIX, unix.SOCK_STREAM, &unix.SockaddrUnix{Name: lost}, true, false, 16)
	os.Remove(lost)
	a, gs, _ := activate(t, []string{"kept=unix://" + kept, "lost=unix://" + lost}, 1, k.hand(t, "baton/kept"), l.hand(t, "baton/lost"))
	if got := inodes(gs[0]); got[0] != k.ino {
		t.Errorf("kept: inode %d, want %d", got[0], k.ino)
	}
	if got := inodes(gs[1]); got[0] == l.ino {
		t.Error("lost: the socket whose file is gone was adopted")
	}
	if len(a.Stale) != 1 || a.Stale[0].Name != "baton/lost" || !strings.Contains(a.Stale[0].Reason, "socket file") {
		t.Errorf("stale %+v; want baton/lost, for its file", a.Stale)
	}
	if _, err := os.Lstat(lost); err != nil {
		t.Errorf("no new socket file for lost: %v", err)
	}
	gs[0].Close()
	if _, err := os.Lstat(kept); err == nil {
		t.Error("closing the adopted listener left its file: it was not claimed as baton's")
	}
}

// TestBindWaitsForTheStoreToLetGo: a stale socket of the store still
// holds its address until the service manager has read FDSTOREREMOVE;
// Bind tries again meanwhile.
func TestBindWaitsForTheStoreToLetGo(t *testing.T) {
	old := tcpSocket(t, 0, false)
	// The "service manager's" copy, closed a moment after Match.
	mgr := old.hand(t, "")
	handed := old.hand(t, "baton/http")
	port := old.port()
	unix.Close(old.fd)
	old.fd = -1
	log, _ := logTo()
	a, err := Match([]Spec{mustParse(t, fmt.Sprintf("http=tcp://127.0.0.1:%d?balance=reuseport", port))}, 2, []Inherited{handed}, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Stale) != 1 {
		t.Fatalf("stale %+v; want the shared socket, now reuseport", a.Stale)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		unix.Close(mgr.Fd)
	}()
	gs, err := a.Bind(10 * time.Second)
	if err != nil {
		t.Fatalf("Bind: %v", err)
	}
	defer gs[0].Close()
	if n := len(gs[0].Sockets()); n != 2 {
		t.Errorf("%d sockets, want 2", n)
	}
}
