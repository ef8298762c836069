package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/supervisor"
)

// The kernel's view, end to end: real workers that misbehave in the
// classic ways, real connections on loopback, and baton's status, log and
// metrics checked against what the kernel (and ss) says.

// waitStatus polls the status until cond holds, for at most 30 seconds;
// the kernel finishes handshakes and closes on loopback asynchronously.
// It waits for a state; it times nothing.
func (b *instance) waitStatus(what string, cond func(supervisor.Status) bool) supervisor.Status {
	b.t.Helper()
	var st, last supervisor.Status
	err := batontest.Wait(30*time.Second, func() error {
		var err error
		if st, err = b.tryStatus(); err != nil {
			return fmt.Errorf("waiting for %s: status: %w", what, err)
		}
		if !cond(st) {
			last = st
			return fmt.Errorf("waiting for %s", what)
		}
		return nil
	})
	if err != nil {
		var kernel any = last.Kernel
		if last.Kernel != nil {
			kernel = *last.Kernel
		}
		b.t.Fatalf("%v; last kernel view: %+v\nbaton output:\n%s", err, kernel, b.log)
	}
	return st
}

func warningOf(st supervisor.Status, code inspect.Code) *inspect.Warning {
	if st.Kernel == nil {
		return nil
	}
	for i, w := range st.Kernel.Warnings {
		if w.Code == code {
			return &st.Kernel.Warnings[i]
		}
	}
	return nil
}

func kernelWorker(st supervisor.Status, pid int) inspect.WorkerView {
	if st.Kernel != nil {
		for _, w := range st.Kernel.Workers {
			if w.PID == pid {
				return w
			}
		}
	}
	return inspect.WorkerView{}
}

func firstSocket(st supervisor.Status) inspect.SocketView {
	if st.Kernel == nil || len(st.Kernel.Listeners) == 0 || len(st.Kernel.Listeners[0].Sockets) == 0 {
		return inspect.SocketView{}
	}
	return st.Kernel.Listeners[0].Sockets[0]
}

// waitLog waits until baton's log holds s.
func (b *instance) waitLog(s string) {
	b.t.Helper()
	err := batontest.Wait(30*time.Second, func() error {
		if !strings.Contains(b.log.String(), s) {
			return fmt.Errorf("baton's log has no %q", s)
		}
		return nil
	})
	if err != nil {
		b.t.Fatalf("%v:\n%s", err, b.log)
	}
}

// logHas reports whether baton's log holds s, waiting up to 10s for it:
// baton writes its log from a goroutine of its own, so a line about what
// just happened may still be on its way.
func (b *instance) logHas(s string) bool {
	return b.logCount(s, 1) >= 1
}

// logCount counts the times s appears in baton's log, waiting up to 10s
// for at least want of them.
func (b *instance) logCount(s string, want int) int {
	n := 0
	// Not there in time: the caller says what it expected of n.
	batontest.Wait(10*time.Second, func() error {
		if n = strings.Count(b.log.String(), s); n < want {
			return errors.New("not yet")
		}
		return nil
	})
	return n
}

