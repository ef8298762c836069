package inspect

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		line string
		want proc
		bad  bool
	}{
		{name: "plain", line: "4242 (hello) S 4241 4242 4242 0 -1 4194560 ...", want: proc{PID: 4242, PPID: 4241, Comm: "hello"}},
		{name: "a name with spaces and parentheses", line: "7 (a (b) c) R 1 7 7 0", want: proc{PID: 7, PPID: 1, Comm: "a (b) c"}},
		{name: "no name", line: "7 R 1", bad: true},
		{name: "no parent", line: "7 (x) R", bad: true},
		{name: "not a pid", line: "x (x) R 1", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.line))
			if tt.bad {
				if !errors.Is(err, errStat) {
					t.Errorf("parseStat(%q) = %+v, %v; want an errStat", tt.line, got, err)
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

func TestParseEnviron(t *testing.T) {
	tests := []struct {
		name string
		env  string
		pid  int
		fds  bool
	}{
		{"both", "PATH=/bin\x00LISTEN_FDS=2\x00LISTEN_PID=42\x00", 42, true},
		{"no trailing NUL", "LISTEN_PID=42\x00LISTEN_FDS=1", 42, true},
		{"none", "PATH=/bin\x00HOME=/\x00", 0, false},
		{"a lookalike", "X_LISTEN_PID=42\x00LISTEN_FDSX=1\x00", 0, false},
		{"garbage pid", "LISTEN_PID=abc\x00", 0, false},
		{"empty", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, fds := parseEnviron([]byte(tt.env))
			if pid != tt.pid || fds != tt.fds {
				t.Errorf("parseEnviron(%q) = %d, %v; want %d, %v", tt.env, pid, fds, tt.pid, tt.fds)
			}
		})
	}
}

func TestParseChildrenAndCmdline(t *testing.T) {
	if diff := cmp.Diff([]int{1, 12, 345}, parseChildren([]byte("12 345 \n"), []int{1})); diff != "" {
		t.Errorf("parseChildren (-want +got):\n%s", diff)
	}
	if got := parseCmdline([]byte("/srv/hello\x00-addr\x00:8080\x00")); got != "/srv/hello -addr :8080" {
		t.Errorf("parseCmdline = %q", got)
	}
}
