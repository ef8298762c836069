package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
)

// durations are the duration settings, to compare in one diff.
type durations struct {
	Ready, Drain, StopWhenIdle, Handoff, Inspect time.Duration
}

func durationsOf(s Settings) durations {
	return durations{s.ReadyTimeout, s.DrainTimeout, s.StopWhenIdle, s.HandoffTimeout, s.InspectInterval}
}

// writeFile writes a config file in a directory of the test's own.
func writeFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "baton.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDurationValues: a duration in the file needs a unit; a bare number
// other than 0 is refused with the file, line, key and the fix, instead
// of being read as nanoseconds.
func TestDurationValues(t *testing.T) {
	def := durationsOf(Defaults())
	with := func(f func(*durations)) durations { d := def; f(&d); return d }
	tests := []struct {
		name    string
		line    string // the second line of the file
		want    durations
		wantErr string // "" for none
	}{
		{name: "string with unit", line: `drain_timeout = "10s"`, want: with(func(d *durations) { d.Drain = 10 * time.Second })},
		{name: "compound", line: `ready_timeout = "1m30s"`, want: with(func(d *durations) { d.Ready = 90 * time.Second })},
		{name: "integer", line: `drain_timeout = 30`,
			wantErr: `:2: drain_timeout: 30 has no unit, so it would mean 30 nanoseconds: write it in quotes with its unit, drain_timeout = "30s" (units: ns, us, ms, s, m, h)`},
		{name: "integer ready_timeout", line: `ready_timeout = 60`, wantErr: `:2: ready_timeout: 60 has no unit`},
		{name: "integer handoff_timeout", line: `handoff_timeout = 5`, wantErr: `:2: handoff_timeout: 5 has no unit`},
		{name: "integer stop_when_idle", line: `stop_when_idle = 3`, wantErr: `:2: stop_when_idle: 3 has no unit`},
		{name: "integer inspect_interval", line: `inspect_interval = 10`, wantErr: `:2: inspect_interval: 10 has no unit`},
		{name: "float", line: `drain_timeout = 1.5`, wantErr: `:2: drain_timeout: 1.5 has no unit: write it in quotes with its unit, drain_timeout = "1.5s"`},
		{name: "string without unit", line: `drain_timeout = "30"`, wantErr: `:2: drain_timeout: "30": a duration needs a unit: 30s, 30ms or 30m`},
		{name: "not a duration", line: `drain_timeout = "soon"`, wantErr: `:2: drain_timeout: "soon": want a duration such as 30s`},
		{name: "boolean", line: `drain_timeout = true`, wantErr: `:2: drain_timeout: a boolean: want a duration in quotes with its unit, drain_timeout = "30s"`},
		{name: "bare 0 means off", line: `stop_when_idle = 0`, want: with(func(d *durations) { d.StopWhenIdle = 0 })},
		{name: "bare 0 inspect_interval", line: `inspect_interval = 0`, want: with(func(d *durations) { d.Inspect = 0 })},
		{name: "bare 0 where 0 is not allowed", line: `drain_timeout = 0`, wantErr: `:2: drain_timeout: 0s: want a positive duration such as 30s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "command = [\"/bin/true\"]\n"+tt.line+"\n")
			l, err := Load(path, nil, nil, nil)
			var r *Resolved
			if err == nil {
				r, err = l.Resolve()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), path+tt.wantErr) {
					t.Fatalf("error %v\nwant it to contain %q", err, path+tt.wantErr)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v is not ErrInvalid: a usage error exits 2", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, durationsOf(r.Settings)); diff != "" {
				t.Errorf("durations (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDurationFlags: flags refuse a number without a unit too, and say
// how to write it; --ready delay:30 as well.
func TestDurationFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    durations
		wantErr string
	}{
		{name: "with unit", args: []string{"--drain-timeout", "5s", "--stop-when-idle", "2s"},
			want: func() durations {
				d := durationsOf(Defaults())
				d.Drain, d.StopWhenIdle = 5*time.Second, 2*time.Second
				return d
			}()},
		{name: "zero", args: []string{"--inspect-interval", "0"},
			want: func() durations { d := durationsOf(Defaults()); d.Inspect = 0; return d }()},
		{name: "no unit", args: []string{"--drain-timeout", "30"},
			wantErr: `invalid argument "30" for "--drain-timeout" flag: "30": a duration needs a unit: 30s, 30ms or 30m`},
		{name: "ready delay without unit", args: []string{"--ready", "delay:30"},
			wantErr: `--ready: "delay:30": the delay needs a unit: delay:30s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var flags Settings
			fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
			fs.SetOutput(new(strings.Builder))
			Register(fs, &flags)
			err := fs.Parse(tt.args)
			var r *Resolved
			if err == nil {
				var l *Loaded
				if l, err = Load("", &flags, fs, []string{"/bin/true"}); err == nil {
					r, err = l.Resolve()
				}
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v\nwant it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, durationsOf(r.Settings)); diff != "" {
				t.Errorf("durations (-want +got):\n%s", diff)
			}
		})
	}
	// The help shows the defaults as before.
	var flags Settings
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	Register(fs, &flags)
	if f := fs.Lookup("drain-timeout"); f.DefValue != "30s" || f.Value.Type() != "duration" {
		t.Errorf("--drain-timeout default %q type %q; want 30s, duration", f.DefValue, f.Value.Type())
	}
	if f := fs.Lookup("stop-when-idle"); f.DefValue != "0" {
		t.Errorf("--stop-when-idle default %q; want 0", f.DefValue)
	}
}

