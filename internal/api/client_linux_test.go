package api

import (
	"context"
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
	one, no, window := 1, false, Duration(30*time.Second)
	if _, err := c.ReloadWith(ctx, ReloadParams{WaitParams: WaitParams{Wait: &no}, Rolling: &one, Canary: &one, CanaryWindow: &window}); err != nil {
		t.Errorf("ReloadWith(rolling, canary): %v", err)
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
		`reload {"wait":false,"rolling":1,"canary":1,"canary_window":30.000}`,
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
