package takeover

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/fdpass"
)

// timedGiver is giver that also reports when it read the request, which
// is when the running instance starts its clock.
func timedGiver(t *testing.T, socks []Socket) (path string, read <-chan time.Time, gave <-chan error) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	readc, out := make(chan time.Time, 1), make(chan error, 1)
	serve := func() error {
		c, err := ln.AcceptUnix()
		if err != nil {
			return err
		}
		defer c.Close()
		var req struct {
			Method string
			Params api.TakeoverParams
		}
		if err := readLine(context.Background(), c, &req); err != nil {
			return err
		}
		readc <- time.Now()
		within, err := req.Params.CommitWithin()
		if err != nil {
			return err
		}
		_, err = Give(context.Background(), c, socks, within, func(fdpass.Cred) error { return nil })
		return err
	}
	go func() {
		err := serve()
		ln.Close()
		out <- err // after every descriptor of this side is closed
	}()
	return path, readc, out
}

// hooks records what CommitWhenReady decided.
type hooks struct {
	committed chan error
	gaveUp    chan string
}

func newHooks() *hooks { return &hooks{committed: make(chan error, 1), gaveUp: make(chan string, 1)} }

func (h *hooks) Hooks() Hooks {
	return Hooks{Committed: func(err error) { h.committed <- err }, GaveUp: func(r string) { h.gaveUp <- r }}
}

// TestCommitWhenReady: workers ready in time commit (the running instance
// hears it and lets go), once; later calls are the caller's again.
func TestCommitWhenReady(t *testing.T) {
	socks := listeners(t, 1)
	path, read, gave := timedGiver(t, socks)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := Window{Commit: 20 * time.Second, GiveUp: 10 * time.Second}
	taken, err := Take(ctx, path, w)
	if err != nil {
		t.Fatal(err)
	}
	// The new instance's clock is never behind the running one's.
	if at := <-read; taken.GiveUpAt().After(at.Add(w.GiveUp)) {
		t.Errorf("the new instance gives up at %s, after the request was read + GiveUp (%s)", taken.GiveUpAt(), at.Add(w.GiveUp))
	}
	h := newHooks()
	ready := taken.CommitWhenReady(h.Hooks())
	if !ready() {
		t.Error("the first ready call was not the takeover's")
	}
	select {
	case err := <-h.committed:
		if err != nil {
			t.Errorf("committed, but: %v", err)
		}
	case r := <-h.gaveUp:
		t.Fatalf("gave up (%s) after workers ready in time", r)
	case <-ctx.Done():
		t.Fatal("no commit 20s after the workers were ready")
	}
	if err := <-gave; err != nil {
		t.Errorf("the running instance after the commit: %v", err)
	}
	if ready() {
		t.Error("a ready call after the commit was still the takeover's")
	}
	taken.Abort("too late") // a no-op once committed
	if err := taken.Commit(ctx); err == nil || !strings.Contains(err.Error(), "already committed") {
		t.Errorf("a second Commit: %v; want it refused", err)
	}
}

// TestCommitWhenReadyGivesUp: workers not ready by GiveUpAt: the new
// instance aborts, the running instance hears that from it (not from its
// own timer), and workers ready later commit nothing.
func TestCommitWhenReadyGivesUp(t *testing.T) {
	socks := listeners(t, 2)
	before := batontest.NumFDs(t)
	path, _, gave := timedGiver(t, socks)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	taken, err := Take(ctx, path, Window{Commit: 20 * time.Second, GiveUp: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	h := newHooks()
	ready := taken.CommitWhenReady(h.Hooks())
	var reason string
	select {
	case reason = <-h.gaveUp:
	case err := <-h.committed:
		t.Fatalf("committed (%v) without a ready call", err)
	case <-ctx.Done():
		t.Fatal("did not give up 20s after a 200ms give-up time")
	}
	if want := "not ready within 200ms"; !strings.Contains(reason, want) {
		t.Errorf("gave up for %q; want %q", reason, want)
	}
	err = <-gave
	if !errors.Is(err, ErrAborted) || !strings.Contains(err.Error(), "by the new instance") || !strings.Contains(err.Error(), reason) {
		t.Errorf("the running instance: %v; want ErrAborted by the new instance, for %q", err, reason)
	}
	for i := range 2 {
		if !ready() {
			t.Errorf("ready call %d after giving up was not the takeover's: the caller would go on serving", i+1)
		}
	}
	select {
	case err := <-h.committed:
		t.Errorf("committed (%v) after giving up", err)
	default:
	}
	if after := batontest.NumFDs(t); after > before {
		t.Errorf("%d descriptors before the takeover, %d after it gave up: the received sockets stay open", before, after)
	}
	if taken.OldPID != os.Getpid() {
		t.Errorf("old pid %d", taken.OldPID)
	}
}
