package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// startTakeover starts `baton run --takeover CTL` with the same control
// socket as b, and returns it as an instance of its own.
func startTakeover(t *testing.T, b *instance, env []string, args ...string) *instance {
	t.Helper()
	n := &instance{t: t, ctl: b.ctl, log: &logBuffer{}, done: make(chan struct{})}
	n.cmd = exec.Command(batonBin, append([]string{"run", "--control", b.ctl, "--takeover", b.ctl}, args...)...)
	n.cmd.Env = append(os.Environ(), env...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.err = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.stop(20 * time.Second)
		if t.Failed() {
			t.Logf("new instance output:\n%s", n.log)
		}
	})
	return n
}

// udpLoad sends numbered datagrams to addr one at a time until stop is
// closed and checks every one is answered; answered counts them as they
// are.
func udpLoad(addr string, stop <-chan struct{}, answered *atomic.Int64) error {
	raddr, _ := net.ResolveUDPAddr("udp", addr)
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		payload := fmt.Sprintf("datagram %d", i)
		c.Write([]byte(payload))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("datagram %d not answered: %w", i, err)
		}
		if _, got, _ := strings.Cut(string(buf[:n]), ":"); got != payload {
			return fmt.Errorf("datagram %d answered with %q", i, buf[:n])
		}
		answered.Add(1)
		time.Sleep(2 * time.Millisecond) // pacing: a steady stream of datagrams
	}
}

func TestTakeoverUnderLoad(t *testing.T) {
	requireE2E(t)
	env := []string{workerEnv + "=http-all"}
	tcp, udp := freePort(t), freePort(t)
	args := []string{"-l", fmt.Sprintf("http=tcp://127.0.0.1:%d", tcp), "-l", fmt.Sprintf("echo=udp://127.0.0.1:%d", udp), "-n", "2", "--ready", "notify", "--", testBin}
	b := startBaton(t, env, args...)
	b.waitReady(2)
	oldPID := b.cmd.Process.Pid

	wait := startLoadUnderWay(fmt.Sprintf("127.0.0.1:%d", tcp), 6*time.Second)
	n := startTakeover(t, b, env, args...)
	if code := b.waitExit(30 * time.Second); code != 0 {
		t.Errorf("old instance exited %d after the takeover, want 0", code)
	}
	st := n.waitReady(2)
	if st.PID != n.cmd.Process.Pid || st.PID == oldPID {
		t.Errorf("the control socket answers as pid %d; want the new instance %d", st.PID, n.cmd.Process.Pid)
	}
	checkLoad(t, wait())
	if !strings.Contains(n.log.String(), "listener taken over") {
		t.Errorf("the new instance did not take the listeners over:\n%s", n.log)
	}
}

func TestTakeoverKeepsUDPAnswered(t *testing.T) {
	requireE2E(t)
	env := []string{workerEnv + "=udp-echo"}
	args := []string{"-l", fmt.Sprintf("echo=udp://127.0.0.1:%d", freePort(t)), "-n", "2", "--ready", "notify", "--", testBin}
	b := startBaton(t, env, args...)
	b.waitReady(2)
	addr := b.addr("echo")
	stop := make(chan struct{})
	var answered atomic.Int64
	var uerr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); uerr = udpLoad(addr, stop, &answered) }()
	// flowing waits until least datagrams are answered: 50 before the
	// takeover, then 50 more once the new instance is ready.
	flowing := func(least int64) {
		t.Helper()
		batontest.WaitFor(t, 30*time.Second, func() error {
			if n := answered.Load(); n < least {
				return fmt.Errorf("%d datagrams answered, want %d", n, least)
			}
			return nil
		})
	}
	flowing(50)
	args[1] = "echo=udp://" + addr
	n := startTakeover(t, b, env, args...)
	b.waitExit(30 * time.Second)
	n.waitReady(2)
	flowing(answered.Load() + 50)
	close(stop)
	wg.Wait()
	if uerr != nil || answered.Load() < 100 {
		t.Errorf("UDP across the takeover: %d answered, %v", answered.Load(), uerr)
	}
}

