package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/api"
)

func intp(i int) *int { return &i }

// wideStatus has every long field at once: names and paths at their
// limits, a long command and worker status, warnings, a per-slot listener.
func wideStatus() api.Status {
	long := strings.Repeat("n", 255)
	path := "/" + strings.Repeat("p", 106)
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.Local)
	return api.Status{
		PID: 4120, Uptime: api.Duration(5 * time.Minute), Generation: 12345, Pending: 12346, Ready: "notify",
		Command: []string{"/usr/local/bin/some-server", "--config", "/etc/some/very/long/path/to/a/config/file.toml", "--verbose"},
		Listeners: []api.ListenerStatus{
			{Name: "http", Address: "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535", Kind: "stream", Balance: "reuseport", Backlog: 65535, Inode: 4294967290,
				Sockets: []api.SocketStatus{{Slot: 0, Inode: 4294967290, Fd: 1000}, {Slot: 4095, Inode: 4294967291, Fd: 1001}}},
			{Name: long, Address: path, Kind: "stream", Balance: "shared", Backlog: 4096, Inode: 12, Sockets: []api.SocketStatus{{Slot: -1, Inode: 12, Fd: 5}}},
			{Name: "dns", Address: "127.0.0.1:53", Kind: "datagram", Balance: "shared", Inode: 13, Sockets: []api.SocketStatus{{Slot: -1, Inode: 13, Fd: 6}}},
		},
		Workers: []api.WorkerStatus{
			{Slot: 4095, Generation: 12345, PID: 4194304, State: api.WorkerDraining, Uptime: api.Duration(100 * time.Hour), Restarts: 99999, Status: strings.Repeat("s", 200)},
			{Slot: 0, Generation: 12345, PID: 11, State: api.WorkerReady, Status: "serving"},
		},
		SlotStates: []api.SlotStatus{
			{Slot: 0, State: api.SlotUp, PID: 11},
			{Slot: 7, State: api.SlotBackoff, Restarts: 5, Backoff: api.Duration(3200 * time.Millisecond),
				NextIn: api.Duration(2300 * time.Millisecond), NextStart: since.Add(time.Minute), LastErrorTime: since,
				LastError: "starting worker slot 7 of generation 12345: working directory " + path + ": no such file or directory"},
		},
		Reloads: api.ReloadStats{OK: 3, Failed: 1, Queued: true, Last: &api.ReloadResult{Generation: 12345, Duration: api.Duration(time.Second), Error: strings.Repeat("e", 300)}},
		Rollout: &api.RolloutStatus{Generation: 12346, Previous: 12345, Batch: 4095, MaxWorkers: 8191, Phase: api.RolloutRollingBack,
			Done: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30}, Starting: []int{4095}, Waiting: []int{},
			Error: strings.Repeat("r", 300),
			Canary: &api.CanaryStatus{Slots: []int{0, 1, 2, 3}, PIDs: []int{4194304, 4194303, 4194302, 4194301}, Window: api.Duration(time.Hour), Verdict: api.CanaryRolledBack,
				Reason: strings.Repeat("c", 300), Errors: &[]int64{1 << 40}[0], Accepted: &[]int64{1 << 40}[0], MaxErrorRate: 99.5}},
		Kernel: &api.KernelView{
			Listeners: []api.KernelListener{
				{Name: "http", Protocol: api.ProtocolTCP, Backlog: 65535,
					Sockets: []api.KernelSocket{
						{Slot: intp(0), Inode: 4294967290, State: "LISTEN", RecvQ: 4097, SendQ: 4096},
						{Slot: intp(4095), Inode: 4294967291, State: "LISTEN", RecvQ: 3, SendQ: 4096},
					},
					Connections: map[string]int{"ESTAB": 123456, "TIME-WAIT": 20000, "FIN-WAIT-2": 3, "LAST-ACK": 2}},
				{Name: long, Protocol: api.ProtocolUnix, Sockets: []api.KernelSocket{{Inode: 12, State: "LISTEN", RecvQ: 1, SendQ: 4096}}},
				{Name: "dns", Protocol: api.ProtocolUDP, Sockets: []api.KernelSocket{{Inode: 13}}},
			},
			Workers: []api.KernelWorker{
				{PID: 4194304, Slot: 4095, Generation: 12345, FDs: 1048576, FDLimit: 1048576, Connections: map[string]int{"ESTAB": 99999, "CLOSE-WAIT": 88888}},
				{PID: 11, FDs: 12, FDLimit: -1},
			},
			Host: api.Host{Somaxconn: 4096, Netstat: map[string]int64{"ListenOverflows": 1 << 40, "ListenDrops": 1 << 40, "SyncookiesSent": 5},
				Sockstat: map[string]map[string]int64{"TCP": {"inuse": 5, "tw": 20000, "orphan": 1}, "TCP6": {"inuse": 2}}},
			Warnings: []api.Warning{
				{Code: api.BacklogClamped, Listener: "http", Since: since, Message: "listener http: backlog 65535 is capped at 4096 by net.core.somaxconn, so the accept queue holds at most 4097 connections; " + strings.Repeat("x", 150)},
				{Code: api.CloseWait, PID: 4194304, Since: since, Message: "worker slot 4095 holds 88888 connections in CLOSE-WAIT"},
			},
			Errors: []string{"sock_diag unix: not supported: the kernel has no diag handler for it: load unix_diag (modprobe) or build the kernel with it"},
		},
		Output: api.OutputStatus{
			Stdout: api.OutputStream{DroppedLines: 1 << 40, DroppingSince: &since, BufferedBytes: 1 << 20, LimitBytes: 1 << 20, BlockedFor: api.Duration(100 * time.Hour)},
			Stderr: api.OutputStream{DroppedLines: 1, LimitBytes: 1 << 20, Error: strings.Repeat("e", 300)},
		},
	}
}

