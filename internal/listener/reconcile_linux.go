package listener

import (
	"cmp"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// OpenAll binds every listener of specs for the given number of slots
// (OpenGroup), in order, or none: on an error the groups already bound
// are closed again, and the error is OpenGroup's.
func OpenAll(specs []Spec, slots int) ([]*Group, error) {
	var out []*Group
	for _, spec := range specs {
		g, err := OpenGroup(spec, slots)
		if err != nil {
			for _, b := range out {
				b.Close()
			}
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// Fate is what a reload does with one listener (Reconcile).
type Fate int

// Fates.
const (
	// Kept: the specification did not change (the same URL): the
	// listener keeps its sockets as they are.
	Kept Fate = iota
	// Adjusted: it changed only in what can change on a live socket
	// (InPlace: the backlog, a socket file's mode and owner): it keeps
	// its sockets, changed by Apply once the reload has succeeded.
	Adjusted
	// Opened: it is new, or changed in a way that needs a new socket
	// (another address, kind, balance...): Reconcile bound it.
	Opened
)

// String names the fate.
func (f Fate) String() string {
	switch f {
	case Kept:
		return "kept"
	case Adjusted:
		return "adjusted"
	case Opened:
		return "opened"
	}
	return fmt.Sprintf("Fate(%d)", int(f))
}

// Change is one listener of a reload and its fate.
type Change struct {
	Fate Fate
	// Group is the listener's group in the reload: the serving one
	// (Kept, Adjusted) or the one Reconcile bound (Opened).
	Group *Group
	// From is the serving specification of an Adjusted listener (its
	// Group's until Apply's commit), To the one it is reloaded to.
	From, To Spec
}

// Reconciled is a reload's listeners, reconciled with those serving now.
type Reconciled struct {
	// Groups has one group per spec, in the specs' order: the order in
	// which workers receive them (fds 3, 4, ...).
	Groups []*Group
	// Changes says, for each of Groups, what the reload does with it.
	Changes []Change
}

// Reconcile builds a reload's listeners from specs, the configuration
// reloaded to, and current, the groups serving now, matched by name. A
// listener whose specification did not change keeps its group, sockets
// and all (same inodes: nothing queued is lost); one that differs only in
// what InPlace allows keeps it too, changed by Apply once the reload has
// succeeded (so that a failed reload changes nothing); a new or changed
// one gets a new group, bound now for slots slots.
//
// On an error the groups bound here are closed again and nothing else
// has changed. An address still held by a serving listener (a listener
// whose new settings need a new socket on the same address) is an error
// that says so.
func Reconcile(specs []Spec, current []*Group, slots int) (*Reconciled, error) {
	r := &Reconciled{}
	fail := func(err error) (*Reconciled, error) {
		for _, c := range r.Changes {
			if c.Fate == Opened {
				c.Group.Close()
			}
		}
		return nil, err
	}
	for _, spec := range specs {
		var old *Group
		for _, g := range current {
			if g.Spec.Name == spec.Name {
				old = g
			}
		}
		c := Change{Fate: Opened, Group: old, To: spec}
		switch {
		case old != nil && old.Spec.URL() == spec.URL():
			c.Fate = Kept
		case old != nil && InPlace(old.Spec, spec):
			c.Fate, c.From = Adjusted, old.Spec
		case old != nil && old.Steered() && spec.WantsFlows() && old.Spec.url(notFlows) == spec.url(notFlows) && old.Spec.QUICFlows() == spec.QUICFlows():
			// flows=auto to on, or back: the group steers either way
			// (to or from quic, its program changes: a restart).
			c.Fate, c.From = Adjusted, old.Spec
		case old != nil && old.Steered() && spec.WantsFlows() && old.Spec.url(notFlows) == spec.url(notFlows):
			return fail(fmt.Errorf("listener %s: changing flows from %s to %s changes the steering program, which baton loads with the listener's sockets and keeps for their life; restart baton to change it", spec.Name, cmp.Or(old.Spec.Flows, FlowsAuto), cmp.Or(spec.Flows, FlowsAuto)))
		case old != nil && spec.Kind == Datagram && old.Spec.Scheme == spec.Scheme && old.Spec.Address() == spec.Address() && (old.Steered() || spec.WantsFlows()):
			// A new group on the address would join the old one's
			// reuseport group, and steal or lose its peers.
			return fail(fmt.Errorf("listener %s: changing it from %s to %s needs its sockets bound again on %s, where the UDP flows of its workers are kept; restart baton to change it, or change the address", spec.Name, old.Spec.URL(), spec.URL(), spec.Address()))
		default:
			g, err := OpenGroup(spec, slots)
			if err != nil {
				for _, cur := range current {
					if errors.Is(err, unix.EADDRINUSE) && cur.Spec.Address() == spec.Address() {
						return fail(fmt.Errorf("listener %s: its new settings need a new socket, but listener %s still holds %s; change the address, or restart baton to change it in place: %w", spec.Name, cur.Spec.Name, spec.Address(), err))
					}
				}
				return fail(fmt.Errorf("listener %s: %w", spec.Name, err))
			}
			c.Group = g
		}
		r.Groups = append(r.Groups, c.Group)
		r.Changes = append(r.Changes, c)
	}
	return r, nil
}

// notFlows keeps every option but flows, to compare two specs of a
// steered listener.
func notFlows(o *Option) bool { return o.Key != "flows" }

// InPlace reports whether the reload changes listeners in place: whether
// Apply has anything to do.
func (r *Reconciled) InPlace() bool {
	for _, c := range r.Changes {
		if c.Fate == Adjusted {
			return true
		}
	}
	return false
}

// Apply makes the in-place changes of the Adjusted listeners to their
// live sockets (Group.Adjust: listen(2) with the new backlog, chmod and
// chown of socket files by descriptor) and returns commit, which records
// them in the groups. It makes system calls on paths, which may block:
// call it off the loop that owns the groups, once the reload has
// succeeded, and commit on that loop. What fails is reported in err
// (every failure, joined) and not recorded, so that the next reload tries
// again; the other changes are made and recorded all the same. With
// nothing to change it returns a commit that does nothing, and no error.
func (r *Reconciled) Apply() (commit func(), err error) {
	var commits []func()
	var errs []error
	for _, c := range r.Changes {
		if c.Fate != Adjusted {
			continue
		}
		commit, err := c.Group.Adjust(c.To)
		commits, errs = append(commits, commit), append(errs, err)
	}
	return func() {
		for _, c := range commits {
			c()
		}
	}, errors.Join(errs...)
}
