package batontest

import (
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// leakWait bounds how long CheckLeaks waits, after a test, for its
// goroutines to return and its descriptors to close: some are closed by
// a goroutine that is on its way out when the test returns.
var leakWait = 5 * time.Second

// NumFDs returns how many descriptors this process has open (CountFDs).
// It fails t if /proc/self/fd cannot be read, and skips t off Linux,
// where nothing says.
func NumFDs(t testing.TB) int {
	t.Helper()
	n, err := CountFDs()
	if err != nil {
		if runtime.GOOS != "linux" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	return n
}

// CheckLeaks notes which goroutines run and which descriptors are open,
// and at the test's end fails it (t.Errorf) unless, within 5 seconds, no
// goroutine runs that did not at the start, and exactly as many
// descriptors are open again: more is a leak, fewer is a close of a
// descriptor the test did not open (a double close that hit a reused
// number, say). Goroutines are told apart by their ids, so one that was
// running at the start and ends during the test does not hide one the
// test leaves behind. The report lists the goroutines (with their stacks)
// and the descriptors (with what they are) that differ from the start. A
// test that has already failed is not checked.
//
// Call it first in the test, so that its cleanup runs after the test's
// own (t.Cleanup runs them last in, first out), and only in a test that
// does not run in parallel with others of its process: it counts the
// whole process. Off Linux it checks goroutines only.
//
// Before counting it opens and closes a pipe, so that the runtime's
// poller (an epoll instance and an eventfd, opened with the first file
// that can be polled, and kept) is not taken for the test's. Other
// process-wide state that a test may start first and that stays by
// design, such as os/signal's goroutine, is the caller's to start before
// CheckLeaks.
func CheckLeaks(t testing.TB) {
	t.Helper()
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	gs := goroutines()
	fds, fdErr := OpenFDs() // fdErr: off Linux, fds are not checked
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		err := Wait(leakWait, func() error {
			if report := leaks(gs, fds, fdErr == nil); report != "" {
				return fmt.Errorf("leaked %s", report)
			}
			return nil
		})
		if err != nil {
			t.Errorf("the test left behind what it started: %v", err)
		}
	})
}

// leaks describes the goroutines that are not in gs and the descriptors
// that differ from fds (if checkFDs) when their count does, and is "" if
// there are none.
func leaks(gs map[string]string, fds map[int]string, checkFDs bool) string {
	var b strings.Builder
	nowGs := goroutines()
	var nowFDs map[int]string
	if checkFDs {
		if m, err := OpenFDs(); err == nil {
			nowFDs = m
		} else {
			checkFDs = false
		}
	}
	switch {
	case !checkFDs:
	case len(nowFDs) > len(fds):
		fmt.Fprintf(&b, "%d descriptors (%d open, %d before):", len(nowFDs)-len(fds), len(nowFDs), len(fds))
		for _, fd := range slices.Sorted(maps.Keys(nowFDs)) {
			if fds[fd] != nowFDs[fd] {
				fmt.Fprintf(&b, "\n\tfd %d: %s", fd, nowFDs[fd])
			}
		}
	case len(nowFDs) < len(fds):
		fmt.Fprintf(&b, "none, but closed %d descriptors it did not open (%d open, %d before):", len(fds)-len(nowFDs), len(nowFDs), len(fds))
		for _, fd := range slices.Sorted(maps.Keys(fds)) {
			if fds[fd] != nowFDs[fd] {
				fmt.Fprintf(&b, "\n\tfd %d: %s", fd, fds[fd])
			}
		}
	}
	var started []string
	for _, id := range slices.Sorted(maps.Keys(nowGs)) {
		if _, ok := gs[id]; !ok {
			started = append(started, nowGs[id])
		}
	}
	if len(started) > 0 {
		if b.Len() > 0 {
			b.WriteString("\nand ")
		}
		fmt.Fprintf(&b, "%d goroutines (%d running, %d before):", len(started), len(nowGs), len(gs))
		for _, g := range started {
			fmt.Fprintf(&b, "\n\n%s", g)
		}
	}
	return b.String()
}

// goroutines returns the stack of every goroutine, keyed by its id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	gs := make(map[string]string)
	for _, g := range strings.Split(string(buf), "\n\n") {
		// "goroutine 42 [chan receive]:\n..."
		if f := strings.Fields(g); len(f) > 1 && f[0] == "goroutine" {
			gs[f[1]] = g
		}
	}
	return gs
}
