package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/baton-dev/baton/internal/api"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/handoff"
	"github.com/baton-dev/baton/internal/listener"
)

// This file is the supervisor's side of live connection handoff: the
// worker socket's handoff and adopt methods, and the one decision the
// loop makes for the fd store: which workers may adopt. The transfers run
// on the worker socket's connection goroutines (internal/handoff); the
// loop never waits on them.

// HandoffConfig configures the fd store.
type HandoffConfig struct {
	// Timeout is how long a handed-off connection waits for a worker of
	// the next generation to adopt it before baton closes it
	// (handoff.DefaultTimeout).
	Timeout time.Duration
	// MaxState bounds one connection's state blob, in bytes
	// (handoff.DefaultMaxState).
	MaxState int
}

// handoffState is what the supervisor keeps for the fd store.
type handoffState struct {
	store    *handoff.Store
	cfg      HandoffConfig    // the configuration the store has
	told     []handoff.Worker // the last list given to SetWorkers
	buf      []handoff.Worker
	stopping bool
}

// newHandoff makes an empty store with the default configuration;
// syncHandoff gives it the serving generation's.
func newHandoff(log *slog.Logger) *handoffState {
	st, err := handoff.NewStore(handoff.Config{Log: log})
	if err != nil {
		panic(err) // the defaults are valid
	}
	return &handoffState{store: st}
}

// closeHandoff closes what the store still holds; Run calls it once every
// worker has exited.
func (s *Supervisor) closeHandoff() { s.handoff.store.Close() }

// syncHandoff tells the store, after each event of the loop, which live
// workers may adopt: the ready workers of the active generation (during
// a rollout, the new workers of the slots replaced: serving), unless
// they or baton are stopping. A worker that is asked to stop leaves the
// list in the same step, so its subscription gets nothing more.
func (s *Supervisor) syncHandoff() {
	h := s.handoff
	if s.active != nil && s.active.cfg.Handoff != h.cfg {
		// The first generation's settings, or a reload's new ones.
		cfg := s.active.cfg.Handoff
		if err := h.store.Configure(cfg.Timeout, cfg.MaxState); err != nil {
			s.log.Warn("handoff settings not applied", "err", err)
		}
		h.cfg = cfg
	}
	if s.stopping && !h.stopping {
		h.stopping = true
		h.store.StopAccepting(errors.New("baton is stopping: no generation will adopt connections; close them yourself"))
	}
	ws := h.buf[:0]
	for _, w := range s.workers {
		if w.stopped || w.state == Exited {
			continue
		}
		ws = append(ws, handoff.Worker{PID: w.pid, Slot: w.slot.index, Generation: w.gen.id,
			Adopt: w.state == Ready && s.serving(w) && !s.stopping})
	}
	slices.SortFunc(ws, func(a, b handoff.Worker) int { return a.PID - b.PID })
	h.buf = ws
	if slices.Equal(ws, h.told) {
		return
	}
	h.told = slices.Clone(ws)
	h.store.SetWorkers(h.told)
}

// streamAddrs lists the bound addresses of every stream listener baton
// holds, by name: a handed-off connection must have been accepted on one
// of those of its listener's name (a reload may have moved a listener
// and its older connections travel on).
func (s *Supervisor) streamAddrs() map[string][]net.Addr {
	addrs := map[string][]net.Addr{}
	for g := range s.groups {
		if g.Spec.Kind != listener.Stream {
			continue
		}
		if socks := g.Sockets(); len(socks) > 0 {
			addrs[g.Spec.Name] = append(addrs[g.Spec.Name], socks[0].Addr())
		}
	}
	return addrs
}

// handoffBusy is why baton cannot upgrade now, or nil: an upgrade
// re-executes baton, which would close the connections it holds for the
// next generation and break the transfers under way.
func (s *Supervisor) handoffBusy() error {
	if st := s.handoff.store.Stats(); st.Held > 0 || st.Senders > 0 {
		return fmt.Errorf("upgrade: workers are handing off connections (%d held for adoption, %d handoff connections open); try again when baton status shows none held", st.Held, st.Senders)
	}
	return nil
}

// handoffStatus reports the store; fds is how many descriptors baton
// holds.
func (s *Supervisor) handoffStatus(fds int) HandoffStatus {
	st := HandoffStatus{HandoffStats: api.HandoffStats(s.handoff.store.Stats()), Timeout: Duration(s.handoff.store.Config().Timeout)}
	if lim, err := handoff.GetNOFILE(); err == nil {
		st.FDLimit, st.FDLimitHard = lim.Soft, lim.Hard
		st.FDHeadroom = int(min(lim.Soft, 1<<31)) - fds
	}
	return st
}

// handleHandoff serves the worker socket's handoff and adopt methods: it
// answers on the connection itself (control.ConnFrom), then moves
// descriptors on it until the worker or baton ends the exchange.
func (s *Supervisor) handleHandoff(ctx context.Context, peer control.Peer, req control.Request) (any, error) {
	c := control.ConnFrom(ctx)
	if c == nil {
		return nil, errors.New("the worker socket did not hand over the connection")
	}
	var (
		w         handoff.Worker
		found     bool
		stopping  bool
		listeners map[string][]net.Addr
	)
	child := s.lineage.child(peer.PID)
	s.call(func() {
		if wk := s.workerOf(child); wk != nil {
			found = true
			w = handoff.Worker{PID: wk.pid, Slot: wk.slot.index, Generation: wk.gen.id}
			stopping = wk.stopped || s.stopping
			if req.Method == handoff.MethodHandoff {
				listeners = s.streamAddrs()
			}
		}
	})
	if !found {
		return nil, fmt.Errorf("pid %d is not a worker of this baton", peer.PID)
	}
	store := s.handoff.store
	if req.Method == handoff.MethodHandoff {
		if err := control.DecodeParams(req.Params, &struct{}{}); err != nil {
			return nil, err
		}
		src := handoff.Source{PID: w.PID, Slot: w.Slot, Generation: w.Generation, Listeners: listeners}
		answered, err := store.ServeHandoff(ctx, c, src)
		if !answered {
			return nil, err
		}
		if err != nil && ctx.Err() == nil {
			s.log.Debug("handoff connection ended", "pid", w.PID, "err", err)
		}
		return control.Hijacked, nil
	}
	if stopping {
		return nil, fmt.Errorf("worker pid %d is stopping: it adopts nothing more", w.PID)
	}
	var p handoff.AdoptParams
	if err := control.DecodeParams(req.Params, &p); err != nil {
		return nil, err
	}
	sub, err := store.Subscribe(p)
	if err != nil {
		return nil, err
	}
	if err := handoff.WriteResult(c, sub); err != nil {
		return control.Hijacked, nil
	}
	if err := store.Adopt(ctx, c, w, sub); err != nil && ctx.Err() == nil {
		s.log.Debug("adopt subscription ended", "pid", w.PID, "err", err)
	}
	return control.Hijacked, nil
}
