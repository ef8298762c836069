package handoff

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/fdpass"
)

// sendAll hands conns off in transfers as large as baton grants.
func sendAll(t *testing.T, s *Sender, cs []Conn) {
	t.Helper()
	for len(cs) > 0 {
		n := min(len(cs), s.Grant().MaxFDs)
		if err := s.Send(ctx(t), cs[:n]); err != nil {
			t.Fatalf("sending %d connections: %v", n, err)
		}
		cs = cs[n:]
	}
}

// adoptN receives n connections from a, by their peer's port.
func adoptN(t *testing.T, a *Adopter, n int) map[int]fdpass.FD {
	t.Helper()
	got := map[int]fdpass.FD{}
	for len(got) < n {
		fds, err := a.Next(ctx(t))
		if err != nil {
			t.Fatalf("after %d of %d connections: %v", len(got), n, err)
		}
		for _, f := range fds {
			port := peerPort(t, f.Fd)
			if _, dup := got[port]; dup {
				t.Errorf("connection from port %d adopted twice", port)
			}
			got[port] = f
		}
	}
	t.Cleanup(func() {
		for _, f := range got {
			unix.Close(f.Fd)
		}
	})
	return got
}

// fileConn turns a received descriptor into a net.Conn, which takes it
// over: fd is closed.
func fileConn(t *testing.T, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "adopted")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestMoveKeepsConnectionsStateAndUnreadBytes(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	const n = 600 // three transfers
	clients, servers := pairs(t, n)
	for _, c := range clients {
		// Bytes the old worker never read travel in the socket.
		fmt.Fprintf(c, "unread from %d\n", localPort(c))
	}
	a := h.adopter(0)
	h.allow()
	s := h.sender()
	if g := s.Grant(); g.MaxFDs != MaxFDs || g.MaxState != DefaultMaxState || g.MaxBytes != MaxTransferBytes {
		t.Errorf("first grant %+v", g)
	}
	sendAll(t, s, conns(t, servers, "web"))
	for _, sv := range servers {
		sv.Close() // baton holds them now
	}
	got := adoptN(t, a, n)

	for _, c := range clients {
		port := localPort(c)
		f, ok := got[port]
		if !ok {
			t.Fatalf("connection from port %d not adopted", port)
		}
		if f.Name != "web" || f.Kind != Kind || string(f.Meta) != "state-"+strconv.Itoa(port) {
			t.Errorf("port %d: adopted as %q/%q with state %q", port, f.Name, f.Kind, f.Meta)
		}
		if flags, err := unix.FcntlInt(uintptr(f.Fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("port %d: adopted descriptor's flags %#x, %v: want FD_CLOEXEC", port, flags, err)
		}
	}
	// Check a sample end to end: the unread line, a reply, then EOF.
	for _, c := range clients[:20] {
		port := localPort(c)
		conn := fileConn(t, got[port].Fd)
		delete(got, port)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		want := fmt.Sprintf("unread from %d\n", port)
		buf := make([]byte, len(want))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != want {
			t.Errorf("port %d: read %q, %v; want %q", port, buf, err, want)
		}
		fmt.Fprintf(conn, "hello %d\n", port)
		conn.Close()
		if out, err := readAll(c); err != nil || out != fmt.Sprintf("hello %d\n", port) {
			t.Errorf("client %d read %q, %v", port, out, err)
		}
	}
	st := h.waitStats("every connection adopted", func(st Stats) bool { return st.Adopted == n })
	if st.Stored != n || st.Held != 0 || st.Refused != 0 || st.Expired != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestSpreadsOverSubscribers(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	const n = 1000
	clients, servers := pairs(t, n)
	a, b := h.adopter(0), h.adopter(0)
	h.allow()
	h.waitStats("two subscribers", func(st Stats) bool { return st.Subscribers == 2 })
	sendAll(t, h.sender(), conns(t, servers, "web"))

	var mu sync.Mutex
	got := map[int]int{} // port -> adopter
	counts := [2]int{}
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i, ad := range []*Adopter{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				fds, err := ad.Next(ctx(t))
				if err != nil {
					select {
					case <-done:
					default:
						t.Errorf("adopter %d: %v", i, err)
					}
					return
				}
				mu.Lock()
				for _, f := range fds {
					port := peerPort(t, f.Fd)
					if j, dup := got[port]; dup {
						t.Errorf("port %d adopted by %d and %d", port, j, i)
					}
					got[port] = i
					counts[i]++
					unix.Close(f.Fd)
				}
				mu.Unlock()
			}
		}()
	}
	h.waitStats("every connection adopted", func(st Stats) bool { return st.Adopted == n })
	close(done)
	a.Close()
	b.Close()
	wg.Wait()
	if len(got) != n || counts[0] == 0 || counts[1] == 0 {
		t.Errorf("adopted %d distinct connections, %v per subscriber; want %d spread over both", len(got), counts, n)
	}
	for _, c := range clients {
		if _, ok := got[localPort(c)]; !ok {
			t.Errorf("port %d not adopted", localPort(c))
		}
	}
}

