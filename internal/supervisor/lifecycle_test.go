package supervisor

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/spawn"
)

func TestMain(m *testing.M) {
	// Workers start through a re-exec of this binary as the shim.
	spawn.RunShim()
	os.Exit(m.Run())
}

// testSpawner is the one Spawner of the test process: its reaper collects
// every child.
var testSpawner = sync.OnceValue(spawn.New)

// syncBuffer collects output written from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// shellConfig runs script under /bin/sh in n slots, ready after 50ms.
func shellConfig(n int, script string) Config {
	return Config{
		Path: "/bin/sh", Args: []string{"sh", "-c", script},
		Env:     []string{"PATH=/usr/bin:/bin"},
		Workers: n, Ready: ReadyAfter(50 * time.Millisecond), ReadyTimeout: 5 * time.Second,
		StopSignal: syscall.SIGTERM, DrainTimeout: 2 * time.Second, LogPrefix: true,
		Handoff: HandoffConfig{Timeout: handoff.DefaultTimeout, MaxState: handoff.DefaultMaxState},
	}
}

// testRun is a supervisor running in the test, with its log.
type testRun struct {
	*Supervisor
	log *syncBuffer
	ran chan error
}

// runSupervisor starts a supervisor of cfg (no listeners) and stops it
// when the test ends.
func runSupervisor(t *testing.T, cfg Config) *testRun {
	t.Helper()
	out := &syncBuffer{}
	s, err := New(Options{
		Plan:    Plan{Config: cfg},
		Spawner: testSpawner(),
		Log:     slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Stdout:  out, Stderr: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &testRun{Supervisor: s, log: out, ran: make(chan error, 1)}
	go func() { r.ran <- s.Run() }()
	t.Cleanup(func() {
		s.Stop("the test ended")
		select {
		case <-s.Done():
		case <-time.After(30 * time.Second):
			t.Errorf("the supervisor did not stop within 30s")
		}
		if t.Failed() {
			t.Logf("log:\n%s", out)
		}
	})
	return r
}

// waitStatus polls the status until cond holds, for at most 20 seconds,
// and returns that status.
func (r *testRun) waitStatus(t *testing.T, what string, cond func(Status) bool) Status {
	t.Helper()
	var st Status
	batontest.WaitFor(t, 20*time.Second, func() error {
		var ok bool
		if st, ok = r.Status(); !ok {
			return batontest.Stop(fmt.Errorf("waiting for %s: the supervisor has ended", what))
		}
		if !cond(st) {
			return fmt.Errorf("waiting for %s: last status: %+v", what, st)
		}
		return nil
	})
	return st
}

// readyWorkers counts the ready workers of the serving generation.
func readyWorkers(st Status) int {
	n := 0
	for _, w := range st.Workers {
		if w.State == Ready && w.Generation == st.Generation {
			n++
		}
	}
	return n
}

func TestSlotWhoseStartFailsRetries(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "current")
	cfg := shellConfig(1, "exec sleep 60")
	cfg.Dir = dir // missing: every start fails until it exists
	r := runSupervisor(t, cfg)

	// The slot retries with a growing backoff and says why it waits.
	st := r.waitStatus(t, "the slot to retry at least 3 times", func(st Status) bool {
		return len(st.SlotStates) == 1 && st.SlotStates[0].Restarts >= 3
	})
	sl := st.SlotStates[0]
	if sl.State != SlotBackoff || sl.PID != 0 {
		t.Errorf("slot state %q pid %d; want %q and no worker", sl.State, sl.PID, SlotBackoff)
	}
	if want := "working directory " + dir + ": no such file or directory"; !strings.Contains(sl.LastError, want) {
		t.Errorf("last error %q; want it to say %q", sl.LastError, want)
	}
	if strings.Contains(sl.LastError, "/bin/sh") {
		t.Errorf("last error %q names the command; the command is fine, the directory is missing", sl.LastError)
	}
	if sl.LastErrorTime.IsZero() || sl.NextStart.IsZero() || time.Duration(sl.Backoff) < 2*MinBackoff {
		t.Errorf("slot %+v: want the error's time, the next start and a backoff grown past %s", sl, MinBackoff)
	}
	if len(st.Workers) != 0 {
		t.Errorf("workers %+v; want none while the directory is missing", st.Workers)
	}

	// Once the directory exists the slot comes back by itself.
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	st = r.waitStatus(t, "the slot's worker to be ready", func(st Status) bool { return readyWorkers(st) == 1 })
	if sl := st.SlotStates[0]; sl.State != SlotUp || sl.PID != st.Workers[0].PID {
		t.Errorf("slot %+v; want up, with worker %d", sl, st.Workers[0].PID)
	}
	if !strings.Contains(r.log.String(), "working directory "+dir) {
		t.Errorf("the log never named the directory:\n%s", r.log)
	}
}

// TestCrashedSlotRestartsAfterFailedStart: a worker crashes while its
// directory is gone (a `current` symlink swung to a missing target); the
// restart fails, and the slot still comes back once the target exists.
func TestCrashedSlotRestartsAfterFailedStart(t *testing.T) {
	base := t.TempDir()
	target, link := filepath.Join(base, "v1"), filepath.Join(base, "current")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	cfg := shellConfig(1, "exec sleep 60")
	cfg.Dir = link
	r := runSupervisor(t, cfg)
	st := r.waitStatus(t, "the worker to be ready", func(st Status) bool { return readyWorkers(st) == 1 })
	first := st.Workers[0].PID
	waitExec(t, first, "sleep") // past the shim's chdir

	if err := os.Rename(target, target+".gone"); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(first, syscall.SIGKILL)
	r.waitStatus(t, "a failed restart", func(st Status) bool {
		return len(st.SlotStates) == 1 && strings.Contains(st.SlotStates[0].LastError, "working directory "+link)
	})
	if err := os.Rename(target+".gone", target); err != nil {
		t.Fatal(err)
	}
	st = r.waitStatus(t, "a new worker to be ready", func(st Status) bool {
		return readyWorkers(st) == 1 && st.Workers[0].PID != first
	})
	if st.Workers[0].Restarts < 2 {
		t.Errorf("restarts %d; want the crash and the failed start counted", st.Workers[0].Restarts)
	}
}

// TestReloadWhoseWorkerCannotStartFails: a reload to a directory that
// vanished fails with the reason, and the serving generation goes on.
func TestReloadWhoseWorkerCannotStartFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "app")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := shellConfig(2, "exec sleep 60")
	cfg.Dir = dir
	// With 50ms, a new worker under load can count as ready before its
	// shim has even tried the directory, and the reload succeed.
	cfg.Ready = ReadyAfter(time.Second)
	r := runSupervisor(t, cfg)
	st := r.waitStatus(t, "the workers to be ready", func(st Status) bool { return readyWorkers(st) == 2 })
	// The directory goes once they run the command in it.
	for _, pid := range workerPIDsOf(st) {
		waitExec(t, pid, "sleep")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	out := <-r.Reload("test")
	if out.Err == nil || !strings.Contains(out.Err.Error(), "working directory "+dir) {
		t.Fatalf("reload: %v; want it to fail naming the directory", out.Err)
	}
	// The failed generation's other worker (which the shim started before
	// its own chdir failed) is stopped too.
	after := r.waitStatus(t, "the old workers to serve on, alone", func(s Status) bool {
		return readyWorkers(s) == 2 && s.Pending == 0 && len(s.Workers) == 2
	})
	if fmt.Sprint(workerPIDsOf(after)) != fmt.Sprint(workerPIDsOf(st)) || after.Generation != st.Generation {
		t.Errorf("after the failed reload: generation %d workers %v; want generation %d workers %v",
			after.Generation, workerPIDsOf(after), st.Generation, workerPIDsOf(st))
	}
}

