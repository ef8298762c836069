package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/loadgen"
)

// upgradeCases: what baton executes as root on an upgrade, who may make it
// do so, and an upgrade that races reloads (issue 16, findings 6 and 13).
var upgradeCases = []reliabilityCase{
	{"Security", "baton upgrade --binary /bin/true (a program that exits 0 but is not a baton)", upgradeToBinTrue},
	{"Security", "a control_group member asks for an upgrade and a takeover", groupMemberUpgradeTakeover},
	{"Faults", "upgrades while a reload is asked for every 50 ms", upgradeRacesReloads},
}

// clientOut runs a baton client command (clientBin) to completion within
// limit and returns its combined output, exit code and run time; a
// command still running at limit is killed (exit code -1). It may run on
// any goroutine.
func clientOut(cmd *exec.Cmd) (string, int, time.Duration, error) {
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return strings.TrimSpace(string(out)), ee.ExitCode(), took, nil
	case err != nil:
		return "", 0, took, err
	}
	return strings.TrimSpace(string(out)), 0, took, nil
}

func upgradeToBinTrue(t *testing.T) string {
	a := startAbused(t, 5*time.Second)
	b := a.b
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// --timeout bounds what the baton before the handshake did: it
	// exec'd /bin/true and the client waited for it to come back.
	out, code, took, err := clientOut(exec.CommandContext(ctx, clientBin, "upgrade", "--binary", "/bin/true", "--timeout", "20s", "--control", b.ctl))
	if err != nil {
		t.Fatal(err)
	}
	if code != 1 || !strings.Contains(out, "/bin/true exited 0 without answering the pre-flight handshake: not a baton") || !strings.Contains(out, "keeps running unchanged") {
		t.Errorf("baton upgrade --binary /bin/true: exit %d after %s, output %q; want exit 1, refused as not a baton, baton unchanged", code, took.Round(time.Millisecond), out)
	}
	if took > 15*time.Second {
		t.Errorf("baton upgrade --binary /bin/true took %s to answer; a refused pre-flight takes a second or two", took.Round(time.Millisecond))
	}
	if strings.Contains(out, "re-executing") || strings.Contains(out, "passed") {
		t.Errorf("the refused upgrade's output claims a step that did not happen: %q", out)
	}
	st := b.status()
	if st.Upgrades != 0 || st.UpgradeError != "" {
		t.Errorf("after the refused upgrade: %d upgrades, upgrade error %q; want none", st.Upgrades, st.UpgradeError)
	}
	return fmt.Sprintf("refused in %.1fs, exit 1: %q; %s", took.Seconds(), lastLine(out), a.survived(t))
}

func groupMemberUpgradeTakeover(t *testing.T) string {
	u := newTestUser(t) // skips without root or useradd
	// A private directory (0700, as baton makes its own): baton gives it
	// the search bit for the group's members to reach the socket file,
	// whose mode (0660, group u's) and SO_PEERCRED decide the rest.
	dir := shortDir(t)
	b := startBatonAt(t, filepath.Join(dir, "ctl.sock"), nil, "-l", "http=tcp://127.0.0.1:0", "-n", strconv.Itoa(abuseWorkers), "--ready", "notify", "--control-group", u.Name, "--", helloBin)
	st := b.waitReady(abuseWorkers)
	a := &abused{b: b, workers: sortedPIDs(st)}
	a.fds, a.goroutines = resting(b)
	addr := b.addr("http")
	a.wait = startLoad(addr, 6*time.Second)

	as := func(limit time.Duration, args ...string) (string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		out, code, _, err := clientOut(u.command(ctx, clientBin, args...))
		if err != nil {
			t.Fatalf("baton %v as uid %d: %v", args, u.UID, err)
		}
		return out, code
	}
	statusOut, code := as(30*time.Second, "status", "--control", b.ctl)
	if code != 0 || !strings.Contains(statusOut, "generation") {
		t.Errorf("status as control_group member uid %d: exit %d, %q; want it answered", u.UID, code, statusOut)
	}
	refusals := map[string]string{}
	for _, args := range [][]string{
		{"upgrade", "--binary", "/bin/true", "--timeout", "20s"},
		{"upgrade", "--timeout", "20s"}, // baton's own binary
	} {
		out, code := as(time.Minute, append(args, "--control", b.ctl)...)
		if code != 1 || !strings.Contains(out, "permission denied: upgrade is for root and baton's own user") {
			t.Errorf("baton %s as control_group member uid %d: exit %d, %q; want it refused", strings.Join(args, " "), u.UID, code, out)
		}
		refusals["upgrade"] = lastLine(out)
	}
	// A takeover: the new instance asks for every listener and the
	// control socket. It must be refused before anything is sent.
	out, code := as(30*time.Second, "run", "--control", b.ctl, "--takeover", b.ctl, "-l", "http=tcp://"+addr, "-n", "1", "--ready", "notify", "--", helloBin)
	if code != 1 || !strings.Contains(out, "permission denied: takeover is for root and baton's own user") {
		t.Errorf("baton run --takeover as control_group member uid %d: exit %d, %q; want it refused with the reason", u.UID, code, out)
	}
	refusals["takeover"] = lastLine(out)
	// baton logs a refusal before it answers; its log reaches b.log a
	// moment later.
	if n := b.logCount("refused a method to a peer that is neither root nor baton's user", 3); n != 3 {
		t.Errorf("baton logged %d refused methods, want 3", n)
	}
	if st := b.status(); st.Upgrades != 0 || st.Stopping {
		t.Errorf("after the refusals: %d upgrades, stopping %v", st.Upgrades, st.Stopping)
	}
	return withoutDir(b, fmt.Sprintf("uid %d in control_group: status answered; upgrade (to /bin/true and to baton's own binary) and takeover refused, each logged: %q, %q; %s",
		u.UID, refusals["upgrade"], strings.TrimPrefix(refusals["takeover"], "baton: "), a.survived(t)))
}

