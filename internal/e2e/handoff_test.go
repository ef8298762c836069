package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/supervisor"
)

// waitFor polls baton's status until ok holds (bounded) and returns it.
func (b *instance) waitFor(what string, within time.Duration, ok func(supervisor.Status) bool) supervisor.Status {
	b.t.Helper()
	var st supervisor.Status
	err := batontest.Wait(within, func() error {
		var err error
		if st, err = b.tryStatus(); err != nil {
			return fmt.Errorf("%s: status: %w", what, err)
		}
		if !ok(st) {
			return fmt.Errorf("%s: last status %+v", what, st)
		}
		return nil
	})
	if err != nil {
		b.t.Fatalf("%v\n%s", err, b.log)
	}
	return st
}

// chatClient is one connection to examples/chat that sends numbered
// lines and checks their acknowledgements.
type chatClient struct {
	id      int
	conn    *net.TCPConn
	r       *bufio.Reader
	rnd     *rand.Rand
	sent    int          // lines sent, numbered from 1
	acked   int          // acknowledged, in order
	moves   []int        // generations it was moved to, from the notices
	lastGen atomic.Int64 // the last of moves, for the test to wait on
}

func dialChat(addr string, id int) (*chatClient, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &chatClient{id: id, conn: nc.(*net.TCPConn), r: bufio.NewReader(nc), rnd: rand.New(rand.NewPCG(uint64(id), 7))}
	if line, err := c.readLine(); err != nil || !strings.HasPrefix(line, "* welcome") {
		return nil, fmt.Errorf("client %d: welcome %q, %v", id, line, err)
	}
	// A room of its own: its lines reach nobody else.
	fmt.Fprintf(c.conn, "/join r%d\n", id)
	if line, err := c.readLine(); err != nil || line != fmt.Sprintf("* joined r%d", id) {
		return nil, fmt.Errorf("client %d: join answered %q, %v", id, line, err)
	}
	return c, nil
}

func (c *chatClient) readLine() (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := c.r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

func (c *chatClient) String() string {
	return fmt.Sprintf("client %d (port %d, %d sent, %d acked, moved to %v)", c.id, c.conn.LocalAddr().(*net.TCPAddr).Port, c.sent, c.acked, c.moves)
}

// next reads until a line that is not a move notice; notices are
// recorded.
func (c *chatClient) next() (string, error) {
	for {
		line, err := c.readLine()
		if err != nil {
			return line, fmt.Errorf("%v: reading: %w (never an EOF: the connection must survive every reload)", c, err)
		}
		var pid, gen int
		if _, err := fmt.Sscanf(line, "* now served by pid %d (generation %d)", &pid, &gen); err == nil {
			if len(c.moves) > 0 && gen <= c.moves[len(c.moves)-1] {
				return "", fmt.Errorf("%v: moved to generation %d after %d", c, gen, c.moves[len(c.moves)-1])
			}
			c.moves = append(c.moves, gen)
			c.lastGen.Store(int64(gen))
			continue
		}
		return line, nil
	}
}

// talk sends numbered lines in bursts of one to three, a quarter of them
// split in the middle of a line, and checks that each is acknowledged
// exactly once, in order, until stop is closed.
func (c *chatClient) talk(stop <-chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		k := 1 + c.rnd.IntN(3)
		var buf []byte
		for range k {
			c.sent++
			buf = fmt.Appendf(buf, "%d line %d of client %d\n", c.sent, c.sent, c.id)
		}
		if c.rnd.IntN(4) == 0 {
			cut := 1 + c.rnd.IntN(len(buf)-1)
			if _, err := c.conn.Write(buf[:cut]); err != nil {
				return fmt.Errorf("%v: writing: %w", c, err)
			}
			// Pacing: the rest of the line follows a moment later, as
			// a slow client's would, in another segment.
			time.Sleep(time.Duration(1+c.rnd.IntN(5)) * time.Millisecond)
			buf = buf[cut:]
		}
		if _, err := c.conn.Write(buf); err != nil {
			return fmt.Errorf("%v: writing: %w", c, err)
		}
		for c.acked < c.sent {
			line, err := c.next()
			if err != nil {
				return err
			}
			if line != fmt.Sprintf("ack %d", c.acked+1) {
				return fmt.Errorf("%v: got %q, want \"ack %d\" (each line acknowledged once, in order)", c, line, c.acked+1)
			}
			c.acked++
		}
		// Pacing: a chat client's think time between bursts.
		time.Sleep(time.Duration(100+c.rnd.IntN(200)) * time.Millisecond)
	}
}

