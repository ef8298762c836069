package e2e

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/batontest"
)

// liveChildren lists the live (not zombie) children of pid: its workers.
// A child is listed by the thread that forked it
// (/proc/PID/task/TID/children, Linux 3.5 with CONFIG_PROC_CHILDREN).
func liveChildren(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, tk := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, tk.Name()))
		if err != nil {
			continue // the thread has exited
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil && pidAlive(c) && !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out, nil
}

// sampleChildren counts pid's live children every 5ms until the
// returned function is called, which returns the most there were at
// once and how many samples were taken.
func sampleChildren(t *testing.T, pid int) func() (most, samples int) {
	t.Helper()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err != nil {
		t.Skipf("cannot count baton's children: %v (the kernel lacks CONFIG_PROC_CHILDREN)", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var most, n int
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if c, err := liveChildren(pid); err == nil {
				most, n = max(most, len(c)), n+1
			}
		}
	}()
	return func() (int, int) {
		close(stop)
		wg.Wait()
		return most, n
	}
}

// TestRollingReloadUnderLoad: with 4 workers and --rolling 1, reloads
// (baton reload, and SIGHUP, which follows the configuration) replace
// one slot at a time: the process count, sampled throughout, never goes
// above 5, and reaches 5 (each new worker starts beside the old one of
// its slot); the load sees no error.
func TestRollingReloadUnderLoad(t *testing.T) {
	requireE2E(t)
	// The old workers linger after draining, so a batch that did not
	// wait for them would show.
	env := []string{workerEnv + "=http", drainDelay + "=300ms"}
	b := startBaton(t, env, "-l", "http=tcp://127.0.0.1:0", "-n", "4", "--ready", "notify", "--rolling", "1", "--", testBin)
	b.waitReady(4)
	stop := sampleChildren(t, b.cmd.Process.Pid)
	wait := startLoadUnderWay(b.addr("http"), 8*time.Second)

	for i := 0; i < 2; i++ {
		out, code := b.cli("reload")
		if code != 0 {
			t.Fatalf("reload %d exited %d: %s", i+1, code, out)
		}
		if !strings.Contains(out, "rolling 1 slot at a time") {
			t.Errorf("reload %d output %q does not say it rolled one slot at a time", i+1, out)
		}
	}
	b.cmd.Process.Signal(syscall.SIGHUP)
	batontest.WaitFor(t, time.Minute, func() error {
		if st := b.waitReady(4); st.Generation != 4 {
			return fmt.Errorf("SIGHUP: generation %d serves, want 4", st.Generation)
		}
		return nil
	})
	checkLoad(t, wait())
	most, samples := stop()
	t.Logf("at most %d workers at once, in %d samples", most, samples)
	if most > 5 {
		t.Errorf("%d workers ran at once during rolling reloads of 4 slots, 1 at a time; want at most 5", most)
	}
	if most < 5 {
		t.Errorf("at most %d workers ran at once: a rolling reload starts each new worker beside the old one (5)", most)
	}

	st := b.waitReady(4)
	last := st.Reloads.Last
	if st.Reloads.OK != 3 || last == nil || last.Rollout == nil || last.Rollout.Phase != api.RolloutDone || !slices.Equal(last.Rollout.Done, []int{0, 1, 2, 3}) {
		t.Errorf("after 3 rolling reloads: reloads %+v, last rollout %+v; want 3 ok, the last done with slots 0..3 in order", st.Reloads, last)
	}
}

// TestRollingReloadRollsBackUnderLoad: a rolling reload whose new
// worker of slot 2 cannot start, after slots 0 and 1 were replaced,
// stops there and gives slots 1 and 0 back to the old generation;
// reload exits 1 saying so, and the load sees no error.
func TestRollingReloadRollsBackUnderLoad(t *testing.T) {
	requireE2E(t)
	b, deploy := badDeploy(t, "-n", "4", "--rolling", "1")
	before := b.waitReady(4)
	wait := startLoadUnderWay(b.addr("http"), 5*time.Second)

	deploy("fail-slot 2")
	out, code := b.cli("reload")
	if code != 1 {
		t.Errorf("reload exited %d, want 1: %s", code, out)
	}
	for _, want := range []string{"reload to generation 2 failed", "worker slot 2", "bad deploy in slot 2", "slots [0 1] were rolled back: generation 1 serves every slot again"} {
		if !strings.Contains(out, want) {
			t.Errorf("reload output lacks %q:\n%s", want, out)
		}
	}
	checkLoad(t, wait())

	after := b.waitReady(4)
	if after.Generation != 1 {
		t.Errorf("generation %d serves after the rollback, want 1", after.Generation)
	}
	kept := map[int]int{}
	for _, w := range before.Workers {
		kept[w.Slot] = w.PID
	}
	for _, w := range after.Workers {
		if (w.Slot >= 2) != (kept[w.Slot] == w.PID) {
			t.Errorf("slot %d: pid %d before, %d after; want slots 2 and 3 untouched, 0 and 1 restarted", w.Slot, kept[w.Slot], w.PID)
		}
	}
	if ro := after.Reloads.Last.Rollout; ro == nil || !slices.Equal(ro.RolledBack, []int{1, 0}) {
		t.Errorf("last reload's rollout %+v: want slots 1 then 0 rolled back", ro)
	}
}

