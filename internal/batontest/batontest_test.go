package batontest

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTB records what a helper does to its test: a Fatal ends the
// goroutine it is called on, as testing's does, so helpers that may call
// it run on a goroutine of their own (see run).
type fakeTB struct {
	testing.TB // nil: a method the helpers are not expected to call panics

	mu       sync.Mutex
	errors   []string
	fatal    string
	skipped  string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.errors) > 0 || f.fatal != ""
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}

func (f *fakeTB) Fatal(args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Skip(args ...any) {
	f.mu.Lock()
	f.skipped = fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

// run calls fn with f on a goroutine of its own, as the test's body, then
// on the same goroutine f's cleanups, last in first out, as testing does.
func (f *fakeTB) run(fn func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			for i := len(f.cleanups) - 1; i >= 0; i-- {
				f.cleanups[i]()
			}
		}()
		fn(f)
	}()
	<-done
}

func TestWaitForReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	WaitFor(t, 10*time.Second, func() error {
		calls++
		if calls < 4 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if calls != 4 {
		t.Errorf("cond called %d times, want 4: WaitFor returns at the first nil", calls)
	}
}

func TestWaitForFailsWithTheLastError(t *testing.T) {
	f := &fakeTB{}
	calls := 0
	f.run(func(tb testing.TB) {
		WaitFor(tb, 30*time.Millisecond, func() error {
			calls++
			return fmt.Errorf("not yet (call %d)", calls)
		})
	})
	if calls < 2 {
		t.Errorf("cond called %d times in 30ms, want at least 2 (at once and at the deadline)", calls)
	}
	want := fmt.Sprintf("not yet (call %d)", calls)
	if !strings.Contains(f.fatal, want) || !strings.Contains(f.fatal, "30ms") {
		t.Errorf("WaitFor failed with %q, want the last error %q and the timeout", f.fatal, want)
	}
}

func TestWaitWrapsTheLastError(t *testing.T) {
	errNotYet := errors.New("not yet")
	err := Wait(10*time.Millisecond, func() error { return errNotYet })
	if !errors.Is(err, errNotYet) {
		t.Errorf("Wait = %v, want it to wrap the condition's error", err)
	}
	if err := Wait(0, func() error { return nil }); err != nil {
		t.Errorf("Wait with a condition that holds at once = %v, want nil", err)
	}
}

func TestStopEndsTheWaitAtOnce(t *testing.T) {
	errGone := errors.New("the process exited")
	calls := 0
	err := Wait(time.Hour, func() error {
		calls++
		return Stop(fmt.Errorf("waiting for it to be ready: %w", errGone))
	})
	if calls != 1 {
		t.Errorf("cond called %d times, want 1: Stop ends the wait", calls)
	}
	if !errors.Is(err, errGone) {
		t.Errorf("Wait = %v, want it to wrap the stopped error", err)
	}
	if s := fmt.Sprint(err); strings.Count(s, "the process exited") != 1 {
		t.Errorf("Wait = %q: the error once, unwrapped from Stop", s)
	}
	if err := Stop(nil); err != nil {
		t.Errorf("Stop(nil) = %v, want nil", err)
	}
}

func TestCheckLeaksPassesACleanTest(t *testing.T) {
	f := &fakeTB{}
	f.run(func(tb testing.TB) {
		CheckLeaks(tb)
		r, w, err := os.Pipe()
		if err != nil {
			tb.Fatal(err)
		}
		// Closed by the test's own cleanup, which runs before the check's.
		tb.Cleanup(func() { r.Close(); w.Close() })
		stop := make(chan struct{})
		go func() { <-stop }()
		close(stop)
	})
	if f.Failed() {
		t.Errorf("CheckLeaks failed a test that left nothing behind: %q %q", f.errors, f.fatal)
	}
}

func TestCheckLeaksReportsDescriptorsAndGoroutines(t *testing.T) {
	defer func(saved time.Duration) { leakWait = saved }(leakWait)
	leakWait = 50 * time.Millisecond
	f := &fakeTB{}
	var r, w *os.File
	release := make(chan struct{})
	defer close(release)
	f.run(func(tb testing.TB) {
		CheckLeaks(tb)
		var err error
		if r, w, err = os.Pipe(); err != nil {
			tb.Fatal(err)
		}
		go leakedGoroutine(release)
	})
	rfd, wfd := r.Fd(), w.Fd()
	r.Close()
	w.Close()
	if len(f.errors) != 1 {
		t.Fatalf("CheckLeaks reported %d errors, want 1: %q", len(f.errors), f.errors)
	}
	got := f.errors[0]
	for _, want := range []string{
		"2 descriptors", fmt.Sprintf("fd %d: pipe:[", rfd), fmt.Sprintf("fd %d: pipe:[", wfd),
		"1 goroutines", "batontest.leakedGoroutine",
	} {
		if runtime.GOOS != "linux" && strings.Contains(want, "descriptors") {
			continue
		}
		if !strings.Contains(got, want) {
			t.Errorf("the report does not say %q:\n%s", want, got)
		}
	}
}

// leakedGoroutine is a goroutine a test forgot: its name is in the leak
// report's stack.
func leakedGoroutine(release chan struct{}) { <-release }

func TestCheckLeaksWaitsForWhatIsOnItsWayOut(t *testing.T) {
	f := &fakeTB{}
	f.run(func(tb testing.TB) {
		CheckLeaks(tb)
		r, w, err := os.Pipe()
		if err != nil {
			tb.Fatal(err)
		}
		go func() {
			// This sleep is the test: a goroutine that closes what the
			// test opened a moment after the test returns.
			time.Sleep(50 * time.Millisecond)
			r.Close()
			w.Close()
		}()
	})
	if f.Failed() {
		t.Errorf("CheckLeaks did not wait for a goroutine on its way out: %q", f.errors)
	}
}

func TestCheckLeaksSkipsAFailedTest(t *testing.T) {
	defer func(saved time.Duration) { leakWait = saved }(leakWait)
	leakWait = time.Millisecond
	release := make(chan struct{})
	defer close(release)
	f := &fakeTB{}
	f.run(func(tb testing.TB) {
		CheckLeaks(tb)
		go leakedGoroutine(release)
		tb.Errorf("the test's own failure")
	})
	if len(f.errors) != 1 {
		t.Errorf("a failed test's errors: %q, want its own only", f.errors)
	}
}

func TestCountFDs(t *testing.T) {
	before := NumFDs(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if got := NumFDs(t); got != before+2 {
		t.Errorf("NumFDs with a pipe open = %d, want %d", got, before+2)
	}
	fds, err := OpenFDs()
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != before+2 {
		t.Errorf("OpenFDs lists %d descriptors, CountFDs counts %d", len(fds), before+2)
	}
	for _, f := range []*os.File{r, w} {
		if target := fds[int(f.Fd())]; !strings.HasPrefix(target, "pipe:[") {
			t.Errorf("OpenFDs()[%d] = %q, want a pipe", f.Fd(), target)
		}
	}
	r.Close()
	w.Close()
	if got := NumFDs(t); got != before {
		t.Errorf("NumFDs after closing the pipe = %d, want %d", got, before)
	}
}

func TestCheckLeaksReportsADescriptorClosedThatWasOpenBefore(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("descriptors are counted on Linux only")
	}
	defer func(saved time.Duration) { leakWait = saved }(leakWait)
	leakWait = 10 * time.Millisecond
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rfd := r.Fd()
	f := &fakeTB{}
	f.run(func(tb testing.TB) {
		CheckLeaks(tb)
		r.Close()
	})
	if len(f.errors) != 1 || !strings.Contains(f.errors[0], "closed 1 descriptors it did not open") ||
		!strings.Contains(f.errors[0], fmt.Sprintf("fd %d: pipe:[", rfd)) {
		t.Errorf("CheckLeaks reported %q, want the descriptor the test closed", f.errors)
	}
}

// TestCheckLeaksTellsGoroutinesApart: a goroutine that was running at the
// start and ends during the test does not hide one the test leaves behind.
func TestCheckLeaksTellsGoroutinesApart(t *testing.T) {
	defer func(saved time.Duration) { leakWait = saved }(leakWait)
	leakWait = 50 * time.Millisecond
	before, ended := make(chan struct{}), make(chan struct{})
	go func() {
		<-before
		close(ended)
	}()
	release := make(chan struct{})
	defer close(release)
	f := &fakeTB{}
	f.run(func(tb testing.TB) {
		CheckLeaks(tb)
		close(before)
		<-ended
		go leakedGoroutine(release)
	})
	if len(f.errors) != 1 || !strings.Contains(f.errors[0], "batontest.leakedGoroutine") {
		t.Errorf("CheckLeaks reported %q, want the goroutine the test left behind", f.errors)
	}
}