// finish checks, with /whoami, that the chat sees the client's own port
// from generation gen, then quits.
func (c *chatClient) finish(gen int) error {
	fmt.Fprintf(c.conn, "/whoami\n")
	line, err := c.next()
	if err != nil {
		return err
	}
	port := c.conn.LocalAddr().(*net.TCPAddr).Port
	if want := fmt.Sprintf(", 127.0.0.1:%d, served by pid ", port); !strings.Contains(line, want) || !strings.HasSuffix(line, fmt.Sprintf("(generation %d)", gen)) {
		return fmt.Errorf("%v: /whoami answered %q; want the same port (%d) in generation %d", c, line, port, gen)
	}
	fmt.Fprintf(c.conn, "/quit\n")
	if line, err := c.next(); err != nil || line != "* bye" {
		return fmt.Errorf("%v: /quit answered %q, %v", c, line, err)
	}
	if rest, err := io.ReadAll(c.r); err != nil || len(rest) > 0 {
		return fmt.Errorf("%v: after bye: %q, %v; want EOF", c, rest, err)
	}
	return nil
}

// TestHandoffChatKeepsEveryClient runs examples/chat with 2,000 clients
// that each send numbered lines while baton reloads five times (the third
// time by upgrading itself, which re-executes baton: the new workers'
// subscriptions must survive it): every client keeps its connection (same
// port, never an EOF), every line is acknowledged exactly once and in
// order, and every connection moved through each generation.
func TestHandoffChatKeepsEveryClient(t *testing.T) {
	requireE2E(t)
	const clients, reloads = 2000, 5
	b := startBaton(t, nil, "-l", "chat=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", chatBin)
	b.waitReady(2)
	addr := b.addr("chat")
	cs := make([]*chatClient, clients)
	for i := range cs {
		c, err := dialChat(addr, i)
		if err != nil {
			t.Fatal(err)
		}
		defer c.conn.Close()
		cs[i] = c
	}
	stop := make(chan struct{})
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.talk(stop)
		}()
	}
	const upgradeAt = 3
	for i := 1; i <= reloads; i++ {
		// Pacing: the clients talk in each generation for a while, so
		// that the reload meets them mid-conversation.
		time.Sleep(300 * time.Millisecond)
		cmd := "reload"
		if i == upgradeAt {
			cmd = "upgrade"
		}
		if out, code := b.cli(cmd); code != 0 {
			close(stop)
			wg.Wait()
			t.Fatalf("%s %d exited %d: %s", cmd, i, code, out)
		}
		b.waitFor(fmt.Sprintf("%s %d: every connection moved to generation %d", cmd, i, i+1), 2*time.Minute, func(st supervisor.Status) bool {
			if !settled(st, 2) || st.Generation != i+1 || st.Handoff.Held != 0 {
				return false
			}
			for _, c := range cs {
				if c.lastGen.Load() != int64(i+1) {
					return false
				}
			}
			return true
		})
	}
	time.Sleep(300 * time.Millisecond) // pacing: a while in the last generation too
	close(stop)
	wg.Wait()
	failed := 0
	for i, c := range cs {
		err := errs[i]
		if err == nil {
			err = c.finish(reloads + 1)
		}
		if err == nil && fmt.Sprint(c.moves) != "[2 3 4 5 6]" {
			err = fmt.Errorf("%v: moved through generations %v, want [2 3 4 5 6]", c, c.moves)
		}
		if err != nil {
			if failed++; failed <= 10 {
				t.Error(err)
			}
		}
	}
	if failed > 10 {
		t.Errorf("... and %d more clients failed", failed-10)
	}
	lines := 0
	for _, c := range cs {
		lines += c.acked
	}
	st := b.status()
	h := st.Handoff
	t.Logf("%d clients, %d lines acknowledged, %d reloads; store: %+v", clients, lines, reloads, h)
	// The counts start again with the upgraded baton, which made the
	// upgrade's move and those after it.
	if moves := reloads - upgradeAt + 1; st.Upgrades != 1 || h.Stored != clients*moves || h.Adopted != clients*moves || h.Expired != 0 || h.Refused != 0 || h.Unconfirmed != 0 {
		t.Errorf("%d upgrades; store counts %+v; want 1 upgrade, %d stored and adopted, nothing else", st.Upgrades, h, clients*moves)
	}
}

// holdBaton starts baton with hold workers, reporting to a fresh
// directory, and connects n clients, each answered once by generation 1.
func holdBaton(t *testing.T, n int, env []string, args ...string) (*instance, string, []*holdClient) {
	t.Helper()
	dir := t.TempDir()
	env = append([]string{workerEnv + "=hold", reportDir + "=" + dir}, env...)
	b := startBaton(t, env, append(append([]string{"-l", "echo=tcp://127.0.0.1:0", "--ready", "notify"}, args...), "--", testBin)...)
	st := b.waitReady(1)
	addr := b.addr("echo")
	var cs []*holdClient
	for i := range n {
		c, err := dialHold(addr)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		t.Cleanup(func() { c.conn.Close() })
		if pid, gen, err := c.echo("hello"); err != nil || gen != 1 || pid != st.Workers[0].PID {
			t.Fatalf("client %d: first echo from pid %d generation %d, %v", i, pid, gen, err)
		}
		cs = append(cs, c)
	}
	return b, dir, cs
}

