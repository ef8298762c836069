// Package e2e holds baton's end-to-end tests: they build the real baton
// binary (with the race detector) and drive it as a user would, with real
// workers, sockets and load on loopback.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/sockdiag"
	"github.com/baton-dev/baton/internal/supervisor"
)

var (
	binDir      string // baton and hello, world-readable so a dropped uid can run them
	batonBin    string
	helloBin    string
	selfbindBin string // examples/selfbind, built static (CGO_ENABLED=0)
	clientBin   string // baton without the race detector, for client commands
	chatBin     string // examples/chat
	testBin     string // this test binary, which doubles as a worker
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(workerEnv); mode != "" {
		os.Exit(runWorker(mode))
	}
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	code, err := buildAndRun(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func buildAndRun(m *testing.M) (int, error) {
	var err error
	if binDir, err = os.MkdirTemp("", "baton-e2e-"); err != nil {
		return 0, err
	}
	if os.Getenv("E2E_KEEP_BINARIES") == "" { // set it to profile them with perf
		defer os.RemoveAll(binDir)
	}
	if err := os.Chmod(binDir, 0o755); err != nil {
		return 0, err
	}
	batonBin, helloBin, selfbindBin = filepath.Join(binDir, "baton"), filepath.Join(binDir, "hello"), filepath.Join(binDir, "selfbind")
	chatBin = filepath.Join(binDir, "chat")
	for pkg, out := range map[string]string{"../../cmd/baton": batonBin, "../../examples/hello": helloBin, "../../examples/chat": chatBin} {
		// With the race detector when the tests have it (benchmarks run
		// without, and measure binaries without it).
		cmd := exec.Command("go", "build", raceFlag, "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return 0, fmt.Errorf("building %s: %v\n%s", pkg, err, b)
		}
	}
	// E2E_BATON_BINARY runs the tests against another baton (an older
	// one, to show what a test catches): it replaces the one built here.
	if other := os.Getenv("E2E_BATON_BINARY"); other != "" {
		b, err := os.ReadFile(other)
		if err != nil {
			return 0, err
		}
		if err := os.WriteFile(batonBin, b, 0o755); err != nil {
			return 0, err
		}
	}
	// The client commands (reload, status, ...) start often; without the
	// race detector they start in milliseconds.
	clientBin = filepath.Join(binDir, "baton-client")
	if b, err := exec.Command("go", "build", "-o", clientBin, "../../cmd/baton").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("building the client: %v\n%s", err, b)
	}
	// A program that knows nothing of baton, statically linked.
	cmd := exec.Command("go", "build", "-o", selfbindBin, "../../examples/selfbind")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("building examples/selfbind: %v\n%s", err, b)
	}
	if testBin, err = os.Executable(); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// requireE2E skips an end-to-end test under -short and otherwise makes
// it parallel. End-to-end tests run in parallel with each other (go test -parallel
// says how many at once; make test runs 4): each starts its own baton
// with its own control path, ports from the kernel and its own users,
// and asserts on what its own processes and sockets did. Most of their
// time is spent waiting for drains, reloads and loads of fixed length,
// so the suite takes a fraction of its serial time on two CPUs.
// BATON_E2E_SERIAL=1 runs them one at a time, to tell a failure of a test
// from one of the machine's load.
func requireE2E(t *testing.T) {
	t.Helper()
	requireE2EAlone(t)
	if os.Getenv("BATON_E2E_SERIAL") == "" {
		if _, twice := parallelTests.LoadOrStore(t, true); !twice {
			t.Parallel()
		}
	}
}

// requireE2EAlone is requireE2E for a test that must not share the
// machine with other end-to-end tests: it runs before the parallel ones,
// one at a time. For the UDP flow tests, whose peers count a datagram
// unanswered within 2 s as lost and whose draining workers end a session
// idle for 2 s: with three more tests beside them on two CPUs, 8 of
// 35,268 datagrams went unanswered for 2 s (the kernel counted no
// receive-buffer drop), and each made the rest of its session look
// stateless to the worker.
func requireE2EAlone(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
}

// binCopies serializes binCopy; copied are the names already written.
var (
	binCopies sync.Mutex
	copied    = map[string]bool{}
)

// binCopy copies src into binDir as name, mode 0755, once for the whole
// run: a binary that other users may run, or an upgrade's new binary.
// Tests running in parallel share it; it is written to a temporary name
// and renamed, so an exec of name never meets a file still being written
// (ETXTBSY) or half a binary.
func binCopy(t *testing.T, src, name string) string {
	t.Helper()
	binCopies.Lock()
	defer binCopies.Unlock()
	dst := filepath.Join(binDir, name)
	if copied[name] {
		return dst
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("copying %s for the test: %v", src, err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatalf("copying %s for the test: %v", src, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatalf("copying %s for the test: %v", src, err)
	}
	copied[name] = true
	return dst
}

// parallelTests are the tests requireE2E made parallel: t.Parallel may
// be called once per test, and a helper may call requireE2E again.
var parallelTests sync.Map

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (to change uid or make namespaces); run the tests as root")
	}
}

// logBuffer collects a process's output safely.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// instance is a running `baton run`.
type instance struct {
	t    *testing.T
	cmd  *exec.Cmd
	ctl  string
	log  *logBuffer
	done chan struct{}
	err  error // Wait's result, once done is closed
}

// startBaton runs `baton run --control DIR/ctl.sock ARGS...` with extra
// environment and stops it when the test ends.
func startBaton(t *testing.T, env []string, args ...string) *instance {
	t.Helper()
	return startBatonAt(t, filepath.Join(shortDir(t), "ctl.sock"), env, args...)
}

// startBatonAt is startBaton with the control socket at ctl.
func startBatonAt(t *testing.T, ctl string, env []string, args ...string) *instance {
	t.Helper()
	return startBin(t, batonBin, ctl, env, args...)
}

// startBin is startBatonAt with the baton binary bin: clientBin measures
// baton without the race detector's memory.
func startBin(t *testing.T, bin, ctl string, env []string, args ...string) *instance {
	t.Helper()
	b := &instance{t: t, ctl: ctl, log: &logBuffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(bin, append([]string{"run", "--control", ctl}, args...)...)
	b.cmd.Env = append(os.Environ(), env...)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		b.stop(20 * time.Second)
		if t.Failed() {
			t.Logf("baton output:\n%s", b.log)
		}
	})
	return b
}

