package supervisor

import (
	"fmt"

	"github.com/baton-dev/baton/internal/listener"
)

// Scale changes the number of slots (workers per generation). Adding slots
// starts their workers in the serving generation (with balance=reuseport
// each new slot's socket joins the group first). Removing slots drains
// their workers; a reuseport slot's socket is closed only once nothing
// holds it, and only when the kernel will move what is queued in it to the
// remaining sockets (net.ipv4.tcp_migrate_req=1): otherwise the scale-down
// is refused and nothing changes. A scale asked for during a reload is
// applied when the reload ends.
func (s *Supervisor) Scale(n int) (ScaleResult, error) {
	ch := make(chan scaleOutcome, 1)
	if !s.post(func() { s.requestScale(n, ch) }) {
		return ScaleResult{}, ErrStopping
	}
	o := <-ch
	return o.res, o.err
}

type scaleOutcome struct {
	res ScaleResult
	err error
}

type scaleRequest struct {
	n  int
	ch chan<- scaleOutcome
}

func (s *Supervisor) requestScale(n int, ch chan<- scaleOutcome) {
	if s.stopping {
		ch <- scaleOutcome{err: ErrStopping}
		return
	}
	if n < 1 || n > MaxWorkers {
		ch <- scaleOutcome{err: fmt.Errorf("scale to %d: want 1 to %d workers", n, MaxWorkers)}
		return
	}
	if s.pending != nil {
		s.scaleQueue = append(s.scaleQueue, scaleRequest{n, ch})
		return
	}
	res, err := s.applyScale(n)
	ch <- scaleOutcome{res, err}
}

// MaxWorkers bounds the number of slots.
const MaxWorkers = 4096

// applyScale changes the slot count now; no reload may be pending.
func (s *Supervisor) applyScale(n int) (ScaleResult, error) {
	g := s.active
	cur := len(g.slots)
	res := ScaleResult{From: cur, To: n}
	switch {
	case n > cur:
		for i := cur; i < n; i++ {
			if err := s.growListeners(i); err != nil {
				res.To = i
				if i == cur {
					return res, fmt.Errorf("scale to %d: %w", n, err)
				}
				return res, fmt.Errorf("scaled to %d only: %w", i, err)
			}
			sl := &slot{index: i}
			g.slots = append(g.slots, sl)
			g.cfg.Workers = len(g.slots)
			s.log.Info("slot added", "slot", i)
			s.startWorker(g, sl)
			res.Started = append(res.Started, i)
		}
	case n < cur:
		for _, l := range g.listeners {
			if l.Reuseport() && l.Spec.Kind == listener.Stream {
				if err := listener.MigrateReq(g.cfg.EnableMigrateReq); err != nil {
					return res, fmt.Errorf("scale to %d would close the reuseport sockets of slots %d..%d: %w", n, n, cur-1, err)
				}
				break
			}
		}
		for _, sl := range g.slots[n:] {
			sl.removed = true
			sl.cancelRestart()
			for _, w := range s.workers {
				if w.slot == sl {
					s.stopWorker(w, "its slot was removed by a scale-down")
				}
			}
			delete(g.workers, sl.index)
			// baton's copy goes now; the socket itself closes when the
			// draining worker closes its copy too, and the kernel then
			// moves what is queued in it to the remaining slots.
			for _, l := range g.listeners {
				if err := l.Release(sl.index); err != nil {
					s.log.Warn("closing a removed slot's socket", "slot", sl.index, "listener", l.Spec.Name, "err", err)
				}
			}
			res.Stopped = append(res.Stopped, sl.index)
			s.log.Info("slot removed", "slot", sl.index)
		}
		g.slots = g.slots[:n]
		g.cfg.Workers = n
	}
	return res, nil
}

// growListeners gives slot i a socket in every reuseport listener, or
// none: on an error the sockets made for it are closed again.
func (s *Supervisor) growListeners(i int) error {
	for _, l := range s.active.listeners {
		err := l.Grow(i + 1)
		if err == nil {
			err = l.ClaimFlows(s.active.id, i+1)
		}
		if err != nil {
			for _, made := range s.active.listeners {
				made.Release(i)
			}
			s.log.Error("cannot add a slot", "slot", i, "err", err)
			return err
		}
	}
	return nil
}

// applyQueuedScales runs the scale requests that waited for a reload.
func (s *Supervisor) applyQueuedScales() {
	q := s.scaleQueue
	s.scaleQueue = nil
	for _, r := range q {
		if s.stopping {
			r.ch <- scaleOutcome{err: ErrStopping}
			continue
		}
		res, err := s.applyScale(r.n)
		r.ch <- scaleOutcome{res, err}
	}
}
