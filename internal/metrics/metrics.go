package metrics

import (
	"context"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/supervisor"
)

// StatusFunc returns a snapshot with the kernel's view
// (supervisor.KernelStatus), or false once baton has finished.
type StatusFunc func(context.Context) (supervisor.Status, bool)

// Metrics is baton's metrics in a registry of their own: counters fed by
// supervisor events, and gauges read from a status snapshot at each
// scrape. Create it with New.
type Metrics struct {
	reg    *prometheus.Registry
	status StatusFunc

	reloadDuration prometheus.Histogram
	restarts       *prometheus.CounterVec
	exits          *prometheus.CounterVec
	recycles       *prometheus.CounterVec
	handoffs       prometheus.Counter
	handoffConns   prometheus.Counter
}

// ScrapeTimeout bounds the status snapshot and kernel view one scrape
// waits for.
const ScrapeTimeout = 10 * time.Second

// New makes the registry: baton's metrics, read through status at each
// scrape, and the standard Go runtime and process collectors (go_*,
// process_*). status may be set up to the first scrape (it may refer to
// a supervisor created after New, whose Options.Events is m.Event).
func New(version string, status StatusFunc) *Metrics {
	m := &Metrics{
		reg:    prometheus.NewRegistry(),
		status: status,
		reloadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "baton_reload_duration_seconds",
			Help:    "How long reloads took, from the request until the new generation was ready (or the reload failed).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baton_worker_restarts_total",
			Help: "Restarts of a slot's worker after a failure (it crashed, exited 0 within 100ms of its start, or missed its readiness deadline), by slot; recycling is counted in baton_worker_recycles_total.",
		}, []string{"slot"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baton_worker_exits_total",
			Help: "Worker exits, by reason: stopped (baton asked it to), crashed (it exited on its own with a status other than 0, a signal, or 0 within 100ms) or recycled (it exited 0 on its own after a while).",
		}, []string{"reason"}),
		recycles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baton_worker_recycles_total",
			Help: "Workers recycled, by reason: exited (it exited 0 on its own and was restarted at once), max_rss or max_uptime (baton replaced it).",
		}, []string{"reason"}),
		handoffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baton_handoffs_total",
			Help: "Handoffs of live connections from a draining worker to the next generation.",
		}),
		handoffConns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baton_handoff_connections_total",
			Help: "Live connections handed from draining workers to the next generation.",
		}),
	}
	for _, r := range []string{supervisor.ExitStopped, supervisor.ExitCrashed, supervisor.ExitRecycled} {
		m.exits.WithLabelValues(r)
	}
	for _, r := range []string{supervisor.RecycleExited, supervisor.RecycleMaxRSS, supervisor.RecycleMaxUptime} {
		m.recycles.WithLabelValues(r)
	}
	m.reg.MustRegister(
		m.reloadDuration, m.restarts, m.exits, m.recycles, m.handoffs, m.handoffConns,
		&snapshotCollector{m: m, version: version},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Registry is the private registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Event counts a supervisor event. It only updates atomic counters, so it
// never blocks the supervisor's loop: use it as supervisor.Options.Events.
func (m *Metrics) Event(e supervisor.Event) {
	switch e.Kind {
	case supervisor.EventReload:
		m.reloadDuration.Observe(e.Duration.Seconds())
	case supervisor.EventRestart:
		m.restarts.WithLabelValues(strconv.Itoa(e.Slot)).Inc()
	case supervisor.EventExit:
		reason := e.Reason
		if reason == "" { // an event of before reasons
			reason = supervisor.ExitCrashed
			if e.OK {
				reason = supervisor.ExitStopped
			}
		}
		m.exits.WithLabelValues(reason).Inc()
	case supervisor.EventRecycle:
		m.recycles.WithLabelValues(e.Reason).Inc()
	case supervisor.EventHandoff:
		m.handoffs.Inc()
		m.handoffConns.Add(float64(e.Count))
	}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The metrics read from the snapshot at each scrape. docs/metrics.md
// documents each; keep the two in step.
var (
	descBuildInfo  = desc("baton_build_info", "Always 1; the version label says which baton runs.", "version")
	descStartTime  = desc("baton_start_time_seconds", "When baton started, in seconds since the Unix epoch.")
	descGeneration = desc("baton_generation", "The worker generation serving now.")
	descListener   = desc("baton_listener_info", "Always 1, one series per listener baton holds, with its kind (stream or datagram) and bound address.", "listener", "kind", "address")
	descBacklog    = desc("baton_listener_backlog", "The backlog baton gave listen(2) for a stream listener; the kernel caps it at net.core.somaxconn.", "listener")
	descFlowsKept  = desc("baton_udp_flows_kept", "1 when a UDP listener's peers stay with their worker across reloads (docs/udp.md), 0 when they are not kept (baton status says why).", "listener")
	descFlows      = desc("baton_udp_flows", "UDP peers a listener's steering program keeps on a generation's sockets.", "listener", "generation")
	descFlowCap    = desc("baton_udp_flow_capacity", "The size of a UDP listener's flow table: past it the least recently seen peers are forgotten.", "listener")
	descFlowEvict  = desc("baton_udp_flow_evictions_total", "An estimate of the peers a UDP listener's flow table forgot to make room (peers recorded less peers held).", "listener")
	descFlowDgrams = desc("baton_udp_flow_datagrams_total", "Datagrams a UDP listener's steering program handled, by path: known (a known peer to its socket), new (a new peer to a serving socket), moved (a peer whose socket had gone), fallback (no serving socket: the kernel's hash chose), quic (a QUIC packet to the socket its connection ID names, flows=quic).", "listener", "path")
	descFlowDrain  = desc("baton_udp_flow_draining_datagrams_total", "Datagrams steered to generations that no longer served: the peers old workers kept while they drained.", "listener")
	descFlowRuns   = desc("baton_udp_flow_program_runs_total", "Runs of a UDP listener's steering program (the kernel's BPF statistics: 0 unless kernel.bpf_stats_enabled is 1).", "listener")
	descFlowTime   = desc("baton_udp_flow_program_seconds_total", "Time a UDP listener's steering program ran (the kernel's BPF statistics: 0 unless kernel.bpf_stats_enabled is 1).", "listener")
	descWorkers    = desc("baton_workers", "Live workers by state: starting, ready or draining.", "state")
	descWorkerRSS  = desc("baton_worker_resident_memory_bytes", "A worker's resident memory (/proc/PID/stat rss), as baton read it in the last second; a slot's two workers of one generation (while baton replaces one) are summed.", "slot", "generation")
	descWorkerCPU  = desc("baton_worker_cpu_seconds_total", "User and system CPU time a worker has used (/proc/PID/stat utime and stime), as baton read it in the last second; a slot's two workers of one generation are summed.", "slot", "generation")
	descStarted    = desc("baton_workers_started_total", "Worker processes started since baton started.")
	descReloads    = desc("baton_reloads_total", "Reloads finished since baton started, by result: ok (the new generation took over) or failed (the old one kept serving).", "result")
	descUpgrades   = desc("baton_upgrades_total", "Times baton re-executed itself in place (baton upgrade, SIGUSR2) since it started.")

	descQueue      = desc("baton_accept_queue_connections", "Connections waiting in a listening socket's accept queue (ss Recv-Q). slot is empty for a socket all workers share.", "listener", "slot")
	descQueueMax   = desc("baton_accept_queue_max_connections", "The accept queue's maximum, min(backlog, net.core.somaxconn) (ss Send-Q); the kernel queues one more before it drops.", "listener", "slot")
	descRecvBytes  = desc("baton_socket_receive_queue_bytes", "Memory charged to a UDP socket's receive queue (ss Recv-Q); datagrams are dropped when it reaches SO_RCVBUF.", "listener", "slot")
	descConns      = desc("baton_connections", "TCP sockets on a listener's address and port by state (ss names: ESTAB, SYN-RECV, CLOSE-WAIT, TIME-WAIT, ...), listening sockets left out.", "listener", "state")
	descWorkerConn = desc("baton_worker_connections", "TCP connections on baton's listeners held by a worker, by state.", "slot", "generation", "state")
	descOpenFDs    = desc("baton_worker_open_fds", "Descriptors a worker has open.", "slot", "generation")
	descMaxFDs     = desc("baton_worker_max_fds", "A worker's soft RLIMIT_NOFILE (+Inf when unlimited).", "slot", "generation")
	descWarnings   = desc("baton_warnings", "Warnings active now, by code (see baton status).", "code")
	descDegraded   = desc("baton_degraded", "1 while the service is degraded (baton status exits 3): a slot has no worker, or a warning of severity degraded is active (not_accepting, crash_loop, binds_own_port); else 0.")
	descViewTime   = desc("baton_kernel_view_duration_seconds", "How long asking the kernel for this scrape's view took.")
	descViewErrors = desc("baton_kernel_view_errors", "Questions the kernel did not answer for this scrape's view (see baton status --json, kernel.errors).")

	descSomaxconn = desc("baton_host_somaxconn", "net.core.somaxconn, the cap on every listen backlog.")
	descMaxTW     = desc("baton_host_tcp_max_tw_buckets", "net.ipv4.tcp_max_tw_buckets, past which the kernel drops TIME-WAIT state early.")
	descInUse     = desc("baton_host_tcp_in_use_sockets", "TCP sockets in use on the host, IPv4 and IPv6 (/proc/net/sockstat and sockstat6 inuse).")
	descOrphan    = desc("baton_host_tcp_orphan_sockets", "TCP sockets no process holds any more (/proc/net/sockstat orphan).")
	descTW        = desc("baton_host_tcp_time_wait_sockets", "TCP sockets in TIME-WAIT on the host (/proc/net/sockstat tw).")
	descAlloc     = desc("baton_host_tcp_allocated_sockets", "TCP sockets allocated on the host (/proc/net/sockstat alloc).")
	descTCPMem    = desc("baton_host_tcp_memory_bytes", "Memory the host's TCP sockets use (/proc/net/sockstat mem, in pages, times the page size).")
)

// netstatMetrics maps the TcpExt counters of inspect.Host.Netstat to
// counter metrics.
var netstatMetrics = map[string]*prometheus.Desc{
	"ListenOverflows":      desc("baton_host_tcp_listen_overflows_total", "TcpExt ListenOverflows: connections dropped because an accept queue was full, on the whole host since boot."),
	"ListenDrops":          desc("baton_host_tcp_listen_drops_total", "TcpExt ListenDrops: connections a listening socket dropped for any reason (overflows included), host-wide since boot."),
	"SyncookiesSent":       desc("baton_host_tcp_syncookies_sent_total", "TcpExt SyncookiesSent: SYN cookies sent because a SYN queue was full."),
	"SyncookiesRecv":       desc("baton_host_tcp_syncookies_recv_total", "TcpExt SyncookiesRecv: valid SYN cookies received back."),
	"SyncookiesFailed":     desc("baton_host_tcp_syncookies_failed_total", "TcpExt SyncookiesFailed: SYN cookies received back that did not check out."),
	"TCPReqQFullDrop":      desc("baton_host_tcp_reqq_full_drops_total", "TcpExt TCPReqQFullDrop: SYNs dropped because a SYN queue was full and SYN cookies were off."),
	"TCPReqQFullDoCookies": desc("baton_host_tcp_reqq_full_cookies_total", "TcpExt TCPReqQFullDoCookies: SYNs answered with a SYN cookie because a SYN queue was full."),
	"TCPMigrateReqSuccess": desc("baton_host_tcp_migrate_req_success_total", "TcpExt TCPMigrateReqSuccess: requests moved to another SO_REUSEPORT socket when one closed (net.ipv4.tcp_migrate_req)."),
	"TCPMigrateReqFailure": desc("baton_host_tcp_migrate_req_failure_total", "TcpExt TCPMigrateReqFailure: requests that could not be moved when a SO_REUSEPORT socket closed."),
	"TCPTimeWaitOverflow":  desc("baton_host_tcp_time_wait_overflows_total", "TcpExt TCPTimeWaitOverflow: TIME-WAIT sockets not created because tcp_max_tw_buckets was reached."),
}

// snapshotCollector reads a status snapshot with the kernel's view at
// each scrape.
type snapshotCollector struct {
	m       *Metrics
	version string
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descBuildInfo, descStartTime, descGeneration, descListener, descBacklog, descWorkers, descStarted, descUpgrades, descReloads,
		descWorkerRSS, descWorkerCPU,
		descQueue, descQueueMax, descRecvBytes, descConns, descWorkerConn, descOpenFDs, descMaxFDs,
		descWarnings, descDegraded, descViewTime, descViewErrors,
		descSomaxconn, descMaxTW, descInUse, descOrphan, descTW, descAlloc, descTCPMem,
	} {
		ch <- d
	}
	for _, d := range netstatMetrics {
		ch <- d
	}
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descBuildInfo, 1, c.version)
	if c.m.status == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), ScrapeTimeout)
	defer cancel()
	st, ok := c.m.status(ctx)
	if !ok {
		return
	}
	gauge(descStartTime, float64(st.Started.UnixNano())/1e9)
	gauge(descGeneration, float64(st.Generation))
	counter(descStarted, float64(st.WorkersTotal))
	counter(descUpgrades, float64(st.Upgrades))
	counter(descReloads, float64(st.Reloads.OK), "ok")
	counter(descReloads, float64(st.Reloads.Failed), "failed")
	for _, l := range st.Listeners {
		gauge(descListener, 1, l.Name, l.Kind, l.Address)
		if l.Backlog > 0 {
			gauge(descBacklog, float64(l.Backlog), l.Name)
		}
		if f := l.Flows; f != nil {
			kept := 0.0
			if f.Kept {
				kept = 1
			}
			gauge(descFlowsKept, kept, l.Name)
			if f.Kept {
				for _, g := range f.Generations {
					gauge(descFlows, float64(g.Flows), l.Name, strconv.Itoa(g.Generation))
				}
				gauge(descFlowCap, float64(f.Capacity), l.Name)
				counter(descFlowEvict, float64(f.Evicted), l.Name)
				paths := map[string]uint64{"known": f.Known, "new": f.New, "moved": f.Moved, "fallback": f.Fallback}
				if f.Mode == "quic" {
					paths["quic"] = f.QUIC
				}
				for path, n := range paths {
					counter(descFlowDgrams, float64(n), l.Name, path)
				}
				counter(descFlowDrain, float64(f.Draining), l.Name)
				counter(descFlowRuns, float64(f.ProgramRuns), l.Name)
				counter(descFlowTime, float64(f.ProgramNS)/1e9, l.Name)
			}
		}
	}
	states := map[string]int{string(supervisor.Starting): 0, string(supervisor.Ready): 0, string(supervisor.Draining): 0}
	for _, w := range st.Workers {
		states[string(w.State)]++
	}
	for s, n := range states {
		gauge(descWorkers, float64(n), s)
	}
	collectWorkers(st.Workers, gauge, counter)
	degraded := 0.0
	if api.HealthOf(&st).Degraded() {
		degraded = 1
	}
	gauge(descDegraded, degraded)
	if st.Kernel != nil {
		collectKernel(st.Kernel, gauge, counter)
	}
}

