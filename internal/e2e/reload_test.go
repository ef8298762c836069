package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/supervisor"
)

// startLoad runs a bounded load (keep-alive and new-connection-per-request
// clients) in the background; the returned function waits for its result.
func startLoad(addr string, d time.Duration) func() *loadgen.Result {
	ch := make(chan *loadgen.Result, 1)
	go func() {
		ch <- loadgen.Run(context.Background(), loadgen.Config{Addr: addr, KeepAlive: 4, Close: 4, Duration: d})
	}()
	return func() *loadgen.Result { return <-ch }
}

// startLoadUnderWay is startLoad that returns once every client of the
// load has had an answer (or the load has ended without): what the test
// does next happens under the load, not before it has started.
func startLoadUnderWay(addr string, d time.Duration) func() *loadgen.Result {
	return loadUnderWay(loadgen.Config{Addr: addr, KeepAlive: 4, Close: 4, Duration: d})
}

// loadUnderWay runs the load cfg in the background and returns once every
// client of it has had an answer (or the load has ended without), with a
// function that waits for its result.
func loadUnderWay(cfg loadgen.Config) func() *loadgen.Result {
	ch := make(chan *loadgen.Result, 1)
	cfg.UnderWay = make(chan struct{})
	go func() { ch <- loadgen.Run(context.Background(), cfg) }()
	<-cfg.UnderWay
	return func() *loadgen.Result { return <-ch }
}

func checkLoad(t *testing.T, r *loadgen.Result) {
	t.Helper()
	t.Logf("load: %v", r)
	if r.Failed() != 0 {
		t.Errorf("load saw %d failed requests: %v; samples: %q", r.Failed(), r, r.Samples)
	}
	if r.OK < 100 {
		t.Errorf("load answered only %d requests: the load did not really run", r.OK)
	}
}

func TestReloadUnderLoadLosesNothing(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", helloBin)
	first := b.waitReady(2)
	wait := startLoadUnderWay(b.addr("http"), 10*time.Second)

	old := workerPIDs(first)
	for i := 0; i < 20; i++ {
		out, code := b.cli("reload")
		if code != 0 {
			t.Fatalf("reload %d exited %d: %s", i+1, code, out)
		}
		if !strings.Contains(out, "reloaded: generation") {
			t.Errorf("reload %d output %q does not say which generation serves", i+1, out)
		}
		st := b.status()
		for _, w := range st.Workers {
			if w.Generation < st.Generation {
				old = append(old, w.PID)
			}
		}
		// Pacing: the 20 reloads spread over the load, each generation
		// serving it for a while.
		time.Sleep(300 * time.Millisecond)
	}
	checkLoad(t, wait())

	st := b.waitReady(2)
	if st.Generation != 21 || st.Reloads.OK != 20 || st.Reloads.Failed != 0 {
		t.Errorf("after 20 reloads: generation %d, reloads %+v; want generation 21, 20 ok", st.Generation, st.Reloads)
	}
	waitGone(t, old, 30*time.Second)
}

// badDeploy starts baton with workers that read failFile, and returns a
// function that turns the next deploy bad in the given way.
func badDeploy(t *testing.T, extra ...string) (*instance, func(string)) {
	t.Helper()
	flag := filepath.Join(t.TempDir(), "deploy")
	env := []string{workerEnv + "=http", failFile + "=" + flag}
	args := append([]string{"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify"}, extra...)
	b := startBaton(t, env, append(args, "--", testBin)...)
	return b, func(how string) {
		if err := os.WriteFile(flag, []byte(how), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRollbackWhenNewWorkersExit(t *testing.T) {
	requireE2E(t)
	b, deploy := badDeploy(t)
	before := b.waitReady(2)
	wait := startLoadUnderWay(b.addr("http"), 4*time.Second)

	deploy("fail")
	out, code := b.cli("reload")
	if code != 1 {
		t.Errorf("reload of a bad deploy exited %d, want 1; output: %s", code, out)
	}
	// Each new worker exits at once: restarted in its slot, it
	// crash-loops (start_limit_burst) and the reload fails.
	for _, want := range []string{"reload to generation 2 failed", "is crash-looping: 5 of its workers failed within 10s", "exited with status 1", "bad deploy: refusing to start", "generation 1 keeps serving"} {
		if !strings.Contains(out, want) {
			t.Errorf("reload output lacks %q:\n%s", want, out)
		}
	}
	checkLoad(t, wait())

	after := b.waitReady(2)
	if after.Generation != 1 || after.Reloads.Failed != 1 {
		t.Errorf("after the failed reload: generation %d, reloads %+v; want generation 1 serving, 1 failed", after.Generation, after.Reloads)
	}
	if fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) {
		t.Errorf("old workers replaced: before %v, after %v", workerPIDs(before), workerPIDs(after))
	}

	// A good deploy afterwards goes through.
	deploy("ok")
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload of a good deploy exited %d: %s", code, out)
	}
}

func TestRollbackWhenNewWorkersNeverReady(t *testing.T) {
	requireE2E(t)
	b, deploy := badDeploy(t, "--ready-timeout", "2s")
	b.waitReady(2)
	wait := startLoadUnderWay(b.addr("http"), 5*time.Second)

	deploy("noready")
	out, code := b.cli("reload")
	if code != 1 || !strings.Contains(out, "did not send READY=1 within 2s") || !strings.Contains(out, "generation 1 keeps serving") {
		t.Errorf("reload of a never-ready deploy: exit %d, output %q; want 1 and the readiness deadline as the reason", code, out)
	}
	checkLoad(t, wait())
	if st := b.waitReady(2); st.Generation != 1 {
		t.Errorf("generation %d serves, want 1", st.Generation)
	}
}

func TestCrashedWorkerRestartsWithBackoff(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, []string{workerEnv + "=crash"}, "--no-listeners", "-n", "1", "--ready", "delay:50ms", "--", testBin)
	// The worker exits at once, every time: the restarts back off 100ms,
	// 200ms, 400ms, 800ms.
	b.waitLog("in=800ms") // the fourth restart
	log := b.log.String()
	i100, i200, i400 := strings.Index(log, "in=100ms"), strings.Index(log, "in=200ms"), strings.Index(log, "in=400ms")
	if i100 < 0 || i200 < i100 || i400 < i200 {
		t.Errorf("restart delays do not double from 100ms:\n%s", log)
	}
	if !strings.Contains(log, "crashing on purpose") || !strings.Contains(log, "exited with status 3") {
		t.Errorf("log lacks the worker's output or its exit status:\n%s", log)
	}
	st := b.status()
	if len(st.Workers) > 1 {
		t.Errorf("%d workers in one slot", len(st.Workers))
	}
	select {
	case <-b.done:
		t.Fatalf("baton exited because a worker crashed: %v", b.err)
	default:
	}
}