// holdClient is a client of the hold worker.
type holdClient struct {
	conn *net.TCPConn
	r    *bufio.Reader
}

func dialHold(addr string) (*holdClient, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &holdClient{conn: nc.(*net.TCPConn), r: bufio.NewReader(nc)}, nil
}

// echo sends a line and returns the pid and generation that answered.
func (c *holdClient) echo(text string) (pid, gen int, err error) {
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "%s\n", text); err != nil {
		return 0, 0, err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return 0, 0, err
	}
	var got string
	if _, err := fmt.Sscanf(line, "%d %d %s", &pid, &gen, &got); err != nil || got != text {
		return 0, 0, fmt.Errorf("echo of %q: %q", text, line)
	}
	return pid, gen, nil
}

// eof waits for the end of the stream: EOF or a reset, never a timeout.
func (c *holdClient) eof() error {
	c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c.r)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return err
	}
	if len(b) > 0 {
		return fmt.Errorf("read %q before the end", b)
	}
	return nil
}

func workerOf(st supervisor.Status, gen int) int {
	for _, w := range st.Workers {
		if w.Generation == gen {
			return w.PID
		}
	}
	return 0
}

// TestHandoffOldWorkerKilledMidway kills the old worker after it handed
// off half its connections: those are adopted; the rest close with it
// (their clients read EOF, not a hang); baton runs on and holds no more
// descriptors than before.
func TestHandoffOldWorkerKilledMidway(t *testing.T) {
	requireE2E(t)
	const n, half = 200, 100
	pause := filepath.Join(t.TempDir(), "paused")
	b, _, cs := holdBaton(t, n, []string{handoffPause + "=" + strconv.Itoa(half), handoffPauseFile + "=" + pause}, "-n", "1")
	before := b.status()
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: %d %s", code, out)
	}
	var handed []byte
	err := batontest.Wait(30*time.Second, func() (err error) {
		handed, err = os.ReadFile(pause)
		return err
	})
	if err != nil {
		t.Fatalf("the old worker did not hand off %d connections: %v\n%s", half, err, b.log)
	}
	if err := killPID(before.Workers[0].PID); err != nil {
		t.Fatal(err)
	}
	st := b.waitFor("the killed worker gone and its connections adopted", 30*time.Second, func(st supervisor.Status) bool {
		return settled(st, 1) && st.Generation == 2 && st.Handoff.Adopted == half && st.Handoff.Held == 0
	})
	newPID := workerOf(st, 2)
	moved := map[string]bool{}
	for _, a := range strings.Fields(string(handed)) {
		moved[a] = true
	}
	if len(moved) != half {
		t.Fatalf("the worker says it handed off %d connections, want %d", len(moved), half)
	}
	for i, c := range cs {
		if moved[c.conn.LocalAddr().String()] {
			if pid, gen, err := c.echo("after"); err != nil || pid != newPID || gen != 2 {
				t.Errorf("handed-off client %d: answered by pid %d generation %d, %v; want %d of generation 2", i, pid, gen, err, newPID)
			}
			continue
		}
		if err := c.eof(); err != nil {
			t.Errorf("client %d of the killed worker: %v; want EOF", i, err)
		}
	}
	h := st.Handoff
	if h.Stored != half || h.Expired != 0 || h.Unconfirmed != 0 {
		t.Errorf("store counts %+v", h)
	}
	// No descriptor leaked: one worker then, one worker now.
	b.waitFor(fmt.Sprintf("baton back to the %d descriptors it had before", before.Process.FDs), 10*time.Second, func(st supervisor.Status) bool {
		return st.Process.FDs == before.Process.FDs
	})
}

// TestHandoffNeverAdopted has a new generation that never adopts: the
// stored connections are closed at the deadline and counted.
func TestHandoffNeverAdopted(t *testing.T) {
	requireE2E(t)
	const n = 50
	gate := filepath.Join(t.TempDir(), "never")
	b, _, cs := holdBaton(t, n, []string{adoptGate + "=" + gate}, "-n", "1", "--handoff-timeout", "1s")
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: %d %s", code, out)
	}
	st := b.waitFor("every connection expired", 30*time.Second, func(st supervisor.Status) bool {
		return st.Handoff.Expired == n && st.Handoff.Held == 0
	})
	if h := st.Handoff; h.Stored != n || h.Adopted != 0 {
		t.Errorf("store counts %+v", h)
	}
	for i, c := range cs {
		if err := c.eof(); err != nil {
			t.Errorf("client %d: %v; want EOF", i, err)
		}
	}
	out, code := b.cli("status")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("handoff: 0 held, %d stored, 0 adopted, %d expired, 0 refused (timeout 1s)", n, n)) {
		t.Errorf("baton status (exit %d) does not show the expired connections:\n%s", code, out)
	}
}

