package metrics

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/supervisor"
)

func intp(i int) *int { return &i }

// fakeStatus is a snapshot with a kernel view, as KernelStatus returns.
func fakeStatus() supervisor.Status {
	return supervisor.Status{
		Started:      time.Unix(1700000000, 0),
		Generation:   3,
		WorkersTotal: 7,
		Upgrades:     2,
		Reloads:      supervisor.ReloadStats{OK: 2, Failed: 1},
		Listeners: []supervisor.ListenerStatus{
			{Name: "http", Kind: "stream", Address: "127.0.0.1:8080", Backlog: 64},
			{Name: "dns", Kind: "datagram", Address: "127.0.0.1:53", Flows: &api.FlowsStatus{
				Kept: true, Capacity: 1024, Evicted: 3, Known: 100, New: 10, Moved: 2, Fallback: 1, Draining: 40, ProgramRuns: 113, ProgramNS: 2_000_000_000,
				Generations: []api.FlowGeneration{{Generation: 2, Flows: 4}, {Generation: 3, Serving: true, Flows: 6}},
			}},
		},
		Workers: []supervisor.WorkerStatus{
			{Slot: 0, Generation: 3, PID: 10, State: supervisor.Ready, RSSBytes: 100 << 20, CPUSeconds: 2.5},
			{Slot: 1, Generation: 3, PID: 11, State: supervisor.Ready, RSSBytes: 30 << 20, CPUSeconds: 1},
			{Slot: 0, Generation: 2, PID: 5, State: supervisor.Draining, RSSBytes: 50 << 20, CPUSeconds: 7},
			// baton replaces pid 11: its replacement, started, not read yet.
			{Slot: 1, Generation: 3, PID: 12, State: supervisor.Starting},
		},
		Kernel: &inspect.View{
			Took: 0.002,
			Listeners: []inspect.ListenerView{
				{Name: "http", Protocol: inspect.TCP, Backlog: 64,
					Sockets: []inspect.SocketView{
						{Slot: intp(0), Inode: 1, State: "LISTEN", RecvQ: 3, SendQ: 64},
						{Slot: intp(1), Inode: 2, State: "LISTEN", RecvQ: 0, SendQ: 64},
					},
					Connections: map[string]int{"ESTAB": 12, "TIME-WAIT": 4}},
				{Name: "dns", Protocol: inspect.UDP, Sockets: []inspect.SocketView{{Inode: 3, State: "UNCONN", RecvQ: 768}}},
			},
			Workers: []inspect.WorkerView{
				{PID: 10, Slot: 0, Generation: 3, FDs: 20, FDLimit: 1024, FDLimitHard: 4096, Connections: map[string]int{"ESTAB": 5}},
				{PID: 11, Slot: 1, Generation: 3, FDs: 30, FDLimit: -1, FDLimitHard: -1, Connections: map[string]int{"ESTAB": 4, "CLOSE-WAIT": 2}},
				{PID: 5, Slot: 0, Generation: 2, FDs: 9, FDLimit: 1024, FDLimitHard: 4096, Connections: map[string]int{"ESTAB": 1}},
			},
			Host: inspect.Host{
				Somaxconn: 4096, MaxTimeWait: 131072,
				Netstat:  map[string]int64{"ListenOverflows": 17, "ListenDrops": 18},
				Sockstat: map[string]map[string]int64{"TCP": {"inuse": 5, "orphan": 1, "tw": 4, "alloc": 9, "mem": 2}, "TCP6": {"inuse": 2}},
			},
			Warnings: []inspect.Warning{{Code: inspect.NofileDefault, PID: 10}, {Code: inspect.NofileDefault, PID: 5}, {Code: inspect.CloseWait, PID: 11}},
			Errors:   []string{"one"},
		},
	}
}

// scrape fetches /metrics from h and parses it with the Prometheus text
// parser.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	srv, err := Listen("127.0.0.1:0", h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	return mf
}