func workerPIDsOf(st Status) []int {
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

// readPID waits for a worker script to write a pid to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	batontest.WaitFor(t, 20*time.Second, func() error {
		b, err := os.ReadFile(path)
		if _, serr := fmt.Sscan(string(b), &pid); err == nil && serr == nil && pid > 0 {
			return nil
		}
		return fmt.Errorf("no pid in %s (%q, %v)", path, b, err)
	})
	return pid
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	p, err := spawn.ReadProc(pid)
	return err == nil && !p.Zombie()
}

// waitExec waits until pid runs the command comm: the shim has changed
// into the working directory and executed it.
func waitExec(t *testing.T, pid int, comm string) {
	t.Helper()
	batontest.WaitFor(t, 20*time.Second, func() error {
		p, err := spawn.ReadProc(pid)
		if err == nil && p.Comm == comm {
			return nil
		}
		return fmt.Errorf("pid %d does not run %s (%+v, %v)", pid, comm, p, err)
	})
}

// waitGone waits until pid no longer runs.
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	batontest.WaitFor(t, within, func() error {
		if alive(pid) {
			return fmt.Errorf("pid %d still runs", pid)
		}
		return nil
	})
}

// stopAndWait stops the supervisor and waits for Run to return.
func (r *testRun) stopAndWait(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	r.Stop("test")
	select {
	case <-r.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return within 30s of Stop")
	}
	return time.Since(start)
}

