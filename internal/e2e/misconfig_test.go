package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/supervisor"
)

// Misconfigurations that look healthy, as new users made them: every
// worker counts as ready (or keeps being restarted) while nothing serves
// the port. Each test makes the mistake with a real program, checks that
// baton warns in the status, the log and the metrics, naming the cause
// and the fix, that `baton status` exits 3 while the service is
// degraded, and that the warning clears once the fix is applied.

// statusCLI runs `baton status ARGS` against b and returns its stdout,
// stderr and exit code apart (--json must be JSON alone on stdout).
func (b *instance) statusCLI(args ...string) (stdout, stderr string, code int) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, clientBin, append(append([]string{"status"}, args...), "--control", b.ctl)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		b.t.Fatalf("baton status: %v", err)
	}
	return out.String(), errOut.String(), code
}

// wantStatusExit checks that `baton status` and `baton status --json`
// exit with code, and that a degraded one says why on stderr.
func (b *instance) wantStatusExit(code int, reason string) {
	b.t.Helper()
	out, errOut, got := b.statusCLI()
	if got != code || (code == 3 && (!strings.Contains(out, "health: DEGRADED") || !strings.Contains(errOut, reason))) ||
		(code == 0 && !strings.Contains(out, "health: ok")) {
		b.t.Errorf("baton status exited %d, want %d (and %q on stderr):\n%s\nstderr: %s", got, code, reason, out, errOut)
	}
	out, errOut, got = b.statusCLI("--json")
	var st api.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		b.t.Errorf("baton status --json printed no JSON (%v):\n%s", err, out)
	}
	want := map[int]string{0: api.HealthOK, 3: api.HealthDegraded}[code]
	if got != code || st.Health.State != want {
		b.t.Errorf("baton status --json exited %d with health %+v, want %d and %q; stderr: %s", got, st.Health, code, want, errOut)
	}
}

// degradedMetric waits until the scrape says baton_degraded is v and
// warnings of code number n.
func (b *instance) degradedMetric(addr string, v float64, code inspect.Code, n float64) {
	b.t.Helper()
	waitScrape(b.t, addr, fmt.Sprintf("baton_degraded %v and %v %s", v, n, code), func(mf map[string]*dto.MetricFamily) bool {
		d, ok := value(mf, "baton_degraded")                      // always exported
		w, _ := value(mf, "baton_warnings", "code="+string(code)) // absent: none
		return ok && d == v && w == n
	})
}

// writeScript writes an executable file.
func writeScript(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
}

// A wrapper script without exec: the worker is sh, LISTEN_PID names sh,
// and hello (baton's own library) ignores the socket, listens on a port
// of its own and still reports READY=1. Connections wait on baton's port
// with nobody to accept them. baton warns that the worker is a wrapper,
// then that nobody accepts, naming the cause (the child's LISTEN_PID, its
// own port) and the fix (exec); a reload with exec in the script clears
// both, and the waiting connections are served.
func TestWrapperWithoutExecWarned(t *testing.T) {
	requireE2E(t)
	script := filepath.Join(shortDir(t), "run-hello")
	writeScript(t, script, fmt.Sprintf("#!/bin/sh\necho starting hello\n%s -addr 127.0.0.1:0\n", helloBin))
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify",
		"--inspect-interval", "100ms", "--metrics", "127.0.0.1:0", "--", "/bin/sh", script)
	st := b.waitReady(2)
	addr := st.Listeners[0].Address

	st = b.waitStatus("the wrapper warning", func(st supervisor.Status) bool { return warningOf(st, inspect.WrapperWithoutExec) != nil })
	w := warningOf(st, inspect.WrapperWithoutExec)
	for _, want := range []string{"is a shell (sh) that runs pid", "(hello) as its child instead of exec-ing it", "(and so does 1 other worker)",
		"end the wrapper script with exec (exec " + helloBin} {
		if !strings.Contains(w.Message, want) {
			t.Errorf("wrapper_without_exec %q\nlacks %q", w.Message, want)
		}
	}
	if w.Severity != api.SeverityWarning {
		t.Errorf("wrapper_without_exec severity %q, want warning: it alone does not say nothing serves", w.Severity)
	}
	b.waitLog("warning=wrapper_without_exec")

	conns := dialHeld(t, addr, 3)
	st = b.waitStatus("not_accepting", func(st supervisor.Status) bool { return warningOf(st, inspect.NotAccepting) != nil })
	w = warningOf(st, inspect.NotAccepting)
	for _, want := range []string{
		"listener http: 3 connections have waited in the accept queue", "none was accepted, while 2 workers are ready: nothing serves " + addr,
		"is sh, which runs pid", "LISTEN_PID=", "ignores the sockets baton passed (LISTEN_FDS) and listens on 127.0.0.1:",
		"Fix: end the wrapper script with exec (exec " + helloBin,
	} {
		if !strings.Contains(w.Message, want) {
			t.Errorf("not_accepting %q\nlacks %q", w.Message, want)
		}
	}
	if w.Listener != "http" || w.Severity != api.SeverityDegraded {
		t.Errorf("not_accepting %+v: want listener http, severity degraded", w)
	}
	b.waitLog("warning=not_accepting listener=http")
	b.wantStatusExit(3, "degraded: not_accepting: listener http")
	maddr := b.metricsAddr()
	b.degradedMetric(maddr, 1, inspect.NotAccepting, 1)

	// The fix: exec, then reload.
	writeScript(t, script, fmt.Sprintf("#!/bin/sh\necho starting hello\nexec %s -addr 127.0.0.1:0\n", helloBin))
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload with exec in the script: exit %d\n%s", code, out)
	}
	// The connections that waited are served by the new generation.
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if resp, err := io.ReadAll(c); err != nil || !strings.Contains(string(resp), "hello from pid") {
			t.Errorf("connection %d that waited: %q, %v; want hello's answer", i, resp, err)
		}
	}
	b.waitStatus("both warnings cleared", func(st supervisor.Status) bool {
		return st.Kernel != nil && warningOf(st, inspect.NotAccepting) == nil && warningOf(st, inspect.WrapperWithoutExec) == nil
	})
	b.waitLog("warning cleared\" warning=not_accepting")
	b.waitLog("warning cleared\" warning=wrapper_without_exec")
	b.wantStatusExit(0, "")
	b.degradedMetric(maddr, 0, inspect.NotAccepting, 0)
}

