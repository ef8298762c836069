package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/supervisor"
)

// reloadUntil reloads b one reload after the other (each waits for its
// outcome, as `baton reload` does) until d has passed, and fails the test
// on any reload that does not succeed. It returns how many succeeded.
func reloadUntil(t *testing.T, b *instance, d time.Duration) int {
	t.Helper()
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		out, code := b.cli("reload")
		if code != 0 {
			t.Fatalf("reload %d exited %d: %s", n+1, code, out)
		}
		n++
		time.Sleep(100 * time.Millisecond) // pacing: a reload every 100ms or so
	}
	return n
}

// slotRecycles sums the recycles of the serving slots, by last reason.
func slotRecycles(st supervisor.Status) (total int, last map[string]int) {
	last = map[string]int{}
	for _, sl := range st.SlotStates {
		total += sl.Recycles
		if sl.LastRecycle != "" {
			last[sl.LastRecycle]++
		}
	}
	return total, last
}

// TestWorkersThatRecycleThemselves: a program that exits 0 after N
// requests (php-cgi, gunicorn's max_requests) is restarted in its slot,
// and under load every reload succeeds although the new workers exit
// before their readiness delay is over, with no failed request. On the
// code before this, a new worker's exit failed its reload: "exited with
// status 0 before it was ready; generation 1 keeps serving".
func TestWorkersThatRecycleThemselves(t *testing.T) {
	// Alone: the case needs a new worker to reach its request limit
	// within its readiness delay, which depends on the load's rate (1,100
	// requests a second with three other tests beside it, too few).
	requireE2EAlone(t)
	// Each worker lives about half a second (4,500 requests a second on
	// two CPUs) under this load: more than the 100ms a worker
	// that was never ready must run for its exit 0 to count as recycling,
	// less than the readiness delay.
	const maxRequests = 1200
	b := startBaton(t, []string{workerEnv + "=maxreq", maxRequestsEnv + "=" + strconv.Itoa(maxRequests)},
		"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "delay:3s", "--", testBin)
	b.waitReady(2)
	wait := loadUnderWay(loadgen.Config{Addr: b.addr("http"), Close: 8, Duration: 14 * time.Second})
	reloads := reloadUntil(t, b, 11*time.Second)
	res := wait()
	checkLoad(t, res)
	st := b.status()
	recycled, _ := slotRecycles(st)
	t.Logf("%d reloads, all ok; %d workers recycled themselves; %d requests", reloads, recycled, res.OK)
	if st.Reloads.Failed != 0 {
		t.Errorf("%d reloads failed; last: %+v", st.Reloads.Failed, st.Reloads.Last)
	}
	// The load must have made workers exit, or nothing was tested.
	if recycled == 0 || res.OK < int64(10*maxRequests) {
		t.Errorf("%d recycles in %d requests: the workers did not reach their request limit", recycled, res.OK)
	}
	if !strings.Contains(b.log.String(), "worker recycled itself while its generation comes up") {
		t.Errorf("no new worker exited before it was ready: the reloads did not meet the case of the issue")
	}
}

// TestPythonHTTPServerDrainsWithoutAFlag: python3 -m http.server has no
// handler for SIGTERM, which kills it at once with the requests it
// accepted. baton reads that in /proc/PID/status and stops it only when
// it holds no connection, with no flag: reloads under load lose nothing.
// On the code before this, without --stop-when-idle, requests were lost.
func TestPythonHTTPServerDrainsWithoutAFlag(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	port := strconv.Itoa(freePort(t))
	b := startBaton(t, nil, "--capture-bind", "--ready", "bind", "-l", "http=tcp://127.0.0.1:"+port, "-n", "2",
		"--", python, "-m", "http.server", "--bind", "127.0.0.1", port)
	b.waitReady(2)
	// baton reads the worker's signal handling once it is ready.
	var st supervisor.Status
	batontest.WaitFor(t, 10*time.Second, func() error {
		st = b.status()
		idle := 0
		for _, w := range st.Workers {
			if w.Drain == string(supervisor.DrainWhenIdle) && w.SignalHandling == "default" {
				idle++
			}
		}
		if idle != 2 {
			return fmt.Errorf("workers' drain: %+v; want when-idle, SIGTERM's handling default", st.Workers)
		}
		return nil
	})
	if why := st.Workers[0].DrainReason; !strings.Contains(why, "no handler for SIGTERM") {
		t.Errorf("drain reason %q; want it to say the program has no handler for SIGTERM", why)
	}
	wait := closeLoad("127.0.0.1:"+port, 12*time.Second)
	for i := 0; i < 12; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(300 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
	}
	checkLoad(t, wait())
	if !strings.Contains(b.log.String(), "drain=when-idle") {
		t.Errorf("the log does not say how the workers were stopped (drain=when-idle)")
	}
}

// TestMaxRSSReplacesALeakingWorker: a worker whose memory grows with each
// request passes --max-rss; baton replaces it (a new worker in its slot
// ready first, then the old one drains) with no failed request, and says
// so in the log and the status.
func TestMaxRSSReplacesALeakingWorker(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, []string{workerEnv + "=leak-rss", leakEnv + "=16384"},
		"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--max-rss", "96MiB", "--", testBin)
	first := b.waitReady(2)
	wait := startLoad(b.addr("http"), 16*time.Second)
	res := wait()
	checkLoad(t, res)
	st := b.status()
	recycled, last := slotRecycles(st)
	t.Logf("%d recycles (%v) in %d requests", recycled, last, res.OK)
	if last[supervisor.RecycleMaxRSS] == 0 {
		t.Fatalf("no slot was recycled for its memory: %+v\nworkers: %+v", st.SlotStates, st.Workers)
	}
	if st.Generation != first.Generation {
		t.Errorf("generation %d, was %d: recycling must not start a generation", st.Generation, first.Generation)
	}
	log := b.log.String()
	for _, want := range []string{"recycling worker: a new worker starts in its slot", "reason=max_rss", "is above --max-rss 96 MiB", "worker recycled: its replacement is ready"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	for _, w := range st.Workers {
		if w.RSSBytes == 0 {
			t.Errorf("worker %d: no rss_bytes in the status", w.PID)
		}
	}
	out, code := b.cli("status")
	if code != 0 || !strings.Contains(out, "RSS") || !strings.Contains(out, "recycling: --max-rss 96 MiB") {
		t.Errorf("baton status (exit %d) does not show RSS and the recycling:\n%s", code, out)
	}
}

// TestMaxUptimeReplacesWorkersUnderLoad: --max-uptime replaces each
// worker in turn, one slot at a time, with no failed request.
func TestMaxUptimeReplacesWorkersUnderLoad(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--max-uptime", "2s", "--", helloBin)
	b.waitReady(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	most := make(chan int, 1)
	go func() { // at most one worker beyond the slots at any time
		n := 0
		for ctx.Err() == nil {
			if st, err := b.tryStatusOf(false); err == nil {
				alive := 0
				for _, w := range st.Workers {
					if w.State != supervisor.Draining {
						alive++
					}
				}
				n = max(n, alive)
			}
			time.Sleep(20 * time.Millisecond) // sampling: the most workers at once
		}
		most <- n
	}()
	res := loadgen.Run(context.Background(), loadgen.Config{Addr: b.addr("http"), KeepAlive: 4, Close: 4, Duration: 9 * time.Second})
	cancel()
	checkLoad(t, res)
	st := b.status()
	recycled, last := slotRecycles(st)
	t.Logf("%d recycles (%v)", recycled, last)
	if last[supervisor.RecycleMaxUptime] != 2 || recycled < 4 {
		t.Errorf("recycles %d (%v); want each slot replaced twice or more for its uptime", recycled, last)
	}
	if n := <-most; n > 3 {
		t.Errorf("%d workers starting or ready at once; with 2 slots baton replaces one at a time: at most 3", n)
	}
}
