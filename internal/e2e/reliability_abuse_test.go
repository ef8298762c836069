package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
	"github.com/baton-dev/baton/internal/loadgen"
	"github.com/baton-dev/baton/internal/supervisor"
	"github.com/baton-dev/baton/internal/takeover"
)

// abuseCases: the control, takeover and worker sockets under abuse.
var abuseCases = []reliabilityCase{
	{"Abuse", "a client of another uid on the control socket", otherUIDClient},
	{"Abuse", "malformed control requests", malformedRequests},
	{"Abuse", "a 1 MiB control request", oversizeRequest},
	{"Abuse", "100 control clients that never finish their request", slowControlClients},
	{"Abuse", "1,000 concurrent control clients", thousandControlClients},
	{"Abuse", "a takeover peer that hangs up at once", takeoverHangsUp},
	{"Abuse", "a takeover peer that answers the sockets with garbage", takeoverGarbageAck},
	{"Abuse", "a takeover peer that hangs up mid-acknowledgement", takeoverTruncatedAck},
	{"Abuse", "descriptors sent unasked (SCM_RIGHTS) with a takeover acknowledgement and a request", takeoverAckWithFDs},
	{"Abuse", "a takeover peer that takes the sockets, then sends a malformed verdict", takeoverBadVerdict},
	{"Abuse", "a takeover peer that stalls after the header", takeoverStalls},
	{"Abuse", "a takeover peer that takes the sockets and never commits", takeoverNeverCommits},
	{"Abuse", "a process that is not a worker on the worker and notify sockets", strangerOnWorkerSockets},
}

// abused is a baton serving helloBin workers under load, and what it held
// at rest before the abuse.
type abused struct {
	b          *instance
	workers    []int // sorted
	fds        int
	goroutines int
	wait       func() *loadgen.Result
}

// abuseWorkers is how many workers an abused baton runs.
const abuseWorkers = 2

// startAbused starts baton, counts what it holds at rest and puts it under
// an HTTP load of duration d: long enough to cover the abuse.
func startAbused(t *testing.T, d time.Duration) *abused {
	t.Helper()
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", strconv.Itoa(abuseWorkers), "--ready", "notify", "--", helloBin)
	st := b.waitReady(abuseWorkers)
	a := &abused{b: b, workers: sortedPIDs(st)}
	a.fds, a.goroutines = resting(b)
	a.wait = startLoadUnderWay(b.addr("http"), d)
	return a
}

// survived checks, once the abuse is over, that baton lost no request, is
// the same process with the same workers, holds no more descriptors or
// goroutines at rest than before, and still reloads. It returns a summary
// for the outcome.
func (a *abused) survived(t *testing.T) string {
	t.Helper()
	b := a.b
	r := a.wait()
	checkLoad(t, r)
	select {
	case <-b.done:
		t.Fatalf("baton exited: %v\n%s", b.err, b.log)
	default:
	}
	st := b.waitReady(abuseWorkers)
	if st.PID != b.cmd.Process.Pid {
		t.Errorf("status answered by pid %d, not baton's %d", st.PID, b.cmd.Process.Pid)
	}
	if got := sortedPIDs(st); !slices.Equal(got, a.workers) {
		t.Errorf("workers replaced: %v, were %v", got, a.workers)
	}
	// What a closed connection held may still be on its way out.
	var fds, gs int
	batontest.Wait(10*time.Second, func() error { // the counts are checked below
		if fds, gs = resting(b); fds > a.fds || gs > a.goroutines {
			return errors.New("more than before")
		}
		return nil
	})
	if fds > a.fds {
		t.Errorf("baton holds %d descriptors at rest, %d before the abuse: %d leaked", fds, a.fds, fds-a.fds)
	}
	if gs > a.goroutines {
		t.Errorf("baton runs %d goroutines at rest, %d before the abuse: %d leaked", gs, a.goroutines, gs-a.goroutines)
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("a reload after the abuse exited %d: %s", code, out)
	}
	held := fmt.Sprintf("%d fds and %d goroutines at rest before and after", fds, gs)
	if fds != a.fds || gs != a.goroutines {
		held = fmt.Sprintf("at rest %d fds and %d goroutines before, %d and %d after", a.fds, a.goroutines, fds, gs)
	}
	return fmt.Sprintf("baton served %s requests meanwhile, 0 failed; same pid and workers; %s; a reload then succeeded", count(r.Requests), held)
}

func sortedPIDs(st supervisor.Status) []int {
	pids := workerPIDs(st)
	slices.Sort(pids)
	return pids
}

