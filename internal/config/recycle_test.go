package config

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr string
	}{
		{in: "", want: 0},
		{in: "0", want: 0},
		{in: "512MiB", want: 512 << 20},
		{in: "512 MiB", want: 512 << 20},
		{in: "512mib", want: 512 << 20},
		{in: "1.5GiB", want: 3 << 29},
		{in: "800M", want: 800 << 20},
		{in: "2G", want: 2 << 30},
		{in: "800MB", want: 800_000_000},
		{in: "64KiB", want: 64 << 10},
		{in: "4096B", want: 4096},
		{in: "512", wantErr: `"512": a size needs a unit: 512MiB, 512GiB or 512B`},
		{in: "512 bananas", wantErr: `"512 bananas": want a number and a unit, such as 512MiB or 2GiB`},
		{in: "MiB", wantErr: `want a number and a unit`},
		{in: "1.2.3MiB", wantErr: `1.2.3 is not a number`},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSize(%q) = %d, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
		case err != nil || got != tt.want:
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

// TestRecyclingSettings: the crash-loop limit and the recycling limits
// from the file and the flags reach the supervisor's configuration, and
// bad values are refused naming where they came from.
func TestRecyclingSettings(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		args    []string
		check   func(t *testing.T, r *Resolved)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, r *Resolved) {
			c := r.Supervisor
			if c.StartLimitBurst != 5 || c.StartLimitInterval != 10*time.Second || c.MaxRSS != 0 || c.MaxUptime != 0 {
				t.Errorf("burst %d interval %s max_rss %d max_uptime %s; want 5, 10s, off, off", c.StartLimitBurst, c.StartLimitInterval, c.MaxRSS, c.MaxUptime)
			}
		}},
		{name: "from the file", file: "start_limit_burst = 3\nstart_limit_interval = \"30s\"\nmax_rss = \"512MiB\"\nmax_uptime = \"24h\"\n",
			check: func(t *testing.T, r *Resolved) {
				c := r.Supervisor
				if c.StartLimitBurst != 3 || c.StartLimitInterval != 30*time.Second || c.MaxRSS != 512<<20 || c.MaxUptime != 24*time.Hour {
					t.Errorf("burst %d interval %s max_rss %d max_uptime %s; want 3, 30s, 512 MiB, 24h", c.StartLimitBurst, c.StartLimitInterval, c.MaxRSS, c.MaxUptime)
				}
			}},
		{name: "flags over the file", file: "max_rss = \"512MiB\"\n", args: []string{"--max-rss", "1GiB", "--start-limit-burst", "10"},
			check: func(t *testing.T, r *Resolved) {
				if c := r.Supervisor; c.MaxRSS != 1<<30 || c.StartLimitBurst != 10 {
					t.Errorf("max_rss %d burst %d; want the flags' 1 GiB and 10", c.MaxRSS, c.StartLimitBurst)
				}
			}},
		{name: "max_rss without a unit", file: "max_rss = \"512\"\n", wantErr: `:2: max_rss: "512": a size needs a unit`},
		{name: "max_rss as a number", file: "max_rss = 512\n", wantErr: `:2: max_rss: 512 is a number: want a string in quotes, max_rss = "..."`},
		{name: "--max-rss bad", args: []string{"--max-rss", "lots"}, wantErr: `--max-rss: "lots": want a number and a unit`},
		{name: "max_uptime too short", file: "max_uptime = \"100ms\"\n", wantErr: `:2: max_uptime: 100ms: want 0 (never) or at least 1s`},
		{name: "max_uptime without a unit", file: "max_uptime = 3600\n", wantErr: `:2: max_uptime: 3600 has no unit`},
		{name: "burst 0", file: "start_limit_burst = 0\n", wantErr: `:2: start_limit_burst: 0: want 1 to 1000 failures`},
		{name: "interval 0", args: []string{"--start-limit-interval", "0"}, wantErr: `--start-limit-interval: 0s: want a positive duration such as 10s`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var flags Settings
			fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
			fs.SetOutput(new(strings.Builder))
			Register(fs, &flags)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			path := ""
			if tt.file != "" {
				path = writeFile(t, "command = [\"/bin/true\"]\n"+tt.file)
			}
			l, err := Load(path, &flags, fs, []string{"/bin/true"})
			var r *Resolved
			if err == nil {
				r, err = l.Resolve()
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
			tt.check(t, r)
		})
	}
}
