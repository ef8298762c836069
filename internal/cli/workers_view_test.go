package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/baton-dev/baton/internal/api"
)

// TestWorkersResourcesAndRecycling: the workers table shows each worker's
// resident memory and CPU, and lines below it say which worker baton is
// replacing and why, and which workers are stopped only when idle; a line
// gives the recycling limits and what each slot recycled.
func TestWorkersResourcesAndRecycling(t *testing.T) {
	since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.Local)
	idleWhy := "it has no handler for SIGTERM, which would end it at once (/proc/PID/status SigCgt): SIGTERM once it holds no connection (checked while it is frozen), at most the drain timeout (30s) after the stop"
	st := api.Status{
		PID: 1, Generation: 3, Ready: "delay:1s", Command: []string{"python3", "-m", "http.server"},
		Workers: []api.WorkerStatus{
			{Slot: 0, Generation: 3, PID: 4242, State: api.WorkerReady, Uptime: api.Duration(time.Hour), RSSBytes: 600 << 20, CPUPercent: 12.4,
				Drain: "when-idle", DrainReason: idleWhy, Recycle: "max_rss: its resident memory, 600 MiB, is above --max-rss 512 MiB"},
			{Slot: 0, Generation: 3, PID: 4300, State: api.WorkerStarting, Replaces: 4242, Drain: "signal", DrainReason: "not read yet"},
			{Slot: 1, Generation: 3, PID: 4243, State: api.WorkerReady, RSSBytes: 1536 << 20, CPUPercent: 99.6, Drain: "when-idle", DrainReason: idleWhy},
		},
		SlotStates: []api.SlotStatus{
			{Slot: 0, State: api.SlotUp, PID: 4242, Recycles: 2, LastRecycle: "max_rss", LastRecycleTime: since},
			{Slot: 1, State: api.SlotUp, PID: 4243},
		},
		MaxRSS: 512 << 20, MaxUptime: api.Duration(24 * time.Hour),
		Recycling: &api.RecyclingStatus{Slot: 0, PID: 4242, NewPID: 4300, Reason: "max_rss", Why: "its resident memory, 600 MiB, is above --max-rss 512 MiB", Since: since},
	}
	var b bytes.Buffer
	printStatus(&b, st)
	out := b.String()
	for i, line := range strings.Split(out, "\n") {
		if n := utf8.RuneCountInString(line); n > statusWidth {
			t.Errorf("line %d is %d columns: %q", i+1, n, line)
		}
	}
	for _, want := range []string{
		"RSS     CPU", "600.0M  12%", "1.5G    100%", "-       -",
		"recycling slot 0 since 03:04:05: pid 4242, its resident memory, 600 MiB, is above --max-rss 512",
		"its replacement pid 4300 is starting, and pid 4242 drains once it is ready",
		"drain when idle, pid 4242, 4243: it has no handler for SIGTERM",
		"recycling: --max-rss 512 MiB, --max-uptime 24h0m0s; recycled: slot 0 2 times, last max_rss at",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Nothing about recycling or drains when there is nothing to say.
	st.Recycling, st.MaxRSS, st.MaxUptime, st.SlotStates = nil, 0, 0, nil
	for i := range st.Workers {
		st.Workers[i].Drain = "signal"
	}
	b.Reset()
	printStatus(&b, st)
	if s := b.String(); strings.Contains(s, "recycling") || strings.Contains(s, "drain when idle") {
		t.Errorf("output speaks of recycling or drains with none:\n%s", s)
	}
}
