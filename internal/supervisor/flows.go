package supervisor

import (
	"slices"
	"strings"

	"github.com/baton-dev/baton/internal/listener"
)

// UDP flows (docs/udp.md): a UDP listener whose flows are kept has
// sockets per generation in one reuseport group, and a program that keeps
// each peer on the socket that first got its datagrams (listener's
// steered groups). The supervisor decides, from its own state, what the
// program does, and tells it after every event (syncFlows):
//
//   - A generation's sockets are in the program's socket array while a
//     worker of theirs has not released them (X_BATON_FLOWS=released, or
//     the worker socket's release method), and, for the serving and the
//     starting generation, while their slot exists (a crashed worker's
//     replacement takes the same socket, and what queued there).
//   - The serving sockets (new peers go to them) are those of the
//     serving generation, slot by slot; during a rolling reload a slot
//     already replaced serves with the new generation's socket, and a
//     canary's slot with both. So a reload flips new peers to the new
//     generation once it is ready, before the old one gets its stop
//     signal, and known peers stay with the old workers while they drain.
//   - baton holds a copy of the serving and the starting generation's
//     sockets only: a draining generation's socket goes as soon as its
//     last worker closes it (the kernel then takes it out of the array),
//     so a worker that closes it on the stop signal, knowing nothing of
//     this, loses only what was queued at that moment.
//   - A socket no worker holds and no slot of a current generation
//     needs is taken out of the array and closed: its peers follow the
//     serving sockets from their next datagram.

// syncFlows tells every steered listener's program what the state says.
// It is cheap when nothing changed, and runs after every event.
func (s *Supervisor) syncFlows() {
	if s.active == nil {
		return
	}
	for l := range s.groups {
		if !l.Steered() {
			continue
		}
		err := l.SyncFlows(func(k listener.FlowKey) listener.FlowFate { return s.flowFate(l, k) }, s.flowServing(l))
		if err != nil {
			if msg := err.Error(); msg != s.flowErr {
				s.flowErr = msg
				s.log.Error("UDP flows: the steering program could not be told", "listener", l.Spec.Name, "err", err)
			}
		} else {
			s.flowErr = ""
		}
	}
}

// flowFate decides whether the socket k of l is in the program's socket
// array, out of it, or closed.
func (s *Supervisor) flowFate(l *listener.Group, k listener.FlowKey) listener.FlowFate {
	holders, unreleased := 0, false
	var gen *generation
	for _, w := range s.workers {
		if w.gen.id != k.Gen || w.state == Exited || !slices.Contains(w.gen.listeners, l) || (k.Slot >= 0 && w.slot.index != k.Slot) {
			continue
		}
		gen = w.gen
		holders++
		if !w.released[l.Spec.Name] {
			unreleased = true
		}
	}
	for _, g := range []*generation{s.active, s.pending} {
		if g != nil && g.id == k.Gen {
			gen = g
		}
	}
	current := !s.stopping && gen != nil && (gen == s.active || gen == s.pending) &&
		slices.Contains(gen.listeners, l) && (k.Slot < 0 || k.Slot < len(gen.slots) && !gen.slots[k.Slot].removed)
	switch {
	case unreleased && current:
		return listener.FlowIn
	case unreleased:
		return listener.FlowLent
	case current && holders == 0:
		return listener.FlowIn // its worker comes back to it
	case current:
		return listener.FlowOut
	}
	return listener.FlowClosed
}

// flowServing lists the sockets of l new peers go to, slot by slot, or
// nil when this baton does not decide it: while a new instance takes
// over (which serves once its workers are ready) and after it did, and,
// in an instance that took over, until its workers are ready.
func (s *Supervisor) flowServing(l *listener.Group) []listener.FlowKey {
	if s.takingOver || s.givenAway || (s.tookOver && !s.everReady) {
		return nil
	}
	out := []listener.FlowKey{}
	key := func(g *generation, i int) {
		if !slices.Contains(g.listeners, l) {
			return
		}
		k := listener.FlowKey{Gen: g.id, Slot: i}
		if !l.Reuseport() {
			k.Slot = -1
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	r := s.roll
	for _, sl := range s.active.slots {
		i := sl.index
		switch {
		case sl.removed:
		case r != nil && r.g == s.pending && slices.Contains(r.done, i) && !slices.Contains(r.restored, i):
			key(r.g, i)
		case r != nil && r.g == s.pending && r.canary != nil && r.canary.running() && slices.Contains(r.batch, i) &&
			r.g.workers[i] != nil && r.g.workers[i].state == Ready:
			key(s.active, i)
			key(r.g, i)
		default:
			key(s.active, i)
		}
	}
	return out
}

// releaseFlows takes the sockets of w's steered listeners named in names
// (all of them when empty) out of the program's socket array, once no
// other live worker of its generation reads them: from then on their
// peers go to the serving generation, and w reads what is queued and
// exits. It returns the listeners released.
func (s *Supervisor) releaseFlows(w *worker, names []string) []string {
	var done []string
	for _, l := range w.gen.listeners {
		if !l.Steered() || len(names) > 0 && !slices.Contains(names, l.Spec.Name) {
			continue
		}
		if w.released == nil {
			w.released = map[string]bool{}
		}
		w.released[l.Spec.Name] = true
		done = append(done, l.Spec.Name)
	}
	if len(done) > 0 {
		s.log.Info("worker released its UDP flows: its peers go to the serving generation", w.attrs("listeners", strings.Join(done, ","))...)
		s.syncFlows()
	}
	return done
}

// claimFlows gives generation id its sockets in every steered listener
// of ls, for slots slots. On an error the sets claimed are left for
// syncFlows, which closes those no generation has.
func claimFlows(ls []*listener.Group, id, slots int) error {
	for _, l := range ls {
		if err := l.ClaimFlows(id, slots); err != nil {
			return err
		}
	}
	return nil
}
