package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/sockdiag"
	"github.com/baton-dev/baton/internal/steer"
)

// requireSteering skips a test of kept UDP flows where this process may
// not load the steering program (baton runs as the same user).
func requireSteering(t *testing.T) {
	t.Helper()
	if err := steer.Supported(); err != nil {
		t.Skipf("UDP flows cannot be kept here: %v", err)
	}
}

// flowCounts is what the peers of the udp-flows worker saw.
type flowCounts struct {
	sent, ok, nostate, lost, sessions, quiet atomic.Int64
	// late counts answers that came after their peer stopped waiting
	// (and counted the datagram lost): late, not lost.
	late atomic.Int64
	pids sync.Map // answering pids
	// dropped is how many datagrams the kernel dropped meanwhile for a
	// full receive buffer (Udp RcvbufErrors of /proc/net/snmp, for every
	// socket of the namespace): UDP's losses on a starved machine, not
	// baton's, which would show as more lost than dropped.
	dropped int64
}

// udpRcvbufErrors is the namespace's count of datagrams dropped for a
// full receive buffer.
func udpRcvbufErrors(t *testing.T) int64 {
	t.Helper()
	m, err := sockdiag.ReadNetstat()
	if err != nil {
		t.Fatal(err)
	}
	return m["Udp"]["RcvbufErrors"]
}

func (c *flowCounts) String() string {
	return fmt.Sprintf("%d datagrams, %d answered by a worker with the peer's session, %d by one without it, %d unanswered within %s (%d of them answered later; the kernel dropped %d for full receive buffers); %d sessions, %d peers went quiet and came back",
		c.sent.Load(), c.ok.Load(), c.nostate.Load(), c.lost.Load(), peerWait, c.late.Load(), c.dropped, c.sessions.Load(), c.quiet.Load())
}

// runFlowPeers runs n peers of the udp-flows worker at addr until stop
// is closed, then waits for them. A peer runs sessions of 10 to 30
// datagrams, each answered before the next, 2 to 6 ms apart; after a
// session it says bye and the next session comes from a new port (a new
// peer), or, one time in twenty, it goes quiet for longer than a draining
// worker keeps an idle session and opens its next session from the same
// port.
func runFlowPeers(t *testing.T, addr string, n int, stop <-chan struct{}) (*flowCounts, func()) {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &flowCounts{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			buf := make([]byte, 128)
			var conn *net.UDPConn
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			send := func(msg string, seq int) {
				c.sent.Add(1)
				conn.Write([]byte(msg))
				want := fmt.Sprintf(" %d", seq)
				deadline := time.Now().Add(peerWait)
				for {
					conn.SetReadDeadline(deadline)
					m, err := conn.Read(buf)
					if err != nil {
						c.lost.Add(1)
						return
					}
					reply := string(buf[:m])
					f := strings.Fields(reply)
					if !strings.HasSuffix(reply, want) {
						// A late answer to an earlier datagram, counted
						// lost then: late, unless it says the datagram
						// reached a worker without the session.
						if f[0] == "ok" {
							c.late.Add(1)
						} else {
							c.nostate.Add(1)
						}
						continue
					}
					c.pids.Store(f[1], true)
					if f[0] == "ok" {
						c.ok.Add(1)
					} else {
						c.nostate.Add(1)
					}
					return
				}
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil {
					var err error
					if conn, err = net.DialUDP("udp", nil, raddr); err != nil {
						t.Error(err)
						return
					}
				}
				c.sessions.Add(1)
				length := 10 + rng.IntN(21)
				for seq := range length {
					send(fmt.Sprint(seq), seq)
					// Pacing: a peer's datagrams a few ms apart.
					time.Sleep(time.Duration(2+rng.IntN(5)) * time.Millisecond)
				}
				if rng.IntN(20) == 0 {
					c.quiet.Add(1)
					// The time is the test: a peer quiet for longer
					// than the worker keeps an idle session.
					time.Sleep(flowIdle + 500*time.Millisecond)
					continue
				}
				send(fmt.Sprintf("bye %d", length), length)
				conn.Close()
				conn = nil
			}
		}()
	}
	dropped := udpRcvbufErrors(t)
	return c, func() {
		wg.Wait()
		c.dropped = udpRcvbufErrors(t) - dropped
	}
}