func TestUnadoptedConnectionsCloseAtTheDeadline(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{Timeout: 300 * time.Millisecond})
	const n = 50
	clients, servers := pairs(t, n)
	// A subscriber that may not adopt (its worker is not ready) gets
	// nothing; nor does one that is the connections' own source.
	h.adopter(0)
	h.store.SetWorkers([]Worker{{PID: os.Getpid(), Adopt: false}})
	sendAll(t, h.sender(), conns(t, servers, "web"))
	for _, sv := range servers {
		sv.Close()
	}
	st := h.waitStats("every connection expired", func(st Stats) bool { return st.Expired == n })
	if st.Held != 0 || st.Adopted != 0 || st.Stored != n {
		t.Errorf("stats %+v", st)
	}
	for _, c := range clients {
		if out, err := readAll(c); err != nil || out != "" {
			t.Errorf("client %d: read %q, %v; want EOF", localPort(c), out, err)
		}
	}
}

func TestNeverBackToItsSource(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{Timeout: 300 * time.Millisecond})
	h.source.Store(int64(os.Getpid()))
	_, servers := pairs(t, 10)
	h.adopter(0)
	h.allow()
	h.waitStats("a subscriber", func(st Stats) bool { return st.Subscribers == 1 })
	sendAll(t, h.sender(), conns(t, servers, "web"))
	st := h.waitStats("every connection expired", func(st Stats) bool { return st.Expired == 10 })
	if st.Adopted != 0 {
		t.Errorf("%d connections went back to the worker that handed them off", st.Adopted)
	}
}

func TestStateOverTheLimitIsRefused(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{MaxState: 100})
	_, servers := pairs(t, 3)
	s := h.sender()
	cs := conns(t, servers, "web")
	cs[1].State = make([]byte, 101)
	var tooLarge StateTooLarge
	if err := s.Send(ctx(t), cs); !errors.As(err, &tooLarge) || tooLarge.Max != 100 || !strings.Contains(err.Error(), "--handoff-max-state") {
		t.Errorf("Send with a 101-byte state: %v; want StateTooLarge naming the flag", err)
	}
	// A sender that does not check is refused by baton itself, and
	// keeps its connections.
	fds := []fdpass.FD{{Fd: cs[0].Fd, Name: "web", Kind: Kind, Meta: cs[1].State}}
	err := fdpass.Send(ctx(t), s.c, fds)
	if !errors.Is(err, fdpass.ErrRefused) || !errors.Is(err, fdpass.ErrTooLarge) || !strings.Contains(err.Error(), "MaxMeta 100") {
		t.Errorf("oversize state sent anyway: %v; want a refusal for its size", err)
	}
	st := h.waitStats("a refusal", func(st Stats) bool { return st.Refused == 1 })
	if st.Stored != 0 || st.Held != 0 {
		t.Errorf("stats %+v", st)
	}
	if _, err := unix.FcntlInt(uintptr(cs[0].Fd), unix.F_GETFD, 0); err != nil {
		t.Errorf("the refused connection is gone from the sender: %v", err)
	}
}

