package inspect

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/sockdiag"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func httpListener(backlog int, sockets ...Socket) Listener {
	if len(sockets) == 0 {
		sockets = []Socket{{Slot: Shared, Inode: 100}}
	}
	return Listener{
		Name: "http", Protocol: TCP, Backlog: backlog,
		Addr:    netip.MustParseAddrPort("127.0.0.1:8080"),
		Sockets: sockets,
	}
}

func newSample(at time.Time) *sample {
	return &sample{
		time: at, somaxconn: 4096, maxTW: 131072,
		queues: map[uint64]sockdiag.Queue{},
		conns:  map[int][]sockdiag.Socket{},
		fds:    map[int]fdUsage{},
		procs:  map[int]proc{},
		trees:  map[int]*tree{},
	}
}

func conn(local string, state sockdiag.State, inode, cookie uint64) sockdiag.Socket {
	return sockdiag.Socket{
		State: state, Local: netip.MustParseAddrPort(local),
		Remote: netip.MustParseAddrPort("127.0.0.1:40000"), Inode: inode, Cookie: cookie,
	}
}

func codes(ws []Warning) []string {
	var c []string
	for _, w := range ws {
		c = append(c, string(w.Code))
	}
	return c
}

func TestBacklogClamped(t *testing.T) {
	tests := []struct {
		name      string
		backlog   int
		queue     *sockdiag.Queue // nil: the kernel did not report the socket
		somaxconn int
		want      string // "" for no warning, else part of the message
	}{
		{name: "above somaxconn", backlog: 8192, queue: &sockdiag.Queue{State: sockdiag.Listen, SendQ: 4096}, want: "backlog 8192 is capped at 4096 by net.core.somaxconn, so the accept queue holds at most 4097 connections; to get 8192, run sysctl -w net.core.somaxconn=8192"},
		{name: "equal", backlog: 4096, queue: &sockdiag.Queue{State: sockdiag.Listen, SendQ: 4096}},
		{name: "below", backlog: 64, queue: &sockdiag.Queue{State: sockdiag.Listen, SendQ: 64}},
		{name: "kernel silent, somaxconn says", backlog: 8192, somaxconn: 1024, want: "capped at 1024"},
		{name: "kernel silent, somaxconn unknown", backlog: 8192},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSample(t0)
			s.somaxconn = tt.somaxconn
			if tt.queue != nil {
				s.queues[100] = *tt.queue
			}
			v, _, _ := analyze(Input{Listeners: []Listener{httpListener(tt.backlog)}}, s, newHistory(), Options{}.withDefaults())
			if tt.want == "" {
				if len(v.Warnings) != 0 {
					t.Errorf("warnings %+v, want none", v.Warnings)
				}
				return
			}
			if len(v.Warnings) != 1 || v.Warnings[0].Code != BacklogClamped || !strings.Contains(v.Warnings[0].Message, tt.want) {
				t.Fatalf("warnings %+v, want one backlog_clamped saying %q", v.Warnings, tt.want)
			}
			if w := v.Warnings[0]; w.Listener != "http" || w.Since != t0 || w.Slot != nil || w.PID != 0 {
				t.Errorf("warning %+v: want listener http since %v, no slot or pid", w, t0)
			}
		})
	}
}

func TestAcceptQueueFull(t *testing.T) {
	tests := []struct {
		name         string
		recvQ, sendQ uint32
		warn         bool
	}{
		{"empty", 0, 10, false},
		{"80% is not above", 8, 10, false},
		{"90%", 9, 10, true},
		{"overfull", 11, 10, true},
		{"backlog 0 holds one", 1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSample(t0)
			s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: tt.recvQ, SendQ: tt.sendQ}
			v, _, _ := analyze(Input{Listeners: []Listener{httpListener(int(tt.sendQ))}}, s, newHistory(), Options{}.withDefaults())
			got := len(v.Warnings) == 1 && v.Warnings[0].Code == AcceptQueueFull
			if got != tt.warn || len(v.Warnings) > 1 {
				t.Errorf("warnings %+v, want accept_queue_full: %v", v.Warnings, tt.warn)
			}
			want := []SocketView{{Inode: 100, State: "LISTEN", RecvQ: tt.recvQ, SendQ: tt.sendQ}}
			if diff := cmp.Diff(want, v.Listeners[0].Sockets); diff != "" {
				t.Errorf("sockets (-want +got):\n%s", diff)
			}
		})
	}
}

