package supervisor

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/batontest"
)

func TestParseProcStat(t *testing.T) {
	page := uint64(os.Getpagesize())
	tests := []struct {
		name    string
		line    string
		want    procSample
		wantErr string
	}{
		{
			name: "plain",
			line: "4242 (python3) S 1 4242 4242 0 -1 4194560 1024 0 0 0 250 50 0 0 20 0 1 0 987654 123456789 3000 18446744073709551615",
			want: procSample{StartTime: 987654, RSS: 3000 * page, CPU: 3 * time.Second},
		},
		{
			name: "a command name with spaces and parentheses",
			line: "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 55 0 10",
			want: procSample{StartTime: 55, RSS: 10 * page, CPU: 30 * time.Millisecond},
		},
		{name: "no command name", line: "7 a R 1", wantErr: "no command name"},
		{name: "cut short", line: "7 (a) R 1 7 7 0", wantErr: "want at least 22"},
		{name: "not a number", line: "7 (a) R 1 7 7 0 -1 0 0 0 0 0 x 2 0 0 20 0 1 0 55 0 10", wantErr: "field 14"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tt.line))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSignalMasks(t *testing.T) {
	status := func(blk, ign, cgt string) []byte {
		return []byte("Name:\tx\nSigQ:\t0/63432\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t" + blk +
			"\nSigIgn:\t" + ign + "\nSigCgt:\t" + cgt + "\nCapInh:\t0000000000000000\n")
	}
	const none = "0000000000000000"
	// SIGTERM is 15: bit 14, 0x4000. SIGINT 2: 0x2. SIGWINCH 28: 0x8000000.
	tests := []struct {
		name   string
		status []byte
		sig    syscall.Signal
		want   sigDisposition
	}{
		{name: "python3 -m http.server: SIGINT caught, SIGTERM not", status: status(none, "0000000001001000", "0000000000000002"), sig: syscall.SIGTERM, want: sigDefault},
		{name: "caught", status: status(none, none, "0000000000004000"), sig: syscall.SIGTERM, want: sigCaught},
		{name: "ignored", status: status(none, "0000000000004000", none), sig: syscall.SIGTERM, want: sigIgnored},
		{name: "blocked, for sigwait or a signalfd", status: status("0000000000004000", none, none), sig: syscall.SIGTERM, want: sigBlocked},
		{name: "a handler wins over a block", status: status("0000000000004000", none, "0000000000004000"), sig: syscall.SIGTERM, want: sigCaught},
		{name: "SIGQUIT as the stop signal", status: status(none, none, "0000000000004000"), sig: syscall.SIGQUIT, want: sigDefault},
		{name: "SIGWINCH's default does nothing", status: status(none, none, none), sig: syscall.SIGWINCH, want: sigHarmless},
		{name: "a real-time signal", status: status(none, none, "8000000000000000"), sig: syscall.Signal(64), want: sigCaught},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseSignalMasks(tt.status)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.disposition(tt.sig); got != tt.want {
				t.Errorf("disposition of %s: %v; want %v", SignalName(tt.sig), got, tt.want)
			}
		})
	}
	if _, err := parseSignalMasks([]byte("Name:\tx\nSigCgt:\tzz\nSigIgn:\t0\nSigBlk:\t0\n")); err == nil || !strings.Contains(err.Error(), "SigCgt") {
		t.Errorf("a mask that is not hex: err %v; want one naming SigCgt", err)
	}
	if _, err := parseSignalMasks([]byte("Name:\tx\n")); err == nil {
		t.Error("no masks: no error")
	}
}

