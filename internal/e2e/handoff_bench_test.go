package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/supervisor"
)

// BenchmarkHandoffMove measures the move of every idle connection from
// one generation to the next: baton runs HANDOFF_BENCH_WORKERS hold
// workers (default 2) that accept HANDOFF_BENCH_CONNS connections
// (default 15,000) from this process; each iteration is one reload, timed
// from the first old worker's stop signal to the last adoption in the
// new generation (the workers' own clocks). It reports the move's
// duration, connections per second, and baton's peak resident memory
// during the move (VmHWM, reset before each). The clients are checked
// afterwards: each is answered by the new generation.
//
// Two kinds of worker: worker=go-library serves each connection in a
// goroutine and moves it with baton.Handoff and baton.Adopted, so the
// figure includes what a Go worker spends per connection (its goroutine,
// the poller, deadlines); worker=raw-fds holds plain descriptors and
// speaks the protocol itself, as an event-loop server in another language
// would, so the figure is the move itself: baton and the protocol.
//
//	go test -run '^$' -bench HandoffMove -benchtime 5x ./internal/e2e
//
// Without -race, the binaries under test are built without it too.
func BenchmarkHandoffMove(b *testing.B) {
	if testing.Short() {
		b.Skip("end-to-end benchmark: skipped with -short")
	}
	for _, w := range []struct{ name, mode string }{
		{"worker=go-library", "hold"},
		{"worker=raw-fds", "hold-fds"},
	} {
		b.Run(w.name, func(b *testing.B) { benchMove(b, w.mode) })
	}
}

func benchMove(b *testing.B, mode string) {
	n := benchEnv("HANDOFF_BENCH_CONNS", 15000)
	workers := benchEnv("HANDOFF_BENCH_WORKERS", 2)
	dir := b.TempDir()
	bt := startBenchBaton(b, dir, mode, workers)
	addr := bt.status(b).Listeners[0].Address

	clients := startClientProcs(b, addr, n)
	gen := 1
	waitReports(b, dir, func(r map[int]holdReport) bool {
		return sumGen(r, gen, func(h holdReport) int64 { return h.Accepted }) == int64(n)
	})

	b.ResetTimer()
	var moves []time.Duration
	var peaks []float64
	for range b.N {
		b.StopTimer()
		os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", bt.cmd.Process.Pid), []byte("5"), 0)
		batonCPU := procCPU(bt.cmd.Process.Pid)
		b.StartTimer()
		if _, err := bt.call("reload", map[string]bool{"wait": true}); err != nil {
			b.Fatal(err)
		}
		gen++
		// The new workers' CPU time from here on is the adoption's (and
		// their last steps of starting).
		newCPU := map[int]int64{}
		for _, w := range bt.status(b).Workers {
			if w.Generation == gen {
				newCPU[w.PID] = -procCPU(w.PID)
			}
		}
		waitReports(b, dir, func(r map[int]holdReport) bool {
			return sumGen(r, gen, func(h holdReport) int64 { return h.Adopted }) == int64(n)
		})
		for pid := range newCPU {
			newCPU[pid] += procCPU(pid)
		}
		b.StopTimer()
		batonCPU = procCPU(bt.cmd.Process.Pid) - batonCPU
		// The old workers exit once they have handed everything off.
		reps := waitReports(b, dir, func(r map[int]holdReport) bool {
			for _, h := range r {
				if h.Generation == gen-1 && h.CPUExitNS == 0 {
					return false
				}
			}
			return true
		})
		var start, end, handed, first, oldCPU, adoptCPU int64
		for _, r := range reps {
			switch r.Generation {
			case gen - 1:
				if start == 0 || r.StopNS < start {
					start = r.StopNS
				}
				handed = max(handed, r.HandedNS)
				oldCPU += r.CPUExitNS - r.CPUStopNS
			case gen:
				end = max(end, r.LastAdoptNS)
				if first == 0 || r.FirstAdoptNS < first {
					first = r.FirstAdoptNS
				}
			}
		}
		for _, c := range newCPU {
			adoptCPU += c
		}
		b.Logf("phases: first adoption after %s, last Handoff returned after %s; CPU per connection: old workers %.1fµs, baton %.1fµs, new workers %.1fµs",
			time.Duration(first-start).Round(time.Millisecond), time.Duration(handed-start).Round(time.Millisecond),
			float64(oldCPU)/1e3/float64(n), float64(batonCPU)/1e3/float64(n), float64(adoptCPU)/1e3/float64(n))
		move := time.Duration(end - start)
		moves = append(moves, move)
		peak := vmHWM(bt.cmd.Process.Pid)
		peaks = append(peaks, peak)
		st := bt.status(b)
		b.Logf("generation %d: %d connections moved in %s (%.0f/s); baton peak RSS %.1f MiB, %d fds; store %+v",
			gen, n, move.Round(time.Millisecond), float64(n)/move.Seconds(), peak, st.Process.FDs, st.Handoff.HandoffStats)
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("check-%d", gen)), nil, 0o644) // the raw workers' cue
		clients.check(b, gen)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(moves)
	med := moves[len(moves)/2]
	b.ReportMetric(float64(med.Microseconds())/1000, "ms/move")
	b.ReportMetric(float64(n)/med.Seconds(), "conns/s")
	b.ReportMetric(slices.Max(peaks), "peak-RSS-MiB")
}

