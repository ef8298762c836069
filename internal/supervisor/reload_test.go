package supervisor

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/internal/batontest"
	"github.com/baton-dev/baton/internal/listener"
)

// loopOnly is a supervisor whose loop runs, serving generation 1 with no
// worker: enough for what a reload does before it starts workers.
func loopOnly(t *testing.T, prepare func([]*listener.Group, int) (*Plan, error)) *Supervisor {
	t.Helper()
	s := newSupervisor(Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Prepare: prepare}, env{})
	s.active = &generation{id: 1, cfg: &Config{Workers: 1}, workers: map[int]*worker{}, slots: []*slot{{index: 0}}}
	s.nextGen = 1
	go func() {
		for {
			select {
			case f := <-s.events:
				f()
			case <-s.done:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(s.done)
		s.handoff.store.Close()
	})
	return s
}

// outcome waits for a reload's outcome, at most 10s.
func outcome(t *testing.T, ch <-chan ReloadOutcome, what string) ReloadOutcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no outcome within 10s", what)
		return ReloadOutcome{}
	}
}

// TestPrepareDeadline: a Prepare that blocks fails its reload at the
// deadline, with the reason; the next reload runs (it is not queued
// behind the stuck one for ever); and the plan the stuck Prepare returns
// at last is discarded, its new listener closed.
func TestPrepareDeadline(t *testing.T) {
	defer func(d time.Duration) { prepareTimeout = d }(prepareTimeout)
	prepareTimeout = 200 * time.Millisecond

	release := make(chan struct{})
	bound := make(chan string, 1) // the address of the late plan's listener
	var calls atomic.Int32
	s := loopOnly(t, func(current []*listener.Group, workers int) (*Plan, error) {
		if calls.Add(1) > 1 {
			return nil, errors.New("the second reload's own error")
		}
		<-release // a config path that never answers
		spec, err := listener.Parse("late=tcp://127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		g, err := listener.OpenGroup(spec, 1)
		if err != nil {
			return nil, err
		}
		bound <- g.Sockets()[0].Addr().String()
		return &Plan{Config: Config{Workers: 1}, Listeners: []*listener.Group{g}}, nil
	})

	first := outcome(t, s.Reload("first"), "the reload whose Prepare blocks")
	if first.Err == nil || !strings.Contains(first.Err.Error(), "took more than 200ms") || !strings.Contains(first.Err.Error(), "generation 1 keeps serving") {
		t.Fatalf("first reload: %v; want it to fail at the 200ms deadline", first.Err)
	}
	second := outcome(t, s.Reload("second"), "the reload after the stuck one")
	if second.Err == nil || !strings.Contains(second.Err.Error(), "the second reload's own error") {
		t.Fatalf("second reload: %v; want its own Prepare to have run", second.Err)
	}

	close(release)
	addr := <-bound
	batontest.WaitFor(t, 10*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil // closed: the late plan was discarded
		}
		c.Close()
		return fmt.Errorf("the listener of the plan that came after the deadline (%s) is still open", addr)
	})
	var gen int
	var st stats
	var preparing bool
	s.call(func() { gen, st, preparing = s.active.id, s.stats, s.preparing })
	if gen != 1 || st.reloadsFailed != 2 || st.reloadsOK != 0 || preparing {
		t.Errorf("after the late plan: generation %d, %d reloads failed, %d ok, preparing %v; want generation 1 unchanged, 2 failed", gen, st.reloadsFailed, st.reloadsOK, preparing)
	}
}
