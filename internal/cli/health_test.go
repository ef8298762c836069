package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/config"
)

// The health line heads the status; a degraded status is an error that
// exits 3 and names what degrades it.
func TestHealth(t *testing.T) {
	st := wideStatus() // slot 7 in backoff
	var b bytes.Buffer
	printStatus(&b, st)
	if !strings.Contains(b.String(), "health: DEGRADED: slot 7: no worker, restarting in 2.3s (5 restarts)") {
		t.Errorf("status lacks the health line:\n%s", &b)
	}
	err := healthError(&st)
	if code := exitCode(err); code != 3 || !strings.Contains(err.Error(), "degraded: slot 7: no worker") {
		t.Errorf("healthError = %v (exit %d), want exit 3 naming slot 7", err, code)
	}

	st.SlotStates = []api.SlotStatus{{Slot: 0, State: api.SlotUp}}
	st.Kernel.Warnings = []api.Warning{{Code: api.NotAccepting, Listener: "http", Severity: api.SeverityDegraded, Message: "nothing serves it"}}
	b.Reset()
	printStatus(&b, st)
	for _, want := range []string{"health: DEGRADED: not_accepting: listener http", "! not_accepting (degraded), since"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, &b)
		}
	}

	st.Kernel.Warnings = []api.Warning{{Code: api.WrapperWithoutExec, Severity: api.SeverityWarning, Message: "exec it"}}
	b.Reset()
	printStatus(&b, st)
	if !strings.Contains(b.String(), "health: ok\n") || strings.Contains(b.String(), "(degraded)") {
		t.Errorf("a warning that does not degrade:\n%s", &b)
	}
	if err := healthError(&st); err != nil {
		t.Errorf("healthError = %v, want nil", err)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want int
	}{
		{errors.New("no baton is running"), 1},
		{usagef("bad flag"), 2},
		{fmt.Errorf("wrapped: %w", &exitError{code: exitDegraded, err: errors.New("degraded")}), 3},
	} {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// A configuration without listeners is refused unless no_listeners says
// that none are wanted, and no_listeners with listeners is refused too:
// usage errors, which name the fix.
func TestCheckListeners(t *testing.T) {
	cmd := filepath.Join(t.TempDir(), "server")
	if err := os.WriteFile(cmd, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string // "" for valid
	}{
		{name: "no listener", want: "listen: no listeners: the workers would get no socket"},
		{name: "no listener, said so", args: []string{"--no-listeners"}},
		{name: "a listener", args: []string{"-l", "tcp://127.0.0.1:0"}},
		{name: "both", args: []string{"-l", "tcp://127.0.0.1:0", "--no-listeners"}, want: "--no-listeners: no_listeners is set, and 1 listeners are given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s config.Settings
			fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
			config.Register(fs, &s)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			_, err := load("", &s, fs, []string{cmd})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || exitCode(err) != 2 {
				t.Fatalf("load: %v (exit %d); want a usage error saying %q", err, exitCode(err), tt.want)
			}
			if tt.name == "no listener" && (!strings.Contains(err.Error(), "-l NAME=ADDRESS") || !strings.Contains(err.Error(), "--no-listeners")) {
				t.Errorf("error %q does not say how to fix it", err)
			}
		})
	}
}
