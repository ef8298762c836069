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

	"github.com/baton-dev/baton/internal/supervisor"
)

// TestBrokenConfigs checks that each file in testdata/broken fails with the
// message its first line announces ("# want: ..."), which names the line
// and the key.
func TestBrokenConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/broken/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("only %d broken configs", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// A copy in a directory of the test's own: the checkout's
			// directories may be group-writable, which the config file's
			// trust check refuses before anything else.
			f := filepath.Join(t.TempDir(), filepath.Base(f))
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			first, _, _ := strings.Cut(string(b), "\n")
			want, ok := strings.CutPrefix(first, "# want: ")
			if !ok || want == "" {
				t.Fatalf("%s does not start with the error it wants (# want: ...): %q", f, first)
			}
			l, err := Load(f, nil, nil, nil)
			if err == nil {
				_, err = l.Resolve()
			}
			if err == nil {
				t.Fatalf("%s loaded without an error", f)
			}
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), f) {
				t.Errorf("error %q\nwant it to name %s and contain %q", err, f, want)
			}
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrFile) {
				t.Errorf("error %v is neither ErrInvalid nor ErrFile (it must be a usage error)", err)
			}
		})
	}
}

func TestFlagsOverrideFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.toml")
	os.WriteFile(path, []byte(`
command = ["/bin/true"]
workers = 3
ready = "notify"
drain_timeout = "10s"
listen = ["a=tcp://127.0.0.1:0"]
[env]
A = "file"
B = "file"
[[listener]]
name = "b"
address = "udp://127.0.0.1:0"
`), 0o644)

	var flags Settings
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	Register(fs, &flags)
	if err := fs.Parse([]string{"-n", "5", "--env", "B=flag", "--env", "C=flag"}); err != nil {
		t.Fatal(err)
	}
	l, err := Load(path, &flags, fs, []string{"/bin/echo", "hi"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	c := r.Supervisor
	if c.Workers != 5 || c.Ready.String() != "notify" || c.DrainTimeout != 10*time.Second || c.StopSignal != 15 {
		t.Errorf("workers %d ready %v drain %v signal %v; want the flag's 5, the file's notify and 10s, the default TERM", c.Workers, c.Ready, c.DrainTimeout, c.StopSignal)
	}
	if diff := cmp.Diff([]string{"A=file", "B=flag", "C=flag"}, c.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/bin/echo", "hi"}, c.Args); diff != "" {
		t.Errorf("command after -- overrides the file's (-want +got):\n%s", diff)
	}
	var names []string
	for _, s := range r.Specs {
		names = append(names, s.Name)
	}
	if diff := cmp.Diff([]string{"a", "b"}, names); diff != "" {
		t.Errorf("listeners from listen and [[listener]] (-want +got):\n%s", diff)
	}
	if o := l.Origin("workers"); !o.Flag || o.String() != "--workers" {
		t.Errorf("origin of workers: %+v", o)
	}
	if o := l.Origin("ready"); o.Line != 4 || o.File != path {
		t.Errorf("origin of ready: %+v, want line 4 of the file", o)
	}

	// Listeners given with -l replace the file's.
	fs2 := pflag.NewFlagSet("run", pflag.ContinueOnError)
	Register(fs2, &flags)
	if err := fs2.Parse([]string{"-l", "c=tcp://127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	l2, err := Load(path, &flags, fs2, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := l2.Resolve()
	if err != nil || len(r2.Specs) != 1 || r2.Specs[0].Name != "c" {
		t.Errorf("-l did not replace the file's listeners: %v, %v", r2, err)
	}
}

func TestDefaultsWithoutFile(t *testing.T) {
	l, err := Load("", nil, nil, []string{"/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.Supervisor.ReadyTimeout != time.Minute || r.Supervisor.DrainTimeout != 30*time.Second || !r.Supervisor.LogPrefix {
		t.Errorf("defaults: %+v", r.Supervisor)
	}
}

// TestRolloutKeys: the keys that say how a reload replaces the workers
// reach the supervisor's configuration, a whole number where a
// percentage is wanted included, and flags win over the file.
func TestRolloutKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "baton.toml")
	os.WriteFile(path, []byte(`
command = ["/bin/true"]
rolling = 2
canary = 1
canary_window = "1m"
canary_max_errors = 5
canary_max_error_rate = 2
`), 0o644)
	var flags Settings
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	Register(fs, &flags)
	if err := fs.Parse([]string{"--canary-max-error-rate", "0.5"}); err != nil {
		t.Fatal(err)
	}
	l, err := Load(path, &flags, fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	want := supervisor.Rollout{Rolling: 2, Canary: 1, CanaryWindow: time.Minute, CanaryMaxErrors: 5, CanaryMaxErrorRate: 0.5}
	if r.Supervisor.Rollout != want {
		t.Errorf("rollout %+v, want %+v", r.Supervisor.Rollout, want)
	}
	d, err := Load("", nil, nil, []string{"/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	rd, err := d.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if want := (supervisor.Rollout{CanaryWindow: supervisor.DefaultCanaryWindow}); rd.Supervisor.Rollout != want {
		t.Errorf("default rollout %+v, want %+v (all at once)", rd.Supervisor.Rollout, want)
	}
}
