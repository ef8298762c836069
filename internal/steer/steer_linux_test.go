package steer

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// newGroup loads a group or skips the test with the reason.
func newGroup(t *testing.T) *Group {
	t.Helper()
	g, err := New(Options{Flows: 1024, Sockets: 16})
	if errors.Is(err, ErrNotSupported) {
		t.Skipf("cannot steer here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// udpSocket binds a SO_REUSEPORT UDP socket on the loopback address of
// family (unix.AF_INET or AF_INET6) at port (0: any), closed when the
// test ends.
func udpSocket(t *testing.T, family, port int) (fd, boundPort int) {
	t.Helper()
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr = &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Port: port, Addr: [16]byte{15: 1}}
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Skipf("bind %v: %v", sa, err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch a := local.(type) {
	case *unix.SockaddrInet4:
		return fd, a.Port
	case *unix.SockaddrInet6:
		return fd, a.Port
	}
	t.Fatalf("unexpected address %T", local)
	return -1, 0
}

// drain counts the datagrams waiting on fd, and their senders' ports.
func drain(fd int) (n int, from map[int]bool) {
	from = map[int]bool{}
	buf := make([]byte, 64)
	for {
		_, sa, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return n, from
		}
		n++
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			from[a.Port] = true
		case *unix.SockaddrInet6:
			from[a.Port] = true
		}
	}
}

// peers dials n UDP peers to addr.
func peers(t *testing.T, n int, addr *net.UDPAddr) []*net.UDPConn {
	t.Helper()
	out := make([]*net.UDPConn, n)
	for i := range out {
		c, err := net.DialUDP("udp", nil, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out[i] = c
	}
	return out
}

// sendAll sends one datagram from each peer and waits until want of them
// have arrived on the sockets (bounded).
func sendAll(t *testing.T, ps []*net.UDPConn, fds ...int) []int {
	t.Helper()
	for _, p := range ps {
		if _, err := p.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]int, len(fds))
	total := 0
	batontest.WaitFor(t, 10*time.Second, func() error {
		for i, fd := range fds {
			n, _ := drain(fd)
			got[i] += n
			total += n
		}
		if total < len(ps) {
			return fmt.Errorf("%d of %d datagrams arrived: %v", total, len(ps), got)
		}
		return nil
	})
	return got
}

func TestSteering(t *testing.T) {
	for _, fam := range []struct {
		name   string
		family int
		ip     net.IP
	}{{"IPv4", unix.AF_INET, net.IPv4(127, 0, 0, 1)}, {"IPv6", unix.AF_INET6, net.IPv6loopback}} {
		t.Run(fam.name, func(t *testing.T) {
			g := newGroup(t)
			old, port := udpSocket(t, fam.family, 0)
			cur, _ := udpSocket(t, fam.family, port)
			if err := g.Attach(old); err != nil {
				t.Fatal(err)
			}
			if _, err := g.Put(0, old); err != nil {
				t.Fatal(err)
			}
			if _, err := g.Put(1, cur); err != nil {
				t.Fatal(err)
			}
			addr := &net.UDPAddr{IP: fam.ip, Port: port}
			if err := g.Serve([]int{0}); err != nil {
				t.Fatal(err)
			}
			first := peers(t, 50, addr)
			if got := sendAll(t, first, old, cur); got[0] != 50 {
				t.Fatalf("serving the old socket: %v datagrams (old, new); want all 50 on the old one", got)
			}
			// The new generation serves: known peers stay, new ones go to it.
			if err := g.Serve([]int{1}); err != nil {
				t.Fatal(err)
			}
			if got := sendAll(t, first, old, cur); got[0] != 50 {
				t.Errorf("known peers after the flip: %v; want all 50 still on the old socket", got)
			}
			second := peers(t, 50, addr)
			if got := sendAll(t, second, old, cur); got[1] != 50 {
				t.Errorf("new peers after the flip: %v; want all 50 on the new socket", got)
			}
			st, err := g.Stats(true)
			if err != nil {
				t.Fatal(err)
			}
			if st.Flows[0] != 50 || st.Flows[1] != 50 || st.Known != 50 || st.New != 100 || st.Entries != 100 {
				t.Errorf("stats %+v; want 50 flows on each socket, 50 known and 100 new", st)
			}
			// The old generation has gone: its peers follow the serving one.
			if err := g.Remove(0, false); err != nil {
				t.Fatal(err)
			}
			if got := sendAll(t, first, old, cur); got[1] != 50 {
				t.Errorf("the old socket removed: %v; want all 50 of its peers on the new one", got)
			}
			if st, _ := g.Stats(true); st.Moved != 50 || st.Flows[1] != 100 || st.Stale != 0 {
				t.Errorf("after the removal: %+v; want 50 moved and 100 flows on the new socket", st)
			}
		})
	}
}

// TestNoServingSocketFallsBack: with nothing to serve, the kernel's hash
// chooses: no datagram is dropped.
func TestNoServingSocketFallsBack(t *testing.T) {
	g := newGroup(t)
	a, port := udpSocket(t, unix.AF_INET, 0)
	b, _ := udpSocket(t, unix.AF_INET, port)
	if err := g.Attach(a); err != nil {
		t.Fatal(err)
	}
	ps := peers(t, 40, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	got := sendAll(t, ps, a, b)
	if got[0]+got[1] != 40 {
		t.Fatalf("%v arrived; want all 40", got)
	}
	if st, _ := g.Stats(false); st.Fallback != 40 {
		t.Errorf("stats %+v; want 40 fallbacks", st)
	}
}

func TestOptionsBounds(t *testing.T) {
	g := newGroup(t)
	fd, _ := udpSocket(t, unix.AF_INET, 0)
	_, e1 := g.Put(16, fd)
	_, e2 := g.Put(-1, fd)
	for _, err := range []error{e1, e2, g.Serve([]int{16})} {
		if err == nil {
			t.Errorf("an index out of the array's 16 was accepted")
		}
	}
	if err := g.Remove(5, true); err != nil {
		t.Errorf("removing an empty index: %v", err)
	}
}

// TestIndexUsedAgain: a socket put at the index of one that has gone
// (another tag) does not get the peers of the one that went: they move
// to the serving sockets.
func TestIndexUsedAgain(t *testing.T) {
	g := newGroup(t)
	a, port := udpSocket(t, unix.AF_INET, 0)
	srv, _ := udpSocket(t, unix.AF_INET, port)
	b, _ := udpSocket(t, unix.AF_INET, port)
	if err := g.Attach(a); err != nil {
		t.Fatal(err)
	}
	for i, fd := range []int{a, srv} {
		if _, err := g.Put(i, fd); err != nil {
			t.Fatal(err)
		}
	}
	g.Serve([]int{0})
	ps := peers(t, 30, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if got := sendAll(t, ps, a, srv, b); got[0] != 30 {
		t.Fatalf("first datagrams: %v; want all on the serving socket", got)
	}
	// a goes; b takes its index; the serving socket is srv.
	g.Remove(0, true)
	g.Serve([]int{1})
	if _, err := g.Put(0, b); err != nil {
		t.Fatal(err)
	}
	if got := sendAll(t, ps, a, srv, b); got[1] != 30 {
		t.Errorf("peers of a socket whose index was used again: %v (a, serving, new at the same index); want all on the serving socket", got)
	}
	st, _ := g.Stats(true)
	if st.Moved != 30 || st.Flows[1] != 30 {
		t.Errorf("stats %+v; want 30 moved, 30 flows on index 1", st)
	}
	if n, _ := g.Delivered(1); n != 30 {
		t.Errorf("delivered to index 1: %d; want 30", n)
	}
}

// TestServingSpreads: new peers spread over every serving socket, and
// the banks switch cleanly from one list to another of another length.
func TestServingSpreads(t *testing.T) {
	g := newGroup(t)
	first, port := udpSocket(t, unix.AF_INET, 0)
	fds := []int{first}
	for range 3 {
		fd, _ := udpSocket(t, unix.AF_INET, port)
		fds = append(fds, fd)
	}
	g.Attach(first)
	for i, fd := range fds {
		g.Put(i, fd)
	}
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	g.Serve([]int{0, 1, 2})
	got := sendAll(t, peers(t, 200, addr), fds...)
	if got[3] != 0 || got[0] == 0 || got[1] == 0 || got[2] == 0 {
		t.Errorf("200 new peers over serving sockets 0-2: %v; want some on each, none on 3", got)
	}
	g.Serve([]int{3})
	if got := sendAll(t, peers(t, 50, addr), fds...); got[3] != 50 {
		t.Errorf("after switching to socket 3 alone: %v", got)
	}
	g.Serve([]int{2, 1})
	if got := sendAll(t, peers(t, 100, addr), fds...); got[0] != 0 || got[3] != 0 || got[1]+got[2] != 100 {
		t.Errorf("after switching to sockets 2 and 1: %v", got)
	}
}

// TestFDsHandOver: a Group made of another's descriptors (as after an
// upgrade) steers the same flows.
func TestFDsHandOver(t *testing.T) {
	g := newGroup(t)
	old, port := udpSocket(t, unix.AF_INET, 0)
	cur, _ := udpSocket(t, unix.AF_INET, port)
	g.Attach(old)
	g.Put(0, old)
	g.Serve([]int{0})
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	ps := peers(t, 20, addr)
	sendAll(t, ps, old, cur)

	var dups []int
	for _, fd := range g.FDs().List() {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		dups = append(dups, d)
	}
	fds, err := FDsOf(dups)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	h, err := FromFDs(fds)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.Put(1, cur); err != nil {
		t.Fatal(err)
	}
	h.Serve([]int{1})
	if got := sendAll(t, ps, old, cur); got[0] != 20 {
		t.Errorf("known peers after the hand-over: %v; want all 20 on their socket", got)
	}
	if got := sendAll(t, peers(t, 20, addr), old, cur); got[1] != 20 {
		t.Errorf("new peers after the hand-over: %v; want all 20 on the new serving socket", got)
	}
	// An index with a socket of another baton is not allocated.
	if i, err := h.Alloc(); err != nil || i == 0 || i == 1 {
		t.Errorf("Alloc = %d, %v; want an index other than 0 (a socket is there) and 1 (used)", i, err)
	}
}

// TestFromFDsRefusesOtherObjects: a descriptor that is not the program
// or a map of the right shape is refused, and every descriptor closed.
func TestFromFDsRefusesOtherObjects(t *testing.T) {
	g := newGroup(t)
	var dups []int
	for _, fd := range g.FDs().List() {
		d, _ := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		dups = append(dups, d)
	}
	fds, _ := FDsOf(dups)
	fds.Tags, fds.Serving = fds.Serving, fds.Tags // sizes differ
	if _, err := FromFDs(fds); err == nil {
		t.Fatal("swapped maps accepted")
	}
	for _, fd := range dups {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			t.Errorf("fd %d still open after the refusal", fd)
		}
	}
}

// TestProgramSize bounds the program: its instructions, and what the
// verifier walked (the cost of every path).
func TestProgramSize(t *testing.T) {
	g := newGroup(t)
	insns := program(g.maps, g.nsocks, false)
	if n := len(insns); n > 200 {
		t.Errorf("the program has %d instructions; keep it under 200", n)
	}
	info, err := g.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	n, ok := info.VerifiedInstructions()
	if ok && n > 1000 {
		t.Errorf("the verifier processed %d instructions; keep it under 1000", n)
	}
	t.Logf("%d instructions, %d verified", len(insns), n)
}

// TestStatsWhileClosing: Stats on one goroutine while baton's exit closes
// the Group on another answers errClosed once closed, and never reads a
// closed map (whose descriptor number another file may have by then):
// the race detector saw that before Stats took the Group's lock.
func TestStatsWhileClosing(t *testing.T) {
	g := newGroup(t)
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := g.Stats(true); err != nil {
				done <- err
				return
			}
		}
	}()
	if _, err := g.Stats(true); err != nil {
		t.Fatalf("Stats of an open group: %v", err)
	}
	g.Close()
	if err := <-done; !errors.Is(err, errClosed) {
		t.Errorf("Stats after Close: %v, want errClosed", err)
	}
	if _, err := g.Delivered(0); !errors.Is(err, errClosed) {
		t.Errorf("Delivered after Close: %v, want errClosed", err)
	}
}
