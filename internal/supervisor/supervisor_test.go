package supervisor

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseReady(t *testing.T) {
	tests := []struct {
		name, in string
		want     ReadyMode
		wantErr  bool
	}{
		{name: "notify", in: "notify", want: ReadyWhenNotified()},
		{name: "bind", in: "bind", want: ReadyWhenBound()},
		{name: "delay", in: "delay:1s", want: ReadyAfter(time.Second)},
		{name: "zero delay", in: "delay:0s", want: ReadyMode{}},
		{name: "negative delay", in: "delay:-1s", wantErr: true},
		{name: "delay without duration", in: "delay:", wantErr: true},
		{name: "unknown", in: "soon", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseReady(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseReady(%q) error %v; want an error: %v", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(ReadyMode{})); diff != "" {
				t.Errorf("ParseReady(%q) (-want +got):\n%s", tt.in, diff)
			}
			if err == nil && got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

// TestReadyDeadline: notify and bind give a worker --ready-timeout and
// fail it then; delay:D gives it D and makes it ready then.
func TestReadyDeadline(t *testing.T) {
	type deadline struct {
		D      time.Duration
		Strict bool
	}
	tests := []struct {
		name string
		mode ReadyMode
		want deadline
	}{
		{name: "notify", mode: ReadyWhenNotified(), want: deadline{D: time.Minute, Strict: true}},
		{name: "bind", mode: ReadyWhenBound(), want: deadline{D: time.Minute, Strict: true}},
		{name: "delay", mode: ReadyAfter(3 * time.Second), want: deadline{D: 3 * time.Second}},
		{name: "zero value", mode: ReadyMode{}, want: deadline{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got deadline
			got.D, got.Strict = tt.mode.Deadline(time.Minute)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s.Deadline(1m) (-want +got):\n%s", tt.mode, diff)
			}
		})
	}
}

// TestReadyModeJSON: a ready mode travels in an upgrade's state in the
// shape of state version 1 (a struct of flags), both ways.
func TestReadyModeJSON(t *testing.T) {
	tests := []struct {
		name string
		mode ReadyMode
		json string
	}{
		{name: "notify", mode: ReadyWhenNotified(), json: `{"Notify":true,"Bind":false,"Delay":0}`},
		{name: "bind", mode: ReadyWhenBound(), json: `{"Notify":false,"Bind":true,"Delay":0}`},
		{name: "delay", mode: ReadyAfter(1500 * time.Millisecond), json: `{"Notify":false,"Bind":false,"Delay":1500000000}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.json, string(b)); diff != "" {
				t.Errorf("encoded (-want +got):\n%s", diff)
			}
			var got ReadyMode
			if err := json.Unmarshal([]byte(tt.json), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.mode, got, cmp.AllowUnexported(ReadyMode{})); diff != "" {
				t.Errorf("decoded (-want +got):\n%s", diff)
			}
		})
	}
	for _, bad := range []string{`{"Notify":true,"Bind":true}`, `{"Delay":-1}`, `"notify"`} {
		var got ReadyMode
		if err := json.Unmarshal([]byte(bad), &got); err == nil {
			t.Errorf("decoding %s: %v, no error; want it refused", bad, got)
		}
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
	copyLines(strings.NewReader(in), &sink{w: &out}, "[g1 s0 42] ", tl, nil)
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
