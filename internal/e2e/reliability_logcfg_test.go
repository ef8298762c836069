package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/supervisor"
)

// logcfgCases: what baton reads and writes that can block or mislead it:
// its own output, its config file, the values in it.
var logcfgCases = []reliabilityCase{
	{"Faults", "baton's stdout and stderr a FIFO whose reader is stopped, while workers log and reloads run", stoppedOutputReader},
	{"Faults", "the config file replaced by a FIFO during reloads", configBecomesFIFO},
	{"Faults", "drain_timeout = 30 (a duration without a unit) in the config file", durationWithoutUnit},
	{"Security", "a config file that other users can write", configOthersCanWrite},
}

// startBatonTo is startBaton with baton's stdout and stderr both out (a
// FIFO, say), which baton inherits as it is.
func startBatonTo(t *testing.T, out *os.File, args ...string) *instance {
	t.Helper()
	return startBatonOut(t, batonBin, out, args...)
}

// callWithin makes a control call that must be answered within d.
func callWithin(b *instance, d time.Duration, method string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return control.Call(ctx, b.ctl, method, nil)
}

// chattyWorker is a worker that writes 2 KB lines to stdout and stderr,
// 200 a second: 400 KB/s, a full 1 MiB buffer within seconds.
const chattyWorker = `l=$(head -c 2000 /dev/zero | tr '\0' x); while :; do echo "out $l"; echo "err $l" >&2; sleep 0.01; done`

func stoppedOutputReader(t *testing.T) string {
	dir := shortDir(t)
	fifo, got := filepath.Join(dir, "out"), filepath.Join(dir, "got")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sink, err := os.Create(got)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	reader := exec.Command("cat", fifo)
	reader.Stdout = sink
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		reader.Process.Signal(syscall.SIGCONT)
		reader.Process.Kill()
		reader.Wait()
	})
	out, err := os.OpenFile(fifo, os.O_WRONLY, 0) // once cat has it open
	if err != nil {
		t.Fatal(err)
	}
	b := startBatonTo(t, out, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "delay:200ms", "--drain-timeout", "2s", "--", "sh", "-c", chattyWorker)
	out.Close()
	output := func() string { s, _ := os.ReadFile(got); return string(s) }
	defer func() {
		if t.Failed() {
			s := output()
			t.Logf("baton's output (last 4000 bytes of %d):\n%s", len(s), s[max(0, len(s)-4000):])
		}
	}()
	before := rest(b, 2)

	reader.Process.Signal(syscall.SIGSTOP)
	waitPipeFull(b)
	// Reloads and status answer while nothing reads baton's output: first
	// with the FIFO full, then with baton's buffer full too.
	const reloads = 6
	start := time.Now()
	var full supervisor.Status
	for i := range reloads {
		if i == reloads/2 {
			full = b.waitFor("lines dropped while the reader is stopped", 30*time.Second, func(st supervisor.Status) bool {
				return st.Output.Stderr.DroppedLines > 0
			})
		}
		if _, err := callWithin(b, 30*time.Second, "reload"); err != nil {
			t.Fatalf("reload %d with the reader of baton's output stopped: %v", i+1, err)
		}
		if _, err := callWithin(b, 10*time.Second, "status"); err != nil {
			t.Fatalf("status after reload %d with the reader of baton's output stopped: %v", i+1, err)
		}
	}
	took := time.Since(start)
	st := b.waitReady(2)
	o := st.Output
	if !o.Stdout.Shared || !o.Stderr.Shared || o.Stderr.DroppedLines <= full.Output.Stderr.DroppedLines || o.Stderr.DroppingSince == nil || o.Stderr.LimitBytes != 1<<20 {
		t.Errorf("output status with the reader stopped: %+v; want one buffer for both (the same FIFO), of 1 MiB, lines dropped and still dropping", o)
	}
	if st.Reloads.OK < reloads {
		t.Errorf("%d reloads succeeded, want %d", st.Reloads.OK, reloads)
	}
	dropped := o.Stderr.DroppedLines

	// The reader continues: the notice comes, and the notices in the
	// output count every line status counted as dropped.
	reader.Process.Signal(syscall.SIGCONT)
	var notices []string
	var reported int64
	resumed := b.waitFor("the notice of the dropped lines", 30*time.Second, func(st supervisor.Status) bool {
		notices, reported = dropNotices(output())
		return st.Output.Stderr.DroppingSince == nil && reported == st.Output.Stderr.DroppedLines
	})
	for _, n := range notices {
		if !strings.Contains(n, `output="stdout and stderr"`) || !strings.Contains(n, "since=") || !strings.Contains(n, "nothing read stdout and stderr fast enough") {
			t.Errorf("notice %q: want the output, the number of lines, since when and why", n)
		}
	}
	after := rest(b, 2)
	checkRest(t, before, after)

	// Stopped again, baton still stops: it flushes for at most a second.
	reader.Process.Signal(syscall.SIGSTOP)
	b.waitFor("lines dropped again", 30*time.Second, func(st supervisor.Status) bool {
		return st.Output.Stderr.DroppingSince != nil
	})
	stopAt := time.Now()
	b.cmd.Process.Signal(syscall.SIGTERM)
	code := b.waitExit(20 * time.Second)
	stopTook := time.Since(stopAt)
	if code != 0 {
		t.Errorf("baton stopped with the reader of its output stopped: exit %d, want 0", code)
	}
	return fmt.Sprintf("%d reloads and statuses answered in %.1fs with the reader stopped; %d lines dropped meanwhile, counted in status; once the reader continued, %d notice(s) in the output reported all %d; stopped again, baton exited %d in %.1fs (drain 2s, flush at most 1s); at rest %v before and after",
		reloads, took.Seconds(), dropped, len(notices), resumed.Output.Stderr.DroppedLines, code, stopTook.Seconds(), after)
}