// stop sends SIGTERM and waits, then SIGKILL.
func (b *instance) stop(wait time.Duration) {
	select {
	case <-b.done:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(wait):
		b.t.Errorf("baton did not stop within %s of SIGTERM; killing it", wait)
		b.cmd.Process.Kill()
		<-b.done
	}
}

// waitExit waits for baton to exit and returns its exit code.
func (b *instance) waitExit(wait time.Duration) int {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(wait):
		b.t.Fatalf("baton still running after %s", wait)
	}
	var ee *exec.ExitError
	if errors.As(b.err, &ee) {
		return ee.ExitCode()
	}
	return 0
}

// status asks the running baton for its status.
func (b *instance) status() supervisor.Status {
	b.t.Helper()
	st, err := b.tryStatus()
	if err != nil {
		b.t.Fatalf("status: %v\nbaton output:\n%s", err, b.log)
	}
	return st
}

func (b *instance) tryStatus() (supervisor.Status, error) { return b.tryStatusOf(true) }

// tryStatusOf asks for the status, with the kernel's view or without
// (cheaper, for polling).
func (b *instance) tryStatusOf(kernel bool) (supervisor.Status, error) {
	var st supervisor.Status
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := control.Call(ctx, b.ctl, "status", map[string]bool{"kernel": kernel})
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(raw, &st)
}

// waitReady waits until generation gen (0: any) has n ready workers and
// nothing else is running, and returns the status.
func (b *instance) waitReady(n int) supervisor.Status {
	b.t.Helper()
	var st supervisor.Status
	err := batontest.Wait(60*time.Second, func() error {
		select {
		case <-b.done:
			return batontest.Stop(fmt.Errorf("baton exited: %v", b.err))
		default:
		}
		var err error
		if st, err = b.tryStatusOf(false); err != nil {
			return fmt.Errorf("%d workers not ready: status: %w", n, err)
		}
		if !settled(st, n) {
			return fmt.Errorf("%d workers not ready; last status: %+v", n, st)
		}
		return nil
	})
	if err != nil {
		b.t.Fatalf("%v\n%s", err, b.log)
	}
	return st
}

// waitReplaced waits until baton has noticed that pid exited and n ready
// workers run again.
func (b *instance) waitReplaced(pid, n int) supervisor.Status {
	b.t.Helper()
	var st supervisor.Status
	batontest.WaitFor(b.t, 60*time.Second, func() error {
		st = b.waitReady(n)
		for _, w := range st.Workers {
			if w.PID == pid {
				return fmt.Errorf("worker %d still listed after it was killed", pid)
			}
		}
		return nil
	})
	return st
}

