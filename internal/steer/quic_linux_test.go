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

// newQUICGroup loads a group with flows=quic's program, or skips.
func newQUICGroup(t *testing.T, quic bool) *Group {
	t.Helper()
	g, err := New(Options{Flows: 1024, Sockets: 16, QUIC: quic})
	if errors.Is(err, ErrNotSupported) {
		t.Skipf("cannot steer here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// shortHeader is a QUIC short-header packet (1-RTT) whose destination
// connection ID starts with c; long makes it a long-header one (an
// Initial), which carries its connection IDs elsewhere.
func shortHeader(c Cookie, long bool) []byte {
	b := []byte{0x41}
	if long {
		b[0] = 0xc1
	}
	b = append(b, c[:]...)
	return append(b, "0123456789abcdef-payload"...)
}

// sendFrom sends payload from n new peers (new source ports) to addr and
// waits until n datagrams have arrived on fds; it returns how many
// arrived on each.
func sendFrom(t *testing.T, n int, addr *net.UDPAddr, payload []byte, fds ...int) []int {
	t.Helper()
	ps := peers(t, n, addr)
	for _, p := range ps {
		if _, err := p.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	return collect(t, n, fds...)
}

// collect waits until n datagrams have arrived on fds (bounded).
func collect(t *testing.T, n int, fds ...int) []int {
	t.Helper()
	got := make([]int, len(fds))
	total := 0
	batontest.WaitFor(t, 10*time.Second, func() error {
		for i, fd := range fds {
			k, _ := drain(fd)
			got[i] += k
			total += k
		}
		if total < n {
			return fmt.Errorf("%d of %d datagrams arrived: %v", total, n, got)
		}
		return nil
	})
	return got
}

// TestQUICCookie: with flows=quic, a short-header packet goes to the
// socket its cookie names, from any address (a client that migrated),
// even a peer the flow table keeps on another socket; long headers, a
// cookie with the wrong check, of an empty index or of a socket that has
// gone follow the flow table (new peers: the serving socket).
func TestQUICCookie(t *testing.T) {
	for _, fam := range []struct {
		name   string
		family int
		ip     net.IP
	}{{"IPv4", unix.AF_INET, net.IPv4(127, 0, 0, 1)}, {"IPv6", unix.AF_INET6, net.IPv6loopback}} {
		t.Run(fam.name, func(t *testing.T) {
			g := newQUICGroup(t, true)
			old, port := udpSocket(t, fam.family, 0)
			cur, _ := udpSocket(t, fam.family, port)
			if err := g.Attach(old); err != nil {
				t.Fatal(err)
			}
			check := g.NewCheck(0)
			tag, err := g.PutChecked(0, old, check)
			if err != nil {
				t.Fatal(err)
			}
			if CheckOf(tag) != check {
				t.Fatalf("tag %#x does not carry check %#x", tag, check)
			}
			if _, err := g.Put(1, cur); err != nil {
				t.Fatal(err)
			}
			g.Serve([]int{1})
			addr := &net.UDPAddr{IP: fam.ip, Port: port}
			cookie := CookieOf(0, check)

			// A known peer of the serving socket, then its short header
			// naming the old socket.
			ps := peers(t, 10, addr)
			if got := sendAll(t, ps, old, cur); got[1] != 10 {
				t.Fatalf("new peers: %v; want all 10 on the serving socket", got)
			}
			for _, p := range ps {
				p.Write(shortHeader(cookie, false))
			}
			if got := collect(t, 10, old, cur); got[0] != 10 {
				t.Errorf("short headers of known peers naming socket 0: %v; want all 10 there", got)
			}

			cases := []struct {
				name    string
				payload []byte
				want    []int // on old, cur
			}{
				{"short header, cookie of socket 0", shortHeader(cookie, false), []int{30, 0}},
				{"long header", shortHeader(cookie, true), []int{0, 30}},
				{"wrong check", shortHeader(CookieOf(0, check^0x8000), false), []int{0, 30}},
				{"empty index", shortHeader(CookieOf(5, check), false), []int{0, 30}},
				{"index past the array", shortHeader(CookieOf(0xffff, check), false), []int{0, 30}},
				{"too short for a cookie", []byte{0x41, cookie[0], cookie[1], cookie[2]}, []int{0, 30}},
			}
			for _, c := range cases {
				if got := sendFrom(t, 30, addr, c.payload, old, cur); got[0] != c.want[0] || got[1] != c.want[1] {
					t.Errorf("%s from 30 new peers: %v (old, serving); want %v", c.name, got, c.want)
				}
			}
			if st, _ := g.Stats(false); st.QUIC != 40 {
				t.Errorf("stats %+v; want 40 steered by cookie", st)
			}

			// Socket 0 goes, and another socket takes its index: its
			// cookie no longer steers, to either.
			g.Remove(0, true)
			if got := sendFrom(t, 20, addr, shortHeader(cookie, false), old, cur); got[1] != 20 {
				t.Errorf("cookie of a socket out of the array: %v; want all 20 on the serving socket", got)
			}
			next, _ := udpSocket(t, fam.family, port)
			if c2 := g.NewCheck(0); c2 == check {
				t.Errorf("NewCheck gave index 0 the check of the socket that was there")
			}
			if _, err := g.Put(0, next); err != nil {
				t.Fatal(err)
			}
			if got := sendFrom(t, 20, addr, shortHeader(cookie, false), old, cur, next); got[1] != 20 {
				t.Errorf("cookie of a socket whose index was used again: %v (gone, serving, new); want all 20 on the serving socket", got)
			}
		})
	}
}

// TestQUICCookieIgnoredWithoutQUIC: the program of flows=on does not
// read connection IDs.
func TestQUICCookieIgnoredWithoutQUIC(t *testing.T) {
	g := newQUICGroup(t, false)
	old, port := udpSocket(t, unix.AF_INET, 0)
	cur, _ := udpSocket(t, unix.AF_INET, port)
	g.Attach(old)
	tag, _ := g.Put(0, old)
	g.Put(1, cur)
	g.Serve([]int{1})
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	if got := sendFrom(t, 20, addr, shortHeader(CookieOf(0, CheckOf(tag)), false), old, cur); got[1] != 20 {
		t.Errorf("short headers naming socket 0 without flows=quic: %v; want all 20 on the serving socket", got)
	}
}

// TestQUICProgramSize bounds the program of flows=quic as TestProgramSize
// does the other.
func TestQUICProgramSize(t *testing.T) {
	g := newQUICGroup(t, true)
	insns := program(g.maps, g.nsocks, true)
	if n := len(insns); n > 240 {
		t.Errorf("the program has %d instructions; keep it under 240", n)
	}
	info, err := g.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	n, ok := info.VerifiedInstructions()
	if ok && n > 1200 {
		t.Errorf("the verifier processed %d instructions; keep it under 1200", n)
	}
	t.Logf("%d instructions, %d verified", len(insns), n)
}