func upgradeRacesReloads(t *testing.T) string {
	const rounds = 3
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", helloBin)
	first := b.waitReady(2)
	next := newBinary(t, "baton-next")
	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	loaded := make(chan *loadgen.Result, 1)
	go func() {
		loaded <- loadgen.Run(loadCtx, loadgen.Config{Addr: b.addr("http"), KeepAlive: 4, Close: 4, Duration: 3 * time.Minute})
	}()

	// A reload asked for every 50 ms, without waiting for it.
	var asked, refused atomic.Int64
	var lastRefusal atomic.Value
	hammer := make(chan struct{})
	stopHammer := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-hammer:
		case <-stopHammer:
			return
		}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := control.Call(ctx, b.ctl, "reload", map[string]bool{"wait": false})
			cancel()
			asked.Add(1)
			if err != nil {
				// baton re-executing itself does not answer for a moment.
				refused.Add(1)
				lastRefusal.Store(err.Error())
			}
			select {
			case <-tick.C:
			case <-stopHammer:
				return
			}
		}
	}()
	stop := func() {
		select {
		case <-stopHammer:
		default:
			close(stopHammer)
		}
		wg.Wait()
	}
	defer stop()

	preflights := func() int { return strings.Count(b.log.String(), "upgrade: pre-flight of the new binary") }
	var outs, took []string
	for i := range rounds {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, clientBin, "upgrade", "--binary", next, "--timeout", "90s", "--control", b.ctl)
		type result struct {
			out  string
			code int
			took time.Duration
			err  error
		}
		done := make(chan result, 1)
		go func() {
			out, code, took, err := clientOut(cmd)
			done <- result{out, code, took, err}
		}()
		if i == 0 {
			// The first upgrade starts with no reload in progress; the
			// reloads start during its pre-flight, between the state it
			// checked and its execve. The later ones start amid reloads.
			err := batontest.Wait(time.Minute, func() error {
				if preflights() == 0 {
					return errors.New("no pre-flight logged")
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%v:\n%s", err, b.log)
			}
			close(hammer)
		}
		r := <-done
		cancel()
		if r.err != nil {
			t.Fatal(r.err)
		}
		said := func(s string) bool { return strings.Contains(r.out, s) }
		switch {
		case said("re-executing") && said("failed"):
			t.Errorf("upgrade %d said it was re-executing, then that it failed: %q", i+1, r.out)
		case said("re-executing"):
			t.Errorf("upgrade %d claims it is re-executing before it did: %q", i+1, r.out)
		case r.code != 0 || !said("pre-flight of "+next+" passed") || !said("upgraded: baton pid"):
			t.Errorf("upgrade %d amid reloads: exit %d, %q; want it to wait for the reload in progress, hold the later ones, and upgrade", i+1, r.code, r.out)
		}
		outs = append(outs, r.out)
		took = append(took, fmt.Sprintf("%.1fs", r.took.Seconds()))
	}
	stop()
	stopLoad()
	res := <-loaded
	checkLoad(t, res)
	st := b.waitReady(2)
	if st.PID != first.PID || st.PID != b.cmd.Process.Pid {
		t.Errorf("baton's pid went from %d to %d", first.PID, st.PID)
	}
	if st.Upgrades != rounds {
		t.Errorf("%d upgrades, want %d", st.Upgrades, rounds)
	}
	held := strings.Count(b.log.String(), "reload held until the upgrade in progress is over")
	if held == 0 {
		t.Errorf("no reload was held during an upgrade: the test did not race them")
	}
	if st.Reloads.Failed != 0 {
		t.Errorf("%d reloads failed: %+v", st.Reloads.Failed, st.Reloads.Last)
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("a reload after the upgrades exited %d: %s", code, out)
	}
	seen := fmt.Sprintf("%d of %d reload requests unanswered while baton re-executed itself", refused.Load(), asked.Load())
	if v, ok := lastRefusal.Load().(string); ok && t.Failed() {
		t.Logf("last unanswered reload request: %s", v)
	}
	return fmt.Sprintf("%d upgrades (%s), each printing only \"pre-flight ... passed\" then \"upgraded\" (%q); reloads asked for during an upgrade were held (%d times) and ran after it, none failed (%d ok); %s; baton served %s requests meanwhile, 0 failed, same pid",
		rounds, strings.Join(took, ", "), strings.ReplaceAll(lastLine(outs[len(outs)-1]), next, "baton-next"), held, st.Reloads.OK, seen, count(res.Requests))
}