// dialHeld opens n connections to addr and closes them when the test ends.
func dialHeld(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("connection %d of %d to %s: %v", i+1, n, addr, err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// ssListenQueue returns what `ss -ltn` shows as Recv-Q and Send-Q for the
// listening socket with the inode; false when ss is not installed.
func ssListenQueue(t *testing.T, port int, ino uint64) (recvQ, sendQ int, ok bool) {
	t.Helper()
	if _, err := exec.LookPath("ss"); err != nil {
		t.Log("ss (iproute2) is not installed: the queue is not compared with it")
		return 0, 0, false
	}
	out, err := exec.Command("ss", "-Hltne", fmt.Sprintf("( sport = :%d )", port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.Contains(line, " ino:"+strconv.FormatUint(ino, 10)+" ") {
			continue
		}
		r, err1 := strconv.Atoi(f[1])
		s, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			t.Fatalf("ss line %q: Recv-Q and Send-Q are not numbers", line)
		}
		return r, s, true
	}
	t.Fatalf("ss -ltne does not show inode %d on port %d:\n%s", ino, port, out)
	return 0, 0, false
}

// A worker that stops accepting while a client opens K connections: the
// status reports queue depth K, equal to the Recv-Q ss shows for that
// socket, and warns once the queue is above 80% full.
func TestStatusAcceptQueueMatchesSS(t *testing.T) {
	requireE2E(t)
	const backlog, k = 10, 9
	b := startBaton(t, []string{workerEnv + "=stall"},
		"-l", fmt.Sprintf("http=tcp://127.0.0.1:0?backlog=%d", backlog), "-n", "1", "--ready", "notify", "--", testBin)
	st := b.waitReady(1)
	l := st.Listeners[0]
	dialHeld(t, l.Address, k)

	st = b.waitStatus(fmt.Sprintf("%d connections in the accept queue", k), func(st supervisor.Status) bool {
		return firstSocket(st).RecvQ == k
	})
	sock := firstSocket(st)
	if sock.State != "LISTEN" || sock.SendQ != backlog || sock.Inode != l.Inode || sock.Slot != nil {
		t.Errorf("socket %+v: want LISTEN, send_q %d, inode %d, shared", sock, backlog, l.Inode)
	}
	if recvQ, sendQ, ok := ssListenQueue(t, l.Port, l.Inode); ok && (recvQ != int(sock.RecvQ) || sendQ != int(sock.SendQ)) {
		t.Errorf("ss shows Recv-Q %d Send-Q %d; baton status %d/%d", recvQ, sendQ, sock.RecvQ, sock.SendQ)
	}
	if n := st.Kernel.Listeners[0].Connections["ESTAB"]; n != k {
		t.Errorf("connections on the port %v: want %d ESTAB, all queued", st.Kernel.Listeners[0].Connections, k)
	}
	if held := kernelWorker(st, st.Workers[0].PID).Connections; len(held) != 0 {
		t.Errorf("the stalled worker holds %v; it accepted nothing", held)
	}
	w := warningOf(st, inspect.AcceptQueueFull)
	if w == nil || w.Listener != "http" || !strings.Contains(w.Message, fmt.Sprintf("accept queue holds %d connections of at most %d (90%%)", k, backlog)) {
		t.Errorf("accept_queue_full warning %+v; all warnings %+v", w, st.Kernel.Warnings)
	}
	b.waitLog("warning=accept_queue_full listener=http")

	// The stalled worker accepts nothing: once the connections have
	// waited --inspect-interval (10s), not_accepting makes status and top
	// exit 3 (degraded); a slow machine may get there.
	out, code := b.cli("status")
	if (code != 0 && code != 3) || !strings.Contains(out, fmt.Sprintf("%d/%d", k, backlog)) || !strings.Contains(out, "! accept_queue_full") {
		t.Errorf("baton status exited %d; want the queue %d/%d and the warning:\n%s", code, k, backlog, out)
	}
	// baton top prints one frame per interval when its output is not a
	// terminal.
	out, code = b.cli("top", "--interval", "50ms", "--count", "3")
	if (code != 0 && code != 3) || strings.Count(out, "baton top, every 50ms") != 3 || strings.Count(out, fmt.Sprintf("%d/%d", k, backlog)) != 3 ||
		!strings.Contains(out, "since the last frame: ListenOverflows +") {
		t.Errorf("baton top exited %d; want 3 frames with the queue:\n%s", code, out)
	}
}

// With balance=reuseport each slot's socket has its own accept queue: the
// status has a row per slot, each equal to what ss shows for that inode,
// and the metrics a series per slot.
func TestStatusPerSlotQueues(t *testing.T) {
	requireE2E(t)
	const slots, k = 3, 12
	b := startBaton(t, []string{workerEnv + "=stall"},
		"-l", "http=tcp://127.0.0.1:0?balance=reuseport&backlog=64", "-n", strconv.Itoa(slots), "--ready", "notify",
		"--metrics", "127.0.0.1:0", "--", testBin)
	st := b.waitReady(slots)
	l := st.Listeners[0]
	if len(l.Sockets) != slots {
		t.Fatalf("listener sockets %+v, want one per slot", l.Sockets)
	}
	// The kernel spreads connections over the group by a hash of the
	// client's address and port; k of them land somewhere.
	dialHeld(t, l.Address, k)
	st = b.waitStatus(fmt.Sprintf("%d connections queued over the slots", k), func(st supervisor.Status) bool {
		n := uint32(0)
		for _, s := range st.Kernel.Listeners[0].Sockets {
			n += s.RecvQ
		}
		return n == k
	})
	mf := scrapeMetrics(t, b.metricsAddr())
	socks := st.Kernel.Listeners[0].Sockets
	if len(socks) != slots {
		t.Fatalf("kernel view sockets %+v, want %d", socks, slots)
	}
	for i, s := range socks {
		want := l.Sockets[i]
		if s.Slot == nil || *s.Slot != want.Slot || s.Inode != want.Inode || s.State != "LISTEN" || s.SendQ != 64 {
			t.Errorf("socket %d: %+v, want slot %d inode %d LISTEN max 64", i, s, want.Slot, want.Inode)
			continue
		}
		if recvQ, sendQ, ok := ssListenQueue(t, l.Port, s.Inode); ok && (recvQ != int(s.RecvQ) || sendQ != int(s.SendQ)) {
			t.Errorf("slot %d: ss shows Recv-Q %d Send-Q %d; baton %d/%d", want.Slot, recvQ, sendQ, s.RecvQ, s.SendQ)
		}
		slot := "slot=" + strconv.Itoa(want.Slot)
		if v, ok := value(mf, "baton_accept_queue_connections", "listener=http", slot); !ok || v != float64(s.RecvQ) {
			t.Errorf("baton_accept_queue_connections{%s} = %v (present %v), want %d", slot, v, ok, s.RecvQ)
		}
	}
	out, _ := b.cli("status")
	if !strings.Contains(out, fmt.Sprintf("%d/%d", k, 64*slots)) || !strings.Contains(out, "SLOT  LISTENER  INODE") {
		t.Errorf("baton status lacks the summed queue %d/%d or the per-slot rows:\n%s", k, 64*slots, out)
	}
}

// `baton top` quits on a line "q" when its input is not a terminal.
func TestTopQuitsOnQ(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
	b.waitReady(1)
	cmd := exec.Command(batonBin, "top", "--control", b.ctl, "--interval", "50ms")
	var out logBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	err = batontest.Wait(30*time.Second, func() error {
		if n := strings.Count(out.String(), "baton top, every"); n < 2 {
			return fmt.Errorf("%d frames, want two", n)
		}
		return nil
	})
	if err != nil {
		cmd.Process.Kill()
		t.Fatalf("%v:\n%s", err, out.String())
	}
	io.WriteString(in, "q\n")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("baton top after q: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("baton top still running 30s after q:\n%s", out.String())
	}
}

// A worker that never closes accepted connections after the client
// closes: CLOSE-WAIT is counted on that worker, and the warning raised in
// the status and the log.
func TestCloseWaitCountedOnWorkerAndWarned(t *testing.T) {
	requireE2E(t)
	const k = 4
	b := startBaton(t, []string{workerEnv + "=leak"},
		"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--inspect-interval", "100ms", "--", testBin)
	st := b.waitReady(2)
	for _, c := range dialHeld(t, st.Listeners[0].Address, k) {
		if _, err := c.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	st = b.waitStatus(fmt.Sprintf("%d connections in CLOSE-WAIT on the workers, and the warning", k), func(st supervisor.Status) bool {
		n := 0
		for _, w := range st.Workers {
			n += kernelWorker(st, w.PID).Connections["CLOSE-WAIT"]
		}
		return n == k && warningOf(st, inspect.CloseWait) != nil
	})
	if n := st.Kernel.Listeners[0].Connections["CLOSE-WAIT"]; n != k {
		t.Errorf("CLOSE-WAIT on the port: %d, want %d", n, k)
	}
	// Every CLOSE-WAIT connection is on a worker that holds it, and every
	// such worker is warned about.
	warned := map[int]bool{}
	for _, w := range st.Kernel.Warnings {
		if w.Code == inspect.CloseWait {
			warned[w.PID] = true
			if w.Slot == nil || !strings.Contains(w.Message, "never called close()") {
				t.Errorf("warning %+v", w)
			}
		}
	}
	for _, w := range st.Workers {
		n := kernelWorker(st, w.PID).Connections["CLOSE-WAIT"]
		if n > 0 != warned[w.PID] {
			t.Errorf("worker pid %d holds %d CLOSE-WAIT connections; warned: %v", w.PID, n, warned[w.PID])
		}
		if n > 0 {
			b.waitLog(fmt.Sprintf("warning=close_wait slot=%d pid=%d", w.Slot, w.PID))
		}
	}
}

// A backlog larger than net.core.somaxconn: the clamp warning names the
// effective queue length and the sysctl.
func TestBacklogClampWarning(t *testing.T) {
	requireE2E(t)
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Skip("cannot read net.core.somaxconn:", err)
	}
	somaxconn, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || somaxconn <= 0 || somaxconn > 1<<30 {
		t.Skipf("net.core.somaxconn %q", b)
	}
	backlog := 2 * somaxconn
	inst := startBaton(t, nil, "-l", fmt.Sprintf("http=tcp://127.0.0.1:0?backlog=%d", backlog), "-n", "1", "--ready", "notify", "--", helloBin)
	inst.waitReady(1)
	st := inst.waitStatus("the clamp warning", func(st supervisor.Status) bool { return warningOf(st, inspect.BacklogClamped) != nil })
	if sock := firstSocket(st); int(sock.SendQ) != somaxconn {
		t.Errorf("the kernel's maximum %d, want somaxconn %d", sock.SendQ, somaxconn)
	}
	w := warningOf(st, inspect.BacklogClamped)
	for _, want := range []string{
		fmt.Sprintf("backlog %d is capped at %d by net.core.somaxconn", backlog, somaxconn),
		fmt.Sprintf("holds at most %d connections", somaxconn+1),
		fmt.Sprintf("sysctl -w net.core.somaxconn=%d", backlog),
	} {
		if !strings.Contains(w.Message, want) {
			t.Errorf("warning %q lacks %q", w.Message, want)
		}
	}
	inst.waitLog("warning=backlog_clamped listener=http")
}

// A worker at the 1024 default RLIMIT_NOFILE with 900 fds open: both fd
// warnings, on that worker.
func TestNofileWarnings(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, []string{workerEnv + "=fds", openFDs + "=900"},
		"-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", testBin)
	st := b.waitReady(1)
	pid := st.Workers[0].PID
	st = b.waitStatus("both fd warnings", func(st supervisor.Status) bool {
		return warningOf(st, inspect.NofileDefault) != nil && warningOf(st, inspect.NofileHeadroom) != nil
	})
	wv := kernelWorker(st, pid)
	if wv.FDLimit != 1024 || wv.FDs < 900 || wv.FDs > 1024 {
		t.Errorf("worker fds %d of %d; want 900 and more of 1024", wv.FDs, wv.FDLimit)
	}
	for _, code := range []inspect.Code{inspect.NofileDefault, inspect.NofileHeadroom} {
		if w := warningOf(st, code); w.PID != pid || w.Slot == nil || *w.Slot != 0 {
			t.Errorf("%s warning %+v, want it on pid %d slot 0", code, w, pid)
		}
	}
	if w := warningOf(st, inspect.NofileHeadroom); !strings.Contains(w.Message, "of its 1024 fds open") {
		t.Errorf("message %q", w.Message)
	}
	out, _ := b.cli("status")
	if !strings.Contains(out, "/1024") || !strings.Contains(out, "! nofile_default") {
		t.Errorf("baton status:\n%s", out)
	}
}

// metricsAddr finds the metrics address in baton's log.
func (b *instance) metricsAddr() string {
	b.t.Helper()
	re := regexp.MustCompile(`msg="serving metrics" address=(\S+)`)
	var addr string
	err := batontest.Wait(30*time.Second, func() error {
		m := re.FindStringSubmatch(b.log.String())
		if m == nil {
			return errors.New("baton did not log its metrics address")
		}
		addr = m[1]
		return nil
	})
	if err != nil {
		b.t.Fatalf("%v:\n%s", err, b.log)
	}
	return addr
}

// scrapeMetrics fetches and parses /metrics with the Prometheus text
// parser.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mf
}

