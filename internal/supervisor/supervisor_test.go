package supervisor

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseReady(t *testing.T) {
	tests := []struct {
		in   string
		want ReadyMode
		err  bool
	}{
		{"notify", ReadyMode{Notify: true}, false},
		{"delay:1s", ReadyMode{Delay: time.Second}, false},
		{"delay:0s", ReadyMode{}, false},
		{"delay:-1s", ReadyMode{}, true},
		{"delay:", ReadyMode{}, true},
		{"soon", ReadyMode{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseReady(tt.in)
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("ParseReady(%q) = %+v, %v", tt.in, got, err)
			}
			if err == nil && got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
	}{
		{"TERM", syscall.SIGTERM}, {"SIGQUIT", syscall.SIGQUIT}, {"int", syscall.SIGINT}, {"9", syscall.SIGKILL}, {"WINCH", syscall.SIGWINCH},
	}
	for _, tt := range tests {
		if got, err := ParseSignal(tt.in); err != nil || got != tt.want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "NOPE", "0", "99", "9x"} {
		if _, err := ParseSignal(bad); err == nil {
			t.Errorf("ParseSignal(%q) succeeded", bad)
		}
	}
	if SignalName(syscall.SIGTERM) != "SIGTERM" {
		t.Errorf("SignalName(SIGTERM) = %q", SignalName(syscall.SIGTERM))
	}
}

func TestDescribeExit(t *testing.T) {
	tests := []struct {
		ws   syscall.WaitStatus
		want string
	}{
		{syscall.WaitStatus(3 << 8), "exited with status 3"},
		{syscall.WaitStatus(syscall.SIGKILL), "killed by SIGKILL"},
		{syscall.WaitStatus(syscall.SIGSEGV | 0x80), "killed by SIGSEGV (core dumped)"},
	}
	for _, tt := range tests {
		if got := describeExit(tt.ws); got != tt.want {
			t.Errorf("describeExit(%#x) = %q, want %q", uint32(tt.ws), got, tt.want)
		}
	}
}

func TestCopyLinesPrefixesAndSplits(t *testing.T) {
	var out bytes.Buffer
	tl := &tail{}
	long := strings.Repeat("x", maxLine+10)
	in := "one\ntwo\r\n" + long + "\nlast without newline"
	copyLines(strings.NewReader(in), &sink{w: &out}, "[g1 s0 42] ", tl)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 5 || lines[0] != "[g1 s0 42] one" || lines[1] != "[g1 s0 42] two\r" || lines[4] != "[g1 s0 42] last without newline" {
		t.Errorf("lines: %q", lines)
	}
	if len(lines[2]) != len("[g1 s0 42] ")+maxLine || len(lines[3]) != len("[g1 s0 42] ")+10 {
		t.Errorf("a long line was not split at %d bytes: %d and %d", maxLine, len(lines[2]), len(lines[3]))
	}
	if !strings.HasSuffix(tl.String(), "| last without newline") {
		t.Errorf("tail %q", tl.String())
	}
}

func TestTailKeepsLastLines(t *testing.T) {
	tl := &tail{}
	for i := 0; i < 20; i++ {
		tl.add(strings.Repeat("a", i))
	}
	got := strings.Split(tl.String(), " | ")
	if len(got) != tailLines || got[len(got)-1] != strings.Repeat("a", 19) {
		t.Errorf("tail: %q", got)
	}
}

func TestParentPID(t *testing.T) {
	if got := parentPID(os.Getpid()); got != os.Getppid() {
		t.Errorf("parentPID(self) = %d, want %d", got, os.Getppid())
	}
	if got := parentPID(1 << 30); got != 0 {
		t.Errorf("parentPID(no such pid) = %d", got)
	}
}

func TestDurationJSON(t *testing.T) {
	b, _ := Duration(1500 * time.Millisecond).MarshalJSON()
	var d Duration
	if err := d.UnmarshalJSON(b); err != nil || string(b) != "1.500" || d != Duration(1500*time.Millisecond) {
		t.Errorf("round trip: %s, %v, %v", b, d, err)
	}
	if diff := cmp.Diff("1.500", string(b)); diff != "" {
		t.Error(diff)
	}
}