func benchEnv(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// sumGen adds up f over the reports of generation gen.
func sumGen(reps map[int]holdReport, gen int, f func(holdReport) int64) int64 {
	var n int64
	for _, r := range reps {
		if r.Generation == gen {
			n += f(r)
		}
	}
	return n
}

func waitReports(tb testing.TB, dir string, ok func(map[int]holdReport) bool) map[int]holdReport {
	tb.Helper()
	var reps map[int]holdReport
	batontest.WaitFor(tb, 2*time.Minute, func() error {
		var err error
		if reps, err = readHoldReports(dir); err != nil || !ok(reps) {
			return fmt.Errorf("workers' reports never got there: %+v, %v", reps, err)
		}
		return nil
	})
	return reps
}

// clientsPerProc is how many connections one client process holds: its
// descriptors stay under the hard RLIMIT_NOFILE of 20,000 of the machines
// this runs on.
const clientsPerProc = 15000

// clientProcs are the processes that hold the benchmark's clients, each
// this test binary in the hold-clients mode, driven over its stdin and
// stdout.
type clientProcs []*clientProc

type clientProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startClientProcs connects n idle clients to addr from as many
// processes as their descriptors need.
func startClientProcs(tb testing.TB, addr string, n int) clientProcs {
	tb.Helper()
	var cps clientProcs
	tb.Cleanup(func() {
		for _, cp := range cps {
			cp.in.Close() // the process closes its clients and exits
			cp.cmd.Wait()
		}
	})
	for first := 0; first < n; first += clientsPerProc {
		cmd := exec.Command(testBin)
		cmd.Env = append(os.Environ(), workerEnv+"=hold-clients", "E2E_CLIENTS="+fmt.Sprintf("%s %d %d", addr, first, min(clientsPerProc, n-first)))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			tb.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			tb.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		cps = append(cps, &clientProc{cmd: cmd, in: in, out: bufio.NewScanner(out)})
	}
	for _, cp := range cps {
		cp.expect(tb, "connected")
	}
	return cps
}

func (cp *clientProc) expect(tb testing.TB, want string) {
	tb.Helper()
	if !cp.out.Scan() {
		tb.Fatalf("client process %d ended: %v", cp.cmd.Process.Pid, cp.out.Err())
	}
	if got := cp.out.Text(); got != want {
		tb.Fatalf("client process %d: %s", cp.cmd.Process.Pid, got)
	}
}

// check has every client checked: each is answered by generation gen.
func (cps clientProcs) check(tb testing.TB, gen int) {
	tb.Helper()
	for _, cp := range cps {
		fmt.Fprintf(cp.in, "check %d\n", gen)
	}
	for _, cp := range cps {
		cp.expect(tb, "ok")
	}
}

// holdClients is the client process: E2E_CLIENTS is "ADDR FIRST N". It
// connects N clients to ADDR, client i from its own address in
// 127.0.0.0/8 (i counted from FIRST), so that no side runs short of
// ports, and says "connected". Then, for each line "check GEN" on stdin,
// it has every client send a line and answers "ok" when generation GEN
// echoed them all, or the first error. At the end of stdin it closes the
// clients with SO_LINGER 0, leaving nothing in TIME-WAIT for the next
// run.
func holdClients() error {
	var addr string
	var first, n int
	if _, err := fmt.Sscanf(os.Getenv("E2E_CLIENTS"), "%s %d %d", &addr, &first, &n); err != nil {
		return fmt.Errorf("E2E_CLIENTS: %w", err)
	}
	clients := make([]*holdClient, n)
	err := each(n, func(i int) error {
		g := first + i
		local := &net.TCPAddr{IP: net.IPv4(127, byte(1+g>>16), byte(g>>8), byte(g))}
		c, err := (&net.Dialer{LocalAddr: local, Timeout: 30 * time.Second}).Dial("tcp", addr)
		if err != nil {
			return err
		}
		c.(*net.TCPConn).SetLinger(0)
		clients[i] = &holdClient{conn: c.(*net.TCPConn), r: bufio.NewReader(c)}
		return nil
	})
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
	}()
	if err != nil {
		return err
	}
	fmt.Println("connected")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var gen int
		if _, err := fmt.Sscanf(in.Text(), "check %d", &gen); err != nil {
			return fmt.Errorf("command %q: %w", in.Text(), err)
		}
		bad := atomic.Int64{}
		err := each(n, func(i int) error {
			_, g, err := clients[i].echo("check")
			if err == nil && g != gen {
				err = fmt.Errorf("answered by generation %d", g)
			}
			if err != nil {
				bad.Add(1)
				return fmt.Errorf("client %d: %w", first+i, err)
			}
			return nil
		})
		if err != nil {
			fmt.Printf("%d clients not served by generation %d: first %v\n", bad.Load(), gen, err)
			continue
		}
		fmt.Println("ok")
	}
	return nil
}

