package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/baton-dev/baton/internal/control"
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

// fakeBaton serves the control socket with canned results, recording each
// request as it arrived.
type fakeBaton struct {
	mu       sync.Mutex
	requests []string // method and params, as JSON
	results  map[string]any
}

func (f *fakeBaton) handle(_ context.Context, _ control.Peer, req control.Request) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req.Method+" "+string(req.Params))
	if r, ok := f.results[req.Method]; ok {
		if err, ok := r.(error); ok {
			return nil, err
		}
		return r, nil
	}
	return nil, errors.New("no result for " + req.Method)
}

func (f *fakeBaton) listen(t *testing.T) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	s, err := control.Listen(path, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(f.handle)
	t.Cleanup(func() { s.Close() })
	return &Client{Path: path}
}

// TestClient: each method sends its documented request and decodes the
// reply into its type.
func TestClient(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	f := &fakeBaton{results: map[string]any{
		MethodStatus:  Status{PID: 42, Generation: 3, Workers: []WorkerStatus{{Slot: 1, State: WorkerReady, Uptime: Duration(2 * time.Second)}}},
		MethodReload:  ReloadResult{Generation: 4, Previous: 3, Started: started, Duration: Duration(time.Second), OK: true, Reason: "test"},
		MethodScale:   ScaleResult{From: 2, To: 4, Started: []int{2, 3}},
		MethodUpgrade: UpgradeReply{PID: 42, Binary: "/usr/bin/baton", ID: "nonce", Generation: 3},
		MethodStop:    StopReply{Stopping: true},
	}}
	c := f.listen(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := f.results[MethodStatus].(Status); !cmp.Equal(st, want) {
		t.Errorf("Status (-want +got):\n%s", cmp.Diff(want, st))
	}
	if _, err := c.StatusWithoutKernel(ctx); err != nil {
		t.Fatal(err)
	}
	raw, err := c.StatusJSON(ctx)
	if err != nil || !strings.Contains(string(raw), `"pid":42`) {
		t.Errorf("StatusJSON: %s, %v", raw, err)
	}
	r, err := c.Reload(ctx, true)
	if err != nil || r != f.results[MethodReload].(ReloadResult) {
		t.Errorf("Reload(wait): %+v, %v", r, err)
	}
	f.results[MethodReload] = ReloadQueued{Queued: true}
	if r, err := c.Reload(ctx, false); err != nil || r != (ReloadResult{}) {
		t.Errorf("Reload(no wait): %+v, %v; want the zero result", r, err)
	}
	sc, err := c.Scale(ctx, 4)
	if err != nil || !cmp.Equal(sc, f.results[MethodScale].(ScaleResult)) {
		t.Errorf("Scale: %+v, %v", sc, err)
	}
	up, err := c.Upgrade(ctx, UpgradeParams{Binary: "/usr/bin/baton", KeepWorkers: true})
	if err != nil || up != f.results[MethodUpgrade].(UpgradeReply) {
		t.Errorf("Upgrade: %+v, %v", up, err)
	}
	if err := c.Stop(ctx, false); err != nil {
		t.Errorf("Stop: %v", err)
	}

	// The requests as docs/status.md and the control package document them.
	want := []string{
		"status ",
		`status {"kernel":false}`,
		"status ",
		`reload {"wait":true}`,
		`reload {"wait":false}`,
		`scale {"workers":4}`,
		`upgrade {"binary":"/usr/bin/baton","keep_workers":true}`,
		`stop {"wait":false}`,
	}
	if diff := cmp.Diff(want, f.requests); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

// TestClientErrors: what baton reports is a *control.RemoteError with its
// message; a reply that does not decode names what was being read.
func TestClientErrors(t *testing.T) {
	f := &fakeBaton{results: map[string]any{
		MethodReload: errors.New("reload failed: worker slot 0 exited"),
		MethodScale:  map[string]string{"from": "two"},
	}}
	c := f.listen(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := c.Reload(ctx, true)
	var remote *control.RemoteError
	if !errors.As(err, &remote) || remote.Msg != "reload failed: worker slot 0 exited" {
		t.Errorf("Reload that failed: %v; want the RemoteError with baton's reason", err)
	}
	if _, err := c.Scale(ctx, 2); err == nil || !strings.HasPrefix(err.Error(), "reading the scale result: ") {
		t.Errorf("Scale with a reply that does not decode: %v", err)
	}
	none := &Client{Path: filepath.Join(t.TempDir(), "none.sock")}
	if _, err := none.Status(ctx); err == nil || !strings.Contains(err.Error(), "no baton is running") {
		t.Errorf("Status with no baton: %v", err)
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
