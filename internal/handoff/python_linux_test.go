package handoff

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
)

// TestPythonPeer runs both sides of the protocol as docs/handoff.md shows
// them in Python (testdata/handoff_peer.py) against the store: a Python
// worker hands off 300 connections, another adopts them.
func TestPythonPeer(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the Python peer cannot be checked")
	}
	if out, err := exec.Command(py, "-c", "import socket; socket.send_fds").CombinedOutput(); err != nil {
		t.Skipf("python3 lacks socket.send_fds (3.9+): %s", out)
	}
	batontest.CheckLeaks(t)
	h := newHarness(t, Config{})
	const n = 300 // two transfers each way
	clients, servers := pairs(t, n)
	var files []*os.File
	for _, s := range servers {
		f, err := s.File()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	env := append(os.Environ(), "BATON_SOCKET="+h.path, "HANDOFF_N="+strconv.Itoa(n))

	send := exec.Command(py, "testdata/handoff_peer.py", "send")
	send.Env, send.ExtraFiles, send.Stderr = env, files, os.Stderr
	out, err := send.Output()
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprintf("handed off %d", n) {
		t.Fatalf("python sender: %q, %v", out, err)
	}
	for i := range servers {
		files[i].Close()
		servers[i].Close()
	}
	if st := h.store.Stats(); st.Stored != n || st.Held != n {
		t.Fatalf("after the python sender: %+v", st)
	}

	adopt := exec.Command(py, "testdata/handoff_peer.py", "adopt")
	adopt.Env, adopt.Stderr = env, os.Stderr
	stdout, err := adopt.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := adopt.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		lines := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "adopted web py-") {
				lines++
			}
		}
		if lines != n {
			done <- fmt.Errorf("python adopter printed %d adoptions, want %d", lines, n)
			return
		}
		done <- adopt.Wait()
	}()
	h.store.SetWorkers([]Worker{{PID: adopt.Process.Pid, Adopt: true}})
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		b, err := io.ReadAll(c)
		if want := fmt.Sprintf("adopted by python: py-%d\n", i); err != nil || string(b) != want {
			t.Errorf("client %d: %q, %v; want %q", i, b, err, want)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(20 * time.Second):
		adopt.Process.Kill()
		t.Fatal("python adopter did not finish")
	}
	if st := h.waitStats("all adopted", func(st Stats) bool { return st.Adopted == n }); st.Held != 0 {
		t.Errorf("stats %+v", st)
	}
}