// A SO_REUSEPORT listener has a row and a warning per slot.
func TestReuseportSlots(t *testing.T) {
	l := httpListener(10, Socket{Slot: 0, Inode: 100}, Socket{Slot: 1, Inode: 101}, Socket{Slot: 2, Inode: 102})
	s := newSample(t0)
	s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: 1, SendQ: 10}
	s.queues[101] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: 10, SendQ: 10}
	// 102 unreported: closed, or a kernel without the diag module.
	v, _, _ := analyze(Input{Listeners: []Listener{l}}, s, newHistory(), Options{}.withDefaults())
	want := []SocketView{
		{Slot: intp(0), Inode: 100, State: "LISTEN", RecvQ: 1, SendQ: 10},
		{Slot: intp(1), Inode: 101, State: "LISTEN", RecvQ: 10, SendQ: 10},
		{Slot: intp(2), Inode: 102},
	}
	if diff := cmp.Diff(want, v.Listeners[0].Sockets); diff != "" {
		t.Errorf("sockets (-want +got):\n%s", diff)
	}
	if len(v.Warnings) != 1 || v.Warnings[0].Slot == nil || *v.Warnings[0].Slot != 1 || !strings.Contains(v.Warnings[0].Message, "listener http slot 1: accept queue holds 10 connections of at most 10") {
		t.Errorf("warnings %+v, want accept_queue_full for slot 1", v.Warnings)
	}
}

// Connections are counted by state on the listener's address, and on
// each worker by the inodes it holds.
func TestConnectionsByStateAndWorker(t *testing.T) {
	in := Input{
		Listeners: []Listener{httpListener(4096)},
		Workers:   []Worker{{PID: 10, Slot: 0, Generation: 1}, {PID: 11, Slot: 1, Generation: 1}},
	}
	s := newSample(t0)
	s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: 1, SendQ: 4096}
	s.conns[0] = []sockdiag.Socket{
		conn("127.0.0.1:8080", sockdiag.Listen, 100, 1),           // left out
		conn("127.0.0.1:8080", sockdiag.Established, 0, 2),        // queued
		conn("127.0.0.1:8080", sockdiag.Established, 201, 3),      // worker 10
		conn("127.0.0.1:8080", sockdiag.Established, 202, 4),      // worker 11
		conn("127.0.0.1:8080", sockdiag.Established, 203, 5),      // held by both (a fork)
		conn("127.0.0.1:8080", sockdiag.CloseWait, 204, 6),        // worker 11
		conn("127.0.0.1:8080", sockdiag.TimeWait, 0, 7),           // nobody
		conn("127.0.0.1:8080", sockdiag.SynRecv, 0, 8),            // half-open
		conn("127.0.0.2:8080", sockdiag.Established, 205, 9),      // another address
		conn("127.0.0.1:8081", sockdiag.Established, 206, 10),     // another port
		conn("127.0.0.1:8080", sockdiag.Established, 207, 11),     // a process not a worker
		conn("[::ffff:127.0.0.1]:8080", sockdiag.FinWait1, 0, 12), // mapped: same address
	}
	s.owners = map[uint64][]sockdiag.Owner{
		100: {{PID: 10, FD: 3}, {PID: 11, FD: 3}},
		201: {{PID: 10, FD: 7}},
		202: {{PID: 11, FD: 7}},
		203: {{PID: 10, FD: 8}, {PID: 10, FD: 9}, {PID: 11, FD: 8}},
		204: {{PID: 11, FD: 9}},
		205: {{PID: 10, FD: 10}},
		207: {{PID: 99, FD: 3}},
	}
	v, _, _ := analyze(in, s, newHistory(), Options{}.withDefaults())
	wantConns := map[string]int{"ESTAB": 5, "CLOSE-WAIT": 1, "TIME-WAIT": 1, "SYN-RECV": 1, "FIN-WAIT-1": 1}
	if diff := cmp.Diff(wantConns, v.Listeners[0].Connections); diff != "" {
		t.Errorf("listener connections (-want +got):\n%s", diff)
	}
	wantWorkers := []WorkerView{
		{PID: 10, Slot: 0, Generation: 1, Connections: map[string]int{"ESTAB": 2}},
		{PID: 11, Slot: 1, Generation: 1, Connections: map[string]int{"ESTAB": 2, "CLOSE-WAIT": 1}},
	}
	if diff := cmp.Diff(wantWorkers, v.Workers); diff != "" {
		t.Errorf("workers (-want +got):\n%s", diff)
	}
	// One CLOSE-WAIT seen once is not yet a leak.
	if len(v.Warnings) != 0 {
		t.Errorf("warnings %+v, want none", v.Warnings)
	}
}

