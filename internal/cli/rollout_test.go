package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/api"
)

func int64p(n int64) *int64 { return &n }

// TestPrintRollout: baton status says how a rolling or canary reload is
// going, and the reload command's line how it went.
func TestPrintRollout(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		ro   *api.RolloutStatus
		want string
	}{
		{"none", nil, ""},
		{"canary watching", &api.RolloutStatus{Generation: 5, Previous: 4, Batch: 1, MaxWorkers: 5, Phase: api.RolloutCanary,
			Done: []int{}, Starting: []int{0}, Waiting: []int{1, 2, 3},
			Canary: &api.CanaryStatus{Slots: []int{0}, PIDs: []int{4242}, Window: api.Duration(30 * time.Second), Until: now.Add(12 * time.Second),
				Verdict: api.CanaryWatching, Errors: int64p(0), Accepted: int64p(120), PreviousAccepted: int64p(950)}},
			`rollout: generation 5 replaces 4, 1 slot at a time (at most 5 workers): canary; done [], starting
    [0], waiting [1 2 3]
  canary slot 0 (pid 4242): watching, 12s left of 30s; 0 errors (at most 0), 120 connections
    accepted (the old workers: 950)

`},
		{"rolling back", &api.RolloutStatus{Generation: 5, Previous: 4, Batch: 2, MaxWorkers: 6, Phase: api.RolloutRollingBack,
			Done: []int{0, 1}, Starting: []int{1}, Waiting: []int{0}, RolledBack: []int{}, Error: "worker slot 2 (pid 77) of generation 5 exited with status 1 before it was ready"},
			`rollout: generation 5 replaces 4, 2 slots at a time (at most 6 workers): rolling back; done [0 1],
    starting [1], waiting [0], rolled back []; because worker slot 2 (pid 77) of generation 5 exited
    with status 1 before it was ready

`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			printRollout(&b, api.Status{Rollout: tt.ro}, now)
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("printRollout (-want +got):\n%s", diff)
			}
		})
	}
	got := rolloutSummary(&api.RolloutStatus{Batch: 1, Canary: &api.CanaryStatus{Slots: []int{0, 1}, Window: api.Duration(time.Minute), Errors: int64p(2), Accepted: int64p(300)}})
	if want := ", rolling 1 slot at a time; canary slots 0, 1 passed its 1m0s window (2 errors, 300 connections)"; got != want {
		t.Errorf("rolloutSummary = %q, want %q", got, want)
	}
	if !strings.Contains(statusText(t, api.Status{Rollout: &api.RolloutStatus{Phase: api.RolloutRolling}}), "rollout: ") {
		t.Errorf("baton status does not show the rollout")
	}
}

func statusText(t *testing.T, st api.Status) string {
	t.Helper()
	var b bytes.Buffer
	printStatus(&b, st)
	return b.String()
}