// waitPipeFull waits until the FIFO is full: baton's write to it has
// waited for the reader for a while. (How many bytes a full pipe holds
// depends on how the writes fell into its pages: a write that does not
// fit in the last page's room takes a new one, so lines of a kilobyte
// leave up to that much of each page empty.)
func waitPipeFull(b *instance) {
	b.t.Helper()
	b.waitFor("baton's write to the FIFO to block", 30*time.Second, func(st supervisor.Status) bool {
		return time.Duration(st.Output.Stderr.BlockedFor) >= 200*time.Millisecond
	})
}

// dropNotices finds baton's notices of dropped output lines in its
// output, and the lines they report in all.
func dropNotices(output string) (notices []string, lines int64) {
	for _, l := range strings.Split(output, "\n") {
		if !strings.Contains(l, "baton's output lines were dropped") {
			continue
		}
		notices = append(notices, l)
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "lines="); ok {
				var n int64
				fmt.Sscan(v, &n)
				lines += n
			}
		}
	}
	return notices, lines
}

// configFor is a config file text for helloBin on a free port.
func configFor(t *testing.T, extra string) (text string, port int) {
	port = freePort(t)
	return fmt.Sprintf("command = [%q]\nworkers = 2\nready = \"notify\"\ndrain_timeout = \"5s\"\nlisten = [\"http=tcp://127.0.0.1:%d\"]\n%s", helloBin, port, extra), port
}

func configBecomesFIFO(t *testing.T) string {
	dir := shortDir(t)
	conf := filepath.Join(dir, "baton.toml")
	text, port := configFor(t, "")
	writeConfig(t, conf, text)
	b := startBaton(t, nil, "--config", conf)
	before := rest(b, 2)
	gen := b.waitReady(2).Generation
	wait := startLoadUnderWay(fmt.Sprintf("127.0.0.1:%d", port), 6*time.Second)

	saved := conf + ".saved"
	if err := os.Rename(conf, saved); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(conf, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := callWithin(b, 20*time.Second, "reload")
	took := time.Since(start)
	want := conf + " is a FIFO (named pipe), not a regular file"
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "keeps serving") {
		t.Fatalf("reload with the config a FIFO: %v; want it to fail at once with %q", err, want)
	}
	// SIGHUP too, and the failure is in the log.
	b.cmd.Process.Signal(syscall.SIGHUP)
	b.waitLog("reload failed")
	b.waitFor("the SIGHUP reload to fail", 20*time.Second, func(st supervisor.Status) bool { return st.Reloads.Failed >= 2 })

	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(saved, conf); err != nil {
		t.Fatal(err)
	}
	if _, err := callWithin(b, 30*time.Second, "reload"); err != nil {
		t.Fatalf("reload after the config file was restored: %v", err)
	}
	r := wait()
	checkLoad(t, r)
	st := b.waitReady(2)
	if st.Generation == gen {
		t.Errorf("generation %d after the reload with the file restored, as before", st.Generation)
	}
	after := rest(b, 2)
	checkRest(t, before, after)
	return fmt.Sprintf("the reload failed in %.0fms: %q; SIGHUP likewise, logged; once the file was back the next reload succeeded (generation %d to %d); %s requests, 0 failed; at rest %v before and after",
		float64(took.Microseconds())/1000, strings.ReplaceAll(firstLine(err), dir+"/", ""), gen, st.Generation, count(r.Requests), after)
}