func TestMoreThanGrantedIsRefused(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{room: func(committed int) int { return 5 - committed }})
	_, servers := pairs(t, 6)
	s := h.sender()
	if g := s.Grant(); g.MaxFDs != 5 {
		t.Fatalf("grant %+v with room for 5", g)
	}
	cs := conns(t, servers, "web")
	if err := s.Send(ctx(t), cs); err == nil || !strings.Contains(err.Error(), "baton takes 5 now") {
		t.Errorf("Send of 6 with a grant of 5: %v", err)
	}
	fds := make([]fdpass.FD, 6)
	for i, c := range cs {
		fds[i] = fdpass.FD{Fd: c.Fd, Name: "web", Kind: Kind}
	}
	if err := fdpass.Send(ctx(t), s.c, fds); !errors.Is(err, fdpass.ErrTooLarge) {
		t.Errorf("6 sent anyway: %v; want a refusal", err)
	}
}

// TestFullStoreRefusesAndKeepsWhatItHolds fills the store's room, then
// checks that the next transfer is refused with the reason and that what
// the store holds is adopted afterwards.
func TestFullStoreRefusesAndKeepsWhatItHolds(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{room: func(committed int) int { return 100 - committed }})
	const n = 150
	clients, servers := pairs(t, n)
	s := h.sender()
	cs := conns(t, servers, "web")
	if err := s.Send(ctx(t), cs[:100]); err != nil {
		t.Fatal(err)
	}
	err := s.Send(ctx(t), cs[100:])
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no room") {
		t.Errorf("a transfer past the room: %v; want a refusal saying why", err)
	}
	if _, err := DialSender(ctx(t), h.path); !errors.Is(err, ErrRefused) {
		t.Errorf("a new handoff connection while full: %v; want a refusal", err)
	}
	for _, sv := range servers[:100] {
		sv.Close()
	}
	st := h.store.Stats()
	if st.Held != 100 || st.Refused != 2 {
		t.Errorf("stats %+v; want 100 held, 2 refused", st)
	}
	// What the store holds survives and is adopted; the rest is still the
	// sender's.
	a := h.adopter(0)
	h.allow()
	got := adoptN(t, a, 100)
	for _, c := range clients[:100] {
		if _, ok := got[localPort(c)]; !ok {
			t.Errorf("stored connection from port %d lost", localPort(c))
		}
	}
	for _, c := range cs[100:] {
		if _, err := unix.FcntlInt(uintptr(c.Fd), unix.F_GETFD, 0); err != nil {
			t.Errorf("refused connection gone from its sender: %v", err)
		}
	}
	// Room again once adopted.
	h.waitStats("everything adopted", func(st Stats) bool { return st.Held == 0 })
	s2 := h.sender()
	if s2.Grant().MaxFDs != 100 {
		t.Errorf("grant after the store emptied: %+v", s2.Grant())
	}
}

// TestFullStoreWaitsWhileAdopting moves more connections than the store
// has room for while a worker adopts: the sender is held back, not
// refused, and every connection arrives.
func TestFullStoreWaitsWhileAdopting(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{room: func(committed int) int { return 100 - committed }})
	const n = 250
	clients, servers := pairs(t, n)
	a := h.adopter(0)
	h.allow()
	// The store lists the subscription just after it answers it.
	h.waitStats("the subscription listed", func(st Stats) bool { return st.Subscribers == 1 })
	s := h.sender()
	cs := conns(t, servers, "web")
	firstSent := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		rest := cs
		for first := true; len(rest) > 0; first = false {
			k := min(len(rest), s.Grant().MaxFDs)
			if err := s.Send(ctx(t), rest[:k]); err != nil {
				sent <- fmt.Errorf("after %d of %d: %w", n-len(rest), n, err)
				return
			}
			if first {
				close(firstSent)
			}
			rest = rest[k:]
		}
		sent <- nil
	}()
	// The first 100 fill the store; the adopter has not read them yet,
	// so the sender waits for its next grant.
	h.waitStats("the store full", func(st Stats) bool { return st.Held == 100 })
	select {
	case <-firstSent:
		t.Fatalf("the sender got a grant while the store was full; stats %+v", h.store.Stats())
	default:
	}
	got := adoptN(t, a, n)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if _, ok := got[localPort(c)]; !ok {
			t.Errorf("connection from port %d lost", localPort(c))
		}
	}
	st := h.waitStats("everything adopted", func(st Stats) bool { return st.Held == 0 && st.Adopted == n })
	if st.Refused != 0 {
		t.Errorf("stats %+v: want nothing refused", st)
	}
}

