package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/sockdiag"
	"github.com/baton-dev/baton/internal/supervisor"
)

// faultCases: workers and baton itself killed, stopped or starved.
var faultCases = []reliabilityCase{
	{"Faults", "SIGKILL of random workers during a reload storm", killDuringReloadStorm},
	{"Faults", "SIGKILL of a new generation while it starts", killStartingGeneration},
	{"Faults", "SIGSTOP of a new worker before it is ready", stopStartingWorker},
	{"Faults", "SIGSTOP of a serving worker, then a reload", stopServingWorker},
	{"Faults", "a worker that never exits after the stop signal", workerNeverExits},
	{"Faults", "100 reloads asked for in 10 s", hundredReloads},
	{"Faults", "a worker at its RLIMIT_NOFILE (EMFILE in accept)", workerAtNofile},
	{"Faults", "baton SIGKILLed, then started again", batonKilled},
}

// loadConns is how many connections startLoad keeps busy: any one of
// them may be on a worker that is killed.
const loadConns = 8

// atRest is what baton holds when nothing is happening: its descriptors,
// goroutines, child processes and resident memory.
type atRest struct{ fds, goroutines, kids, rss int }

func (r atRest) String() string { return fmt.Sprintf("%d fds and %d children", r.fds, r.kids) }

// rest waits until n workers are ready and nothing else runs, then
// counts what baton holds.
func rest(b *instance, n int) atRest {
	b.t.Helper()
	b.waitReady(n)
	pid := b.cmd.Process.Pid
	// Not so in time: checkRest compares the count.
	batontest.Wait(30*time.Second, func() error {
		if k := len(children(pid)); k != n {
			return fmt.Errorf("%d children, want %d", k, n)
		}
		return nil
	})
	r := atRest{kids: len(children(pid))}
	r.fds, r.goroutines = resting(b)
	r.rss = vmRSS(pid)
	return r
}

// checkRest fails the test if baton holds more at rest than before.
func checkRest(t *testing.T, before, after atRest) {
	t.Helper()
	if after.fds > before.fds || after.kids != before.kids {
		t.Errorf("at rest baton holds %v, %v before the fault", after, before)
	}
}

// checkNeverRefused fails the test if a connection was refused or a
// request failed beyond those that were on a killed or stopped worker:
// at most loadConns for each.
func checkNeverRefused(t *testing.T, r *loadgen.Result, hit int) {
	t.Helper()
	t.Logf("load: %v", r)
	if r.ConnectErrors != 0 {
		t.Errorf("%d connections were refused or timed out connecting: the listener must always accept; %v", r.ConnectErrors, r.Samples)
	}
	if r.Failed() > int64(hit*loadConns) {
		t.Errorf("%d requests failed; only those on the %d workers hit may (at most %d): %v", r.Failed(), hit, hit*loadConns, r.Samples)
	}
	if r.OK < 100 {
		t.Errorf("load answered only %d requests: the load did not really run", r.OK)
	}
}

func count(n int64) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func killDuringReloadStorm(t *testing.T) string {
	const n = 4
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", fmt.Sprint(n), "--ready", "notify", "--", helloBin)
	before := rest(b, n)
	wait := startLoad(b.addr("http"), 8*time.Second)
	stop := time.Now().Add(6 * time.Second)

	var wg sync.WaitGroup
	var reloadsOK, reloadsFailed int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Now().Before(stop) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if _, err := control.Call(ctx, b.ctl, "reload", nil); err != nil {
				reloadsFailed++ // a new worker killed too often crash-loops its slot
			} else {
				reloadsOK++
			}
			cancel()
			time.Sleep(300 * time.Millisecond) // pacing: a reload every 300ms
		}
	}()
	kills := 0
	for time.Now().Before(stop) {
		time.Sleep(250 * time.Millisecond) // pacing: a kill every 250ms
		st, err := b.tryStatusOf(false)
		if err != nil || len(st.Workers) == 0 {
			continue
		}
		if killPID(st.Workers[rand.IntN(len(st.Workers))].PID) == nil {
			kills++
		}
	}
	wg.Wait()
	r := wait()
	checkNeverRefused(t, r, kills)
	after := rest(b, n)
	checkRest(t, before, after)
	return fmt.Sprintf("%d workers killed during %d reloads (%d failed); %s requests, %d failed, %d refused; at rest %v before and after",
		kills, reloadsOK+reloadsFailed, reloadsFailed, count(r.Requests+r.Failed()), r.Failed(), r.ConnectErrors, after)
}

