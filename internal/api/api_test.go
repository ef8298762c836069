package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDurationJSON(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    time.Duration
		json string
		back time.Duration // what decoding the JSON gives: milliseconds
	}{
		{"zero", 0, "0.000", 0},
		{"milliseconds", 1500 * time.Millisecond, "1.500", 1500 * time.Millisecond},
		{"rounded to the millisecond", 1234567 * time.Microsecond, "1.235", 1235 * time.Millisecond},
		{"hours", 100 * time.Hour, "360000.000", 100 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(Duration(tc.d))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.json {
				t.Errorf("Marshal(%s) = %s, want %s", tc.d, b, tc.json)
			}
			var back Duration
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("Unmarshal(%s): %v", b, err)
			}
			if diff := time.Duration(back) - tc.back; diff < -time.Microsecond || diff > time.Microsecond {
				t.Errorf("Unmarshal(%s) = %s, want %s", b, time.Duration(back), tc.back)
			}
		})
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"1s"`), &d); err == nil || !strings.Contains(err.Error(), "want seconds") {
		t.Errorf(`Unmarshal("1s"): %v; want an error asking for seconds`, err)
	}
}

func TestCommitWithinBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		ms   int64
		want time.Duration
		bad  bool
	}{
		{"absent: the default", 0, DefaultCommitWithin, false},
		{"milliseconds", 1500, 1500 * time.Millisecond, false},
		{"the most", MaxCommitWithin.Milliseconds(), MaxCommitWithin, false},
		{"negative", -1, 0, true},
		{"past the most", MaxCommitWithin.Milliseconds() + 1, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TakeoverParams{CommitWithinMS: tc.ms}.CommitWithin()
			if (err != nil) != tc.bad || got != tc.want {
				t.Errorf("commit_within_ms %d: %s, %v; want %s, error %v", tc.ms, got, err, tc.want, tc.bad)
			}
		})
	}
}

// TestParamsDefaults: a request without params waits, and includes the
// kernel's view, as servers before these types did.
func TestParamsDefaults(t *testing.T) {
	no, yes := false, true
	if !(WaitParams{}).Waits() || !(WaitParams{Wait: &yes}).Waits() || (WaitParams{Wait: &no}).Waits() {
		t.Error("WaitParams.Waits: want true unless wait is false")
	}
	if !(StatusParams{}).WithKernel() || (StatusParams{Kernel: &no}).WithKernel() {
		t.Error("StatusParams.WithKernel: want true unless kernel is false")
	}
}

// TestReloadParams: a reload request without rollout fields leaves them
// to the configuration, and one with wrong values is refused naming the
// param; the JSON keys are those docs/status.md documents.
func TestReloadParams(t *testing.T) {
	var p ReloadParams
	if err := json.Unmarshal([]byte(`{"wait":false}`), &p); err != nil || p.Waits() || p.Rolling != nil || p.Canary != nil || p.CanaryWindow != nil {
		t.Errorf(`{"wait":false}: %+v, %v; want no wait and no rollout fields`, p, err)
	}
	p = ReloadParams{}
	if err := json.Unmarshal([]byte(`{"rolling":2,"canary":1,"canary_window":1.5}`), &p); err != nil || *p.Rolling != 2 || *p.Canary != 1 || time.Duration(*p.CanaryWindow) != 1500*time.Millisecond || !p.Waits() {
		t.Errorf("rollout fields: %+v, %v", p, err)
	}
	neg, zero := -1, Duration(0)
	for _, tc := range []struct {
		p    ReloadParams
		want string
	}{
		{ReloadParams{Rolling: &neg}, "reload: rolling -1: want 0"},
		{ReloadParams{Canary: &neg}, "reload: canary -1: want 0"},
		{ReloadParams{CanaryWindow: &zero}, "reload: canary_window 0s: want a positive duration"},
	} {
		if err := tc.p.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%+v) = %v, want %q", tc.p, err, tc.want)
		}
	}
	if err := p.Check(); err != nil {
		t.Errorf("Check of valid params: %v", err)
	}
}