// A CLOSE-WAIT connection that stays CloseWaitAge raises the warning; it
// says when the count grew, and clears when the connections are closed.
func TestCloseWaitLeak(t *testing.T) {
	in := Input{Listeners: []Listener{httpListener(4096)}, Workers: []Worker{{PID: 10, Slot: 3, Generation: 2}}}
	opts := Options{CloseWaitAge: 10 * time.Second}.withDefaults()
	h := newHistory()
	view := func(at time.Time, cookies ...uint64) (*View, []Warning, []Warning) {
		s := newSample(at)
		s.owners = map[uint64][]sockdiag.Owner{}
		s.conns[0] = nil
		for _, c := range cookies {
			s.conns[0] = append(s.conns[0], conn("127.0.0.1:8080", sockdiag.CloseWait, 1000+c, c))
			s.owners[1000+c] = []sockdiag.Owner{{PID: 10, FD: int(c)}}
		}
		return analyze(in, s, h, opts)
	}

	v, raised, _ := view(t0, 1, 2)
	if len(v.Warnings)+len(raised) != 0 {
		t.Fatalf("first sight: warnings %+v, want none", v.Warnings)
	}
	v, raised, _ = view(t0.Add(5*time.Second), 1, 2, 3)
	if len(v.Warnings)+len(raised) != 0 {
		t.Fatalf("after 5s: warnings %+v, want none", v.Warnings)
	}
	t2 := t0.Add(10 * time.Second)
	v, raised, _ = view(t2, 1, 2, 3)
	if len(raised) != 1 || len(v.Warnings) != 1 {
		t.Fatalf("after 10s: warnings %+v raised %+v, want one", v.Warnings, raised)
	}
	w := v.Warnings[0]
	if w.Code != CloseWait || w.PID != 10 || *w.Slot != 3 || w.Since != t2 ||
		!strings.Contains(w.Message, "worker slot 3 (pid 10, generation 2) holds 3 connections in CLOSE-WAIT, 2 of them for 10s or more") ||
		!strings.Contains(w.Message, "never called close()") {
		t.Errorf("warning %+v", w)
	}
	v, raised, _ = view(t0.Add(20*time.Second), 1, 2, 3, 4)
	if len(raised) != 0 || len(v.Warnings) != 1 || v.Warnings[0].Since != t2 ||
		!strings.Contains(v.Warnings[0].Message, "holds 4 connections in CLOSE-WAIT, up from 3, 3 of them for 20s or more") {
		t.Errorf("growing: warnings %+v raised %+v", v.Warnings, raised)
	}
	v, _, cleared := view(t0.Add(30 * time.Second))
	if len(v.Warnings) != 0 || len(cleared) != 1 || cleared[0].Code != CloseWait {
		t.Errorf("closed: warnings %+v cleared %+v, want it cleared", v.Warnings, cleared)
	}
	if len(h.closeWait) != 0 {
		t.Errorf("history still remembers %d sockets", len(h.closeWait))
	}
}

func TestNofile(t *testing.T) {
	tests := []struct {
		name string
		u    fdUsage
		want []string
	}{
		{"default limit", fdUsage{open: 10, soft: 1024, hard: 4096}, []string{"nofile_default"}},
		{"default limit and full", fdUsage{open: 900, soft: 1024, hard: 1024}, []string{"nofile_default", "nofile_headroom"}},
		{"high limit, 80%", fdUsage{open: 800, soft: 1000, hard: 1000}, []string{"nofile_headroom"}},
		{"high limit, 79%", fdUsage{open: 790, soft: 1000, hard: 1000}, nil},
		{"unlimited", fdUsage{open: 1 << 20, soft: ^uint64(0), hard: ^uint64(0)}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSample(t0)
			s.fds[10] = tt.u
			in := Input{Workers: []Worker{{PID: 10, Slot: 0, Generation: 1}}}
			v, _, _ := analyze(in, s, newHistory(), Options{}.withDefaults())
			if diff := cmp.Diff(tt.want, codes(v.Warnings)); diff != "" {
				t.Errorf("warnings (-want +got):\n%s\n%+v", diff, v.Warnings)
			}
			if v.Workers[0].FDs != tt.u.open {
				t.Errorf("fds %d, want %d", v.Workers[0].FDs, tt.u.open)
			}
		})
	}
	s := newSample(t0)
	s.fds[10] = fdUsage{open: 3, soft: ^uint64(0), hard: ^uint64(0)}
	v, _, _ := analyze(Input{Workers: []Worker{{PID: 10}}}, s, newHistory(), Options{}.withDefaults())
	if v.Workers[0].FDLimit != -1 || v.Workers[0].FDLimitHard != -1 {
		t.Errorf("unlimited shows as %d/%d, want -1", v.Workers[0].FDLimit, v.Workers[0].FDLimitHard)
	}
}