// value returns the value of the series of family name whose labels
// include every one given ("k=v"), and whether there is one; several
// matching series add up.
func value(mf map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := mf[name]
	if f == nil {
		return 0, false
	}
	var sum float64
	found := false
	for _, m := range f.Metric {
		have := map[string]bool{}
		for _, l := range m.Label {
			have[l.GetName()+"="+l.GetValue()] = true
		}
		match := true
		for _, l := range labels {
			match = match && have[l]
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

// metricWant is a series expected in a scrape.
type metricWant struct {
	name   string
	labels []string // "k=v" that the series has (among others)
	v      float64
}

// The metrics endpoint, scraped and parsed with the Prometheus text
// parser: the snapshot gauges, and the counters a reload and a crash move.
func TestMetricsEndpoint(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?backlog=32", "-n", "2", "--ready", "notify", "--metrics", "127.0.0.1:0", "--", helloBin)
	st := b.waitReady(2)
	addr := b.metricsAddr()
	mf := scrapeMetrics(t, addr)
	want := []metricWant{
		{"baton_generation", nil, 1},
		{"baton_workers", []string{"state=ready"}, 2},
		{"baton_workers", []string{"state=draining"}, 0},
		{"baton_workers_started_total", nil, 2},
		{"baton_listener_info", []string{"listener=http", "kind=stream", "address=" + st.Listeners[0].Address}, 1},
		{"baton_listener_backlog", []string{"listener=http"}, 32},
		{"baton_accept_queue_connections", []string{"listener=http", "slot="}, 0},
		{"baton_accept_queue_max_connections", []string{"listener=http", "slot="}, 32},
		{"baton_reloads_total", []string{"result=ok"}, 0},
		{"baton_warnings", []string{"code=backlog_clamped"}, 0},
		{"baton_kernel_view_errors", nil, 0},
	}
	check := func(mf map[string]*dto.MetricFamily) {
		t.Helper()
		for _, w := range want {
			got, ok := value(mf, w.name, w.labels...)
			if !ok || got != w.v {
				t.Errorf("%s{%s} = %v (present: %v), want %v", w.name, strings.Join(w.labels, ","), got, ok, w.v)
			}
		}
	}
	check(mf)
	for _, name := range []string{"baton_host_somaxconn", "baton_host_tcp_listen_overflows_total", "baton_worker_open_fds", "baton_worker_max_fds", "go_goroutines", "process_open_fds"} {
		if mf[name] == nil {
			t.Errorf("no %s in the scrape", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// A reload and a crash show in the counters.
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload exited %d: %s", code, out)
	}
	st = b.waitReady(2)
	if err := killPID(st.Workers[0].PID); err != nil {
		t.Fatal(err)
	}
	b.waitStatus("the killed worker replaced", func(st supervisor.Status) bool {
		return settled(st, 2) && st.Workers[0].Restarts+st.Workers[1].Restarts == 1
	})
	want = append(want[:0],
		metricWant{"baton_generation", nil, 2},
		metricWant{"baton_reloads_total", []string{"result=ok"}, 1},
		metricWant{"baton_reload_duration_seconds", nil, 1},
		metricWant{"baton_worker_restarts_total", nil, 1},
		metricWant{"baton_worker_exits_total", []string{"reason=crashed"}, 1},
		metricWant{"baton_workers_started_total", nil, 5},
	)
	check(scrapeMetrics(t, addr))
	// The generation 1 workers exit after the reload; each counts once
	// as stopped, eventually.
	waitScrape(t, addr, "baton_worker_exits_total{reason=stopped} 2", func(mf map[string]*dto.MetricFamily) bool {
		v, _ := value(mf, "baton_worker_exits_total", "reason=stopped")
		return v == 2
	})
}

func TestMetricsFlagErrors(t *testing.T) {
	requireE2E(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dir := shortDir(t)
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"not an address", []string{"--metrics", "9100"}, 2, `--metrics: "9100": want HOST:PORT`},
		{"port in use", []string{"--metrics", held.Addr().String()}, 1, "address already in use: another process serves on it; choose another --metrics address"},
		{"negative interval", []string{"--inspect-interval", "-1s"}, 2, "--inspect-interval: -1s: want a duration"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			marker := dir + "/started"
			args := append([]string{"run", "--control", dir + "/ctl.sock", "-l", "tcp://127.0.0.1:0"}, tt.args...)
			out, code := runBaton(t, nil, append(args, "--", "/bin/sh", "-c", "touch "+marker)...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Errorf("exit %d, want %d; output lacks %q:\n%s", code, tt.code, tt.want, out)
			}
			if _, err := os.Stat(marker); err == nil {
				t.Errorf("a worker was started")
			}
		})
	}
}

// tryScrape is scrapeMetrics that reports failure instead of failing.
func tryScrape(addr string) (map[string]*dto.MetricFamily, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// waitScrape scrapes addr until cond holds on a parsed scrape, for at most
// 30 seconds.
func waitScrape(t *testing.T, addr, what string, cond func(map[string]*dto.MetricFamily) bool) {
	t.Helper()
	batontest.WaitFor(t, 30*time.Second, func() error {
		mf, err := tryScrape(addr)
		if err != nil {
			return fmt.Errorf("metrics at %s: waiting for %s: %w", addr, what, err)
		}
		if !cond(mf) {
			return fmt.Errorf("metrics at %s: waiting for %s", addr, what)
		}
		return nil
	})
}

// The metrics address outlives baton's process image: an upgrade binds it
// again, and an instance taking over serves it once the old one has let go.
func TestMetricsAcrossUpgradeAndTakeover(t *testing.T) {
	requireE2E(t)
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := []string{"-l", fmt.Sprintf("http=tcp://127.0.0.1:%d", freePort(t)), "-n", "2", "--ready", "notify", "--metrics", maddr, "--", helloBin}
	b := startBaton(t, nil, args...)
	b.waitReady(2)
	waitScrape(t, maddr, "2 ready workers", func(mf map[string]*dto.MetricFamily) bool {
		v, _ := value(mf, "baton_workers", "state=ready")
		return v == 2
	})

	if out, code := b.cli("upgrade", "--binary", newBinary(t, "baton-next")); code != 0 {
		t.Fatalf("upgrade: exit %d: %s", code, out)
	}
	b.waitReady(2)
	waitScrape(t, maddr, "the upgrade counted", func(mf map[string]*dto.MetricFamily) bool {
		v, _ := value(mf, "baton_upgrades_total")
		return v == 1
	})

	n := startTakeover(t, b, nil, args...)
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Errorf("old instance exited %d after the takeover, want 0", code)
	}
	st := n.waitReady(2)
	waitScrape(t, maddr, "the new instance's metrics", func(mf map[string]*dto.MetricFamily) bool {
		v, _ := value(mf, "baton_start_time_seconds")
		ready, _ := value(mf, "baton_workers", "state=ready")
		return v == float64(st.Started.UnixNano())/1e9 && ready == 2
	})
}