// A program that knows nothing of LISTEN_FDS and listens on its own
// port, another than baton's listener: it runs, it counts as ready after
// the delay, and baton's port holds connections nobody accepts. The
// warning names the process and the port it listens on, and the fixes
// (take the socket from LISTEN_FDS, or --capture-bind); a reload to a
// program that takes it (examples/hello) clears the warning, and the
// connections that waited are served.
func TestProgramIgnoringListenFDsWarned(t *testing.T) {
	requireE2E(t)
	baton, own := freePort(t), freePort(t)
	conf := filepath.Join(shortDir(t), "baton.toml")
	base := fmt.Sprintf(`listen = ["http=tcp://127.0.0.1:%d"]
workers = 1
inspect_interval = "100ms"
ready = "delay:100ms"
`, baton)
	writeConfig(t, conf, base+fmt.Sprintf("command = [%q, \"-addr\", \"127.0.0.1:%d\"]\n", selfbindBin, own))
	b := startBaton(t, nil, "--config", conf)
	b.waitReady(1)
	conns := dialHeld(t, fmt.Sprintf("127.0.0.1:%d", baton), 2)
	st := b.waitStatus("not_accepting", func(st supervisor.Status) bool { return warningOf(st, inspect.NotAccepting) != nil })
	w := warningOf(st, inspect.NotAccepting)
	for _, want := range []string{
		fmt.Sprintf("of worker slot 0 listens on 127.0.0.1:%d itself: the program ignores LISTEN_FDS and binds a port of its own", own),
		"Fix: have it take the socket baton passes (LISTEN_FDS from fd 3, sd_listen_fds), or run it with --capture-bind (and --ready bind)",
	} {
		if !strings.Contains(w.Message, want) {
			t.Errorf("not_accepting %q\nlacks %q", w.Message, want)
		}
	}
	if warningOf(st, inspect.WrapperWithoutExec) != nil {
		t.Errorf("a program started directly reported as a wrapper: %+v", st.Kernel.Warnings)
	}
	b.wantStatusExit(3, "not_accepting: listener http")

	writeConfig(t, conf, base+fmt.Sprintf("command = [%q]\n", helloBin))
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload to a program that takes its socket: exit %d\n%s", code, out)
	}
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		if resp, err := io.ReadAll(c); err != nil || !strings.Contains(string(resp), "hello from pid") {
			t.Errorf("connection %d that waited: %q, %v; want hello's answer", i, resp, err)
		}
	}
	b.waitStatus("not_accepting cleared", func(st supervisor.Status) bool {
		return st.Kernel != nil && warningOf(st, inspect.NotAccepting) == nil
	})
	b.waitLog("warning cleared\" warning=not_accepting listener=http")
	b.wantStatusExit(0, "")
}