// newWorkers waits until workers of a generation after gen run, and
// returns their pids.
func newWorkers(t *testing.T, b *instance, gen int) []int {
	t.Helper()
	var pids []int
	err := batontest.Wait(20*time.Second, func() error {
		st, err := b.tryStatusOf(false)
		if err != nil {
			return err
		}
		for _, w := range st.Workers {
			if w.Generation > gen && w.State == supervisor.Starting {
				pids = append(pids, w.PID)
			}
		}
		if len(pids) == 0 {
			return fmt.Errorf("no worker of a generation after %d started", gen)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, b.log)
	}
	return pids
}

// reloadAsync asks for a reload and returns a function that waits for
// its answer.
func reloadAsync(b *instance) func() error {
	ch := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := control.Call(ctx, b.ctl, "reload", nil)
		ch <- err
	}()
	return func() error { return <-ch }
}

func killStartingGeneration(t *testing.T) string {
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "delay:2s", "--", helloBin)
	before := rest(b, 2)
	old := workerPIDs(b.waitReady(2))
	wait := startLoadUnderWay(b.addr("http"), 5*time.Second)
	done := reloadAsync(b)
	fresh := newWorkers(t, b, 1)
	for _, p := range fresh {
		killPID(p)
	}
	// A worker of a generation coming up that dies is restarted in its
	// slot; the reload fails only if the slot crash-loops or misses its
	// readiness deadline.
	err := done()
	if err != nil {
		t.Errorf("the reload whose new workers were killed once while starting failed: %v; they are restarted in their slots", err)
	}
	r := wait()
	checkLoad(t, r)
	after := rest(b, 2)
	st := b.waitReady(2)
	for _, p := range workerPIDs(st) {
		for _, o := range append(old, fresh...) {
			if p == o {
				t.Errorf("worker %d still serves: want the killed ones restarted and the old generation drained", p)
			}
		}
	}
	checkRest(t, before, after)
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("the next reload failed: %s", out)
	}
	return fmt.Sprintf("%d starting workers killed: restarted in their slots, and the reload succeeded; %s requests, 0 failed; the next reload succeeded",
		len(fresh), count(r.Requests))
}