// A shell worker that does not exec: the stop signal ends the shell, and
// its child, which kept the worker's descriptors, must not outlive it.
func TestStopEndsWhatTheWorkerLeft(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	cfg := shellConfig(1, "sleep 60 & echo $! > "+pidFile+"; wait")
	cfg.DrainTimeout = 20 * time.Second // a leftover killed at the deadline would say so
	r := runSupervisor(t, cfg)
	r.waitStatus(t, "the worker to be ready", func(st Status) bool { return readyWorkers(st) == 1 })
	child := readPID(t, pidFile)
	waitExec(t, child, "sleep") // not still a copy of the shell, which baton would name sh
	r.stopAndWait(t)
	if alive(child) {
		syscall.Kill(child, syscall.SIGKILL)
		t.Fatalf("the worker's child %d still runs after Run returned", child)
	}
	want := fmt.Sprintf("worker's leftover process pid %d (sleep), in its process group: sent SIGTERM", child)
	if !strings.Contains(r.log.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, r.log)
	}
	if strings.Contains(r.log.String(), "deadline: killed") {
		t.Errorf("a leftover was killed; it exits on SIGTERM, which it was to get at once:\n%s", r.log)
	}
}

// A leftover that ignores the stop signal is killed at the worker's drain
// deadline, and Run waits for that.
func TestLeftoverKilledAtDrainDeadline(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	cfg := shellConfig(1, `sh -c 'trap "" TERM; echo $$ > `+pidFile+`; while :; do sleep 0.1; done' & wait`)
	cfg.DrainTimeout = time.Second
	r := runSupervisor(t, cfg)
	r.waitStatus(t, "the worker to be ready", func(st Status) bool { return readyWorkers(st) == 1 })
	child := readPID(t, pidFile)
	took := r.stopAndWait(t)
	if alive(child) {
		syscall.Kill(child, syscall.SIGKILL)
		t.Fatalf("the leftover %d that ignores SIGTERM still runs after Run returned", child)
	}
	if took < 900*time.Millisecond {
		t.Errorf("Run returned %s after Stop, before the 1s drain deadline: the leftover was not given its drain time", took)
	}
	if want := fmt.Sprintf("worker's leftover process pid %d (sh), in its process group: still ran at the drain deadline: killed", child); !strings.Contains(r.log.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, r.log)
	}
}

// What a crashed worker left running gets the stop signal at once, while
// baton runs on and restarts the slot.
func TestCrashLeftoversEnded(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	// The first worker leaves a child and exits once the child runs sleep
	// (before that it is a copy of the shell, and baton names it "sh").
	script := `if [ ! -e ` + pidFile + ` ]; then sleep 60 & ` +
		`while [ "$(cat /proc/$!/comm 2>/dev/null)" != sleep ]; do :; done; ` +
		`echo $! > ` + pidFile + `; exit 3; fi; exec sleep 60`
	r := runSupervisor(t, shellConfig(1, script))
	child := readPID(t, pidFile)
	waitGone(t, child, 10*time.Second)
	st := r.waitStatus(t, "the restarted worker to be ready", func(st Status) bool { return readyWorkers(st) == 1 })
	if st.Process.LeftoversSignalled < 1 {
		t.Errorf("leftovers signalled: %d; want the crashed worker's child counted", st.Process.LeftoversSignalled)
	}
	if !strings.Contains(r.log.String(), fmt.Sprintf("worker's leftover process pid %d (sleep)", child)) {
		t.Errorf("the log does not name leftover %d:\n%s", child, r.log)
	}
}