// lostToBaton is how many datagrams went unanswered, beyond those
// answered late and those the kernel dropped for full receive buffers
// meanwhile.
func (c *flowCounts) lostToBaton() int64 {
	return max(c.lost.Load()-c.late.Load()-c.dropped, 0)
}

// flowsCase runs baton with the udp-flows worker on listener URL url and
// workers workers, 200 peers, and reloads reloads, one after the other;
// it returns what the peers saw and the listener's flows at the end.
func flowsCase(t *testing.T, query string, workers, reloads int) (*flowCounts, *api.FlowsStatus) {
	t.Helper()
	actions := make([][]string, reloads)
	for i := range actions {
		actions[i] = []string{"reload"}
	}
	return flowsActions(t, query, workers, actions)
}

// flowsActions is flowsCase with a list of baton commands to run one
// after the other under the peers' traffic (reload, upgrade, scale N).
func flowsActions(t *testing.T, query string, workers int, actions [][]string) (*flowCounts, *api.FlowsStatus) {
	t.Helper()
	reloads := len(actions)
	b := startBaton(t, []string{workerEnv + "=udp-flows"}, "-l", "flows=udp://127.0.0.1:0"+query,
		"-n", fmt.Sprint(workers), "--ready", "notify", "--drain-timeout", "30s", "--", testBin)
	b.waitReady(workers)
	stop := make(chan struct{})
	counts, wait := runFlowPeers(t, b.addr("flows"), 200, stop)
	start := time.Now()
	for i, action := range actions {
		// Traffic between reloads: 500 more answers (within the first
		// minute; past it, the counts at the end say what the peers saw).
		batontest.Wait(time.Minute-time.Since(start), func() error {
			if n := counts.ok.Load(); n < int64(500*(i+1)) {
				return fmt.Errorf("%d answers", n)
			}
			return nil
		})
		b.cliUntilDone(action...)
		if action[0] == "scale" {
			workers, _ = strconv.Atoi(action[1])
		}
	}
	time.Sleep(300 * time.Millisecond) // pacing: traffic after the last command too
	// A peer that went quiet comes back to a generation that is gone (and
	// is moved) only once one has drained: with fast reloads, every quiet
	// peer may have come back while its generation was still draining.
	// Traffic goes on (up to 20 s) until one has, where baton keeps flows.
	batontest.Wait(20*time.Second, func() error {
		st, err := b.tryStatus()
		if err != nil {
			return err
		}
		if fs := st.Listeners[0].Flows; fs != nil && fs.Kept && fs.Moved == 0 {
			return errors.New("no quiet peer moved yet")
		}
		return nil
	})
	close(stop)
	wait()
	// Every old worker drains: its sessions end, it releases its flows
	// and exits.
	st := b.waitStatus("the old workers to drain and exit", func(st api.Status) bool { return len(st.Workers) == workers })
	t.Logf("%s, %d commands in %s: %s; flows %s", query, reloads, time.Since(start).Round(time.Millisecond), counts, flowsText(st.Listeners[0].Flows))
	return counts, st.Listeners[0].Flows
}