// collectKernel turns the kernel's view into metrics. Series that could
// repeat a label set (two live workers of one slot and generation) are
// summed, so a scrape never fails on a duplicate.
func collectKernel(v *inspect.View, gauge, counter func(*prometheus.Desc, float64, ...string)) {
	type key struct{ a, b, c string }
	sums := map[*prometheus.Desc]map[key]float64{}
	add := func(d *prometheus.Desc, k key, n float64) {
		if sums[d] == nil {
			sums[d] = map[key]float64{}
		}
		sums[d][k] += n
	}
	for _, l := range v.Listeners {
		for _, s := range l.Sockets {
			slot := ""
			if s.Slot != nil {
				slot = strconv.Itoa(*s.Slot)
			}
			switch {
			case s.Listening():
				add(descQueue, key{l.Name, slot, ""}, float64(s.RecvQ))
				add(descQueueMax, key{l.Name, slot, ""}, float64(s.SendQ))
			case l.Protocol == inspect.UDP && s.State != "":
				add(descRecvBytes, key{l.Name, slot, ""}, float64(s.RecvQ))
			}
		}
		for state, n := range l.Connections {
			add(descConns, key{l.Name, state, ""}, float64(n))
		}
	}
	for _, w := range v.Workers {
		slot, gen := strconv.Itoa(w.Slot), strconv.Itoa(w.Generation)
		for state, n := range w.Connections {
			add(descWorkerConn, key{slot, gen, state}, float64(n))
		}
		if w.FDLimit != 0 {
			add(descOpenFDs, key{slot, gen, ""}, float64(w.FDs))
			limit := float64(w.FDLimit)
			if w.FDLimit < 0 {
				limit = posInf
			}
			add(descMaxFDs, key{slot, gen, ""}, limit)
		}
	}
	active := map[inspect.Code]int{}
	for _, w := range v.Warnings {
		active[w.Code]++
	}
	for _, code := range inspect.Codes {
		add(descWarnings, key{string(code), "", ""}, float64(active[code]))
	}
	for d, series := range sums {
		n := labelCount[d]
		for k, val := range series {
			gauge(d, val, []string{k.a, k.b, k.c}[:n]...)
		}
	}
	gauge(descViewTime, v.Took)
	gauge(descViewErrors, float64(len(v.Errors)))

	h := v.Host
	if h.Somaxconn > 0 {
		gauge(descSomaxconn, float64(h.Somaxconn))
	}
	if h.MaxTimeWait > 0 {
		gauge(descMaxTW, float64(h.MaxTimeWait))
	}
	for name, n := range h.Netstat {
		if d, ok := netstatMetrics[name]; ok {
			counter(d, float64(n))
		}
	}
	if tcp, ok := h.Sockstat["TCP"]; ok {
		gauge(descInUse, float64(tcp["inuse"]+h.Sockstat["TCP6"]["inuse"]))
		gauge(descOrphan, float64(tcp["orphan"]))
		gauge(descTW, float64(tcp["tw"]))
		gauge(descAlloc, float64(tcp["alloc"]))
		gauge(descTCPMem, float64(tcp["mem"])*float64(os.Getpagesize()))
	}
}

// collectWorkers exports what baton read of each worker in /proc. Two
// live workers of one slot and generation (the old one and its
// replacement while baton recycles it) are summed into one series.
func collectWorkers(ws []supervisor.WorkerStatus, gauge, counter func(*prometheus.Desc, float64, ...string)) {
	type key struct{ slot, gen int }
	rss, cpu := map[key]float64{}, map[key]float64{}
	for _, w := range ws {
		if w.RSSBytes == 0 {
			continue // not read yet
		}
		k := key{w.Slot, w.Generation}
		rss[k] += float64(w.RSSBytes)
		cpu[k] += w.CPUSeconds
	}
	for k, v := range rss {
		gauge(descWorkerRSS, v, strconv.Itoa(k.slot), strconv.Itoa(k.gen))
		counter(descWorkerCPU, cpu[k], strconv.Itoa(k.slot), strconv.Itoa(k.gen))
	}
}

var posInf = math.Inf(1)

// labelCount is how many labels each summed metric has.
var labelCount = map[*prometheus.Desc]int{
	descQueue: 2, descQueueMax: 2, descRecvBytes: 2, descConns: 2,
	descWorkerConn: 3, descOpenFDs: 2, descMaxFDs: 2, descWarnings: 1,
}