// TestReadProcSample reads real processes: the test itself (a Go
// program catches SIGTERM), a sleep (SIGTERM ends it), and a sleep whose
// shell ignored SIGTERM before exec (ignored signals stay ignored across
// execve).
func TestReadProcSample(t *testing.T) {
	self, err := readProcSample(os.Getpid(), syscall.SIGTERM)
	if err != nil {
		t.Fatal(err)
	}
	if self.Signal != sigCaught || self.RSS == 0 || self.StartTime == 0 {
		t.Errorf("the test process: %+v; want SIGTERM caught (Go catches every signal), some RSS, a start time", self)
	}
	start := func(script string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command("/bin/sh", "-c", script)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	for _, tt := range []struct {
		name, script string
		want         sigDisposition
	}{
		{"sleep", "exec sleep 30", sigDefault},
		{"sleep with SIGTERM ignored", "trap '' TERM; exec sleep 30", sigIgnored},
		{"a shell that traps SIGTERM", "trap 'exit 0' TERM; while :; do sleep 1; done", sigCaught},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := start(tt.script)
			// The shell sets its traps, then execs: wait for what it ends
			// up as.
			var got procSample
			// Not so in time: the check below says what was seen.
			batontest.Wait(10*time.Second, func() error {
				if got, err = readProcSample(cmd.Process.Pid, syscall.SIGTERM); err == nil && got.Signal != tt.want {
					return fmt.Errorf("SIGTERM %v", got.Signal)
				}
				return err
			})
			if err != nil || got.Signal != tt.want {
				t.Errorf("%s: %v, %v; want SIGTERM %v", tt.script, got.Signal, err, tt.want)
			}
		})
	}
	if _, err := readProcSample(fakePIDBase, syscall.SIGTERM); err == nil {
		t.Errorf("a pid no process has: no error")
	}
}

// TestBlockedMeansEveryThread: SigBlk in /proc/PID/status is the main
// thread's mask; SIGTERM counts as blocked (taken with sigwait or a
// signalfd) only when every thread blocks it, since the kernel gives a
// process-directed signal to a thread that does not.
func TestBlockedMeansEveryThread(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	for _, tt := range []struct {
		name, script string
		want         sigDisposition
	}{
		{"blocked in the main thread only", `import signal, threading, time
t = threading.Thread(target=time.sleep, args=(30,), daemon=True); t.start()
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
print("set", flush=True); time.sleep(30)`, sigDefault},
		{"blocked in every thread", `import signal, threading, time
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
t = threading.Thread(target=time.sleep, args=(30,), daemon=True); t.start()
print("set", flush=True); time.sleep(30)`, sigBlocked},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(python, "-c", tt.script)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			buf := make([]byte, 4)
			if _, err := out.Read(buf); err != nil { // "set": the masks are in place
				t.Fatal(err)
			}
			got, err := readProcSample(cmd.Process.Pid, syscall.SIGTERM)
			if err != nil || got.Signal != tt.want {
				t.Errorf("SIGTERM %v, %v; want %v", got.Signal, err, tt.want)
			}
		})
	}
}