// TestUDPFlowsKeptAcrossReloads: a worker that keeps per-peer state,
// 200 peers sending without pause, 20 reloads: no datagram reaches a
// worker without its peer's session, none is lost, and every old
// generation drains and exits, with balance=shared (one worker) and
// balance=reuseport (two).
func TestUDPFlowsKeptAcrossReloads(t *testing.T) {
	requireE2EAlone(t)
	requireSteering(t)
	for _, tc := range []struct {
		name    string
		query   string
		workers int
	}{
		{"shared", "", 1},
		{"reuseport", "?balance=reuseport", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, fs := flowsCase(t, tc.query, tc.workers, 20)
			if n := c.nostate.Load(); n != 0 {
				t.Errorf("%d datagrams reached a worker without their peer's session (%s)", n, c)
			}
			if n := c.lostToBaton(); n != 0 {
				t.Errorf("%d datagrams lost beyond what the kernel dropped for full receive buffers (%s)", n, c)
			}
			if n := 0; true {
				c.pids.Range(func(any, any) bool { n++; return true })
				if n < 20*tc.workers {
					t.Errorf("answers came from %d processes; 20 reloads of %d workers should have made %d", n, tc.workers, 21*tc.workers)
				}
			}
			if fs == nil || !fs.Kept || fs.Known == 0 || fs.Draining == 0 || fs.Moved == 0 {
				t.Errorf("flows status %+v: want them kept, datagrams of known peers, to draining generations, and moved (the quiet peers)", fs)
			}
		})
	}
}

// TestUDPFlowsOffLosesSessions is the same with flows=off, as baton did
// before it kept flows: old and new workers read one socket, and peers'
// datagrams reach workers without their session. It shows the check
// above sees what it checks.
func TestUDPFlowsOffLosesSessions(t *testing.T) {
	requireE2EAlone(t)
	c, fs := flowsCase(t, "?flows=off", 1, 5)
	if c.nostate.Load() == 0 {
		t.Errorf("flows=off: no datagram reached a worker without its session (%s); the test does not see what it checks", c)
	}
	if fs == nil || fs.Kept || !strings.Contains(fs.Error, "flows=off") {
		t.Errorf("flows status %+v: want not kept, flows=off", fs)
	}
}

// TestUDPFlowsKeptAcrossUpgradesAndScale: the same traffic across
// upgrades (the program, its maps and every generation's sockets go
// across baton's execve), reloads and scales up and down with
// balance=reuseport: 0 datagrams reach a worker without their session,
// 0 lost.
func TestUDPFlowsKeptAcrossUpgradesAndScale(t *testing.T) {
	requireE2EAlone(t)
	requireSteering(t)
	c, fs := flowsActions(t, "?balance=reuseport", 2, [][]string{
		{"reload"}, {"upgrade"}, {"scale", "3"}, {"reload"}, {"upgrade"}, {"scale", "1"}, {"reload"}, {"scale", "2"}, {"upgrade", "--keep-workers"},
	})
	if c.nostate.Load() != 0 || c.lostToBaton() != 0 {
		t.Errorf("across upgrades and scales: %s", c)
	}
	if fs == nil || !fs.Kept || fs.Known == 0 || fs.Draining == 0 {
		t.Errorf("flows status %+v", fs)
	}
}

// TestUDPFlowsWithoutPrivilege runs baton as a user who may not load
// eBPF programs: with flows=auto (the default) a UDP listener falls back
// to a shared socket and says why, once, in the log and in the status;
// with flows=on baton refuses to start, with the same reason.
func TestUDPFlowsWithoutPrivilege(t *testing.T) {
	requireE2EAlone(t)
	u := newTestUser(t)
	dir := shortDir(t)
	os.Chown(dir, u.UID, u.GID)
	ctl := filepath.Join(dir, "ctl.sock")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := u.command(ctx, batonBin, "run", "--control", ctl, "-l", "dns=udp://127.0.0.1:0?flows=on", "--", "/bin/sleep", "30").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "UDP flows are not kept across reloads") || !strings.Contains(string(out), "CAP_BPF") {
		t.Errorf("flows=on as user %s: %v: %s; want exit 1 and the reason", u.Name, err, out)
	}

	// The test binary's directory is its builder's alone: a copy the user
	// may run.
	worker := binCopy(t, testBin, "e2e.test")
	b := &instance{t: t, ctl: ctl, log: &logBuffer{}, done: make(chan struct{})}
	b.cmd = u.command(context.Background(), batonBin, "run", "--control", ctl, "-l", "flows=udp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", worker)
	b.cmd.Env = append(b.cmd.Env, workerEnv+"=udp-flows")
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.err = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() { b.stop(20 * time.Second) })
	// baton's client talks only to a baton of its own user: as the user.
	cli := func(args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := u.command(ctx, clientBin, append(args, "--control", ctl)...)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	var st api.Status
	err = batontest.Wait(30*time.Second, func() error {
		out, code := cli("status", "--json")
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil && len(st.Workers) == 1 && st.Workers[0].State == "ready" {
			return nil
		}
		return fmt.Errorf("baton as user %s not ready: %s", u.Name, out)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, b.log)
	}
	fs := st.Listeners[0].Flows
	if fs == nil || fs.Kept || !strings.Contains(fs.Error, "UDP flows are not kept across reloads") || !strings.Contains(fs.Error, "CAP_BPF") {
		t.Errorf("flows=auto as user %s: status %+v; want not kept, with the reason", u.Name, fs)
	}
	if n := strings.Count(b.log.String(), "listener's UDP flows are not kept"); n != 1 {
		t.Errorf("the log says %d times that flows are not kept, want once:\n%s", n, b.log)
	}
	// It serves all the same, from one shared socket, across a reload.
	if out, code := cli("reload"); code != 0 {
		t.Errorf("reload: %s", out)
	}
	if n := strings.Count(b.log.String(), "listener's UDP flows are not kept"); n != 1 {
		t.Errorf("after a reload the log says %d times that flows are not kept, want once", n)
	}
}