// TestLowRLIMIT runs the store under a soft RLIMIT_NOFILE with room for
// a few connections: the grant shrinks to that room, the next transfer
// is refused with a reason that names the limit, and a sender that
// ignores the grant meets the kernel's limit (MSG_CTRUNC), which the
// store reports as a refusal: the sender keeps its connections.
func TestLowRLIMIT(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	clients, servers := pairs(t, 40)
	cs := conns(t, servers, "web")
	open, err := CountFDs()
	if err != nil {
		t.Fatal(err)
	}
	lowerSoftNOFILE(t, uint64(open+Reserve+20))

	s := h.sender()
	g := s.Grant()
	if g.MaxFDs < 5 || g.MaxFDs > 20 {
		t.Fatalf("grant under a soft limit of %d with %d open: %+v; want about 20", open+Reserve+20, open, g)
	}
	if err := s.Send(ctx(t), cs[:g.MaxFDs]); err != nil {
		t.Fatal(err)
	}
	stored := g.MaxFDs
	for s.Grant().MaxFDs > 0 && stored < len(cs) {
		n := min(s.Grant().MaxFDs, len(cs)-stored)
		if err := s.Send(ctx(t), cs[stored:stored+n]); err != nil {
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "RLIMIT_NOFILE") {
				t.Errorf("refusal when full: %v; want one naming RLIMIT_NOFILE", err)
			}
			break
		}
		stored += n
	}
	if stored >= len(cs) {
		t.Fatalf("all %d connections stored under a soft limit of %d", stored, open+Reserve+20)
	}
	// Past the store's own accounting, the kernel drops descriptors the
	// process has no room for.
	lowerSoftNOFILE(t, uint64(open+stored+3))
	h.store.mu.Lock()
	h.store.cfg.room = func(int) int { return MaxFDs }
	h.store.mu.Unlock()
	s2, err := DialSender(ctx(t), h.path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	fds := make([]fdpass.FD, 0, len(cs)-stored)
	for _, c := range cs[stored:] {
		fds = append(fds, fdpass.FD{Fd: c.Fd, Name: "web", Kind: Kind})
	}
	err = fdpass.Send(ctx(t), s2.c, fds)
	if !errors.Is(err, fdpass.ErrRefused) || !errors.Is(err, fdpass.ErrTruncated) || !strings.Contains(err.Error(), "RLIMIT_NOFILE") {
		t.Errorf("a transfer past the kernel's limit: %v; want a refusal naming RLIMIT_NOFILE", err)
	}
	restoreNOFILE(t)
	// Nothing stored was lost; nothing refused left its sender.
	for _, sv := range servers[:stored] {
		sv.Close()
	}
	a := h.adopter(0)
	h.allow()
	got := adoptN(t, a, stored)
	for _, c := range clients[:stored] {
		if _, ok := got[localPort(c)]; !ok {
			t.Errorf("stored connection from port %d lost", localPort(c))
		}
	}
	for i, c := range clients[stored:] {
		fmt.Fprintf(servers[stored+i], "still here\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 11)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Errorf("refused connection from port %d: %v", localPort(c), err)
		}
	}
}

var nofileOnce sync.Once
var nofileOrig NOFILE

// lowerSoftNOFILE sets this process's soft RLIMIT_NOFILE until
// restoreNOFILE (or the test's end).
func lowerSoftNOFILE(t *testing.T, soft uint64) {
	t.Helper()
	nofileOnce.Do(func() { nofileOrig, _ = GetNOFILE() })
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: soft, Max: nofileOrig.Hard}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { restoreNOFILE(t) })
}

func restoreNOFILE(t *testing.T) {
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nofileOrig.Soft, Max: nofileOrig.Hard}); err != nil {
		t.Error(err)
	}
}