func firstLine(err error) string {
	if err == nil {
		return ""
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func stopStartingWorker(t *testing.T) string {
	flag := filepath.Join(shortDir(t), "mode")
	b := startBaton(t, []string{workerEnv + "=http", failFile + "=" + flag},
		"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--ready-timeout", "2s", "--drain-timeout", "20s", "--", testBin)
	before := rest(b, 2)
	wait := startLoadUnderWay(b.addr("http"), 6*time.Second)
	// The next generation takes 3s before it serves: stopped before that,
	// it never says it is ready.
	if err := os.WriteFile(flag, []byte("slow"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	done := reloadAsync(b)
	fresh := newWorkers(t, b, 1)
	for _, p := range fresh {
		syscall.Kill(p, syscall.SIGSTOP)
	}
	err := done()
	took := time.Since(start)
	if err == nil {
		t.Errorf("the reload whose new workers were stopped succeeded")
	}
	// Stopped at the readiness deadline, and continued so that the stop
	// signal reaches them: gone well before the drain deadline.
	waitGone(t, fresh, 10*time.Second)
	gone := time.Since(start)
	os.Remove(flag)
	r := wait()
	checkLoad(t, r)
	after := rest(b, 2)
	checkRest(t, before, after)
	return fmt.Sprintf("the reload failed at the 2s readiness deadline (after %.1fs: %q); the %d stopped workers got the stop signal and SIGCONT and were gone %.1fs after the reload began (drain timeout 20s); the old generation served on: %s requests, 0 failed",
		took.Seconds(), firstLine(err), len(fresh), gone.Seconds(), count(r.Requests))
}

func stopServingWorker(t *testing.T) string {
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--drain-timeout", "20s", "--", helloBin)
	before := rest(b, 2)
	st := b.waitReady(2)
	stopped := st.Workers[0].PID
	wait := startLoadUnderWay(b.addr("http"), 6*time.Second)
	syscall.Kill(stopped, syscall.SIGSTOP)
	// The worker stays stopped for a second under the load: the time is
	// the test (its requests wait; none may fail).
	time.Sleep(time.Second)
	start := time.Now()
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("reload with a stopped worker: %s", out)
	}
	// The stop signal comes with SIGCONT: it drains, long before the
	// drain deadline.
	waitGone(t, []int{stopped}, 10*time.Second)
	gone := time.Since(start)
	r := wait()
	// Requests on connections it held waited while it was stopped (1s,
	// under the load's 5s timeout); none may fail.
	checkLoad(t, r)
	after := rest(b, 2)
	checkRest(t, before, after)
	return fmt.Sprintf("stopped for 1s, then a reload: it got the stop signal and SIGCONT, drained what it held and exited %.1fs later (drain timeout 20s); %s requests, 0 failed",
		gone.Seconds(), count(r.Requests))
}

func workerNeverExits(t *testing.T) string {
	b := startBaton(t, []string{workerEnv + "=http", drainDelay + "=1h"},
		"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--drain-timeout", "2s", "--", testBin)
	before := rest(b, 2)
	old := workerPIDs(b.waitReady(2))
	wait := startLoadUnderWay(b.addr("http"), 5*time.Second)
	start := time.Now()
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("reload: %s", out)
	}
	waitGone(t, old, 10*time.Second)
	gone := time.Since(start)
	if gone < 2*time.Second {
		t.Errorf("the old workers were gone %s after the reload, before the 2s drain deadline: they did not linger, so this tested nothing", gone)
	}
	r := wait()
	checkLoad(t, r)
	after := rest(b, 2)
	checkRest(t, before, after)
	return fmt.Sprintf("old workers that linger after draining were killed at the 2s drain deadline (gone after %.1fs); %s requests, 0 failed",
		gone.Seconds(), count(r.Requests))
}

func hundredReloads(t *testing.T) string {
	const n = 2
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", fmt.Sprint(n), "--ready", "delay:300ms", "--drain-timeout", "1s", "--", helloBin)
	before := rest(b, n)
	wait := startLoadUnderWay(b.addr("http"), 12*time.Second)

	stopSampling := make(chan struct{})
	most := make(chan int)
	go func() {
		m := 0
		for {
			select {
			case <-stopSampling:
				most <- m
				return
			case <-time.After(20 * time.Millisecond):
				m = max(m, len(children(b.cmd.Process.Pid)))
			}
		}
	}()
	const asked = 100
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	start := time.Now()
	for i := range asked {
		// Pacing: a reload request every 100ms.
		time.Sleep(time.Until(start.Add(time.Duration(i) * 100 * time.Millisecond)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := control.Call(ctx, b.ctl, "reload", nil); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(stopSampling)
	peak := <-most
	r := wait()
	checkLoad(t, r)
	if len(errs) > 0 {
		t.Errorf("%d of %d reload requests failed; first: %v", len(errs), asked, errs[0])
	}
	st := b.waitReady(n)
	if st.Reloads.OK >= asked {
		t.Errorf("%d reload requests ran %d reloads: not coalesced", asked, st.Reloads.OK)
	}
	// Coalesced, one generation starts at a time, taking 300ms: besides
	// it and the serving one, only those stopped in the last second (the
	// drain timeout) run: ceil(1s/300ms) = 4 generations, 5 with the one
	// whose deadline is just passing.
	if bound := n * (2 + 5); peak > bound {
		t.Errorf("baton had %d children at once; want at most %d (%d workers: serving, starting, and 5 generations draining)", peak, bound, n)
	}
	after := rest(b, n)
	checkRest(t, before, after)
	return fmt.Sprintf("%d requests in %.1fs, all answered, coalesced into %d reloads; at most %d processes at once for %d workers; %s HTTP requests, 0 failed; at rest %v before and after",
		asked, took.Seconds(), st.Reloads.OK, peak, n, count(r.Requests), after)
}

func workerAtNofile(t *testing.T) string {
	const limit = 32
	b := startBaton(t, []string{workerEnv + "=http", nofile + "=" + fmt.Sprint(limit)},
		"-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", testBin)
	before := rest(b, 1)
	pid := b.waitReady(1).Workers[0].PID
	addr := b.addr("http")
	// Idle connections the worker accepts until it has no descriptor
	// left; the rest wait in the accept queue.
	var idle []net.Conn
	for range 2 * limit {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connect %d: %v", len(idle)+1, err)
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	// Let the worker accept until EMFILE, then ask on one more.
	var open int
	batontest.WaitFor(t, 10*time.Second, func() error {
		var err error
		if open, _, _, err = sockdiag.FDUsage(pid); err != nil {
			return batontest.Stop(err)
		}
		if open < limit {
			return fmt.Errorf("the worker has %d descriptors open, not yet its limit of %d", open, limit)
		}
		return nil
	})
	answer := make(chan error, 1)
	go func() {
		r := loadgen.Run(context.Background(), loadgen.Config{Addr: addr, Close: 1, MaxRequests: 1, Duration: 30 * time.Second, Timeout: 20 * time.Second})
		if r.OK != 1 {
			answer <- fmt.Errorf("%v %v", r, r.Samples)
			return
		}
		answer <- nil
	}()
	// No answer for a second: the time is the test (a request must wait,
	// not fail, while the worker is at its limit).
	time.Sleep(time.Second)
	select {
	case err := <-answer:
		t.Errorf("a request was answered while the worker had no descriptor left (%d open of %d): %v", open, limit, err)
	default:
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	if err := <-answer; err != nil {
		t.Errorf("the request that waited while the worker was at its limit: %v", err)
	}
	r := loadgen.Run(context.Background(), loadgen.Config{Addr: addr, KeepAlive: 4, Close: 4, Duration: 2 * time.Second})
	checkLoad(t, r)
	if st := b.waitReady(1); st.Workers[0].PID != pid {
		t.Errorf("the worker was replaced (%d, was %d)", st.Workers[0].PID, pid)
	}
	after := rest(b, 1)
	checkRest(t, before, after)
	return fmt.Sprintf("worker limited to %d fds held %d open with %d idle connections; a request that came then waited in the queue and was answered once they closed; then %s requests, 0 failed; same worker",
		limit, open, 2*limit, count(r.Requests))
}

func batonKilled(t *testing.T) string {
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", helloBin)
	st := b.waitReady(2)
	addr := b.addr("http")
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
	start := time.Now()
	waitGone(t, workerPIDs(st), 10*time.Second)
	gone := time.Since(start)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after baton and its workers are gone: an orphan holds the port", addr)
	}
	b2 := startBaton(t, nil, "-l", "http=tcp://"+addr, "-n", "2", "--ready", "notify", "--", helloBin)
	b2.waitReady(2)
	r := loadgen.Run(context.Background(), loadgen.Config{Addr: addr, KeepAlive: 4, Close: 4, Duration: 2 * time.Second})
	checkLoad(t, r)
	return fmt.Sprintf("both workers gone %.0fms after baton (parent-death signal), nothing listening on the port; a new baton bound it again and served %s requests, 0 failed",
		float64(gone.Microseconds())/1000, count(r.Requests))
}
