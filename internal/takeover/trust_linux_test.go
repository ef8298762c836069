package takeover

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/control"
)

// fakeEnv makes the test binary a fake baton of another uid: it listens
// at the path and reports how many bytes the one connection it takes was
// sent.
const fakeEnv = "TAKEOVER_TEST_FAKE_BATON"

// TestTakeRefusesInstanceOfAnotherUser: a process of another uid answers
// at the control path. Before the fix, Take asked it for its sockets, and
// would have served on whatever descriptors it sent.
func TestTakeRefusesInstanceOfAnotherUser(t *testing.T) {
	if path := os.Getenv(fakeEnv); path != "" {
		fakeBaton(path)
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a fake baton as another uid")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "takeover")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777) // the other user's directory
	path := filepath.Join(dir, "ctl.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, executableFor(t), "-test.run=^TestTakeRefusesInstanceOfAnotherUser$")
	cmd.Env = append(os.Environ(), fakeEnv+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run the test binary as uid %d here: %v", nobody, err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Skipf("the fake baton as uid %d did not start: %q", nobody, lines.Text())
	}
	before := batontest.NumFDs(t)
	taken, err := Take(ctx, path, WindowFor(0))
	if err == nil {
		taken.Abort("test")
		t.Fatal("Take asked a process of another uid for its sockets")
	}
	want := fmt.Sprintf("pid %d of uid %d", cmd.Process.Pid, nobody)
	if !errors.Is(err, control.ErrUntrustedServer) || !strings.Contains(err.Error(), want) {
		t.Errorf("Take from a process of uid %d: %v; want control.ErrUntrustedServer and %q", nobody, err, want)
	}
	if !lines.Scan() || lines.Text() != "got 0 bytes" {
		t.Errorf("the fake baton reports %q; want it sent nothing", lines.Text())
	}
	if after := batontest.NumFDs(t); after != before {
		t.Errorf("%d descriptors before the refused Take, %d after", before, after)
	}
}

// fakeBaton takes one connection at path and prints "ready" once
// listening, then how many bytes it got before the client hung up.
func fakeBaton(path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("listen:", err)
		return
	}
	defer ln.Close()
	fmt.Println("ready")
	c, err := ln.Accept()
	if err != nil {
		fmt.Println("accept:", err)
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var n int
	buf := make([]byte, 4096)
	for {
		k, err := c.Read(buf)
		n += k
		if err != nil {
			break
		}
	}
	fmt.Printf("got %d bytes\n", n)
}

// executableFor is a copy of the test binary that any uid can run: go
// test builds it in a directory only the user running the tests can enter.
func executableFor(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "takeovertest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "takeover.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}