func durationWithoutUnit(t *testing.T) string {
	dir := shortDir(t)
	conf := filepath.Join(dir, "baton.toml")
	text, port := configFor(t, "")
	writeConfig(t, conf, text)
	if out, code := runBaton(t, nil, "check", "--config", conf); code != 0 {
		t.Fatalf("baton check of the good config: exit %d: %s", code, out)
	}
	b := startBaton(t, nil, "--config", conf)
	before := b.waitReady(2)
	wait := startLoadUnderWay(fmt.Sprintf("127.0.0.1:%d", port), 4*time.Second)

	writeConfig(t, conf, strings.Replace(text, `drain_timeout = "5s"`, "drain_timeout = 30", 1))
	want := conf + `:4: drain_timeout: 30 has no unit, so it would mean 30 nanoseconds: write it in quotes with its unit, drain_timeout = "30s"`
	out, code := runBaton(t, nil, "check", "--config", conf)
	if code != 2 || !strings.Contains(out, want) {
		t.Errorf("baton check with drain_timeout = 30: exit %d, %q; want 2 and %q", code, out, want)
	}
	rout, rcode := b.cli("reload")
	if rcode != 1 || !strings.Contains(rout, want) || !strings.Contains(rout, "keeps serving") {
		t.Errorf("reload with drain_timeout = 30: exit %d, %q; want 1 and %q", rcode, rout, want)
	}
	r := wait()
	checkLoad(t, r)
	after := b.waitReady(2)
	if after.Generation != before.Generation || fmt.Sprint(sortedPIDs(after)) != fmt.Sprint(sortedPIDs(before)) {
		t.Errorf("the refused reload changed something: generation %d, workers %v; were %d, %v", after.Generation, sortedPIDs(after), before.Generation, sortedPIDs(before))
	}
	return fmt.Sprintf("baton check exited %d and the reload failed, both with %q; the same generation and workers served on; %s requests, 0 failed",
		code, strings.ReplaceAll(strings.TrimPrefix(lastLine(out), "baton: "), dir+"/", ""), count(r.Requests))
}

func configOthersCanWrite(t *testing.T) string {
	dir := shortDir(t)
	conf := filepath.Join(dir, "baton.toml")
	text, _ := configFor(t, "")
	writeConfig(t, conf, text)
	if err := os.Chmod(conf, 0o666); err != nil {
		t.Fatal(err)
	}
	want := conf + " is writable by group or others"
	out, code := runBaton(t, nil, "run", "--control", filepath.Join(dir, "ctl.sock"), "--config", conf)
	if code != 2 || !strings.Contains(out, want) || !strings.Contains(out, "chmod go-w "+conf) {
		t.Fatalf("baton run with a config others can write: exit %d, %q; want 2, %q and the fix", code, out, want)
	}
	if err := os.Chmod(conf, 0o644); err != nil {
		t.Fatal(err)
	}
	b := startBaton(t, nil, "--config", conf)
	before := b.waitReady(2)
	if err := os.Chmod(conf, 0o666); err != nil {
		t.Fatal(err)
	}
	rout, rcode := b.cli("reload")
	if rcode != 1 || !strings.Contains(rout, want) {
		t.Errorf("reload with the config others can write: exit %d, %q; want 1 and %q", rcode, rout, want)
	}
	if err := os.Chmod(dir, 0o777); err != nil { // the directory, with the file safe again
		t.Fatal(err)
	}
	os.Chmod(conf, 0o644)
	dout, dcode := b.cli("reload")
	if dcode != 1 || !strings.Contains(dout, dir+" (on the way to "+conf+") is writable by group or others") {
		t.Errorf("reload with the config's directory writable by others: exit %d, %q", dcode, dout)
	}
	os.Chmod(dir, 0o700)
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("reload with the file and its directory safe again: exit %d: %s", code, out)
	}
	after := b.waitReady(2)
	if after.Reloads.Failed != 2 || after.Generation == before.Generation {
		t.Errorf("reloads %+v, generation %d (was %d): want 2 refused, then one to a new generation", after.Reloads, after.Generation, before.Generation)
	}
	return fmt.Sprintf("refused at start (exit %d) and at reload, for the file (0666) and for its directory (0777): %q; once safe again the reload succeeded",
		code, strings.ReplaceAll(strings.TrimPrefix(lastLine(out), "baton: "), dir+"/", ""))
}