// TestHandoffLowRLIMIT gives baton a RLIMIT_NOFILE with room for about
// 100 connections before a worker hands off 300 while the next
// generation does not adopt yet: baton stores what fits, refuses the rest
// with an error naming the limit (the worker keeps those and serves
// them), and loses none of what it stored.
func TestHandoffLowRLIMIT(t *testing.T) {
	requireE2E(t)
	const n = 300
	gate := filepath.Join(t.TempDir(), "adopt")
	b, dir, cs := holdBaton(t, n, []string{adoptGate + "=" + gate}, "-n", "1")
	before := b.status()
	oldPID := before.Workers[0].PID
	limit := uint64(before.Process.FDs + handoff.Reserve + 100)
	if err := unix.Prlimit(b.cmd.Process.Pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatal(err)
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: %d %s", code, out)
	}
	// The old worker tries every connection once.
	var old holdReport
	err := batontest.Wait(60*time.Second, func() error {
		reps, err := readHoldReports(dir)
		if err != nil {
			return batontest.Stop(err)
		}
		if old = reps[oldPID]; old.StopNS == 0 || int(old.HandedOff)+int(old.Refused) != n {
			return fmt.Errorf("the old worker did not try every connection: %+v", old)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, b.log)
	}
	stored := int(old.HandedOff)
	if stored == 0 || stored >= n || len(old.Errors) == 0 {
		t.Fatalf("under a limit of %d: %d of %d handed off, errors %q; want some stored, some refused", limit, stored, n, old.Errors)
	}
	for _, e := range old.Errors {
		if !strings.Contains(e, "RLIMIT_NOFILE") || !strings.Contains(e, "raise baton's limit") {
			t.Errorf("refusal %q does not name the limit and the fix", e)
		}
	}
	st := b.status()
	if h := st.Handoff; h.Held != stored || h.Refused == 0 || h.FDLimit != limit {
		t.Errorf("store %+v; want %d held, refusals, fd_limit %d", h, stored, limit)
	}
	// Now the new generation adopts what baton stored.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st = b.waitFor("the stored connections adopted", 30*time.Second, func(st supervisor.Status) bool {
		return st.Handoff.Adopted == stored && st.Handoff.Held == 0
	})
	newPID := workerOf(st, 2)
	byOld, byNew := 0, 0
	for i, c := range cs {
		pid, _, err := c.echo("check")
		switch {
		case err != nil:
			t.Errorf("client %d lost its connection: %v", i, err)
		case pid == oldPID:
			byOld++
		case pid == newPID:
			byNew++
		}
	}
	if byNew != stored || byOld != n-stored {
		t.Errorf("%d clients served by the new generation, %d by the old; want %d and %d", byNew, byOld, stored, n-stored)
	}
}

// TestHandoffHoldsUpgrade refuses baton upgrade while connections wait
// in the store for adoption (the new program would not have them), and
// allows it once they are adopted.
func TestHandoffHoldsUpgrade(t *testing.T) {
	requireE2E(t)
	const n = 20
	gate := filepath.Join(t.TempDir(), "adopt")
	b, _, cs := holdBaton(t, n, []string{adoptGate + "=" + gate}, "-n", "1")
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload: %d %s", code, out)
	}
	b.waitFor("every connection stored", 30*time.Second, func(st supervisor.Status) bool {
		return st.Handoff.Held == n && st.Handoff.Senders == 0
	})
	out, code := b.cli("upgrade")
	if code != 1 || !strings.Contains(out, fmt.Sprintf("workers are handing off connections (%d held for adoption", n)) {
		t.Errorf("upgrade while connections are held: exit %d: %s", code, out)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b.waitFor("the connections adopted", 30*time.Second, func(st supervisor.Status) bool {
		return st.Handoff.Adopted == n && st.Handoff.Held == 0
	})
	if out, code := b.cli("upgrade"); code != 0 {
		t.Fatalf("upgrade once adopted: exit %d: %s", code, out)
	}
	st := b.waitFor("the upgrade's generation serving", 60*time.Second, func(st supervisor.Status) bool {
		return st.Upgrades == 1 && settled(st, 1) && st.Generation == 3
	})
	// The upgrade started generation 3, and the connections moved to it
	// through the new baton.
	b.waitFor("moved again", 30*time.Second, func(st supervisor.Status) bool { return st.Handoff.Adopted == n })
	for i, c := range cs {
		if pid, gen, err := c.echo("after"); err != nil || gen != 3 || pid != workerOf(st, 3) {
			t.Errorf("client %d: answered by pid %d generation %d, %v", i, pid, gen, err)
		}
	}
}
