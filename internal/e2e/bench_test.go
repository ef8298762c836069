package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/sockdiag"
	"github.com/baton-dev/baton/internal/supervisor"
)

// BenchmarkStatus measures a whole `baton status` end to end against a
// baton built without the race detector: the control round trip with the
// snapshot and the kernel's view (netlink dumps, /proc scans), and the
// CLI process that asks and prints the table. 4 workers hold
// BATON_BENCH_CONNS connections (default 400) on the listener.
//
//	go test -run '^$' -bench BenchmarkStatus -benchtime 200x -count 5 ./internal/e2e/
func BenchmarkStatus(b *testing.B) {
	if testing.Short() {
		b.Skip("end-to-end benchmark: skipped with -short")
	}
	conns := 400
	if n, err := strconv.Atoi(os.Getenv("BATON_BENCH_CONNS")); err == nil {
		conns = n
	}
	dir, err := os.MkdirTemp("", "bb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "baton")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/baton").CombinedOutput(); err != nil {
		b.Fatalf("building baton: %v\n%s", err, out)
	}
	ctl := filepath.Join(dir, "ctl.sock")
	cmd := exec.Command(bin, "run", "--control", ctl, "-l", "http=tcp://127.0.0.1:0", "-n", "4", "--ready", "notify", "--", testBin)
	cmd.Env = append(os.Environ(), workerEnv+"=leak")
	var log logBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	status := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		raw, err := control.Call(ctx, ctl, "status", nil)
		if err != nil {
			return ""
		}
		return string(raw)
	}
	var addr string
	err = batontest.Wait(60*time.Second, func() error {
		var st supervisor.Status
		if raw := status(); raw == "" || json.Unmarshal([]byte(raw), &st) != nil || !settled(st, 4) {
			return errors.New("baton not ready")
		}
		addr = st.Listeners[0].Address
		return nil
	})
	if err != nil {
		b.Fatalf("%v:\n%s", err, &log)
	}
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		defer c.Close()
	}
	batontest.WaitFor(b, 60*time.Second, func() error {
		if st := status(); !strings.Contains(st, fmt.Sprintf(`"ESTAB":%d`, conns)) {
			return fmt.Errorf("the %d connections never showed as accepted:\n%s", conns, st)
		}
		return nil
	})

	if ss, err := sockdiag.ReadSockstat(); err == nil {
		b.Logf("host: %d TCP sockets in use, %d in TIME-WAIT (the port query walks them all)", ss["TCP"]["inuse"]+ss["TCP6"]["inuse"], ss["TCP"]["tw"])
	}
	b.Run("control", func(b *testing.B) {
		for b.Loop() {
			if status() == "" {
				b.Fatal("no status")
			}
		}
	})
	b.Run("cli", func(b *testing.B) {
		for b.Loop() {
			if err := exec.Command(bin, "status", "--control", ctl).Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ss", func(b *testing.B) {
		if _, err := exec.LookPath("ss"); err != nil {
			b.Skip("ss not installed")
		}
		_, port, _ := net.SplitHostPort(addr)
		for b.Loop() {
			if err := exec.Command("ss", "-tanp", "( sport = :"+port+" )").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
