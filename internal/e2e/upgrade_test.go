package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// newBinary copies the baton binary, as a package upgrade would put a new
// one in place.
func newBinary(t *testing.T, name string) string {
	t.Helper()
	return binCopy(t, batonBin, name)
}

func TestUpgradeUnderLoadKeepsPid(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-l", "dns=udp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--", helloBin)
	first := b.waitReady(2)
	next := newBinary(t, "baton-next")
	wait := startLoadUnderWay(b.addr("http"), 12*time.Second)
	var old []int
	for i := 0; i < 10; i++ {
		st := b.status()
		old = append(old, workerPIDs(st)...)
		bin := next
		if i%2 == 1 {
			bin = batonBin
		}
		out, code := b.cli("upgrade", "--binary", bin)
		if code != 0 || !strings.Contains(out, "upgraded: baton pid") {
			t.Fatalf("upgrade %d: exit %d: %s", i+1, code, out)
		}
		time.Sleep(200 * time.Millisecond) // pacing: the upgrades spread over the load
	}
	checkLoad(t, wait())
	st := b.waitReady(2)
	if st.PID != first.PID || st.PID != b.cmd.Process.Pid {
		t.Errorf("baton's pid went from %d to %d (process %d)", first.PID, st.PID, b.cmd.Process.Pid)
	}
	if st.Upgrades != 10 || st.Generation != first.Generation+10 {
		t.Errorf("after 10 upgrades: %d upgrades, generation %d", st.Upgrades, st.Generation)
	}
	if fmt.Sprint(st.Listeners[0].Inode) != fmt.Sprint(first.Listeners[0].Inode) {
		t.Errorf("the listener changed socket across upgrades")
	}
	waitGone(t, old, 30*time.Second)
}

func TestUpgradeKeepWorkers(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?balance=reuseport", "-n", "2", "--ready", "notify", "--", helloBin)
	before := b.waitReady(2)
	out, code := b.cli("upgrade", "--keep-workers", "--binary", newBinary(t, "baton-next"))
	if code != 0 || !strings.Contains(out, "keeps serving") {
		t.Fatalf("upgrade --keep-workers: exit %d: %s", code, out)
	}
	after := b.waitReady(2)
	if fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) || after.Generation != before.Generation {
		t.Errorf("workers changed: before %v gen %d, after %v gen %d", workerPIDs(before), before.Generation, workerPIDs(after), after.Generation)
	}
	// The adopted workers are still supervised: a crash is noticed and
	// the slot restarted, and a reload replaces them.
	victim := after.Workers[0]
	killPID(victim.PID)
	b.waitReplaced(victim.PID, 2)
	if out, code := b.cli("reload"); code != 0 {
		t.Fatalf("reload after the upgrade: %s", out)
	}
	b.waitReady(2)
	// Their output still reaches baton's log with its prefix.
	if !strings.Contains(b.log.String(), "worker adopted") {
		t.Errorf("no worker adopted in the log")
	}
}

func TestUpgradeBySIGUSR2(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
	before := b.waitReady(1)
	b.cmd.Process.Signal(syscall.SIGUSR2)
	err := batontest.Wait(30*time.Second, func() error {
		st, err := b.tryStatus()
		if err != nil {
			return err
		}
		if st.Upgrades != 1 || st.Generation != before.Generation+1 || !settled(st, 1) {
			return fmt.Errorf("no upgrade after SIGUSR2: %d upgrades, generation %d", st.Upgrades, st.Generation)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, b.log)
	}
}

func TestUpgradePreflightFailureChangesNothing(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	conf := filepath.Join(dir, "baton.toml")
	good := fmt.Sprintf("command = [%q]\nworkers = 2\nready = \"notify\"\n[[listener]]\nname = \"http\"\naddress = \"tcp://127.0.0.1:0\"\n", helloBin)
	writeConfig(t, conf, good)
	b := startBaton(t, nil, "--config", conf)
	before := b.waitReady(2)
	wait := startLoad(b.addr("http"), 3*time.Second)
	// A real baton whose pre-flight fails: it cannot load the
	// configuration it would run with.
	writeConfig(t, conf, good+"workers = \"many\"\n")
	out, code := b.cli("upgrade", "--binary", newBinary(t, "baton-next"))
	if code != 1 || !strings.Contains(out, "pre-flight failed") || !strings.Contains(out, "cannot take over this baton (state version 1): the configuration") || !strings.Contains(out, "keeps running unchanged") {
		t.Errorf("upgrade to a baton that cannot load the configuration: exit %d, %q", code, out)
	}
	writeConfig(t, conf, good)
	// A script is refused before any pre-flight: its interpreter is
	// found by path, which baton would not have checked.
	bad := filepath.Join(dir, "baton-broken")
	os.WriteFile(bad, []byte("#!/bin/sh\necho 'cannot read this state' >&2\nexit 1\n"), 0o755)
	out, code = b.cli("upgrade", "--binary", bad)
	if code != 1 || !strings.Contains(out, "is not an ELF executable (it is a #! script") || !strings.Contains(out, "keeps running unchanged") {
		t.Errorf("upgrade to a script: exit %d, %q", code, out)
	}
	out, code = b.cli("upgrade", "--binary", "/nonexistent/baton")
	if code != 1 || !strings.Contains(out, "/nonexistent/baton") {
		t.Errorf("upgrade to a missing binary: exit %d, %q", code, out)
	}
	checkLoad(t, wait())
	after := b.waitReady(2)
	if after.PID != before.PID || after.Upgrades != 0 || fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) {
		t.Errorf("a refused upgrade changed something: before %+v, after %+v", before, after)
	}
	// Each refusal is in the history, with why (the status page shows
	// it).
	if h := after.History; len(h) != 3 || h[0].Kind != "upgrade" || h[0].OK || !strings.Contains(h[0].Error, "pre-flight failed") ||
		!strings.Contains(h[1].Error, "not an ELF executable") || !strings.Contains(h[2].Reason, "/nonexistent/baton") || h[2].OK {
		t.Errorf("the history does not hold the three refused upgrades: %+v", h)
	}
}
