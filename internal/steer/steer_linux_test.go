package steer

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
	deadline := time.Now().Add(10 * time.Second)
	for total := 0; total < len(ps); {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d datagrams arrived within 10s: %v", total, len(ps), got)
		}
		for i, fd := range fds {
			n, _ := drain(fd)
			got[i] += n
			total += n
		}
		time.Sleep(2 * time.Millisecond)
	}
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
			if err := g.Put(0, old); err != nil {
				t.Fatal(err)
			}
			if err := g.Put(1, cur); err != nil {
				t.Fatal(err)
			}
			addr := &net.UDPAddr{IP: fam.ip, Port: port}
			if err := g.Serve(0, 1); err != nil {
				t.Fatal(err)
			}
			first := peers(t, 50, addr)
			if got := sendAll(t, first, old, cur); got[0] != 50 {
				t.Fatalf("serving the old socket: %v datagrams (old, new); want all 50 on the old one", got)
			}
			// The new generation serves: known peers stay, new ones go to it.
			if err := g.Serve(1, 1); err != nil {
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
			if st.Flows[0] != 50 || st.Flows[1] != 50 || st.Known != 50 || st.New != 100 {
				t.Errorf("stats %+v; want 50 flows on each socket, 50 known and 100 new", st)
			}
			// The old generation has gone: its peers follow the serving one.
			if err := g.Remove(0); err != nil {
				t.Fatal(err)
			}
			if got := sendAll(t, first, old, cur); got[1] != 50 {
				t.Errorf("the old socket removed: %v; want all 50 of its peers on the new one", got)
			}
			if st, _ := g.Stats(true); st.Moved != 50 || st.Flows[1] != 100 {
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
	for _, err := range []error{g.Put(16, fd), g.Put(-1, fd), g.Serve(10, 7)} {
		if err == nil {
			t.Errorf("an index out of the array's 16 was accepted")
		}
	}
	if err := g.Remove(5); err != nil {
		t.Errorf("removing an empty index: %v", err)
	}
}