// dialControl connects to a control socket (or, with a name starting with
// "@", an abstract one).
func dialControl(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("connecting to %s: %v", path, err)
	}
	return c
}

// readToClose reads what baton writes until it closes the connection, for
// at most within. A reset after the answer counts as a close: baton closes
// with the rest of an oversize request unread.
func readToClose(c *net.UnixConn, within time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(within))
	b, err := io.ReadAll(io.LimitReader(c, control.MaxReply))
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	return string(b), err
}

// exchange sends req on a new connection to the socket at path (shutting
// its side for writing when hangUp) and returns baton's answer, read until
// baton closed the connection.
func exchange(t *testing.T, path string, req []byte, hangUp bool) control.Reply {
	t.Helper()
	c := dialControl(t, path)
	defer c.Close()
	// A peer refused at accept is answered before its request is read,
	// and the server shuts its reading side: the write may then fail
	// (EPIPE) while the refusal waits to be read.
	_, werr := c.Write(req)
	if hangUp && werr == nil {
		c.CloseWrite()
	}
	raw, err := readToClose(c, control.RequestTimeout+10*time.Second)
	if err != nil {
		t.Fatalf("%q: connection not closed within %s: %v; got %q", clip(req), control.RequestTimeout+10*time.Second, err, raw)
	}
	if werr != nil && raw == "" {
		t.Fatalf("sending %q: %v, and no answer", clip(req), werr)
	}
	return parseReply(t, raw)
}

// parseReply decodes the one line baton answers.
func parseReply(t *testing.T, raw string) control.Reply {
	t.Helper()
	var r control.Reply
	line, rest, _ := strings.Cut(raw, "\n")
	if rest != "" {
		t.Errorf("baton wrote more than one line: %q", raw)
	}
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("baton answered %q, not a reply: %v", raw, err)
	}
	return r
}