func TestStatusFits100Columns(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, wideStatus())
	out := b.String()
	for i, line := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(line); n > statusWidth {
			t.Errorf("line %d is %d columns: %q", i+1, n, line)
		}
	}
	for _, want := range []string{
		"QUEUE", "4100/8192  per slot", "SLOT  LISTENER  INODE       FD    QUEUE",
		"0     http      4294967290  1000  4097/4096", "4095  http      4294967291  1001  3/4096",
		"CONNECTIONS", "OTHER", "123456", "20000", // http: ESTAB, TIME-WAIT; OTHER is 5
		"FDS", "1048576/1048576", "12/unlim", "88888",
		"warnings (2):", "! backlog_clamped, since 03:04:05: listener http: backlog 65535 is capped",
		"! close_wait", "kernel view incomplete: sock_diag unix",
		"host: somaxconn 4096; ListenOverflows 1099511627776, ListenDrops 1099511627776, SyncookiesSent 5;",
		"TCP sockets 7 in use", // 5 IPv4 + 2 IPv6
		"slots without a worker (1):", "! slot 7: backoff, next in 2.3s (restarts 5); last error at 03:04:05.000: starting worker slot 7",
		"no such file or directory",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("\n%s", out)
}

// The connections table: each state with a column, the rest under OTHER.
func TestConnectionsTable(t *testing.T) {
	var b bytes.Buffer
	st := wideStatus()
	printConnections(&b, st)
	want := "CONNECTIONS  ESTAB   SYN-RECV  CLOSE-WAIT  TIME-WAIT  OTHER\n" +
		"http         123456  0         0           20000      5\n\n"
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestStatusWithoutKernelView(t *testing.T) {
	st := wideStatus()
	st.Kernel = nil
	var b bytes.Buffer
	printStatus(&b, st)
	if strings.Contains(b.String(), "CONNECTIONS") || strings.Contains(b.String(), "warnings") || !strings.Contains(b.String(), "LISTENER") {
		t.Errorf("output:\n%s", &b)
	}
}

func TestWrapAndCut(t *testing.T) {
	got := wrap("aa bb cc dd", 8, "> x:", "  ")
	if diff := cmp.Diff([]string{"> x: aa", "  bb cc", "  dd"}, got); diff != "" {
		t.Errorf("wrap (-want +got):\n%s", diff)
	}
	if got := cut("abcdef", 4); got != "abc…" {
		t.Errorf("cut = %q", got)
	}
	if got := middle("abcdefghij", 5); got != "ab…ij" {
		t.Errorf("middle = %q", got)
	}
	var b bytes.Buffer
	fw := &fitWriter{w: &b, width: 5}
	fw.Write([]byte("123456789\nab"))
	fw.Write([]byte("c\nxyz"))
	fw.Flush()
	if diff := cmp.Diff("1234…\nabc\nxyz", b.String()); diff != "" {
		t.Errorf("fitWriter (-want +got):\n%s", diff)
	}
}

func TestCounterDeltas(t *testing.T) {
	prev := &api.KernelView{Host: api.Host{Netstat: map[string]int64{"ListenOverflows": 10, "ListenDrops": 10, "SyncookiesSent": 1}}}
	cur := &api.KernelView{Host: api.Host{Netstat: map[string]int64{"ListenOverflows": 13, "ListenDrops": 13, "SyncookiesSent": 1, "TCPReqQFullDrop": 2}}}
	if got := counterDeltas(prev, cur); got != "ListenOverflows +3, ListenDrops +3, TCPReqQFullDrop +2" {
		t.Errorf("counterDeltas = %q", got)
	}
	if got := counterDeltas(nil, cur); got != "" {
		t.Errorf("first frame: %q", got)
	}
}

func TestOutputLine(t *testing.T) {
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.Local)
	const mib = 1 << 20
	tests := []struct {
		name string
		in   api.OutputStatus
		want string
	}{
		{name: "all well", in: api.OutputStatus{Stdout: api.OutputStream{BufferedBytes: 100, LimitBytes: mib}, Stderr: api.OutputStream{LimitBytes: mib}}, want: ""},
		{name: "stderr dropping",
			in: api.OutputStatus{Stdout: api.OutputStream{LimitBytes: mib},
				Stderr: api.OutputStream{BufferedBytes: mib, LimitBytes: mib, DroppedLines: 1204, DroppingSince: &since, BlockedFor: api.Duration(12 * time.Second)}},
			want: "output: stderr: 1204 lines dropped, dropping since 03:04:05, 1.0 of 1.0 MiB buffered, a write\n    blocked for 12s: nothing reads it\n"},
		{name: "shared, write failed",
			in: api.OutputStatus{
				Stdout: api.OutputStream{LimitBytes: mib, DroppedLines: 3, Error: "write: broken pipe", Shared: true},
				Stderr: api.OutputStream{LimitBytes: mib, DroppedLines: 3, Error: "write: broken pipe", Shared: true}},
			want: "output: stdout and stderr: 3 lines dropped, 0.0 of 1.0 MiB buffered, last write failed: write:\n    broken pipe\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			printOutput(&b, tt.in)
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("output line (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFlowsLine(t *testing.T) {
	for _, tt := range []struct {
		name string
		l    api.ListenerStatus
		want string
	}{
		{"tcp", api.ListenerStatus{Name: "http"}, ""},
		{"not kept", api.ListenerStatus{Name: "dns", Flows: &api.FlowsStatus{Error: "UDP flows are not kept across reloads: flows=off"}},
			"flows dns: UDP flows are not kept across reloads: flows=off"},
		{"kept", api.ListenerStatus{Name: "quic", Flows: &api.FlowsStatus{Kept: true, Capacity: 131072, Tracked: 50, Known: 18371, New: 50, Draining: 16843, ProgramRuns: 10, ProgramNS: 1300,
			Generations: []api.FlowGeneration{{Generation: 1, Flows: 50}, {Generation: 4, Serving: true}}}},
			"flows quic: kept: 50 peers of 131072 (gen 1 draining 50, gen 4 serving 0); 18371 known, 50 new, 0 moved, 0 fallback; 16843 to draining generations; program 130 ns a datagram"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := flowsLine(tt.l); got != tt.want {
				t.Errorf("flowsLine:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