// each runs f(0..n-1) on 64 goroutines and returns the first error; it
// runs every f regardless.
func each(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 64 {
				if err := f(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// vmHWM is a process's peak resident memory in MiB.
func vmHWM(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}

// benchBaton is a baton run for a benchmark (the test harness needs a
// *testing.T).
type benchBaton struct {
	cmd *exec.Cmd
	ctl string
}

func startBenchBaton(tb testing.TB, dir, mode string, workers int) *benchBaton {
	tb.Helper()
	sock, err := os.MkdirTemp("", "bt")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(sock) })
	bt := &benchBaton{ctl: filepath.Join(sock, "ctl.sock")}
	logf, err := os.Create(filepath.Join(dir, "baton.log"))
	if err != nil {
		tb.Fatal(err)
	}
	bt.cmd = exec.Command(batonBin, "run", "--control", bt.ctl, "-l", "echo=tcp://127.0.0.1:0", "-n", strconv.Itoa(workers),
		"--ready", "notify", "--", testBin)
	bt.cmd.Env = append(os.Environ(), workerEnv+"="+mode, reportDir+"="+dir)
	bt.cmd.Stdout, bt.cmd.Stderr = logf, logf
	if err := bt.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		bt.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { bt.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			bt.cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if tb.Failed() {
			b, _ := os.ReadFile(logf.Name())
			tb.Logf("baton output:\n%s", b)
		}
	})
	batontest.WaitFor(tb, 60*time.Second, func() error {
		st, err := bt.tryStatus()
		if err != nil {
			return fmt.Errorf("baton's workers not ready: %w", err)
		}
		if !settled(st, workers) {
			return fmt.Errorf("baton's workers not ready: %+v", st.Workers)
		}
		return nil
	})
	return bt
}

func (bt *benchBaton) call(method string, params any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return control.Call(ctx, bt.ctl, method, params)
}

// tryStatus asks for baton's status without the kernel's view: that
// view scans every worker's descriptors and dumps the port's sockets,
// which with thousands of connections would cost baton more CPU than the
// move being measured.
func (bt *benchBaton) tryStatus() (supervisor.Status, error) {
	var st supervisor.Status
	raw, err := bt.call("status", map[string]bool{"kernel": false})
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(raw, &st)
}

func (bt *benchBaton) status(tb testing.TB) supervisor.Status {
	tb.Helper()
	st, err := bt.tryStatus()
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// procCPU is the CPU time process pid has used, in nanoseconds.
func procCPU(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return (ut + st) * int64(time.Second) / 100 // USER_HZ
}
