package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/supervisor"
)

// lifecycleCases: slots that lose their worker, processes that outlive
// theirs, and the signals an operator sends baton.
var lifecycleCases = []reliabilityCase{
	{"Lifecycle", "a worker crashes while --dir is a symlink to a missing release", crashWhileDirMissing},
	{"Lifecycle", "a #!/bin/sh wrapper that runs its server without exec, reloaded and stopped", wrapperWithoutExec},
	{"Lifecycle", "SIGQUIT to baton with requests in flight", sigquitDrains},
	{"Lifecycle", "SIGABRT to baton", sigabrtAborts},
	{"Lifecycle", "SIGUSR1, SIGALRM, SIGWINCH, SIGTSTP and SIGPIPE to baton", meaninglessSignals},
}

// swingLink points the symlink link at target atomically, as a deploy
// swings a `current` link (ln -sfn through a rename).
func swingLink(t *testing.T, link, target string) {
	t.Helper()
	tmp := link + ".new"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

func crashWhileDirMissing(t *testing.T) string {
	base := shortDir(t)
	release, link := filepath.Join(base, "v1"), filepath.Join(base, "current")
	if err := os.Mkdir(release, 0o755); err != nil {
		t.Fatal(err)
	}
	swingLink(t, link, release)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--dir", link, "--", helloBin)
	before := rest(b, 1)
	victim := b.waitReady(1).Workers[0].PID
	wait := startLoadUnderWay(b.addr("http"), 4*time.Second)

	// The deploy swings the link to a release that is not there yet, and
	// the worker crashes meanwhile.
	swingLink(t, link, filepath.Join(base, "v2"))
	down := time.Now()
	killPID(victim)
	var slot supervisor.SlotStatus
	batontest.WaitFor(t, 20*time.Second, func() error {
		st, err := b.tryStatusOf(false)
		if err == nil && len(st.SlotStates) == 1 && st.SlotStates[0].State == supervisor.SlotBackoff &&
			strings.Contains(st.SlotStates[0].LastError, "working directory "+link+": no such file or directory") {
			slot = st.SlotStates[0]
			return nil
		}
		return fmt.Errorf("the slot never showed its backoff and the missing directory; last status %+v, %v", st.SlotStates, err)
	})
	out, _ := b.cli("status")
	if !regexp.MustCompile(`(?s)slot 0: backoff, next in [0-9.]+m?s \(restarts \d+\); last error at [0-9:.]+: .*working directory`).MatchString(out) {
		t.Errorf("baton status does not show the slot's backoff and error:\n%s", out)
	}
	// The release arrives: the slot comes back by itself.
	swingLink(t, link, release)
	st := b.waitReady(1)
	back := time.Since(down)
	r := wait()
	checkNeverRefused(t, r, 1)
	if st.Workers[0].PID == victim || st.SlotStates[0].State != supervisor.SlotUp {
		t.Errorf("after the release came back: workers %+v, slot %+v", st.Workers, st.SlotStates)
	}
	// A reload while the link points nowhere fails, as a reload does, and
	// changes nothing.
	swingLink(t, link, filepath.Join(base, "v3"))
	out, code := b.cli("reload")
	swingLink(t, link, release)
	if code != 1 || !strings.Contains(out, "working directory "+link+" does not exist") {
		t.Errorf("reload with --dir pointing nowhere: exit %d, %q; want 1 and the directory named", code, out)
	}
	if st2 := b.waitReady(1); st2.Generation != st.Generation || st2.Workers[0].PID != st.Workers[0].PID {
		t.Errorf("the failed reload changed the workers: %+v, was %+v", st2.Workers, st.Workers)
	}
	after := rest(b, 1)
	checkRest(t, before, after)
	return fmt.Sprintf("the restart failed while the link pointed nowhere; status showed `backoff` with %q and %d restarts; "+
		"once the link was swung back the slot served again %.1fs after the crash, by itself; %s requests, %d failed (on the killed worker); "+
		"a reload while the link pointed nowhere failed naming it and changed nothing",
		firstLine(errors.New(slot.LastError)), slot.Restarts, back.Seconds(), count(r.Requests), r.Failed())
}

// holders lists the processes with a descriptor for the socket of inode
// ino, but for skip.
func holders(ino uint64, skip int) []int {
	want := fmt.Sprintf("socket:[%d]", ino)
	var out []int
	dirs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if pid == skip {
			continue
		}
		fds, _ := os.ReadDir(d)
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(d, fd.Name())); err == nil && l == want {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// pgidOf reads a process's process group, or -1.
func pgidOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return -1
	}
	n, _ := strconv.Atoi(f[2])
	return n
}

