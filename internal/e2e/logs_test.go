package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/control"
)

// startBatonOut is startBaton with baton's binary bin and its output to
// out (a file: /dev/null for a worker that prints 100 MB).
func startBatonOut(t *testing.T, bin string, out *os.File, args ...string) *instance {
	t.Helper()
	ctl := filepath.Join(shortDir(t), "ctl.sock")
	b := &instance{t: t, ctl: ctl, log: &logBuffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(bin, append([]string{"run", "--control", ctl}, args...)...)
	b.cmd.Stdout, b.cmd.Stderr = out, out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() { b.stop(20 * time.Second) })
	return b
}

// logs runs `baton logs --json ARGS` and returns its entries; the last
// is the end, with the buffer's figures.
func (b *instance) logs(args ...string) []api.LogEntry {
	b.t.Helper()
	out, code := b.cli(append([]string{"logs", "--json"}, args...)...)
	if code != 0 {
		b.t.Fatalf("baton logs %v exited %d: %s", args, code, out)
	}
	var es []api.LogEntry
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e api.LogEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			b.t.Fatalf("baton logs --json printed %q: %v", line, err)
		}
		es = append(es, e)
	}
	if len(es) == 0 || es[len(es)-1].End == nil {
		b.t.Fatalf("baton logs --json did not end with the buffer's figures:\n%s", out)
	}
	return es
}

// workerText is the text of the workers' lines among es.
func workerText(es []api.LogEntry) []string {
	var out []string
	for _, e := range es {
		if e.Line != nil && e.Line.Source == "worker" {
			out = append(out, fmt.Sprintf("g%d s%d %d %s: %s", e.Line.Generation, *e.Line.Slot, e.Line.PID, e.Line.Stream, e.Line.Text))
		}
	}
	return out
}

// TestLogsCrashedWorker: what a worker printed before it crashed is
// there after its exit, tagged with its slot, generation, pid and
// stream, and the filters select it.
func TestLogsCrashedWorker(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	// Slot 0's first worker says its last words and dies; every later
	// one, and slot 1's, stays up.
	script := fmt.Sprintf(`if [ "$BATON_SLOT" = 0 ] && mkdir %s/died 2>/dev/null; then echo "last words of $$"; echo "stack trace of $$" >&2; exit 7; fi; echo "up $$ slot $BATON_SLOT"; exec sleep 60`, dir)
	b := startBaton(t, nil, "--no-listeners", "-n", "2", "--ready", "delay:100ms", "--", "/bin/sh", "-c", script)
	st := b.waitReady(2)
	for _, w := range st.Workers {
		if w.Slot == 0 && w.Restarts != 1 {
			t.Fatalf("slot 0 restarted %d times, want 1 (its first worker crashed)", w.Restarts)
		}
	}
	all := strings.Join(workerText(b.logs()), "\n")
	var dead string
	for _, l := range strings.Split(all, "\n") {
		if _, pid, ok := strings.Cut(l, "last words of "); ok {
			dead = pid
		}
	}
	if dead == "" {
		t.Fatalf("the crashed worker's output is not in baton logs:\n%s", all)
	}
	for _, want := range []string{"g1 s0 " + dead + " stdout: last words of " + dead, "g1 s0 " + dead + " stderr: stack trace of " + dead} {
		if !strings.Contains(all, want) {
			t.Errorf("baton logs lacks %q:\n%s", want, all)
		}
	}
	// The text form says the same.
	text, code := b.cli("logs", "--slot", "0")
	if code != 0 || !strings.Contains(text, "[g1 s0 "+dead+" stderr] stack trace of "+dead) {
		t.Errorf("baton logs --slot 0 exited %d:\n%s", code, text)
	}

	for _, tt := range []struct {
		name string
		args []string
		want func(l string) bool
		n    int // lines wanted; -1: any number, at least one
	}{
		{name: "slot 1", args: []string{"--slot", "1"}, want: func(l string) bool { return strings.HasPrefix(l, "g1 s1 ") }, n: 1},
		{name: "slot 0", args: []string{"--slot", "0"}, want: func(l string) bool { return strings.HasPrefix(l, "g1 s0 ") }, n: 3},
		{name: "generation 1", args: []string{"--generation", "1"}, want: func(l string) bool { return strings.HasPrefix(l, "g1 ") }, n: 4},
		{name: "generation 2", args: []string{"--generation", "2"}, n: 0},
		{name: "last line of slot 0", args: []string{"--slot", "0", "--lines", "1"}, want: func(l string) bool { return strings.Contains(l, "up ") }, n: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			es := b.logs(tt.args...)
			got := workerText(es)
			if len(got) != tt.n || len(es)-1 != len(got) {
				t.Fatalf("%d entries, %d of workers; want %d, and no line of baton's: %v", len(es)-1, len(got), tt.n, es)
			}
			for _, l := range got {
				if !tt.want(l) {
					t.Errorf("line %q does not belong", l)
				}
			}
		})
	}
	// Usage errors exit 2.
	if out, code := b.cli("logs", "--slot", "-1"); code != 2 {
		t.Errorf("baton logs --slot -1 exited %d, want 2: %s", code, out)
	}

	// An upgrade hands the lines over: the crash is still readable, with
	// its numbers, and the new baton's lines come after them (the ring is
	// far from full: nothing was evicted).
	before := b.logs()
	if out, code := b.cli("upgrade"); code != 0 {
		t.Fatalf("upgrade exited %d: %s", code, out)
	}
	after := b.logs()
	text = strings.Join(workerText(after), "\n")
	if !strings.Contains(text, "g1 s0 "+dead+" stderr: stack trace of "+dead) {
		t.Errorf("after the upgrade, baton logs lacks the crashed worker's output:\n%s", text)
	}
	first, last := func(es []api.LogEntry) uint64 { return es[0].Line.Seq }, func(es []api.LogEntry) uint64 { return es[len(es)-2].Line.Seq }
	if len(before) < 2 || len(after) <= len(before) || first(after) != first(before) || last(after) <= last(before) {
		t.Errorf("after the upgrade the lines are %d..%d, before it %d..%d; want the same first line and more after", first(after), last(after), first(before), last(before))
	}
}