// TestSenderGoneMidTransfer breaks a transfer after its header and
// descriptors, as a worker killed there does: the store keeps nothing of
// it and leaks nothing; the connections, never acknowledged, were the
// sender's to keep.
func TestSenderGoneMidTransfer(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	clients, servers := pairs(t, 10)
	s := h.sender()
	var fds []int
	for _, sv := range servers {
		fds = append(fds, fdOf(t, sv))
	}
	// A header for 10 descriptors with a 100-byte body, the descriptors,
	// and no body.
	hdr := append([]byte("BFDB\x01\x01"), 0, 10)
	hdr = binary.BigEndian.AppendUint32(hdr, 0)
	hdr = binary.BigEndian.AppendUint32(hdr, 10)
	hdr = binary.BigEndian.AppendUint32(hdr, 100)
	raw, _ := s.c.SyscallConn()
	var serr error
	raw.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), hdr, unix.UnixRights(fds...), nil, 0)
		return true
	})
	if serr != nil {
		t.Fatal(serr)
	}
	s.Close()
	st := h.waitStats("the broken transfer refused", func(st Stats) bool { return st.Refused == 1 && st.Senders == 0 })
	if st.Held != 0 || st.Stored != 0 {
		t.Errorf("stats %+v", st)
	}
	for i, c := range clients {
		fmt.Fprintf(servers[i], "ok\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 3)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Errorf("connection %d after the broken transfer: %v", i, err)
		}
	}
}