// clip shortens b for a message.
func clip(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

func otherUIDClient(t *testing.T) string {
	requireRoot(t)
	const nobody = 65534
	a := startAbused(t, 4*time.Second)
	b := a.b
	// The directory lets every user reach the socket file; the socket's
	// own mode (0600) is the first guard.
	if err := os.Chmod(filepath.Dir(b.ctl), 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func(args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, clientBin, append(args, "--control", b.ctl)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return strings.TrimSpace(string(out)), ee.ExitCode()
		case err != nil:
			t.Fatalf("baton %v as uid %d: %v", args, nobody, err)
		}
		return strings.TrimSpace(string(out)), 0
	}
	modeOut, code := asNobody("status")
	if code == 0 || !strings.Contains(modeOut, "permission denied") {
		t.Errorf("status as uid %d through the 0600 socket: exit %d, output %q; want it refused with \"permission denied\"", nobody, code, modeOut)
	}

	// With the socket opened to all, SO_PEERCRED is the guard. Each
	// command a few times: whether the client reads the refusal depends
	// on who is first, its write or baton's close.
	if err := os.Chmod(b.ctl, 0o666); err != nil {
		t.Fatal(err)
	}
	const tries = 6
	want := fmt.Sprintf("uid %d may not control this baton", nobody)
	var told, lost int
	var credOut, lostOut string
	for _, cmd := range []string{"status", "reload", "stop"} {
		for range tries {
			out, code := asNobody(cmd)
			switch {
			case code == 0:
				t.Errorf("%s as uid %d succeeded: %s", cmd, nobody, out)
			case strings.Contains(out, want):
				told++
				credOut = out
			default:
				lost++
				lostOut = out
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d refused clients of uid %d were not told why, but saw %q: baton writes the refusal and closes before it reads the request (internal/control/server_linux.go:263-266), and control.Call gives up when its write of the request fails, without reading the answer waiting for it (internal/control/client.go:47-49)",
			lost, told+lost, nobody, lastLine(lostOut))
	}
	// baton's log is written by its own goroutine (it never waits for
	// whoever reads it): the last lines may still be on their way.
	if n := b.logCount("control socket: refused a peer", 3*tries); n != 3*tries {
		t.Errorf("baton logged %d refused peers, want %d:\n%s", n, 3*tries, b.log)
	}
	if st := b.status(); st.Generation != 1 || st.Stopping {
		t.Errorf("after the refused requests: generation %d, stopping %v; want 1, false", st.Generation, st.Stopping)
	}
	os.Chmod(b.ctl, 0o600)
	seen := fmt.Sprintf("%d of them told %q", told, lastLine(credOut))
	if lost > 0 {
		seen += fmt.Sprintf(", %d saw only %q", lost, lastLine(lostOut))
	}
	return withoutDir(b, fmt.Sprintf("uid %d: through the 0600 socket connect(2) failed (%q); with the socket opened to all, %d status, reload and stop requests were each refused by SO_PEERCRED and logged, %s; %s",
		nobody, lastLine(modeOut), told+lost, seen, a.survived(t)))
}

// withoutDir drops the temporary directory of baton's control socket
// from an outcome, which would differ on every run.
func withoutDir(b *instance, s string) string {
	return strings.ReplaceAll(s, filepath.Dir(b.ctl)+"/", "")
}

// lastLine is the last line of a command's output, without a usage text
// before it.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func malformedRequests(t *testing.T) string {
	a := startAbused(t, 3*time.Second)
	b := a.b
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(rand.IntN(256))
	}
	garbage = append(bytes.ReplaceAll(garbage, []byte("\n"), nil), '\n')
	deep := `{"method":"status","params":` + strings.Repeat("[", 20000) + "\n"
	tests := []struct {
		name   string
		req    string
		hangUp bool   // shut the writing side after the request
		want   string // in the error answered
	}{
		{"text", "hello baton\n", false, "request is not valid JSON"},
		{"empty line", "\n", false, "request is not valid JSON"},
		{"JSON array", `["status"]` + "\n", false, "request is not valid JSON"},
		{"method a number", `{"method":42}` + "\n", false, "request is not valid JSON"},
		{"no method", `{"params":{}}` + "\n", false, `request has no "method"`},
		{"unknown field", `{"method":"status","verbose":true}` + "\n", false, `unknown field "verbose"`},
		{"unknown method", `{"method":"explode"}` + "\n", false, `unknown method "explode"`},
		{"params of the wrong type", `{"method":"status","params":{"kernel":"yes"}}` + "\n", false, "params:"},
		{"params an array", `{"method":"reload","params":[true]}` + "\n", false, "params:"},
		{"number out of range", `{"method":"scale","params":{"workers":1e30}}` + "\n", false, "params:"},
		{"negative workers", `{"method":"scale","params":{"workers":-1}}` + "\n", false, "want 1 to 4096 workers"},
		{"binary garbage", string(garbage), false, "request is not valid JSON"},
		{"NUL bytes", "\x00\x00\x00\x00\n", false, "request is not valid JSON"},
		{"NUL in the method", "{\"method\":\"sta\x00tus\"}\n", false, "request is not valid JSON"},
		{"invalid UTF-8", "{\"method\":\"\xff\xfe\"}\n", false, "unknown method"},
		{"nested 20,000 deep", deep, false, "request is not valid JSON"},
		{"two requests on a line", `{"method":"status"} {"method":"stop"}` + "\n", false, "data after the JSON object"},
		{"takeover followed by more", `{"method":"takeover"}` + "\n" + `{"verdict":"commit"}` + "\n", false, "bytes followed the takeover request"},
		{"no newline, then hang up", `{"method":"stop"}`, true, "connection closed before a complete request"},
	}
	var examples []string
	for _, tt := range tests {
		r := exchange(t, b.ctl, []byte(tt.req), tt.hangUp)
		if r.OK || !strings.Contains(r.Error, tt.want) {
			t.Errorf("%s (%q): answered %+v; want an error with %q", tt.name, clip([]byte(tt.req)), r, tt.want)
		}
		if tt.name == "binary garbage" || tt.name == "two requests on a line" {
			examples = append(examples, fmt.Sprintf("%s: %q", tt.name, r.Error))
		}
		if _, err := b.tryStatusOf(false); err != nil {
			t.Fatalf("after %s: status: %v\n%s", tt.name, err, b.log)
		}
	}
	names := make([]string, len(tests))
	for i, tt := range tests {
		names[i] = tt.name
	}
	return fmt.Sprintf("%d malformed requests (%s) each got an error naming the fault, then a close (%s); %s",
		len(tests), strings.Join(names, ", "), strings.Join(examples, "; "), a.survived(t))
}