func TestChooseDrain(t *testing.T) {
	cfg := testConfig(1)
	idle := cfg
	idle.StopWhenIdle = 5 * time.Second
	tests := []struct {
		name      string
		cfg       Config
		tcp       bool
		d         sigDisposition
		wantMode  DrainMode
		wantBound time.Duration
		wantWhy   string
	}{
		{name: "a program that dies on SIGTERM: when idle, bounded by the drain timeout", cfg: cfg, tcp: true, d: sigDefault, wantMode: DrainWhenIdle, wantBound: 30 * time.Second, wantWhy: "no handler for SIGTERM"},
		{name: "a program that catches it: the signal", cfg: cfg, tcp: true, d: sigCaught, wantMode: DrainSignal, wantWhy: "catches SIGTERM"},
		{name: "a program that blocks it: the signal", cfg: cfg, tcp: true, d: sigBlocked, wantMode: DrainSignal, wantWhy: "sigwait"},
		{name: "a program that ignores it: the signal, and the kill at the drain timeout", cfg: cfg, tcp: true, d: sigIgnored, wantMode: DrainSignal, wantWhy: "killed at the drain timeout"},
		{name: "not read yet: the signal", cfg: cfg, tcp: true, d: sigUnknown, wantMode: DrainSignal, wantWhy: "had not read"},
		{name: "no TCP listener to watch: the signal", cfg: cfg, tcp: false, d: sigDefault, wantMode: DrainSignal, wantWhy: "TCP listeners only"},
		{name: "--stop-when-idle: when idle for every program, bounded by it", cfg: idle, tcp: true, d: sigCaught, wantMode: DrainWhenIdle, wantBound: 5 * time.Second, wantWhy: "--stop-when-idle 5s"},
		{name: "--stop-when-idle with a program that dies on SIGTERM", cfg: idle, tcp: true, d: sigDefault, wantMode: DrainWhenIdle, wantBound: 5 * time.Second, wantWhy: "--stop-when-idle 5s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := chooseDrain(&tt.cfg, tt.tcp, tt.d)
			if got.mode != tt.wantMode || got.bound != tt.wantBound || !strings.Contains(got.why, tt.wantWhy) {
				t.Errorf("got %s, bound %s, %q; want %s, bound %s, a reason with %q", got.mode, got.bound, got.why, tt.wantMode, tt.wantBound, tt.wantWhy)
			}
		})
	}
}

func TestSizeText(t *testing.T) {
	for n, want := range map[uint64]string{
		512 << 20: "512 MiB", 1 << 30: "1 GiB", 3 << 29: "1.5 GiB", 600*(1<<20) + 300*(1<<10): "600.3 MiB", 64 << 10: "64 KiB", 100: "100 B",
	} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q; want %q", n, got, want)
		}
	}
}

// TestHeirHandles: a shell that runs its server without exec dies on
// SIGTERM, but the server it started, in its process group, catches it
// (sigPassed: signal at once, the leftover drains); a child that does not
// catch it leaves the shell's own disposition.
func TestHeirHandles(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("needs python3 for a child that catches SIGTERM")
	}
	// start runs script in a shell of its own process group, and returns
	// its pid and its output.
	start := func(t *testing.T, script string) (int, *bufio.Reader) {
		t.Helper()
		cmd := exec.Command("/bin/sh", "-c", script+"; :") // ": " keeps sh from exec'ing
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		})
		return cmd.Process.Pid, bufio.NewReader(out)
	}
	catching, out := start(t, py+` -c "import signal,time; signal.signal(signal.SIGTERM, lambda *a: None); print(flush=True); time.sleep(30)"`)
	// The child prints its line once it catches SIGTERM. (Before, the
	// shell's forked copy blocks every signal for an instant, which
	// heirHandles counts too: a wait for heirHandles alone could end
	// there, and the child then does not catch SIGTERM yet.)
	if _, err := out.ReadString('\n'); err != nil {
		t.Fatalf("the shell's child that catches SIGTERM: %v", err)
	}
	if !heirHandles(catching, syscall.SIGTERM) {
		t.Error("the shell's child that catches SIGTERM was not found")
	}
	if got, err := readProcSample(catching, syscall.SIGTERM); err != nil || got.Signal != sigPassed {
		t.Errorf("readProcSample of the wrapper: %v, %v; want %v", got.Signal, err, sigPassed)
	}
	plain, _ := start(t, "sleep 30")
	// The shell's child runs sleep: it must still not count.
	batontest.WaitFor(t, 10*time.Second, func() error {
		kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", plain, plain))
		if err != nil {
			return batontest.Stop(err)
		}
		for _, k := range strings.Fields(string(kids)) {
			if comm, err := os.ReadFile("/proc/" + k + "/comm"); err == nil && strings.TrimSpace(string(comm)) == "sleep" {
				return nil
			}
		}
		return fmt.Errorf("the shell's children %q do not run sleep yet", kids)
	})
	if heirHandles(plain, syscall.SIGTERM) {
		t.Error("a child that does not catch SIGTERM was taken for one that does")
	}
}