// strangers lists the holders of socket ino that are neither baton nor in
// the process group of one of workers.
func strangers(b *instance, ino uint64, workers []int) []int {
	var out []int
	for _, pid := range holders(ino, b.cmd.Process.Pid) {
		g := pgidOf(pid)
		mine := false
		for _, w := range workers {
			mine = mine || g == w
		}
		if !mine && pidAlive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func wrapperWithoutExec(t *testing.T) string {
	dir := shortDir(t)
	script := filepath.Join(dir, "run-server")
	// The wrapper runs the server as its child: the stop signal ends the
	// shell, the server would keep the socket. (LISTEN_PID is the
	// server's own, so that it takes the socket.)
	body := "#!/bin/sh\n/bin/sh -c 'export LISTEN_PID=$$; exec \"$0\"' " + helloBin + "\necho wrapper: the server exited\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--drain-timeout", "5s", "--", script)
	before := rest(b, 2)
	st := b.status()
	ino := st.Listeners[0].Inode
	wait := startLoadUnderWay(b.addr("http"), 6*time.Second)
	const reloads = 3
	for i := range reloads {
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
		cur := workerPIDs(b.waitReady(2))
		batontest.WaitFor(t, 10*time.Second, func() error {
			if s := strangers(b, ino, cur); len(s) > 0 {
				return fmt.Errorf("after reload %d, processes outside the serving workers' process groups still hold the listening socket: %v", i+1, describePIDs(s))
			}
			return nil
		})
	}
	r := wait()
	checkLoad(t, r)
	st = b.status()
	after := rest(b, 2)
	checkRest(t, before, after)

	start := time.Now()
	if out, code := b.cli("stop"); code != 0 || !strings.Contains(out, "stopped") {
		t.Errorf("baton stop: exit %d: %s", code, out)
	}
	if code := b.waitExit(20 * time.Second); code != 0 {
		t.Errorf("baton exited %d after baton stop, want 0", code)
	}
	took := time.Since(start)
	if left := holders(ino, -1); len(left) > 0 {
		t.Errorf("after baton stop, processes still hold the listening socket: %v", describePIDs(left))
		for _, p := range left {
			killPID(p)
		}
	}
	endedRE := regexp.MustCompile(`worker's leftover process pid \d+ \(hello\), in its process group: sent SIGTERM`)
	var ended []string
	// baton's log may still be on its way; the count is checked below.
	batontest.Wait(10*time.Second, func() error {
		if ended = endedRE.FindAllString(b.log.String(), -1); len(ended) < 2*(reloads+1) {
			return errors.New("not yet")
		}
		return nil
	})
	if len(ended) < 2*(reloads+1) {
		t.Errorf("the log names %d leftover servers sent SIGTERM; want the %d of %d generations:\n%s", len(ended), 2*(reloads+1), reloads+1, b.log)
	}
	return fmt.Sprintf("each worker's server outlived its shell; after each of %d reloads only the serving workers' process groups held the socket, "+
		"and after baton stop (%.1fs) no process did; %d leftover servers sent SIGTERM and logged by pid and name (%d counted in status before the stop); %s requests, 0 failed",
		reloads, took.Seconds(), len(ended), st.Process.LeftoversSignalled, count(r.Requests))
}

// describePIDs names each pid with its command name.
func describePIDs(pids []int) string {
	var out []string
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		out = append(out, fmt.Sprintf("%d (%s, pgid %d)", p, strings.TrimSpace(string(comm)), pgidOf(p)))
	}
	return strings.Join(out, ", ")
}

// slowRequests starts n requests that take ms to answer, and returns a
// function that waits for their answers, and counts those that failed.
func slowRequests(addr string, n, ms int) func() (ok int, errs []string) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var good int
	var bad []string
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}
			resp, err := c.Get(fmt.Sprintf("http://%s/slow?ms=%d", addr, ms))
			if err == nil {
				var body []byte
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && !strings.Contains(string(body), "slow ok") {
					err = fmt.Errorf("answer %q", body)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				bad = append(bad, err.Error())
			} else {
				good++
			}
		}()
	}
	return func() (int, []string) {
		wg.Wait()
		return good, bad
	}
}