// TestCanaryCrashRollsBack: a canary that crashes 2s after it started
// fails the reload with its exit and last output; the old generation
// keeps every worker it had.
func TestCanaryCrashRollsBack(t *testing.T) {
	requireE2E(t)
	b, deploy := badDeploy(t, "--canary", "1", "--canary-window", "10s")
	before := b.waitReady(2)

	deploy("crash-after-2s")
	start := time.Now()
	out, code := b.cli("reload")
	if code != 1 {
		t.Errorf("reload of a canary that crashes exited %d, want 1: %s", code, out)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("the reload failed %s after it began: a canary's exit ends its window at once", took)
	}
	for _, want := range []string{"the canary (slot 0) failed", "exited with status 2", "crashing after 2s on purpose", "generation 1 keeps serving, untouched"} {
		if !strings.Contains(out, want) {
			t.Errorf("reload output lacks %q:\n%s", want, out)
		}
	}
	after := b.waitReady(2)
	if after.Generation != 1 || fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) {
		t.Errorf("after the canary failed: generation %d, workers %v; want generation 1 with its workers %v untouched", after.Generation, workerPIDs(after), workerPIDs(before))
	}
	c := after.Reloads.Last.Rollout.Canary
	if c == nil || c.Verdict != api.CanaryRolledBack || !strings.Contains(c.Reason, "exited with status 2") {
		t.Errorf("last reload's canary %+v: want rolled back, its reason the exit", c)
	}
	if !strings.Contains(b.log.String(), "canary failed: rolling back") {
		t.Errorf("baton's log does not say the canary failed")
	}
}

// TestCanaryErrorsRollBack: a canary that answers 500 to one request in
// 10 and reports them (X_BATON_ERRORS) fails at its first error; the
// old generation keeps every worker. A good deploy then passes its
// canary and rolls, under load, with no error.
func TestCanaryErrorsRollBack(t *testing.T) {
	requireE2E(t)
	b, deploy := badDeploy(t, "--canary", "1", "--canary-window", "30s")
	before := b.waitReady(2)
	addr := b.addr("http")

	deploy("errors")
	type result struct {
		out  string
		code int
	}
	done := make(chan result, 1)
	go func() {
		out, code := b.cli("reload")
		done <- result{out, code}
	}()
	// Requests on new connections, which the canary gets its share of,
	// until the reload answers.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	var r result
	var n500 int
	for waiting := true; waiting; {
		select {
		case r = <-done:
			waiting = false
		default:
			if resp, err := client.Get("http://" + addr + "/"); err == nil {
				if resp.StatusCode == http.StatusInternalServerError {
					n500++
				}
				resp.Body.Close()
			}
		}
	}
	if r.code != 1 {
		t.Errorf("reload of a canary that reports errors exited %d, want 1: %s", r.code, r.out)
	}
	for _, want := range []string{"the canary (slot 0) failed", "errors (X_BATON_ERRORS)", "more than canary_max_errors (0)", "generation 1 keeps serving, untouched"} {
		if !strings.Contains(r.out, want) {
			t.Errorf("reload output lacks %q:\n%s", want, r.out)
		}
	}
	if n500 == 0 {
		t.Errorf("no request got the canary's 500")
	}
	after := b.waitReady(2)
	if after.Generation != 1 || fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) {
		t.Errorf("after the canary failed: generation %d, workers %v; want generation 1 with its workers %v untouched", after.Generation, workerPIDs(after), workerPIDs(before))
	}

	deploy("ok")
	wait := startLoadUnderWay(addr, 5*time.Second)
	out, code := b.cli("reload", "--canary-window=2s", "--rolling")
	if code != 0 || !strings.Contains(out, "canary slot 0 passed its 2s window") || !strings.Contains(out, "rolling 1 slot at a time") {
		t.Errorf("reload of a good deploy exited %d: %s; want it to say its canary passed and it rolled", code, out)
	}
	checkLoad(t, wait())
}