// TestOtherValues: values of other types that are not what they look
// like are refused with the fix.
func TestOtherValues(t *testing.T) {
	tests := []struct {
		name, text, wantErr string
	}{
		{"mode as a number", "[[listener]]\naddress = \"unix:///run/x.sock\"\nmode = 660\n",
			`:4: listener[0].mode: 660 is a number: write the permission bits as a string of octal digits, mode = "0660"`},
		{"mode as an octal number", "[[listener]]\naddress = \"unix:///run/x.sock\"\nmode = 0o640 # rw-r-----\n",
			`:4: listener[0].mode: 0o640 is a number: write the permission bits as a string of octal digits, mode = "0640"`},
		{"mode as a decimal of the bits", "[[listener]]\naddress = \"unix:///run/x.sock\"\nmode = 432\n",
			`:4: listener[0].mode: 432 is a number: write the permission bits as a string of octal digits, mode = "0432"`},
		{"backlog in quotes", "[[listener]]\naddress = \"tcp://127.0.0.1:0\"\nbacklog = \"1024\"\n",
			`:4: listener[0].backlog: "1024" is a string: want a whole number, without quotes (connections)`},
		{"negative nofile", "[rlimits]\nnofile = -1\n", `:3: rlimits.nofile: -1: want 0 or more (descriptors); there is no value for unlimited`},
		{"env number", "[env]\nPORT = 8080\n", `:3: env.PORT: 8080 is a number: every value of [env] is a string, in quotes: PORT = "8080"`},
		{"bool in quotes", "capture_bind = \"true\"\n", `:2: capture_bind: "true" is a string: want true or false, without quotes`},
		{"handoff_max_state with a unit", "handoff_max_state = \"64KiB\"\n", `:2: handoff_max_state: "64KiB" is a string: want a whole number, without quotes (bytes)`},
		{"workers as a decimal", "workers = 2.0\n", `:2: workers: 2.0 is a decimal number: want a whole number, without quotes`},
		{"listen as a string", "listen = \"tcp://:80\"\n", `:2: listen: "tcp://:80" is a string: want a list in brackets, listen = [...]`},
		{"name as a number", "name = 7\n", `:2: name: 7 is a number: want a string in quotes, name = "..."`},
		{"mode in an inline table", "listener = [{address = \"unix:///run/x.sock\", mode = 660}]\n",
			`:2: listener[0].mode: 660 is a number: write the permission bits as a string of octal digits, mode = "0660"`},
		{"mode in the second table", "[[listener]]\naddress = \"tcp://127.0.0.1:0\"\n[[listener]]\naddress = \"unix:///x\"\nmode = 600\n",
			`:6: listener[1].mode: 600 is a number: write the permission bits as a string of octal digits, mode = "0600"`},
		{"negative nofile inline", "rlimits = {nofile = -1}\n", `:2: rlimits.nofile: -1: want 0 or more (descriptors)`},
		{"v6only in quotes", "[[listener]]\naddress = \"tcp://127.0.0.1:0\"\nv6only = \"yes\"\n", `:4: listener[0].v6only: "yes" is a string: want true or false, without quotes`},
		{"a list of numbers", "listen = [1, 2]\n", `:2: listen: 1 is a number: every element is a string, in quotes: listen = ["..."]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "command = [\"/bin/true\"]\n"+tt.text)
			_, err := Load(path, nil, nil, nil)
			if err == nil || !strings.Contains(err.Error(), path+tt.wantErr) {
				t.Fatalf("error %v\nwant it to contain %q", err, path+tt.wantErr)
			}
		})
	}
}