func oversizeRequest(t *testing.T) string {
	a := startAbused(t, 3*time.Second)
	b := a.b
	big := func(newline bool) (control.Reply, int) {
		t.Helper()
		req := append([]byte(`{"method":"status","params":{"pad":"`), bytes.Repeat([]byte("x"), 1<<20)...)
		if newline {
			req = append(req, "\"}}\n"...)
		}
		c := dialControl(t, b.ctl)
		defer c.Close()
		sent := make(chan int, 1)
		go func() {
			n, _ := c.Write(req) // fails once baton has closed
			sent <- n
		}()
		raw, err := readToClose(c, 20*time.Second)
		if err != nil {
			t.Fatalf("1 MiB request: connection not closed within 20s: %v", err)
		}
		n := <-sent
		if n == len(req) {
			t.Errorf("baton took all %d bytes of a request over control.MaxRequest (%d)", n, control.MaxRequest)
		}
		return parseReply(t, raw), n
	}
	want := fmt.Sprintf("request is over %d bytes", control.MaxRequest)
	r, sent := big(false)
	if r.OK || r.Error != want {
		t.Errorf("1 MiB without a newline: answered %+v; want the error %q", r, want)
	}
	if r, _ := big(true); r.OK || r.Error != want {
		t.Errorf("1 MiB ending in a newline: answered %+v; want the error %q", r, want)
	}

	// At the limit exactly it is a request; a byte more, it is not.
	status := `{"method":"status","params":{"kernel":false}}`
	padded := func(n int) []byte {
		return []byte(status + strings.Repeat(" ", n-len(status)) + "\n")
	}
	if r := exchange(t, b.ctl, padded(control.MaxRequest), false); !r.OK {
		t.Errorf("a status padded to control.MaxRequest (%d bytes) was refused: %s", control.MaxRequest, r.Error)
	}
	if r := exchange(t, b.ctl, padded(control.MaxRequest+1), false); r.OK || r.Error != want {
		t.Errorf("a status padded to control.MaxRequest+1 bytes: answered %+v; want the error %q", r, want)
	}
	return fmt.Sprintf("refused with %q and closed, with or without a newline (the client's write failed after %d KiB); a request of exactly %d bytes was answered, one byte more refused; %s",
		want, sent>>10, control.MaxRequest, a.survived(t))
}

func slowControlClients(t *testing.T) string {
	const (
		slow   = 100
		within = control.RequestTimeout + 10*time.Second
	)
	a := startAbused(t, control.RequestTimeout+3*time.Second)
	b := a.b
	type result struct {
		how    string
		raw    string
		err    error
		closed time.Duration
	}
	results := make(chan result, slow)
	stopTrickle := make(chan struct{})
	defer close(stopTrickle)
	start := time.Now()
	for i := range slow {
		c := dialControl(t, b.ctl)
		defer c.Close()
		how := "silent"
		switch i {
		case 0:
			how = "half a line"
			if _, err := c.Write([]byte(`{"method":"sta`)); err != nil {
				t.Fatal(err)
			}
		case 1:
			// A byte every 200ms, never a newline: a deadline renewed on
			// every read would never expire.
			how = "trickling"
			go func() {
				for _, ch := range []byte(`{"method":"status","params":{"kernel":false}}`) {
					select {
					case <-stopTrickle:
						return
					case <-time.After(200 * time.Millisecond):
					}
					if _, err := c.Write([]byte{ch}); err != nil {
						return
					}
				}
			}()
		}
		go func() {
			raw, err := readToClose(c, within)
			results <- result{how, raw, err, time.Since(start)}
		}()
	}

	// Meanwhile, baton answers everyone else.
	var answered int
	got := make([]result, 0, slow)
	for len(got) < slow {
		select {
		case r := <-results:
			got = append(got, r)
			continue
		default:
		}
		if _, err := b.tryStatusOf(false); err != nil {
			t.Fatalf("status while %d slow clients were connected: %v", slow-len(got), err)
		}
		answered++
		// Pacing: another client asks every 50ms while the slow ones
		// hold their connections.
		time.Sleep(50 * time.Millisecond)
	}
	var first, last time.Duration
	wantErr := fmt.Sprintf("no complete request within %s", control.RequestTimeout)
	for _, r := range got {
		if r.err != nil {
			t.Errorf("%s client: not closed within %s: %v", r.how, within, r.err)
			continue
		}
		if rep := parseReply(t, r.raw); rep.OK || !strings.Contains(rep.Error, wantErr) {
			t.Errorf("%s client: answered %q; want an error with %q", r.how, r.raw, wantErr)
		}
		if first == 0 || r.closed < first {
			first = r.closed
		}
		last = max(last, r.closed)
	}
	return fmt.Sprintf("%d clients (one sending half a line, one trickling a byte every 200ms, the rest silent) were each told %q and closed %.1f to %.1fs after they connected (control.RequestTimeout %s); meanwhile %d status requests were answered, none failed; %s",
		slow, wantErr, first.Seconds(), last.Seconds(), control.RequestTimeout, answered, a.survived(t))
}