// waitInFlight waits until the workers hold n established connections
// (the kernel's view).
func waitInFlight(t *testing.T, b *instance, n int) {
	t.Helper()
	batontest.WaitFor(t, 10*time.Second, func() error {
		held := 0
		if st, err := b.tryStatus(); err == nil && st.Kernel != nil {
			for _, w := range st.Kernel.Workers {
				held += w.Connections["ESTAB"]
			}
		}
		if held < n {
			return fmt.Errorf("the workers hold %d established connections, want %d", held, n)
		}
		return nil
	})
}

func sigquitDrains(t *testing.T) string {
	b := startBaton(t, []string{workerEnv + "=http"}, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", testBin)
	st := b.waitReady(2)
	const inflight = 4
	answers := slowRequests(b.addr("http"), inflight, 1500)
	waitInFlight(t, b, inflight)
	start := time.Now()
	b.cmd.Process.Signal(syscall.SIGQUIT)
	code := b.waitExit(20 * time.Second)
	took := time.Since(start)
	ok, bad := answers()
	if code != 0 {
		t.Errorf("baton exited %d after SIGQUIT, want 0 (a graceful stop)", code)
	}
	if strings.Contains(b.log.String(), "goroutine ") {
		t.Errorf("baton dumped its goroutines on SIGQUIT:\n%s", b.log)
	}
	if _, err := os.Lstat(b.ctl); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the control socket %s is left behind after SIGQUIT: %v", b.ctl, err)
	}
	if len(bad) > 0 {
		t.Errorf("%d of %d requests in flight failed: %v", len(bad), inflight, bad)
	}
	for _, pid := range workerPIDs(st) {
		if !b.logHas(fmt.Sprintf("pid=%d status=\"exited with status 0\"", pid)) {
			t.Errorf("worker %d did not exit 0 after draining:\n%s", pid, b.log)
		}
	}
	return fmt.Sprintf("a graceful stop: the %d requests in flight answered (%d ok), both workers drained and exited 0, baton exited 0 after %.1fs, no control socket file left",
		inflight, ok, took.Seconds())
}

func sigabrtAborts(t *testing.T) string {
	b := startBaton(t, []string{workerEnv + "=http"}, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", testBin)
	st := b.waitReady(2)
	start := time.Now()
	b.cmd.Process.Signal(syscall.SIGABRT)
	code := b.waitExit(20 * time.Second)
	took := time.Since(start)
	if code != 134 {
		t.Errorf("baton exited %d after SIGABRT, want 134", code)
	}
	if !strings.Contains(b.log.String(), "goroutine ") {
		t.Errorf("baton did not dump its goroutines on SIGABRT:\n%s", b.log)
	}
	if _, err := os.Lstat(b.ctl); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the control socket %s is left behind after SIGABRT: %v", b.ctl, err)
	}
	waitGone(t, workerPIDs(st), 10*time.Second)
	gone := time.Since(start)
	return fmt.Sprintf("goroutine stacks on stderr, control socket removed, exit 134 after %.2fs; the workers got their stop signal from the parent-death signal and were gone %.1fs after the signal",
		took.Seconds(), gone.Seconds())
}

func meaninglessSignals(t *testing.T) string {
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--log-level", "debug", "--", helloBin)
	before := rest(b, 2)
	pids := workerPIDs(b.waitReady(2))
	wait := startLoadUnderWay(b.addr("http"), 3*time.Second)
	sigs := []syscall.Signal{syscall.SIGUSR1, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGTSTP, syscall.SIGPIPE}
	for _, sig := range sigs {
		b.cmd.Process.Signal(sig)
	}
	for _, name := range []string{"SIGUSR1", "SIGALRM", "SIGWINCH", "SIGTSTP"} {
		if !b.logHas("signal ignored\" signal=" + name) {
			t.Fatalf("no log line says %s was ignored:\n%s", name, b.log)
		}
	}
	r := wait()
	checkLoad(t, r)
	if got := workerPIDs(b.waitReady(2)); fmt.Sprint(got) != fmt.Sprint(pids) {
		t.Errorf("workers %v after the signals, were %v", got, pids)
	}
	after := rest(b, 2)
	checkRest(t, before, after)
	return fmt.Sprintf("%d signals: each ignored with a log line naming it (SIGPIPE silently); same workers, %s requests, 0 failed", len(sigs), count(r.Requests))
}