// TestRefusingAdopterLosesNothing has a subscriber refuse a push (its
// limits are too small): the store takes the connections back and gives
// them to the next subscriber.
func TestRefusingAdopterLosesNothing(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	const n = 30
	clients, servers := pairs(t, n)
	bad := h.adopter(0)
	h.allow()
	h.waitStats("a subscriber", func(st Stats) bool { return st.Subscribers == 1 })
	sendAll(t, h.sender(), conns(t, servers, "web"))
	for _, sv := range servers {
		sv.Close()
	}
	_, err := fdpass.Recv(ctx(t), bad.c, fdpass.Limits{MaxFDs: n, MaxMeta: 1})
	if !errors.Is(err, fdpass.ErrTooLarge) {
		t.Fatalf("the bad subscriber's Recv: %v", err)
	}
	h.waitStats("the subscriber dropped", func(st Stats) bool { return st.Subscribers == 0 })
	got := adoptN(t, h.adopter(0), n)
	for _, c := range clients {
		if _, ok := got[localPort(c)]; !ok {
			t.Errorf("port %d lost", localPort(c))
		}
	}
	if st := h.waitStats("all adopted", func(st Stats) bool { return st.Adopted == n }); st.Held != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestAdopterGoneMidPushLosesNothing closes a subscription with a push
// in its socket, unread: the store gets no acknowledgement, takes the
// connections back and gives them to another subscriber.
func TestAdopterGoneMidPushLosesNothing(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	const n = 40
	clients, servers := pairs(t, n)
	gone := h.adopter(0)
	h.allow()
	h.waitStats("a subscriber", func(st Stats) bool { return st.Subscribers == 1 })
	sendAll(t, h.sender(), conns(t, servers, "web"))
	for _, sv := range servers {
		sv.Close()
	}
	// Wait until the push is in the subscriber's socket.
	waitReadableOrFail(t, gone.c)
	gone.Close()
	got := adoptN(t, h.adopter(0), n)
	for _, c := range clients {
		if _, ok := got[localPort(c)]; !ok {
			t.Errorf("port %d lost", localPort(c))
		}
	}
	if st := h.waitStats("all adopted", func(st Stats) bool { return st.Adopted == n }); st.Unconfirmed != 0 || st.Held != 0 {
		t.Errorf("stats %+v", st)
	}
}

func waitReadableOrFail(t *testing.T, c *net.UnixConn) {
	t.Helper()
	raw, _ := c.SyscallConn()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	if err := waitReadable(raw); err != nil {
		t.Fatal(err)
	}
}

// TestSilentAdopterIsUnconfirmed has a subscriber never acknowledge a
// push: after the transfer timeout the store closes its copies and counts
// them unconfirmed, and never sends them elsewhere (the worker might hold
// them).
func TestSilentAdopterIsUnconfirmed(t *testing.T) {
	batontest.CheckLeaks(t)
	transferTimeout = 300 * time.Millisecond
	t.Cleanup(func() { transferTimeout = TransferTimeout })
	h := newHarness(t, Config{})
	_, servers := pairs(t, 10)
	silent := h.adopter(0)
	h.allow()
	h.waitStats("a subscriber", func(st Stats) bool { return st.Subscribers == 1 })
	sendAll(t, h.sender(), conns(t, servers, "web"))
	st := h.waitStats("the push timed out", func(st Stats) bool { return st.Unconfirmed == 10 })
	if st.Held != 0 || st.Adopted != 0 || st.Subscribers != 0 {
		t.Errorf("stats %+v", st)
	}
	silent.Close()
}

// TestRetiredSubscriberGetsNothingMore ends a subscription when its
// worker leaves the list (it was asked to stop): the worker reads the end
// of the stream, and what waits stays for others.
func TestRetiredSubscriberGetsNothingMore(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{Timeout: 300 * time.Millisecond})
	a := h.adopter(0)
	h.allow()
	h.waitStats("a subscriber", func(st Stats) bool { return st.Subscribers == 1 })
	h.store.SetWorkers(nil)
	if _, err := a.Next(ctx(t)); !errors.Is(err, io.EOF) {
		t.Errorf("Next after the worker was retired: %v; want io.EOF", err)
	}
	_, servers := pairs(t, 5)
	sendAll(t, h.sender(), conns(t, servers, "web"))
	if st := h.waitStats("expired", func(st Stats) bool { return st.Expired == 5 }); st.Adopted != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestPendingSubscriberWaits subscribes before the worker may adopt (a
// new generation that is not serving yet): nothing is pushed until the
// supervisor allows it.
func TestPendingSubscriberWaits(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	a := h.adopter(0)
	h.store.SetWorkers([]Worker{{PID: os.Getpid()}})
	_, servers := pairs(t, 20)
	sendAll(t, h.sender(), conns(t, servers, "web"))
	if st := h.store.Stats(); st.Held != 20 || st.Adopted != 0 {
		t.Errorf("before the worker may adopt: %+v", st)
	}
	h.allow()
	adoptN(t, a, 20)
}

// TestSmallSubscriptionsGetSmallTransfers checks an adopter's max_fds.
func TestSmallSubscriptionsGetSmallTransfers(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	a := h.adopter(7)
	if a.sub.MaxFDs != 7 {
		t.Fatalf("subscription %+v", a.sub)
	}
	h.allow()
	_, servers := pairs(t, 30)
	sendAll(t, h.sender(), conns(t, servers, "web"))
	got := 0
	for got < 30 {
		fds, err := a.Next(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(fds) > 7 {
			t.Errorf("a transfer of %d to a subscriber of 7", len(fds))
		}
		got += len(fds)
		closeFDs(fds)
	}
	if _, err := DialAdopter(ctx(t), h.path, MaxFDs+1); err == nil || !strings.Contains(err.Error(), "max_fds 254") {
		t.Errorf("max_fds over the limit: %v", err)
	}
}

func TestStopAcceptingAndClose(t *testing.T) {
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	clients, servers := pairs(t, 8)
	sendAll(t, h.sender(), conns(t, servers, "web"))
	for _, sv := range servers {
		sv.Close()
	}
	h.store.StopAccepting(errors.New("baton is stopping"))
	if _, err := DialSender(ctx(t), h.path); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "baton is stopping") {
		t.Errorf("handoff while stopping: %v", err)
	}
	h.store.Close()
	if st := h.store.Stats(); st.Expired != 8 || st.Held != 0 {
		t.Errorf("after Close: %+v", st)
	}
	for _, c := range clients {
		if out, err := readAll(c); err != nil || out != "" {
			t.Errorf("client after Close: %q, %v; want EOF", out, err)
		}
	}
}

func TestRaiseNOFILE(t *testing.T) {
	lim, err := RaiseNOFILE()
	if err != nil {
		t.Fatal(err)
	}
	if lim.Soft+1 < lim.Hard {
		t.Errorf("soft limit %d after raising, hard %d", lim.Soft, lim.Hard)
	}
	n, err := CountFDs()
	if err != nil || n < 3 {
		t.Errorf("CountFDs: %d, %v", n, err)
	}
	if want := batontest.NumFDs(t); n != want {
		t.Errorf("CountFDs %d, /proc/self/fd lists %d", n, want)
	}
}
