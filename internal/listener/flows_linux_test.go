package listener

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/steer"
)

// steeredGroup opens a steered UDP group, or skips.
func steeredGroup(t *testing.T, text string, slots int) *Group {
	t.Helper()
	if err := steer.Supported(); err != nil {
		t.Skipf("cannot steer here: %v", err)
	}
	g, err := OpenGroup(mustParse(t, text), slots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	if !g.Steered() {
		t.Fatalf("not steered: %v", g.FlowsErr)
	}
	return g
}

// countOn sends one datagram from each of conns and counts, per socket,
// those that arrive (bounded).
func countOn(t *testing.T, conns []*net.UDPConn, socks ...*Socket) []int {
	t.Helper()
	for _, c := range conns {
		c.Write([]byte("x"))
	}
	return countWaiting(t, len(conns), socks...)
}

// countWaiting counts, per socket, the datagrams that arrive until n
// have (bounded).
func countWaiting(t *testing.T, n int, socks ...*Socket) []int {
	t.Helper()
	got := make([]int, len(socks))
	buf := make([]byte, 16)
	total := 0
	// Not all in time: the caller's check of the counts says so.
	batontest.Wait(5*time.Second, func() error {
		for i, s := range socks {
			for {
				if _, _, err := unix.Recvfrom(s.Fd(), buf, unix.MSG_DONTWAIT); err != nil {
					break
				}
				got[i]++
				total++
			}
		}
		if total < n {
			return fmt.Errorf("%d of %d datagrams arrived", total, n)
		}
		return nil
	})
	return got
}

func dialN(t *testing.T, n int, addr net.Addr) []*net.UDPConn {
	var out []*net.UDPConn
	for range n {
		c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out = append(out, c)
	}
	return out
}

// TestSteeredGroupGenerations: each generation gets its sockets; known
// peers stay with the old one while it is in the array, new ones go to
// the serving one, and a closed generation's peers move.
func TestSteeredGroupGenerations(t *testing.T) {
	g := steeredGroup(t, "dns=udp://127.0.0.1:0?balance=reuseport", 2)
	if err := g.ClaimFlows(1, 2); err != nil {
		t.Fatal(err)
	}
	state := map[FlowKey]FlowFate{{1, 0}: FlowIn, {1, 1}: FlowIn}
	fate := func(k FlowKey) FlowFate { return state[k] }
	if err := g.SyncFlows(fate, []FlowKey{{1, 0}, {1, 1}}); err != nil {
		t.Fatal(err)
	}
	g1 := []*Socket{g.SocketOf(1, 0), g.SocketOf(1, 1)}
	old := dialN(t, 40, g1[0].Addr())
	if got := countOn(t, old, g1...); got[0]+got[1] != 40 || got[0] == 0 || got[1] == 0 {
		t.Fatalf("generation 1 serving: %v", got)
	}
	if err := g.ClaimFlows(2, 2); err != nil {
		t.Fatal(err)
	}
	g2 := []*Socket{g.SocketOf(2, 0), g.SocketOf(2, 1)}
	if g2[0] == nil || g2[0] == g1[0] || g2[0].Port() != g1[0].Port() {
		t.Fatalf("generation 2's socket %v: want another socket on the same port", g2[0])
	}
	state[FlowKey{2, 0}], state[FlowKey{2, 1}] = FlowIn, FlowIn
	g.SyncFlows(fate, []FlowKey{{2, 0}, {2, 1}})
	all := append(append([]*Socket{}, g1...), g2...)
	if got := countOn(t, old, all...); got[0]+got[1] != 40 {
		t.Errorf("known peers after the flip: %v; want all on generation 1", got)
	}
	fresh := dialN(t, 40, g1[0].Addr())
	if got := countOn(t, fresh, all...); got[2]+got[3] != 40 {
		t.Errorf("new peers after the flip: %v; want all on generation 2", got)
	}
	// Generation 1 exits.
	state[FlowKey{1, 0}], state[FlowKey{1, 1}] = FlowClosed, FlowClosed
	g.SyncFlows(fate, []FlowKey{{2, 0}, {2, 1}})
	if g.SocketOf(1, 0) != nil || len(g.FlowKeys()) != 2 {
		t.Errorf("generation 1 closed, but keys %v", g.FlowKeys())
	}
	if got := countOn(t, old, g2...); got[0]+got[1] != 40 {
		t.Errorf("generation 1's peers once it closed: %v; want all on generation 2", got)
	}
}

// TestFlowsFallBack: a kernel that refuses the program leaves nothing
// attached and nothing bound; flows=auto then opens an ordinary group
// and says why, flows=on fails.
func TestFlowsFallBack(t *testing.T) {
	if err := steer.Supported(); err != nil {
		t.Skipf("cannot steer here: %v", err)
	}
	refused := errors.New("refused by the test")
	attachHook = func(*steer.Group, int) error { return refused }
	t.Cleanup(func() { attachHook = nil })
	port := freeUDPPort(t)
	spec := mustParse(t, "dns=udp://127.0.0.1:"+itoa(port)+"?flows=on")
	if _, err := OpenGroup(spec, 1); !errors.Is(err, refused) || !errors.Is(err, steer.ErrNotSupported) {
		t.Fatalf("flows=on with the attach refused: %v", err)
	}
	// Nothing stayed bound: an ordinary socket takes the port.
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatalf("the port stayed bound after a refusal: %v", err)
	}
	c.Close()
	g, err := OpenGroup(mustParse(t, "dns=udp://127.0.0.1:"+itoa(port)), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Steered() || !errors.Is(g.FlowsErr, refused) {
		t.Errorf("flows=auto refused: steered %v, FlowsErr %v", g.Steered(), g.FlowsErr)
	}
}

func freeUDPPort(t *testing.T) int {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestReconcileSteered: a reload from flows=auto to on keeps the group;
// one that would bind another group on its address is refused.
func TestReconcileSteered(t *testing.T) {
	g := steeredGroup(t, "dns=udp://127.0.0.1:0", 1)
	addr := g.Sockets()[0].Addr().String()
	for _, tt := range []struct {
		to   string
		fate Fate
		err  bool
	}{
		{"dns=udp://" + addr + "?flows=on", Adjusted, false},
		{"dns=udp://" + addr + "?flows=off", 0, true},
		{"dns=udp://" + addr + "?balance=reuseport", 0, true},
		{"dns=udp://" + addr + "?flows=quic", 0, true},
	} {
		g.Spec = mustParse(t, "dns=udp://"+addr)
		r, err := Reconcile([]Spec{mustParse(t, tt.to)}, []*Group{g}, 1)
		switch {
		case tt.err && err == nil:
			t.Errorf("%s: reconciled, want a refusal", tt.to)
		case !tt.err && err != nil:
			t.Errorf("%s: %v", tt.to, err)
		case !tt.err && r.Changes[0].Fate != tt.fate:
			t.Errorf("%s: fate %v, want %v", tt.to, r.Changes[0].Fate, tt.fate)
		}
	}
}

// TestQUICCookies: with flows=quic, each socket of a generation has its
// own cookie, told before the socket is in the array and kept once it is
// there; a short-header packet that carries it reaches that socket from
// any peer, while the next generation serves.
func TestQUICCookies(t *testing.T) {
	g := steeredGroup(t, "quic=udp://127.0.0.1:0?balance=reuseport&flows=quic", 2)
	if err := g.ClaimFlows(1, 2); err != nil {
		t.Fatal(err)
	}
	c0, ok0 := g.QUICCookie(1, 0)
	c1, ok1 := g.QUICCookie(1, 1)
	if !ok0 || !ok1 || c0 == c1 {
		t.Fatalf("cookies of generation 1: %s %v, %s %v; want two different ones", c0, ok0, c1, ok1)
	}
	state := map[FlowKey]FlowFate{{1, 0}: FlowIn, {1, 1}: FlowIn}
	fate := func(k FlowKey) FlowFate { return state[k] }
	if err := g.SyncFlows(fate, []FlowKey{{1, 0}, {1, 1}}); err != nil {
		t.Fatal(err)
	}
	if again, _ := g.QUICCookie(1, 0); again != c0 {
		t.Errorf("cookie of slot 0 in the array: %s; it was told %s", again, c0)
	}
	g.ClaimFlows(2, 2)
	state[FlowKey{2, 0}], state[FlowKey{2, 1}] = FlowIn, FlowIn
	g.SyncFlows(fate, []FlowKey{{2, 0}, {2, 1}})
	all := []*Socket{g.SocketOf(1, 0), g.SocketOf(1, 1), g.SocketOf(2, 0), g.SocketOf(2, 1)}
	for i, c := range []steer.Cookie{c0, c1} {
		conns := dialN(t, 20, all[0].Addr())
		for _, conn := range conns {
			conn.Write(append([]byte{0x40}, append(c[:], "rest of the id"...)...))
		}
		got := countWaiting(t, len(conns), all...)
		if got[i] != 20 {
			t.Errorf("short headers with the cookie of generation 1 slot %d from 20 new peers: %v; want all on it", i, got)
		}
	}
	plain, _ := OpenGroup(mustParse(t, "dns=udp://127.0.0.1:0"), 1)
	if plain != nil {
		defer plain.Close()
		plain.ClaimFlows(1, 1)
		if _, ok := plain.QUICCookie(1, -1); ok {
			t.Errorf("a listener without flows=quic has a cookie")
		}
	}
}