// ListenOverflows rising raises a warning that lasts the rise window and
// names the listener that is near full.
func TestListenOverflowsRising(t *testing.T) {
	in := Input{Listeners: []Listener{httpListener(10)}}
	opts := Options{RiseWindow: time.Minute}.withDefaults()
	h := newHistory()
	view := func(at time.Duration, overflows int64, recvQ uint32) *View {
		s := newSample(t0.Add(at))
		s.netstat = map[string]map[string]int64{"TcpExt": {"ListenOverflows": overflows, "ListenDrops": overflows, "Other": 1}}
		s.queues[100] = sockdiag.Queue{State: sockdiag.Listen, RecvQ: recvQ, SendQ: 10}
		v, _, _ := analyze(in, s, h, opts)
		return v
	}
	if v := view(0, 100, 0); len(v.Warnings) != 0 {
		t.Fatalf("first sample: %+v", v.Warnings)
	}
	if v := view(10*time.Second, 100, 0); len(v.Warnings) != 0 {
		t.Fatalf("no rise: %+v", v.Warnings)
	}
	v := view(20*time.Second, 107, 10)
	if diff := cmp.Diff([]string{"accept_queue_full", "listen_overflows"}, codes(v.Warnings)); diff != "" {
		t.Fatalf("rise: (-want +got):\n%s", diff)
	}
	if msg := v.Warnings[1].Message; !strings.Contains(msg, "rose by 7 in the last 20s") || !strings.Contains(msg, "baton's http (10 of 10) is near full") {
		t.Errorf("message %q", msg)
	}
	if diff := cmp.Diff(map[string]int64{"ListenOverflows": 107, "ListenDrops": 107}, v.Host.Netstat); diff != "" {
		t.Errorf("netstat (-want +got):\n%s", diff)
	}
	if v := view(50*time.Second, 107, 0); len(v.Warnings) != 1 || !strings.Contains(v.Warnings[0].Message, "rose by 7 in the last 50s") || !strings.Contains(v.Warnings[0].Message, "none of baton's accept queues is near full") {
		t.Errorf("within the window: %+v", v.Warnings)
	}
	if v := view(90*time.Second, 107, 0); len(v.Warnings) != 0 {
		t.Errorf("a window after the rise: %+v", v.Warnings)
	}
}

func TestTimeWaitPileUp(t *testing.T) {
	tw := func(n int) []sockdiag.Socket {
		var socks []sockdiag.Socket
		for i := range n {
			socks = append(socks, conn("127.0.0.1:8080", sockdiag.TimeWait, 0, uint64(i+1)))
		}
		return socks
	}
	for _, tt := range []struct {
		name     string
		n, maxTW int
		opt      int
		warn     bool
	}{
		{"quarter of tw buckets", 100, 400, 0, true},
		{"below", 99, 400, 0, false},
		{"option", 5, 400, 5, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newSample(t0)
			s.maxTW = tt.maxTW
			s.sockstat = map[string]map[string]int64{"TCP": {"tw": 300}}
			s.conns[0] = tw(tt.n)
			v, _, _ := analyze(Input{Listeners: []Listener{httpListener(4096)}}, s, newHistory(), Options{TimeWait: tt.opt}.withDefaults())
			got := len(v.Warnings) == 1 && v.Warnings[0].Code == TimeWait
			if got != tt.warn {
				t.Fatalf("warnings %+v, want time_wait: %v", v.Warnings, tt.warn)
			}
			if got && !strings.Contains(v.Warnings[0].Message, "the host has 300 of net.ipv4.tcp_max_tw_buckets 400") {
				t.Errorf("message %q", v.Warnings[0].Message)
			}
		})
	}
}

func TestSeriesRise(t *testing.T) {
	var s series
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	steps := []struct {
		sec  int
		v    int64
		rose int64
		over time.Duration
	}{
		{0, 5, 0, 0},
		{30, 6, 1, 30 * time.Second},
		{60, 6, 1, 60 * time.Second},
		{61, 6, 1, 61 * time.Second}, // the newest sample a window old is the base
		{200, 9, 3, 139 * time.Second},
		{201, 2, 0, 0}, // went down: starts over
	}
	for _, st := range steps {
		rose, over := s.rise(at(st.sec), st.v, time.Minute)
		if rose != st.rose || over != st.over {
			t.Errorf("at %ds value %d: rose %d over %s, want %d over %s", st.sec, st.v, rose, over, st.rose, st.over)
		}
	}
}

// withCode keeps the warnings with code. The tests look at their own
// warnings only: host-wide ones (ListenOverflows rising) may come from
// other programs on the machine.
func withCode(ws []Warning, code Code) []Warning {
	var out []Warning
	for _, w := range ws {
		if w.Code == code {
			out = append(out, w)
		}
	}
	return out
}
