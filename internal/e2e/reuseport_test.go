package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/supervisor"
)

// slotInodes maps each slot to the inode of its socket of listener name.
func slotInodes(t *testing.T, st supervisor.Status, name string) map[int]uint64 {
	t.Helper()
	for _, l := range st.Listeners {
		if l.Name == name {
			out := map[int]uint64{}
			for _, s := range l.Sockets {
				out[s.Slot] = s.Inode
			}
			return out
		}
	}
	t.Fatalf("no listener %q", name)
	return nil
}

// checkWorkersHoldSlotSockets checks that each worker holds its own slot's
// socket and no other slot's.
func checkWorkersHoldSlotSockets(t *testing.T, st supervisor.Status, inodes map[int]uint64) {
	t.Helper()
	for _, w := range st.Workers {
		held := socketsHeld(w.PID)
		for slot, ino := range inodes {
			if held[ino] != (slot == w.Slot) {
				t.Errorf("worker %d in slot %d: holds socket %d of slot %d: %v", w.PID, w.Slot, ino, slot, held[ino])
			}
		}
	}
}

// socketsHeld lists the socket inodes a process has descriptors for.
func socketsHeld(pid int) map[uint64]bool {
	out := map[uint64]bool{}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64)
			out[n] = true
		}
	}
	return out
}

func TestReuseportSlotKeepsItsSocket(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?balance=reuseport", "-n", "3", "--ready", "notify", "--", helloBin)
	st := b.waitReady(3)
	inodes := slotInodes(t, st, "http")
	if len(inodes) != 3 {
		t.Fatalf("%d sockets for 3 slots: %v", len(inodes), inodes)
	}
	seen := map[uint64]bool{}
	for _, ino := range inodes {
		seen[ino] = true
	}
	if len(seen) != 3 {
		t.Fatalf("slots share sockets: %v", inodes)
	}
	checkWorkersHoldSlotSockets(t, st, inodes)

	if out, code := b.cli("reload"); code != 0 {
		t.Fatal(out)
	}
	st = b.waitReady(3)
	if got := slotInodes(t, st, "http"); fmt.Sprint(got) != fmt.Sprint(inodes) {
		t.Errorf("after a reload the slots' sockets are %v, before %v", got, inodes)
	}
	checkWorkersHoldSlotSockets(t, st, inodes)

	victim := st.Workers[1]
	killPID(victim.PID)
	st = b.waitReplaced(victim.PID, 3)
	if got := slotInodes(t, st, "http"); fmt.Sprint(got) != fmt.Sprint(inodes) {
		t.Errorf("after a crash restart the slots' sockets are %v, before %v", got, inodes)
	}
	checkWorkersHoldSlotSockets(t, st, inodes)
}

func TestReuseportReloadUnderLoad(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "--balance", "reuseport", "-n", "2", "--ready", "notify", "--", helloBin)
	b.waitReady(2)
	wait := startLoad(b.addr("http"), 6*time.Second)
	for i := 0; i < 10; i++ {
		// Pacing: the reloads spread over the load.
		time.Sleep(300 * time.Millisecond)
		if out, code := b.cli("reload"); code != 0 {
			t.Fatalf("reload %d: %s", i+1, out)
		}
	}
	checkLoad(t, wait())
}

// withMigrateReq restores net.ipv4.tcp_migrate_req after the test, which
// lets baton turn it on.
func withMigrateReq(t *testing.T) {
	t.Helper()
	requireRoot(t)
	old, err := os.ReadFile(listener.MigrateReqPath)
	if err != nil {
		t.Skipf("this kernel has no %s (Linux 5.14+): %v", listener.MigrateReqPath, err)
	}
	t.Cleanup(func() { os.WriteFile(listener.MigrateReqPath, old, 0o644) })
}

func TestReuseportScaleDownAndUpUnderLoad(t *testing.T) {
	requireE2E(t)
	withMigrateReq(t)
	os.WriteFile(listener.MigrateReqPath, []byte("0\n"), 0o644)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?balance=reuseport", "-n", "4", "--ready", "notify", "--", helloBin)
	b.waitReady(4)

	// Without tcp_migrate_req a scale-down would reset what is queued in
	// the removed slots' sockets: refused, nothing changes.
	out, code := b.cli("scale", "2")
	if code != 1 || !strings.Contains(out, "net.ipv4.tcp_migrate_req is 0") || !strings.Contains(out, "--enable-migrate-req") {
		t.Errorf("scale-down without tcp_migrate_req: exit %d, %q", code, out)
	}
	if st := b.waitReady(4); len(slotInodes(t, st, "http")) != 4 {
		t.Errorf("a refused scale-down changed the slots")
	}
	b.stop(20 * time.Second)

	b = startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0?balance=reuseport", "-n", "4", "--ready", "notify", "--enable-migrate-req", "--", helloBin)
	before := slotInodes(t, b.waitReady(4), "http")
	wait := startLoadUnderWay(b.addr("http"), 8*time.Second)
	for _, n := range []int{2, 4, 2, 4} {
		out, code := b.cli("scale", strconv.Itoa(n))
		if code != 0 {
			t.Fatalf("scale %d: %s", n, out)
		}
		st := b.waitReady(n)
		if got := len(slotInodes(t, st, "http")); got != n {
			t.Errorf("after scale %d: %d sockets", n, got)
		}
		// Pacing: each size serves the load for a while.
		time.Sleep(1500 * time.Millisecond)
	}
	checkLoad(t, wait())
	after := slotInodes(t, b.waitReady(4), "http")
	if after[0] != before[0] || after[1] != before[1] {
		t.Errorf("the slots that stayed changed sockets: before %v, after %v", before, after)
	}
}

func TestSharedScale(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
	b.waitReady(1)
	wait := startLoad(b.addr("http"), 4*time.Second)
	for _, n := range []int{3, 1, 2} {
		if out, code := b.cli("scale", strconv.Itoa(n)); code != 0 {
			t.Fatalf("scale %d: %s", n, out)
		}
		b.waitReady(n)
		time.Sleep(500 * time.Millisecond) // pacing: each size serves the load for a while
	}
	checkLoad(t, wait())
	if out, code := b.cli("scale", "0"); code != 2 || !strings.Contains(out, "want a number of workers") {
		t.Errorf("scale 0: exit %d, %q", code, out)
	}
}