// TestUDPFlowsKeptAcrossTakeover: a new instance takes the listener over
// (baton run --takeover) under the peers' traffic, with the steering
// program and its maps: the old instance's workers keep their sessions
// until they drain, new sessions go to the new instance's workers once
// they are ready, and a reload there keeps them too. 0 sessions lost, 0
// datagrams.
func TestUDPFlowsKeptAcrossTakeover(t *testing.T) {
	requireE2EAlone(t)
	requireSteering(t)
	env := []string{workerEnv + "=udp-flows"}
	// A status every 50 ms (the periodic check): the old instance's
	// drains through moments when its listener has no socket left (its
	// workers released their flows), which crashed it.
	args := []string{"-l", fmt.Sprintf("flows=udp://127.0.0.1:%d?balance=reuseport", freePort(t)), "-n", "2", "--ready", "notify", "--drain-timeout", "30s", "--inspect-interval", "50ms", "--", testBin}
	b := startBaton(t, env, args...)
	b.waitReady(2)
	stop := make(chan struct{})
	counts, wait := runFlowPeers(t, b.addr("flows"), 200, stop)
	// answered waits until the peers have had least answers.
	answered := func(least int64) {
		t.Helper()
		batontest.WaitFor(t, time.Minute, func() error {
			if n := counts.ok.Load(); n < least {
				return fmt.Errorf("the peers had %d answers, want %d: %s", n, least, counts)
			}
			return nil
		})
	}
	answered(2000)
	n := startTakeover(t, b, env, args...)
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Errorf("the old instance exited %d", code)
	}
	n.waitReady(2)
	answered(counts.ok.Load() + 2000)
	if out, code := n.cli("reload"); code != 0 {
		t.Fatalf("reload in the new instance: %s", out)
	}
	answered(counts.ok.Load() + 2000)
	close(stop)
	wait()
	st := n.waitStatus("the old workers to drain", func(st api.Status) bool { return len(st.Workers) == 2 })
	t.Logf("takeover: %s; flows %s", counts, flowsText(st.Listeners[0].Flows))
	if counts.nostate.Load() != 0 || counts.lostToBaton() != 0 {
		t.Errorf("across the takeover: %s", counts)
	}
	if !strings.Contains(n.log.String(), "its UDP flows kept") {
		t.Errorf("the new instance did not take the flows over:\n%s", n.log)
	}
	if fs := st.Listeners[0].Flows; fs == nil || !fs.Kept || fs.Known == 0 {
		t.Errorf("flows status %+v", fs)
	}
}

// flowsText is a listener's flows for a log line, also when the status
// has none (a baton without them, E2E_BATON_BINARY).
func flowsText(f *api.FlowsStatus) string {
	if f == nil {
		return "(none in the status)"
	}
	return fmt.Sprintf("%+v", *f)
}