// settled reports whether exactly n workers run, all ready and of the
// active generation.
func settled(st supervisor.Status, n int) bool {
	if len(st.Workers) != n || st.Pending != 0 {
		return false
	}
	for _, w := range st.Workers {
		if w.State != supervisor.Ready || w.Generation != st.Generation {
			return false
		}
	}
	return true
}

// addr is the real address of the listener called name.
func (b *instance) addr(name string) string {
	b.t.Helper()
	for _, l := range b.status().Listeners {
		if l.Name == name {
			return l.Address
		}
	}
	b.t.Fatalf("no listener %q", name)
	return ""
}

// cli runs a baton client command against this instance and returns its
// combined output and exit code.
func (b *instance) cli(args ...string) (string, int) {
	b.t.Helper()
	return runBin(b.t, clientBin, nil, append(args, "--control", b.ctl)...)
}

// cliUntilDone runs a client command until it succeeds, again while
// baton answers that it cannot yet ("try again": an upgrade waits for what
// exited workers left running to be ended), for at most 30 seconds; any
// other failure fails the test. It returns the command's output.
func (b *instance) cliUntilDone(args ...string) string {
	b.t.Helper()
	var out string
	batontest.WaitFor(b.t, 30*time.Second, func() error {
		var code int
		if out, code = b.cli(args...); code == 0 {
			return nil
		}
		err := fmt.Errorf("baton %s: exit %d: %s", strings.Join(args, " "), code, out)
		if !strings.Contains(out, "try again") {
			return batontest.Stop(err)
		}
		return err
	})
	return out
}

// runBaton runs the baton binary to completion (bounded to 2 minutes).
func runBaton(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	return runBin(t, batonBin, env, args...)
}

func runBin(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("baton %v: %v", args, err)
	}
	return string(out), 0
}

// shortDir is a fresh directory with a short path, for unix sockets (at
// most 107 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "bt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z'
}

// waitGone waits until none of pids is alive.
func waitGone(t *testing.T, pids []int, within time.Duration) {
	t.Helper()
	batontest.WaitFor(t, within, func() error {
		for _, p := range pids {
			if pidAlive(p) {
				return fmt.Errorf("pid %d still alive", p)
			}
		}
		return nil
	})
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func workerPIDs(st supervisor.Status) []int {
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// waitRequestRead waits until a worker has accepted c's connection and
// read everything c sent, as the kernel sees it: c has nothing left
// unacknowledged, and the other end is held by a process (it has an
// inode) with nothing left to read. The request c carries is then in
// the worker's hands, not in a queue.
func waitRequestRead(t *testing.T, c net.Conn) {
	t.Helper()
	local, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	remote, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	d, err := sockdiag.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	batontest.WaitFor(t, 30*time.Second, func() error {
		var socks []sockdiag.Socket
		for _, port := range []uint16{local.Port(), remote.Port()} {
			s, err := d.Query(sockdiag.Query{States: sockdiag.States(sockdiag.Established), LocalPort: port})
			if err != nil {
				return batontest.Stop(err)
			}
			socks = append(socks, s...)
		}
		var client, server *sockdiag.Socket
		for i, s := range socks {
			switch {
			case s.Local == local && s.Remote == remote:
				client = &socks[i]
			case s.Local == remote && s.Remote == local:
				server = &socks[i]
			}
		}
		switch {
		case client == nil || server == nil:
			return fmt.Errorf("the connection %s -> %s is not established (client %+v, server %+v)", local, remote, client, server)
		case client.SendQ != 0:
			return fmt.Errorf("%d bytes of the request not yet acknowledged", client.SendQ)
		case server.Inode == 0:
			return fmt.Errorf("the connection from %s waits to be accepted", local)
		case server.RecvQ != 0:
			return fmt.Errorf("%d bytes of the request not yet read by the worker", server.RecvQ)
		}
		return nil
	})
}

// getInFlight sends GET url on a connection of its own, in the
// background, and returns once a worker has read the request
// (waitRequestRead), with a function that waits for the answer.
func getInFlight(t *testing.T, url string) func() (body string, err error) {
	t.Helper()
	conns := make(chan net.Conn, 1)
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				conns <- c
			}
			return c, err
		},
	}}
	type answer struct {
		body string
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := client.Get(url)
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		got <- answer{string(body), err}
	}()
	select {
	case c := <-conns:
		waitRequestRead(t, c)
	case a := <-got:
		t.Fatalf("GET %s: answered before it was in flight: %q, %v", url, a.body, a.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("GET %s: no connection within 30s", url)
	}
	return func() (string, error) {
		a := <-got
		return a.body, a.err
	}
}
