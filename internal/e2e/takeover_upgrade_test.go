package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestTakeoverThenUpgrade: an instance that took its listeners over
// upgrades itself like any other. It re-executes with the argv it started
// with, --takeover included, and must adopt what it holds rather than ask
// the instance at that path (itself) for its sockets: before the fix it
// waited 30s for its own answer, then exited, and nothing served.
func TestTakeoverThenUpgrade(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
	b.waitReady(1)
	addr := b.addr("http")
	n := startTakeover(t, b, nil, "-l", "http=tcp://"+addr, "-n", "1", "--ready", "notify", "--", helloBin)
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("the old instance exited %d after the takeover, want 0", code)
	}
	before := n.waitReady(1)

	out, code := n.cli("upgrade", "--timeout", "60s")
	if code != 0 || !strings.Contains(out, "upgraded: baton pid") {
		t.Fatalf("upgrade of the instance that took over: exit %d: %s", code, out)
	}
	after := n.waitReady(1)
	if after.PID != before.PID || after.Upgrades != before.Upgrades+1 {
		t.Errorf("after the upgrade: pid %d, %d upgrades; want pid %d, %d", after.PID, after.Upgrades, before.PID, before.Upgrades+1)
	}
	if after.Listeners[0].Inode != before.Listeners[0].Inode {
		t.Errorf("the listener changed socket across the upgrade: inode %d, was %d", after.Listeners[0].Inode, before.Listeners[0].Inode)
	}
}