// python3 -m http.server without --capture-bind: it binds baton's port
// itself and exits with EADDRINUSE, again and again. baton warns that the
// program binds its own port, names the port as its listener's and
// suggests --capture-bind and --ready bind; a reload of the configuration
// with them clears the warning and the program serves.
func TestBindsOwnPortWarned(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	port := freePort(t)
	conf := filepath.Join(shortDir(t), "baton.toml")
	base := fmt.Sprintf(`command = [%q, "-m", "http.server", "--bind", "127.0.0.1", "%d"]
listen = ["http=tcp://127.0.0.1:%d"]
workers = 1
inspect_interval = "100ms"
stop_when_idle = "5s"
`, python, port, port)
	writeConfig(t, conf, base+"ready = \"delay:1s\"\n")
	b := startBaton(t, nil, "--config", conf)

	st := b.waitStatus("binds_own_port", func(st supervisor.Status) bool { return warningOf(st, inspect.BindsOwnPort) != nil })
	w := warningOf(st, inspect.BindsOwnPort)
	for _, want := range []string{
		`worker slot 0 keeps exiting with "address already in use"`,
		fmt.Sprintf("port %d is listener http's, which baton holds", port),
		"Run the program with --capture-bind", "--ready bind",
	} {
		if !strings.Contains(w.Message, want) {
			t.Errorf("binds_own_port %q\nlacks %q", w.Message, want)
		}
	}
	if w.Slot == nil || *w.Slot != 0 || w.Severity != api.SeverityDegraded {
		t.Errorf("binds_own_port %+v: want slot 0, severity degraded", w)
	}
	b.waitLog("warning=binds_own_port slot=0")
	b.wantStatusExit(3, "binds_own_port: slot 0")

	// The fix the warning names.
	writeConfig(t, conf, base+"capture_bind = true\nready = \"bind\"\n")
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload with capture_bind: exit %d\n%s", code, out)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatalf("GET after the fix: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET after the fix: %s", resp.Status)
	}
	// The streak ends once the new worker has stayed up (10s), or at once
	// if the reload came well after the last failure.
	b.waitStatus("binds_own_port cleared", func(st supervisor.Status) bool {
		return st.Kernel != nil && warningOf(st, inspect.BindsOwnPort) == nil
	})
	b.waitLog("warning cleared\" warning=binds_own_port slot=0")
	// python's listen(5) lowered the backlog (backlog_lowered): a warning
	// that does not degrade the service.
	b.wantStatusExit(0, "")
}