func TestKilledWorkerIsReplacedInItsSlot(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", helloBin)
	st := b.waitReady(2)
	victim := st.Workers[0]
	if err := killPID(victim.PID); err != nil {
		t.Fatal(err)
	}
	after := b.waitReplaced(victim.PID, 2)
	var found bool
	for _, w := range after.Workers {
		if w.Slot == victim.Slot {
			found = true
			if w.PID == victim.PID || w.Restarts != 1 {
				t.Errorf("slot %d: pid %d restarts %d; want a new pid and 1 restart", w.Slot, w.PID, w.Restarts)
			}
		}
	}
	if !found {
		t.Errorf("slot %d has no worker after the crash: %+v", victim.Slot, after.Workers)
	}
}

func TestGracefulStopFinishesInflightRequest(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", batonBin, "demo")
	b.waitReady(1)
	addr := b.addr("http")

	answer := getInFlight(t, "http://"+addr+"/slow?ms=1500")
	out, code := b.cli("stop")
	if code != 0 || !strings.Contains(out, "stopped") {
		t.Errorf("baton stop: exit %d, %q", code, out)
	}
	if body, err := answer(); err != nil || !strings.Contains(body, "slow answer after 1500ms") {
		t.Errorf("in-flight request during stop: %q, %v; want its full answer", body, err)
	}
	if code := b.waitExit(10 * time.Second); code != 0 {
		t.Errorf("baton exited %d after a graceful stop, want 0", code)
	}
}

func TestReloadsAskedTogetherAreCoalesced(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "delay:1s", "--", helloBin)
	b.waitReady(1)
	const n = 5
	var wg sync.WaitGroup
	outs, codes := make([]string, n), make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], codes[i] = b.cli("reload")
		}()
	}
	wg.Wait()
	for i := range n {
		if codes[i] != 0 {
			t.Errorf("reload %d: exit %d: %s", i, codes[i], outs[i])
		}
	}
	st := b.waitReady(1)
	// One reload runs; the others queue behind it and are served by one
	// more. A client slower to arrive than a whole reload (1s) could make
	// a third, never five.
	if st.Reloads.OK < 2 || st.Reloads.OK > 3 {
		t.Errorf("%d concurrent reload requests ran %d reloads; want them coalesced into 2 (3 at most)", n, st.Reloads.OK)
	}
}

func TestDrainingGenerationDoesNotBlockReload(t *testing.T) {
	requireE2E(t)
	env := []string{workerEnv + "=http", drainDelay + "=4s"}
	b := startBaton(t, env, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", testBin)
	b.waitReady(1)
	for i := 0; i < 2; i++ {
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: exit %d: %s", i+1, code, out)
		}
	}
	st := b.status()
	draining := 0
	for _, w := range st.Workers {
		if w.State == supervisor.Draining {
			draining++
		}
	}
	if st.Generation != 3 || draining != 2 {
		t.Errorf("generation %d with %d draining workers; want generation 3 serving while 1 and 2 drain", st.Generation, draining)
	}
}
