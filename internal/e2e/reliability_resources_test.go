package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/control"
)

// resourceCases: baton's own memory, descriptors, goroutines and
// processes, bounded. Both run baton built without the race detector
// (clientBin), whose memory is what users run.
var resourceCases = []reliabilityCase{
	{"Resources", "64 workers: baton's resident memory", rssWith64Workers},
	{"Resources", "reload after reload: descriptors, goroutines, processes, memory", reloadsDoNotGrow},
}

// reloadsEnv sets how many reloads reloadsDoNotGrow makes (default 100;
// BATON_E2E_RELOADS=1000 for the figure in docs/reliability.md).
const reloadsEnv = "BATON_E2E_RELOADS"

// rssLimit is what baton may hold in memory with 64 workers.
const rssLimit = 30 << 20

// vmRSS reads a process's resident memory, in bytes.
func vmRSS(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0
	}
	var size, pages int
	fmt.Sscan(string(b), &size, &pages)
	return pages * os.Getpagesize()
}

func mib(n int) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func rssWith64Workers(t *testing.T) string {
	const n = 64
	b := startBin(t, clientBin, filepath.Join(shortDir(t), "ctl.sock"), nil,
		"-l", "http=tcp://127.0.0.1:0", "-n", strconv.Itoa(n), "--ready", "notify", "--", clientBin, "demo")
	b.waitReady(n)
	// The status with the kernel's view walks every worker's descriptors:
	// the busiest baton gets.
	b.status()
	peak := 0
	for range 10 {
		b.status()
		peak = max(peak, vmRSS(b.cmd.Process.Pid))
		time.Sleep(50 * time.Millisecond) // sampling: the peak over half a second
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: %s", out)
	}
	b.waitReady(n)
	peak = max(peak, vmRSS(b.cmd.Process.Pid))
	if peak > rssLimit {
		t.Errorf("baton's resident memory reached %s with %d workers; the bound is %s", mib(peak), n, mib(rssLimit))
	}
	return fmt.Sprintf("at most %s resident (bound %s) with %d workers, through status requests with the kernel's view and a reload of all %d",
		mib(peak), mib(rssLimit), n, n)
}

func reloadsDoNotGrow(t *testing.T) string {
	reloads := 100
	if v, err := strconv.Atoi(os.Getenv(reloadsEnv)); err == nil && v > 10 {
		reloads = v
	}
	// No periodic kernel check: its netlink socket would come and go.
	b := startBin(t, clientBin, filepath.Join(shortDir(t), "ctl.sock"), nil,
		"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--inspect-interval", "0", "--", helloBin)
	b.waitReady(2)
	reload := func(i int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := control.Call(ctx, b.ctl, "reload", nil); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	const warm = 10
	for i := range warm {
		reload(i + 1)
	}
	first := rest(b, 2)
	start := time.Now()
	for i := warm; i < reloads; i++ {
		reload(i + 1)
	}
	took := time.Since(start)
	last := rest(b, 2)
	if last.fds > first.fds || last.goroutines > first.goroutines || last.kids != first.kids {
		t.Errorf("after %d reloads: %v; after %d: %v", warm, first, reloads, last)
	}
	// The heap may settle a little higher; a leak grows with the count.
	if last.rss > first.rss+4<<20 {
		t.Errorf("resident memory grew from %s after %d reloads to %s after %d", mib(first.rss), warm, mib(last.rss), reloads)
	}
	return fmt.Sprintf("after %d reloads: %s; after %d (%.0f reloads/s): %s", warm, counts(first), reloads, float64(reloads-warm)/took.Seconds(), counts(last))
}

func counts(r atRest) string {
	return fmt.Sprintf("%d fds, %d goroutines, %d children, %s resident", r.fds, r.goroutines, r.kids, mib(r.rss))
}