// Under --capture-bind the program's own listen(2) sets the backlog of
// baton's socket: a Python server asking for 5. The warning blames that
// call, not net.core.somaxconn; once the program asks for the listener's
// backlog, it clears.
func TestBacklogLoweredByProgram(t *testing.T) {
	requireE2E(t)
	requireCapture(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	dir := shortDir(t)
	script, size := filepath.Join(dir, "serve.py"), filepath.Join(dir, "backlog")
	writeScript(t, script, `import http.server, sys

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = int(open(sys.argv[2]).read())

Server(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
`)
	writeConfig(t, size, "5")
	port := freePort(t)
	b := startBaton(t, nil, "-l", fmt.Sprintf("http=tcp://127.0.0.1:%d?backlog=64", port), "-n", "1",
		"--capture-bind", "--ready", "bind", "--inspect-interval", "100ms", "--", python, script, strconv.Itoa(port), size)
	b.waitReady(1)
	st := b.waitStatus("backlog_lowered", func(st supervisor.Status) bool { return warningOf(st, inspect.BacklogLowered) != nil })
	if sock := firstSocket(st); sock.SendQ != 5 {
		t.Errorf("the kernel's maximum %d, want the program's 5", sock.SendQ)
	}
	w := warningOf(st, inspect.BacklogLowered)
	for _, want := range []string{
		"listener http: the accept queue holds at most 6 connections, not the 64 baton asked listen(2) for",
		"net.core.somaxconn (", ") does not explain it: the program called listen(5): under --capture-bind",
		"raise the backlog the program asks for to 64 or more (Python: request_queue_size",
	} {
		if !strings.Contains(w.Message, want) {
			t.Errorf("backlog_lowered %q\nlacks %q", w.Message, want)
		}
	}
	if c := warningOf(st, inspect.BacklogClamped); c != nil {
		t.Errorf("backlog_clamped %q blames somaxconn", c.Message)
	}
	b.waitLog("warning=backlog_lowered listener=http")
	b.wantStatusExit(0, "")

	writeConfig(t, size, "64")
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	st = b.waitStatus("backlog_lowered cleared", func(st supervisor.Status) bool {
		return st.Kernel != nil && warningOf(st, inspect.BacklogLowered) == nil
	})
	if sock := firstSocket(st); sock.SendQ != 64 {
		t.Errorf("the kernel's maximum %d after the fix, want 64", sock.SendQ)
	}
	b.waitLog("warning cleared\" warning=backlog_lowered")
}

// `baton status` exits 0 while healthy, 3 while a slot has no worker or
// crash-loops (and says why on stderr), 1 when no baton answers, 2 on a
// usage error; --json and top --count alike.
func TestStatusExitCodes(t *testing.T) {
	requireE2E(t)
	t.Run("healthy", func(t *testing.T) {
		b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
		b.waitReady(1)
		b.wantStatusExit(0, "")
		if out, code := b.cli("top", "--interval", "50ms", "--count", "1"); code != 0 {
			t.Errorf("top --count 1 exited %d:\n%s", code, out)
		}
	})
	t.Run("a slot in backoff, crash-looping", func(t *testing.T) {
		b := startBaton(t, []string{workerEnv + "=crash"}, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "delay:50ms",
			"--inspect-interval", "100ms", "--", testBin)
		st := b.waitStatus("crash_loop", func(st supervisor.Status) bool { return warningOf(st, inspect.CrashLoop) != nil })
		w := warningOf(st, inspect.CrashLoop)
		for _, want := range []string{"worker slot 0 is crash-looping:", "workers in a row exited within 10s of their start",
			"exited with status 3", "crashing on purpose"} {
			if !strings.Contains(w.Message, want) {
				t.Errorf("crash_loop %q\nlacks %q", w.Message, want)
			}
		}
		b.waitLog("warning=crash_loop slot=0")
		b.wantStatusExit(3, "crash_loop: slot 0")
		if out, code := b.cli("top", "--interval", "50ms", "--count", "1"); code != 3 || !strings.Contains(out, "health: DEGRADED") {
			t.Errorf("top --count 1 exited %d, want 3:\n%s", code, out)
		}
		// Caught in backoff, the slot itself is a reason.
		b.waitStatus("the slot in backoff", func(st supervisor.Status) bool {
			return len(st.SlotStates) == 1 && st.SlotStates[0].State == supervisor.SlotBackoff && time.Duration(st.SlotStates[0].NextIn) > 2*time.Second
		})
		if _, errOut, code := b.statusCLI(); code != 3 || !strings.Contains(errOut, "slot 0: no worker, restarting in") {
			t.Errorf("baton status exited %d, want 3 naming the slot; stderr: %s", code, errOut)
		}
	})
	t.Run("no baton answers", func(t *testing.T) {
		ctl := filepath.Join(shortDir(t), "none.sock")
		for _, args := range [][]string{{"status"}, {"status", "--json"}, {"top", "--count", "1"}} {
			out, code := runBin(t, clientBin, nil, append(args, "--control", ctl)...)
			if code != 1 || !strings.Contains(out, "no baton is running at "+ctl) {
				t.Errorf("%v with nothing at %s: exit %d, want 1:\n%s", args, ctl, code, out)
			}
		}
	})
	t.Run("usage error", func(t *testing.T) {
		if out, code := runBin(t, clientBin, nil, "status", "extra"); code != 2 {
			t.Errorf("status extra: exit %d, want 2:\n%s", code, out)
		}
	})
}

// `baton run` without a listener is refused (exit 2, nothing started),
// saying what would happen and the fix; --no-listeners runs the workers
// without sockets.
func TestRunWithoutListeners(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	marker, ctl := filepath.Join(dir, "started"), filepath.Join(dir, "ctl.sock")
	out, code := runBaton(t, nil, "run", "--control", ctl, "--", "/bin/sh", "-c", "touch "+marker+"; sleep 5")
	if code != 2 {
		t.Errorf("run without -l: exit %d, want 2:\n%s", code, out)
	}
	for _, want := range []string{"no listeners: the workers would get no socket", "binds a port of its own", "-l NAME=ADDRESS", "--no-listeners"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a worker was started")
	}
	if _, err := os.Stat(ctl); err == nil {
		t.Errorf("control socket %s left behind", ctl)
	}

	b := startBaton(t, nil, "--no-listeners", "-n", "1", "--ready", "delay:50ms", "--", "/bin/sh", "-c", "exec sleep 60")
	st := b.waitReady(1)
	if len(st.Listeners) != 0 {
		t.Errorf("listeners %+v, want none", st.Listeners)
	}
	b.wantStatusExit(0, "")
}