func thousandControlClients(t *testing.T) string {
	const clients = 1000
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// Go raises the soft limit to the hard one at start; check rather
	// than raise it, since a changed limit would pass to later children.
	if lim.Cur < 2*clients {
		t.Skipf("RLIMIT_NOFILE %d is too low for %d clients and the load; raise it (ulimit -n)", lim.Cur, clients)
	}
	a := startAbused(t, 5*time.Second)
	b := a.b
	pid := b.cmd.Process.Pid

	stopSampling := make(chan struct{})
	most := make(chan int)
	go func() {
		m := 0
		for {
			ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			m = max(m, len(ents))
			select {
			case <-stopSampling:
				most <- m
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	gate := make(chan struct{})
	for range clients {
		wg.Go(func() {
			<-gate
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			raw, err := control.Call(ctx, b.ctl, "status", map[string]bool{"kernel": false})
			var st supervisor.Status
			if err == nil {
				err = json.Unmarshal(raw, &st)
			}
			if err == nil && st.PID != pid {
				err = fmt.Errorf("answered by pid %d, not baton's %d", st.PID, pid)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(start)
	close(stopSampling)
	peak := <-most
	if len(errs) > 0 {
		t.Errorf("%d of %d status requests failed; first: %v", len(errs), clients, errs[0])
	}
	return fmt.Sprintf("%s status requests at once: %d answered in %.1fs, %d errors; baton held up to %d fds meanwhile (it serves control.MaxConns, %d, at once); %s",
		count(clients), clients-len(errs), took.Seconds(), len(errs), peak, control.MaxConns, a.survived(t))
}

// takeoverHeader is what a running baton describes before it sends its
// sockets.
type takeoverHeader struct {
	PID     int               `json:"pid"`
	Sockets []takeover.Socket `json:"sockets"`
}

// askTakeover asks baton for its sockets as a new instance would, and
// reads the header that describes them, a byte at a time: the descriptors
// ride on the next byte, and must stay unread. It retries while baton
// still winds up an earlier takeover.
func askTakeover(t *testing.T, b *instance) (*net.UnixConn, takeoverHeader) {
	return askTakeoverWith(t, b, `{"method":"takeover"}`)
}

// askTakeoverWith is askTakeover with the request line req.
func askTakeoverWith(t *testing.T, b *instance, req string) (*net.UnixConn, takeoverHeader) {
	t.Helper()
	var c *net.UnixConn
	var h takeoverHeader
	batontest.WaitFor(t, 10*time.Second, func() error {
		c = dialControl(t, b.ctl)
		if _, err := c.Write([]byte(req + "\n")); err != nil {
			t.Fatal(err)
		}
		line, err := readByteLine(c)
		if err != nil {
			t.Fatalf("takeover: reading the header: %v", err)
		}
		var reply struct {
			OK    *bool  `json:"ok"`
			Error string `json:"error"`
		}
		json.Unmarshal(line, &reply) // not a reply: a header, decoded below
		if reply.OK == nil {
			if err := json.Unmarshal(line, &h); err != nil || h.PID != b.cmd.Process.Pid || len(h.Sockets) == 0 {
				t.Fatalf("takeover: baton answered %q, not a header from pid %d: %v", line, b.cmd.Process.Pid, err)
			}
			return nil
		}
		c.Close()
		if !strings.Contains(reply.Error, "in progress") {
			return batontest.Stop(fmt.Errorf("takeover refused: %s", line))
		}
		return fmt.Errorf("takeover refused while an earlier one winds up: %s", line)
	})
	return c, h
}

// readByteLine reads one line a byte at a time, within 10 seconds.
func readByteLine(c *net.UnixConn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var line []byte
	var b [1]byte
	for {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return line, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
}

var abortLine = regexp.MustCompile(`msg="takeover did not happen; serving on, unchanged" err=("(?:[^"\\]|\\.)*")`)

// waitAborted waits until baton has logged n aborted takeovers and
// returns why the last one was.
func waitAborted(t *testing.T, b *instance, n int) string {
	t.Helper()
	var m [][]string
	err := batontest.Wait(15*time.Second, func() error {
		if m = abortLine.FindAllStringSubmatch(b.log.String(), -1); len(m) < n {
			return fmt.Errorf("baton logged no aborted takeover %d", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, b.log)
	}
	reason, err := strconv.Unquote(m[n-1][1])
	if err != nil {
		reason = m[n-1][1]
	}
	return reason
}

// checkServing fails the test unless baton answers a status and keeps
// its listener and workers.
func checkServing(t *testing.T, a *abused) {
	t.Helper()
	st, err := a.b.tryStatusOf(false)
	if err != nil {
		t.Fatalf("status after the fake takeover: %v\n%s", err, a.b.log)
	}
	if st.Stopping || len(st.Listeners) != 1 || !slices.Equal(sortedPIDs(st), a.workers) {
		t.Errorf("after the fake takeover: stopping %v, %d listeners, workers %v; want serving on 1 listener with %v", st.Stopping, len(st.Listeners), sortedPIDs(st), a.workers)
	}
}

func takeoverHangsUp(t *testing.T) string {
	a := startAbused(t, 3*time.Second)
	b := a.b
	// Twice: with the request alone, and having read the header.
	c := dialControl(t, b.ctl)
	if _, err := c.Write([]byte(`{"method":"takeover"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	first := waitAborted(t, b, 1)
	checkServing(t, a)
	c, _ = askTakeover(t, b)
	c.Close()
	second := waitAborted(t, b, 2)
	checkServing(t, a)
	return withoutDir(b, fmt.Sprintf("hanging up right after the request, and again after the header: both aborted and logged (%q; %q); %s", first, second, a.survived(t)))
}

// ack is an fdpass acknowledgement of batch 0 (docs/fdpass.md): magic,
// version, status OK, no message.
var ack = []byte{'B', 'F', 'D', 'A', fdpass.Version, 0, 0, 0, 0, 0, 0, 0}

func takeoverGarbageAck(t *testing.T) string {
	a := startAbused(t, 3*time.Second)
	b := a.b
	c, h := askTakeover(t, b)
	defer c.Close()
	if _, err := c.Write([]byte("garbage, not an acknowledgement\n")); err != nil {
		t.Fatal(err)
	}
	reason := waitAborted(t, b, 1)
	if !strings.Contains(reason, "does not speak fdpass") {
		t.Errorf("takeover aborted for %q; want the acknowledgement refused", reason)
	}
	c.Close()
	checkServing(t, a)
	return fmt.Sprintf("baton offered %d sockets, read garbage for the acknowledgement, aborted and logged %q; %s", len(h.Sockets), reason, a.survived(t))
}

func takeoverTruncatedAck(t *testing.T) string {
	a := startAbused(t, 3*time.Second)
	b := a.b
	c, _ := askTakeover(t, b)
	// Read the frame (plain read(2): the kernel closes the descriptors
	// riding on it), so that baton reads a clean end after half an
	// acknowledgement, not a reset.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	head := make([]byte, fdpass.HeaderSize)
	if _, err := io.ReadFull(c, head); err != nil {
		t.Fatalf("reading the frame header: %v", err)
	}
	if _, err := io.ReadFull(c, make([]byte, binary.BigEndian.Uint32(head[16:20]))); err != nil {
		t.Fatalf("reading the frame body: %v", err)
	}
	if _, err := c.Write(ack[:6]); err != nil {
		t.Fatal(err)
	}
	c.Close()
	reason := waitAborted(t, b, 1)
	if !strings.Contains(reason, "6 bytes into a 12-byte read") {
		t.Errorf("takeover aborted for %q; want the truncated acknowledgement named", reason)
	}
	checkServing(t, a)
	return fmt.Sprintf("the peer read the frame, sent 6 of the 12 bytes of its acknowledgement and hung up: aborted and logged %q; %s", reason, a.survived(t))
}

// pipeFDs returns n descriptors of the read end of a new pipe, and the
// pipe's inode, to find them in another process.
func pipeFDs(t *testing.T, n int) ([]int, uint64) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(r.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	fds := make([]int, n)
	for i := range fds {
		fds[i] = int(r.Fd()) // each arrives as a descriptor of its own
	}
	return fds, st.Ino
}

// holding counts pid's descriptors that are the pipe with inode ino.
func holding(pid int, ino uint64) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == fmt.Sprintf("pipe:[%d]", ino) {
			n++
		}
	}
	return n
}

func takeoverAckWithFDs(t *testing.T) string {
	const sent = 100
	a := startAbused(t, 3*time.Second)
	b := a.b
	pid := b.cmd.Process.Pid
	fds, ino := pipeFDs(t, sent)

	// Where the kernel has SO_PASSRIGHTS (Linux 6.16+), the control
	// socket refuses every descriptor: the sender's sendmsg fails with
	// EPERM and baton never sees one. Elsewhere baton itself refuses them.
	c, _ := askTakeover(t, b)
	defer c.Close()
	_, _, err := c.WriteMsgUnix(ack, unix.UnixRights(fds...), nil)
	kernelRefused := errors.Is(err, unix.EPERM)
	if err != nil && !kernelRefused {
		t.Fatalf("sending the acknowledgement: %v", err)
	}
	if kernelRefused {
		c.Close() // the peer goes away: the takeover aborts
	}
	reason := waitAborted(t, b, 1)
	if !kernelRefused && !strings.Contains(reason, "descriptors arrived") {
		t.Errorf("takeover aborted for %q; want the descriptors refused", reason)
	}
	c.Close()
	checkServing(t, a)
	if n := holding(pid, ino); n != 0 {
		t.Errorf("baton keeps %d of the %d descriptors sent with the acknowledgement", n, sent)
	}

	// A request that brings descriptors, on a connection that reads with
	// read(2): the kernel refuses them, or discards them.
	c = dialControl(t, b.ctl)
	defer c.Close()
	req := []byte(`{"method":"status","params":{"kernel":false}}` + "\n")
	if _, _, err := c.WriteMsgUnix(req, unix.UnixRights(fds...), nil); errors.Is(err, unix.EPERM) {
		if _, err := c.Write(req); err != nil {
			t.Fatalf("sending the request: %v", err)
		}
	} else if err != nil {
		t.Fatalf("sending the request: %v", err)
	} else if kernelRefused {
		t.Errorf("the kernel refused descriptors with the acknowledgement, but took them with a request")
	}
	raw, err := readToClose(c, 20*time.Second)
	if err != nil {
		t.Fatalf("status with descriptors: %v", err)
	}
	if r := parseReply(t, raw); !r.OK {
		t.Errorf("a status request that brought descriptors: %s", r.Error)
	}
	if n := holding(pid, ino); n != 0 {
		t.Errorf("baton keeps %d of the %d descriptors sent with a status request", n, sent)
	}
	if kernelRefused {
		return fmt.Sprintf("%d descriptors with an acknowledgement and with a request: the kernel refused both sends (EPERM: the control socket has SO_PASSRIGHTS off), the takeover aborted (%q) and the request was answered without them; %s",
			sent, reason, a.survived(t))
	}
	return fmt.Sprintf("%d descriptors on an acknowledgement: aborted and logged %q, none kept; %d on a status request: answered, none kept; %s",
		sent, reason, sent, a.survived(t))
}

// takeSockets asks for a takeover and receives the sockets as a new
// instance would, closing them at once.
func takeSockets(t *testing.T, b *instance) (*net.UnixConn, int) {
	return takeSocketsWith(t, b, `{"method":"takeover"}`)
}

// takeSocketsWith is takeSockets with the request line req.
func takeSocketsWith(t *testing.T, b *instance, req string) (*net.UnixConn, int) {
	t.Helper()
	c, h := askTakeoverWith(t, b, req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := fdpass.Recv(ctx, c, fdpass.Limits{MaxFDs: len(h.Sockets) + 1})
	if err != nil {
		c.Close()
		t.Fatalf("receiving the sockets: %v", err)
	}
	for _, f := range got {
		unix.Close(f.Fd)
	}
	if len(got) != len(h.Sockets) {
		t.Errorf("received %d sockets for %d described", len(got), len(h.Sockets))
	}
	return c, len(got)
}

func takeoverBadVerdict(t *testing.T) string {
	a := startAbused(t, 3*time.Second)
	b := a.b
	verdicts := []struct{ line, want string }{
		{"this is not a verdict\n", "invalid character"},
		{fmt.Sprintf(`{"verdict":"maybe","pid":%d,"reason":"a fake peer"}`+"\n", os.Getpid()), "a fake peer"},
	}
	var reasons []string
	var got int
	for i, v := range verdicts {
		c, n := takeSockets(t, b)
		got = n
		if _, err := c.Write([]byte(v.line)); err != nil {
			t.Fatal(err)
		}
		reason := waitAborted(t, b, i+1)
		if !strings.Contains(reason, v.want) {
			t.Errorf("verdict %q: aborted for %q; want %q in it", v.line, reason, v.want)
		}
		reasons = append(reasons, fmt.Sprintf("%q", reason))
		c.Close()
		checkServing(t, a)
	}
	return fmt.Sprintf("the peer received the %d sockets, closed them and sent a verdict that is not JSON, then one that is neither commit nor abort: both aborted and logged (%s); %s",
		got, strings.Join(reasons, "; "), a.survived(t))
}

func takeoverStalls(t *testing.T) string {
	a := startAbused(t, 4*time.Second)
	b := a.b
	c, _ := askTakeover(t, b)
	defer c.Close()
	// The peer holds the sockets' frame unacknowledged: baton serves on,
	// and refuses to reload under it, until the peer goes. The stall
	// lasting a second is the test: nothing to wait for.
	time.Sleep(time.Second)
	if _, err := b.tryStatusOf(true); err != nil {
		t.Errorf("status during a stalled takeover: %v", err)
	}
	out, code := b.cli("reload")
	if code == 0 {
		t.Errorf("a reload during a takeover in progress succeeded: %s", out)
	}
	c.Close()
	reason := waitAborted(t, b, 1)
	checkServing(t, a)
	return fmt.Sprintf("status answered meanwhile; a reload was refused (%q) until the peer hung up; then aborted and logged (%q); %s",
		lastLine(out), reason, a.survived(t))
}

func takeoverNeverCommits(t *testing.T) string {
	a := startAbused(t, 4*time.Second)
	b := a.b
	// It asks for 1.5s to commit, takes the sockets, and then neither
	// commits nor aborts nor hangs up: baton gives up on it by itself.
	start := time.Now()
	c, n := takeSocketsWith(t, b, `{"method":"takeover","params":{"commit_within_ms":1500}}`)
	defer c.Close()
	reason := waitAborted(t, b, 1)
	after := time.Since(start)
	if !strings.Contains(reason, "did not commit within 1.5s") {
		t.Errorf("aborted for %q; want the deadline named", reason)
	}
	checkServing(t, a)
	survived := a.survived(t)
	// Reloads are no longer held up by the takeover that was.
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("a reload after the takeover gave up: %s", out)
	}
	return fmt.Sprintf("the peer took the %d sockets and stayed connected without a verdict: baton gave up after %.1fs, the 1.5s the peer asked for (%q), and a reload then went through; %s",
		n, after.Seconds(), reason, survived)
}

// workerEnvOf reads a variable of pid's environment.
func workerEnvOf(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	t.Fatalf("worker %d has no %s", pid, name)
	return ""
}

func strangerOnWorkerSockets(t *testing.T) string {
	const sent = 100
	a := startAbused(t, 3*time.Second)
	b := a.b
	sock := workerEnvOf(t, a.workers[0], "BATON_SOCKET")
	notifySock := workerEnvOf(t, a.workers[0], "NOTIFY_SOCKET")
	if !strings.HasPrefix(sock, "@baton/") || !strings.HasPrefix(notifySock, "@baton/") {
		t.Fatalf("BATON_SOCKET %q, NOTIFY_SOCKET %q: want abstract sockets under @baton/", sock, notifySock)
	}
	wantErr := fmt.Sprintf("pid %d is not a worker of this baton", os.Getpid())
	var refusal string
	for _, method := range []string{"hello", "handoff", "adopt", "status", "takeover"} {
		r := exchange(t, sock, []byte(`{"method":"`+method+`"}`+"\n"), false)
		if r.OK || !strings.Contains(r.Error, wantErr) {
			t.Errorf("%s on the worker socket from pid %d: answered %+v; want %q", method, os.Getpid(), r, wantErr)
		}
		refusal = r.Error
	}

	// Notifications from a stranger: ignored, and what they bring closed.
	fds, ino := pipeFDs(t, sent)
	nc, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(os.NewSyscallError("socket", err))
	}
	defer unix.Close(nc)
	msgs := []string{"READY=1", "STOPPING=1", "STATUS=owned\nX_BATON_ACCEPTED=-5", "MAINPID=1", "\x00\xff garbage", strings.Repeat("X=", 3000)}
	refusedByKernel := 0
	for _, m := range msgs {
		to := &unix.SockaddrUnix{Name: notifySock}
		err := unix.Sendmsg(nc, []byte(m), unix.UnixRights(fds...), to, 0)
		if errors.Is(err, unix.EPERM) {
			// SO_PASSRIGHTS off (Linux 6.16+): the kernel refuses the
			// descriptors; the notification itself still goes.
			refusedByKernel++
			err = unix.Sendto(nc, []byte(m), 0, to)
		}
		if err != nil {
			t.Fatalf("notification %q: %v", clip([]byte(m)), os.NewSyscallError("sendmsg", err))
		}
	}
	survived := a.survived(t) // seconds: baton has read them all by then
	for _, w := range b.status().Workers {
		if w.Status == "owned" {
			t.Errorf("worker %d took a stranger's STATUS", w.PID)
		}
	}
	if n := holding(b.cmd.Process.Pid, ino); n != 0 {
		t.Errorf("baton keeps %d of the %d descriptors sent with each notification", n, sent)
	}
	fate := "ignored and the descriptors closed"
	if refusedByKernel == len(msgs) {
		fate = "ignored, their descriptors refused by the kernel (EPERM: SO_PASSRIGHTS off)"
	}
	return fmt.Sprintf("hello, handoff, adopt, status and takeover on BATON_SOCKET from the test process were each refused (%q); %d notifications (READY=1, STOPPING=1, STATUS, MAINPID, garbage, 6 KB) each carrying %d descriptors on NOTIFY_SOCKET were %s; %s",
		refusal, len(msgs), sent, fate, survived)
}