func TestTakeoverKilledMidwayChangesNothing(t *testing.T) {
	requireE2E(t)
	// No periodic kernel check in the old instance: it would hold a
	// netlink socket of its own for a moment every interval.
	args := []string{"-l", "http=tcp://127.0.0.1:0", "-n", "2", "--ready", "notify", "--inspect-interval", "0", "--", helloBin}
	b := startBaton(t, nil, args...)
	before := b.waitReady(2)
	base, _ := resting(b)
	addr := b.addr("http")
	wait := startLoadUnderWay(addr, 5*time.Second)

	// The new instance's workers take 3s to be ready: it is killed while
	// it holds the sockets and has not committed.
	newArgs := []string{"-l", "http=tcp://" + addr, "-n", "2", "--ready", "delay:3s", "--", helloBin}
	n := startTakeover(t, b, nil, newArgs...)
	err := batontest.Wait(20*time.Second, func() error {
		if !strings.Contains(n.log.String(), "worker started") {
			return errors.New("the new instance never started its workers")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v:\n%s", err, n.log)
	}
	n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.done
	checkLoad(t, wait())

	after := b.waitReady(2)
	if after.PID != before.PID || fmt.Sprint(workerPIDs(after)) != fmt.Sprint(workerPIDs(before)) {
		t.Errorf("the old instance changed: before %+v, after %+v", before, after)
	}
	// Nothing leaked in the old instance: a leak stays, a passing
	// descriptor goes.
	if got, _ := resting(b); got > base {
		t.Errorf("the old instance holds %d descriptors at rest, %d before the aborted takeover", got, base)
	}
	if out, code := b.cli("reload"); code != 0 {
		t.Errorf("reload after the aborted takeover: %s", out)
	}
}

func TestTakeoverMismatchChangesNothing(t *testing.T) {
	requireE2E(t)
	b := startBaton(t, nil, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", helloBin)
	before := b.waitReady(1)
	addr := b.addr("http")
	out, code := runBaton(t, nil, "run", "--control", b.ctl, "--takeover", b.ctl, "-l", "http=tcp://"+addr+"?balance=reuseport", "-n", "1", "--", helloBin)
	if code == 0 || !strings.Contains(out, "balance") {
		t.Errorf("takeover with another balance: exit %d, %q", code, out)
	}
	after := b.waitReady(1)
	if after.Workers[0].PID != before.Workers[0].PID {
		t.Errorf("the old instance changed")
	}
}

// TestTakeoverLeavesSocketFilesToWhoeverServes: a takeover that fails
// after it adopted a unix listener leaves its socket file to the instance
// that carries on; one that succeeds makes the file the new instance's,
// which the old one then leaves in place and the new one removes when it
// stops.
func TestTakeoverLeavesSocketFilesToWhoeverServes(t *testing.T) {
	requireE2E(t)
	dir := shortDir(t)
	sock := dir + "/app.sock"
	b := startBaton(t, []string{workerEnv + "=http-all"}, "-l", "app=unix://"+sock, "-l", "http=tcp://127.0.0.1:0", "-n", "1", "--ready", "notify", "--", testBin)
	b.waitReady(1)
	answers := func(who string) {
		t.Helper()
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: connecting to %s: %v", who, sock, err)
		}
		c.Close()
	}
	answers("before the takeovers")

	// Fails on the second listener, after the first was adopted.
	out, code := runBaton(t, nil, "run", "--control", b.ctl, "--takeover", b.ctl, "-l", "app=unix://"+sock, "-l", "http=tcp://"+b.addr("http")+"?balance=reuseport", "-n", "1", "--", testBin)
	if code == 0 || !strings.Contains(out, "balance") {
		t.Fatalf("takeover with another balance: exit %d, %q", code, out)
	}
	answers("after a takeover that failed")

	n := startTakeover(t, b, []string{workerEnv + "=http-all"}, "-l", "app=unix://"+sock, "-l", "http=tcp://"+b.addr("http"), "-n", "1", "--ready", "notify", "--", testBin)
	n.waitReady(1)
	select {
	case <-b.done:
	case <-time.After(60 * time.Second):
		t.Fatal("the old instance did not exit after the takeover")
	}
	answers("after the old instance exited")
	n.stop(20 * time.Second)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("after the new instance stopped, %s: %v; want it removed", sock, err)
	}
}
