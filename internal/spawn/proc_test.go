package spawn

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name, line string
		want       ProcInfo
		err        bool
	}{
		{"plain", "42 (sleep) S 7 42 7 0 -1 4194304 90 0 0 0 0 0 0 0 20 0 1 0 12345 1 2 3",
			ProcInfo{PID: 42, PPID: 7, PGID: 42, SID: 7, Comm: "sleep", State: 'S', StartTime: 12345}, false},
		{"name with spaces and parentheses", "9 (a) b (c)) Z 1 9 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99",
			ProcInfo{PID: 9, PPID: 1, PGID: 9, SID: 1, Comm: "a) b (c)", State: 'Z', StartTime: 99}, false},
		{"truncated", "9 (x) S 1 9 1 0", ProcInfo{}, true},
		{"no name", "9 x S 1 9 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99", ProcInfo{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.line))
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("parseStat(%q) = %+v, %v; want %+v (error %v)", tt.line, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestProcessesSeesSelf(t *testing.T) {
	procs, err := Processes()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.PID == os.Getpid() {
			if p.PPID != os.Getppid() || p.PGID != syscall.Getpgrp() || p.StartTime == 0 {
				t.Errorf("self: %+v; want ppid %d, pgid %d and a start time", p, os.Getppid(), syscall.Getpgrp())
			}
			return
		}
	}
	t.Errorf("Processes did not list this process (%d)", os.Getpid())
}

// Open refuses a pid whose start time is not the one seen: the process
// seen is gone and the pid names another one.
func TestOpenChecksStartTime(t *testing.T) {
	self, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	other := self
	other.StartTime++
	if _, err := Open(other); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Open with another start time: %v; want os.ErrProcessDone", err)
	}
	h, err := Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.Exited() {
		t.Errorf("this process counts as exited")
	}
	if err := h.Signal(0); err != nil {
		t.Errorf("signal 0 to self: %v", err)
	}
}

// A grandchild whose parent exits is re-parented to this process (a
// subreaper since New), and is no child the Spawner started.
func TestOrphansComeToTheSubreaper(t *testing.T) {
	r, w, _ := os.Pipe()
	defer r.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	exited := make(chan Exit, 1)
	p, err := spawner.Start(Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "sleep 30 & echo $!"},
		Files: []int{int(devnull.Fd()), int(w.Fd()), int(w.Fd())}}, func(e Exit) { exited <- e })
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !spawner.Started(p.Pid) {
		// It may have exited already; Started says nothing then.
		select {
		case <-exited:
		default:
			t.Errorf("Started(%d) = false for a running child", p.Pid)
		}
	}
	buf := make([]byte, 64)
	n, _ := r.Read(buf)
	orphan, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatalf("no pid from the shell: %q", buf[:n])
	}
	<-exited
	var info ProcInfo
	batontest.WaitFor(t, 10*time.Second, func() error {
		if info, err = ReadProc(orphan); err != nil {
			return batontest.Stop(err)
		}
		if info.PPID != os.Getpid() {
			return fmt.Errorf("orphan %d has parent %d, not this process (%d): not a subreaper", orphan, info.PPID, os.Getpid())
		}
		return nil
	})
	if info.PGID != p.Pid {
		t.Errorf("orphan's process group %d; want its worker's, %d", info.PGID, p.Pid)
	}
	if spawner.Started(orphan) {
		t.Errorf("Started(%d) = true for an orphan the Spawner did not start", orphan)
	}
	h, err := Open(info)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	h.Signal(syscall.SIGKILL)
	if !WaitExit([]*Handle{h}, time.Now().Add(10*time.Second), nil) {
		t.Errorf("the orphan did not exit on SIGKILL")
	}
}

// The command starts with SIGTTIN and SIGTTOU at their defaults though
// baton ignores them.
func TestShimResetsIgnoredSignals(t *testing.T) {
	signal.Ignore(syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTIN, syscall.SIGTTOU)
	out, e := start(t, nil, nil, "/bin/sh", "-c", "grep SigIgn /proc/$$/status")
	if !e.Status.Exited() || e.Status.ExitStatus() != 0 {
		t.Fatalf("shell ended %v: %s", e.Status, out)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("output %q", out)
	}
	mask, err := strconv.ParseUint(f[1], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGTTOU} {
		if mask&(1<<(sig-1)) != 0 {
			t.Errorf("the command starts with %s ignored (SigIgn %s)", unix.SignalName(sig), f[1])
		}
	}
}