// TestLogsFollow: --follow prints lines that come after it started, and
// a follower that never reads does not stall baton: reloads still
// succeed, its queue drops, and the drops are counted.
func TestLogsFollow(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "--no-listeners", "-n", "1", "--ready", "delay:100ms", "--drain-timeout", "2s", "--",
		"/bin/sh", "-c", chattyWorker)
	b.waitReady(1)

	// A follower that never reads: its socket buffers fill, then its
	// queue in baton.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stuck, err := control.Open(ctx, b.ctl, api.MethodLogs, api.LogsParams{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()

	// A follower that reads, of slot 0's lines only, none of the old.
	cmd := exec.Command(clientBin, "logs", "--follow", "--json", "--slot", "0", "--lines", "0", "--control", b.ctl)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	lines := make(chan api.LogEntry, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e api.LogEntry
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				lines <- e
			}
		}
	}()

	// Reloads succeed while the stuck follower does not read.
	for i := range 3 {
		rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := (&api.Client{Path: b.ctl}).Reload(rctx, true)
		rcancel()
		if err != nil {
			t.Fatalf("reload %d with a follower that does not read: %v", i+1, err)
		}
	}
	st := b.waitReady(1)
	// The reading follower sees the new generation's lines.
	deadline := time.After(30 * time.Second)
	for seen := false; !seen; {
		select {
		case e, ok := <-lines:
			if !ok {
				t.Fatal("baton logs --follow ended")
			}
			if e.Line != nil {
				if e.Line.Source != "worker" || *e.Line.Slot != 0 {
					t.Fatalf("follower of slot 0 got %+v", e.Line)
				}
				seen = e.Line.Generation == st.Generation
			}
		case <-deadline:
			t.Fatalf("baton logs --follow printed no line of generation %d within 30s", st.Generation)
		}
	}
	// The stuck follower's queue dropped what did not fit.
	eventually(t, 30*time.Second, "the stuck follower drops lines", func() error {
		end := b.logs("--lines", "0")[0].End
		if end.Buffer.FollowerDropped == 0 || end.Buffer.Followers != 2 {
			return fmt.Errorf("buffer %+v: want 2 followers, lines dropped", end.Buffer)
		}
		return nil
	})
	// Reading again, it is told where lines were dropped.
	sc := bufio.NewScanner(stuck)
	sc.Buffer(nil, 1<<20)
	var dropped int64
	for dropped == 0 && sc.Scan() {
		var e api.LogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		dropped = e.Dropped
	}
	if dropped == 0 {
		t.Fatalf("the stuck follower read no drop notice: %v", sc.Err())
	}
	t.Logf("the follower that did not read lost %d lines, and was told", dropped)
}

// TestLogsMemoryBound: a worker that prints 100 MB leaves baton's ring
// within its bound, and baton's memory within a few MiB of what it was.
func TestLogsMemoryBound(t *testing.T) {
	requireE2E(t)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	dir := shortDir(t)
	const total = 100 << 20 // lines of 200 bytes and a newline
	script := fmt.Sprintf(`while [ ! -e %s/go ]; do sleep 0.05; done; yes "$(head -c 200 /dev/zero | tr '\0' x)" | head -c %d; echo; echo done printing; exec sleep 600`, dir, total)
	// Without the race detector, whose memory would hide baton's.
	b := startBatonOut(t, clientBin, devnull, "--no-listeners", "-n", "1", "--ready", "delay:50ms", "--", "/bin/sh", "-c", script)
	b.waitReady(1)
	pid := b.cmd.Process.Pid
	before := rssKiB(t, pid)
	start := time.Now()
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var end *api.LogsEnd
	eventually(t, 2*time.Minute, "baton reads the 100 MB", func() error {
		es := b.logs("--lines", "1")
		end = es[len(es)-1].End
		if len(es) < 2 || es[0].Line.Text != "done printing" {
			return fmt.Errorf("%d lines taken so far", end.Buffer.Added)
		}
		return nil
	})
	took := time.Since(start)
	after := rssKiB(t, pid)
	buf := end.Buffer
	t.Logf("100 MB of output (%d lines) read in %s; ring: %d lines, %d bytes of %d, %d evicted; baton's RSS %d KiB before, %d KiB after",
		buf.Added, took.Round(time.Millisecond), buf.Lines, buf.Bytes, buf.LimitBytes, buf.Evicted, before, after)
	if buf.Bytes > buf.LimitBytes || buf.LimitBytes != 1<<20 {
		t.Errorf("the ring holds %d bytes, over its limit of %d (want 1 MiB)", buf.Bytes, buf.LimitBytes)
	}
	if buf.Added < total/201 {
		t.Errorf("the ring took %d lines, fewer than the %d printed", buf.Added, total/201)
	}
	// The ring's 1 MiB, baton's two output buffers of 1 MiB, and the
	// garbage collector's slack: 32 MiB is far above that, and far below
	// 100 MB.
	if grew := after - before; grew > 32<<10 {
		t.Errorf("baton's RSS grew by %d KiB while its worker printed 100 MB; want it bounded (under 32 MiB)", grew)
	}
}

// rssKiB is pid's resident memory (VmRSS), in KiB.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}