// series flattens a family into "label=value,..." → value.
func series(mf *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	if mf == nil {
		return out
	}
	for _, m := range mf.Metric {
		var labels []string
		for _, l := range m.Label {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(labels)
		var v float64
		switch {
		case m.Gauge != nil:
			v = m.Gauge.GetValue()
		case m.Counter != nil:
			v = m.Counter.GetValue()
		case m.Histogram != nil:
			v = float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			v = m.Untyped.GetValue()
		}
		out[strings.Join(labels, ",")] = v
	}
	return out
}

func TestScrape(t *testing.T) {
	m := New("v1.2.3", func(context.Context) (supervisor.Status, bool) { return fakeStatus(), true })
	m.Event(supervisor.Event{Kind: supervisor.EventReload, OK: true, Duration: 300 * time.Millisecond})
	m.Event(supervisor.Event{Kind: supervisor.EventReload, OK: true, Duration: 700 * time.Millisecond})
	m.Event(supervisor.Event{Kind: supervisor.EventReload, OK: false, Duration: 2 * time.Second})
	m.Event(supervisor.Event{Kind: supervisor.EventRestart, Slot: 1})
	m.Event(supervisor.Event{Kind: supervisor.EventExit, OK: false})
	m.Event(supervisor.Event{Kind: supervisor.EventExit, Reason: supervisor.ExitRecycled})
	m.Event(supervisor.Event{Kind: supervisor.EventRecycle, Reason: supervisor.RecycleExited})
	m.Event(supervisor.Event{Kind: supervisor.EventRecycle, Reason: supervisor.RecycleMaxRSS})
	m.Event(supervisor.Event{Kind: supervisor.EventHandoff, Count: 5})
	mf := scrape(t, m.Handler())

	want := map[string]map[string]float64{
		"baton_build_info":                        {"version=v1.2.3": 1},
		"baton_start_time_seconds":                {"": 1700000000},
		"baton_generation":                        {"": 3},
		"baton_workers_started_total":             {"": 7},
		"baton_upgrades_total":                    {"": 2},
		"baton_listener_info":                     {"address=127.0.0.1:8080,kind=stream,listener=http": 1, "address=127.0.0.1:53,kind=datagram,listener=dns": 1},
		"baton_listener_backlog":                  {"listener=http": 64},
		"baton_udp_flows_kept":                    {"listener=dns": 1},
		"baton_udp_flows":                         {"generation=2,listener=dns": 4, "generation=3,listener=dns": 6},
		"baton_udp_flow_capacity":                 {"listener=dns": 1024},
		"baton_udp_flow_evictions_total":          {"listener=dns": 3},
		"baton_udp_flow_datagrams_total":          {"listener=dns,path=known": 100, "listener=dns,path=new": 10, "listener=dns,path=moved": 2, "listener=dns,path=fallback": 1},
		"baton_udp_flow_draining_datagrams_total": {"listener=dns": 40},
		"baton_udp_flow_program_runs_total":       {"listener=dns": 113},
		"baton_udp_flow_program_seconds_total":    {"listener=dns": 2},
		"baton_workers":                           {"state=ready": 2, "state=draining": 1, "state=starting": 1},
		"baton_worker_resident_memory_bytes":      {"generation=3,slot=0": 100 << 20, "generation=3,slot=1": 30 << 20, "generation=2,slot=0": 50 << 20},
		"baton_worker_cpu_seconds_total":          {"generation=3,slot=0": 2.5, "generation=3,slot=1": 1, "generation=2,slot=0": 7},
		"baton_accept_queue_connections":          {"listener=http,slot=0": 3, "listener=http,slot=1": 0},
		"baton_accept_queue_max_connections":      {"listener=http,slot=0": 64, "listener=http,slot=1": 64},
		"baton_socket_receive_queue_bytes":        {"listener=dns,slot=": 768},
		"baton_connections":                       {"listener=http,state=ESTAB": 12, "listener=http,state=TIME-WAIT": 4},
		"baton_worker_connections": {
			"generation=3,slot=0,state=ESTAB": 5, "generation=3,slot=1,state=ESTAB": 4,
			"generation=3,slot=1,state=CLOSE-WAIT": 2, "generation=2,slot=0,state=ESTAB": 1,
		},
		"baton_worker_open_fds": {"generation=3,slot=0": 20, "generation=3,slot=1": 30, "generation=2,slot=0": 9},
		"baton_warnings": {
			"code=backlog_clamped": 0, "code=backlog_lowered": 0, "code=accept_queue_full": 0, "code=listen_overflows": 0,
			"code=nofile_default": 2, "code=nofile_headroom": 0, "code=close_wait": 1, "code=time_wait": 0,
			"code=not_accepting": 0, "code=wrapper_without_exec": 0, "code=binds_own_port": 0, "code=crash_loop": 0,
		},
		"baton_degraded":                        {"": 0},
		"baton_kernel_view_errors":              {"": 1},
		"baton_host_somaxconn":                  {"": 4096},
		"baton_host_tcp_max_tw_buckets":         {"": 131072},
		"baton_host_tcp_listen_overflows_total": {"": 17},
		"baton_host_tcp_listen_drops_total":     {"": 18},
		"baton_host_tcp_in_use_sockets":         {"": 7},
		"baton_host_tcp_orphan_sockets":         {"": 1},
		"baton_host_tcp_time_wait_sockets":      {"": 4},
		"baton_host_tcp_allocated_sockets":      {"": 9},
		"baton_host_tcp_memory_bytes":           {"": float64(2 * os.Getpagesize())},
		"baton_reloads_total":                   {"result=ok": 2, "result=failed": 1},
		"baton_reload_duration_seconds":         {"": 3},
		"baton_worker_restarts_total":           {"slot=1": 1},
		"baton_worker_exits_total":              {"reason=crashed": 1, "reason=stopped": 0, "reason=recycled": 1},
		"baton_worker_recycles_total":           {"reason=exited": 1, "reason=max_rss": 1, "reason=max_uptime": 0},
		"baton_handoffs_total":                  {"": 1},
		"baton_handoff_connections_total":       {"": 5},
	}
	for name, w := range want {
		if diff := cmp.Diff(w, series(mf[name])); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	maxFDs := series(mf["baton_worker_max_fds"])
	if maxFDs["generation=3,slot=0"] != 1024 || maxFDs["generation=3,slot=1"] < 1e308 {
		t.Errorf("baton_worker_max_fds %v: want 1024 and +Inf for unlimited", maxFDs)
	}
	h := mf["baton_reload_duration_seconds"].Metric[0].Histogram
	if h.GetSampleSum() != 3 {
		t.Errorf("reload duration sum %v, want 3", h.GetSampleSum())
	}
	for _, name := range []string{"go_goroutines", "process_open_fds"} {
		if mf[name] == nil {
			t.Errorf("no %s: the Go and process collectors are missing", name)
		}
	}
	for name, f := range mf {
		if strings.HasPrefix(name, "baton_") && strings.HasSuffix(name, "_total") && f.GetType() != dto.MetricType_COUNTER {
			t.Errorf("%s is a %v, want a counter", name, f.GetType())
		}
	}
}

// Two live workers in one slot and generation (which the supervisor
// should never have) would make a duplicate series and fail the scrape;
// they are summed instead.
func TestScrapeSumsDuplicates(t *testing.T) {
	st := fakeStatus()
	st.Kernel.Workers = append(st.Kernel.Workers, inspect.WorkerView{PID: 12, Slot: 1, Generation: 3, FDs: 1, FDLimit: 10, Connections: map[string]int{"ESTAB": 1}})
	m := New("dev", func(context.Context) (supervisor.Status, bool) { return st, true })
	mf := scrape(t, m.Handler())
	if got := series(mf["baton_worker_connections"])["generation=3,slot=1,state=ESTAB"]; got != 5 {
		t.Errorf("summed connections %v, want 5", got)
	}
}

// baton_degraded is 1 when baton status would exit 3: for a slot without
// a worker, and for a warning of severity degraded.
func TestScrapeDegraded(t *testing.T) {
	tests := []struct {
		name   string
		change func(*supervisor.Status)
		want   float64
	}{
		{"healthy", func(*supervisor.Status) {}, 0},
		{"a slot in backoff", func(st *supervisor.Status) {
			st.SlotStates = []supervisor.SlotStatus{{Slot: 0, State: supervisor.SlotUp}, {Slot: 1, State: supervisor.SlotBackoff}}
		}, 1},
		{"nobody accepts", func(st *supervisor.Status) {
			st.Kernel.Warnings = append(st.Kernel.Warnings, inspect.Warning{Code: inspect.NotAccepting, Listener: "http", Severity: inspect.SeverityDegraded})
		}, 1},
		{"a warning that does not degrade", func(st *supervisor.Status) {
			st.Kernel.Warnings = append(st.Kernel.Warnings, inspect.Warning{Code: inspect.WrapperWithoutExec, Severity: inspect.SeverityWarning})
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := fakeStatus()
			tt.change(&st)
			m := New("dev", func(context.Context) (supervisor.Status, bool) { return st, true })
			mf := scrape(t, m.Handler())
			if got := series(mf["baton_degraded"])[""]; got != tt.want {
				t.Errorf("baton_degraded = %v, want %v", got, tt.want)
			}
		})
	}
}

// Once baton has finished, a scrape still answers with the counters.
func TestScrapeAfterStop(t *testing.T) {
	m := New("dev", func(context.Context) (supervisor.Status, bool) { return supervisor.Status{}, false })
	mf := scrape(t, m.Handler())
	if mf["baton_build_info"] == nil || mf["baton_reload_duration_seconds"] == nil || mf["baton_workers"] != nil {
		t.Errorf("families after stop: %v", keys(mf))
	}
}

func keys(mf map[string]*dto.MetricFamily) []string {
	var k []string
	for n := range mf {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// docs/metrics.md documents every baton_* metric, and nothing else.
func TestEveryMetricDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(baton_[a-z_]+)`").FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
	}
	m := New("dev", func(context.Context) (supervisor.Status, bool) { return fakeStatus(), true })
	m.Event(supervisor.Event{Kind: supervisor.EventRestart})
	st := fakeStatus()
	for name := range netstatMetrics {
		st.Kernel.Host.Netstat[name] = 1
	}
	m.status = func(context.Context) (supervisor.Status, bool) { return st, true }
	mf := scrape(t, m.Handler())
	for name := range mf {
		if strings.HasPrefix(name, "baton_") && !documented[name] {
			t.Errorf("%s is not in docs/metrics.md", name)
		}
		delete(documented, name)
	}
	for name := range documented {
		t.Errorf("docs/metrics.md documents %s, which baton does not export", name)
	}
}

func TestListenErrors(t *testing.T) {
	srv, err := Listen("127.0.0.1:0", http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, err = Listen(srv.Addr().String(), http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "choose another --metrics address") {
		t.Errorf("second Listen on %s: %v", srv.Addr(), err)
	}
}

// A server closed before it served releases its port.
func TestCloseUnserved(t *testing.T) {
	srv, err := Listen("127.0.0.1:0", http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr().String()
	srv.Close()
	again, err := Listen(addr, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("the port of a closed server is still taken: %v", err)
	}
	again.Close()
}
