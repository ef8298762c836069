package takeover

import (
	"fmt"
	"log/slog"
	"net"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/steer"
)

// Listeners builds the taking-over instance's listeners from the sockets
// received, checked against its own specifications: for each spec, the
// sockets of the same name are adopted (their kind, port and host must
// match the spec, and their balance: one socket per slot with
// balance=reuseport, one shared socket otherwise), then the group grows
// to slots sockets or, with net.ipv4.tcp_migrate_req on (or set, with
// enableMigrateReq), shrinks to them. A spec the running instance has no
// socket for is bound here; a received socket no spec names is closed
// (the running instance closes its own copy when it exits).
//
// The unix listeners' socket files stay the running instance's until it
// lets go (listener.Group.Claim, after the commit). A mismatch is an
// error saying what differs, and then nothing has changed: what was
// adopted or bound here is closed again, without removing a socket file,
// and the sockets not adopted yet are left for Abort.
func (t *Taken) Listeners(specs []listener.Spec, slots int, enableMigrateReq bool, log *slog.Logger) ([]*listener.Group, error) {
	var out []*listener.Group
	var socks map[int]*listener.Socket // the listener's sockets adopted so far
	fail := func(err error) ([]*listener.Group, error) {
		// What was adopted is closed once, here; the rest is Abort's.
		// Neither removes a socket file: the old instance still serves
		// on them.
		for _, g := range out {
			g.Close()
		}
		for _, s := range socks {
			s.Close()
		}
		return nil, err
	}
	used := map[int]bool{}
	for _, spec := range specs {
		socks = map[int]*listener.Socket{}
		g, err := t.joinFlows(spec, slots, used, log)
		if err != nil {
			return fail(err)
		}
		if g != nil {
			out = append(out, g)
			continue
		}
		for i, s := range t.Sockets {
			if s.Name != spec.Name || s.Fd < 0 || s.Flow != "" {
				continue
			}
			if (s.Slot >= 0) != (spec.Balance == listener.Reuseport) {
				return fail(fmt.Errorf("takeover: listener %s: the running instance holds it with balance %s, this configuration says %s; take over with the same balance", spec.Name, balanceOf(s), spec.Balance))
			}
			// The socket file stays the old instance's until it lets go
			// (Group.Claim after the commit).
			sock, err := listener.Adopt(spec, s.Fd, backlogOf(spec), 0)
			if err != nil {
				return fail(fmt.Errorf("takeover: listener %s (%s): %w; take over with the same listeners", spec.Name, s.URL, err))
			}
			t.Sockets[i].Fd = -1 // the Socket owns it now
			socks[s.Slot] = sock
			used[i] = true
			if err := sameAddress(spec, sock); err != nil {
				return fail(fmt.Errorf("takeover: listener %s (%s): %w; take over with the same listeners", spec.Name, s.URL, err))
			}
		}
		adopted := socks
		socks = nil // in a group from here on, which fail closes
		if len(adopted) == 0 {
			var err error
			if g, err = listener.OpenGroup(spec, slots); err != nil {
				return fail(fmt.Errorf("takeover: listener %s, which the running instance does not have: %w", spec.Name, err))
			}
			log.Info("takeover: new listener bound", "name", spec.Name)
		} else {
			g = listener.AdoptGroup(spec, adopted)
			if err := g.Grow(slots); err != nil {
				g.Close()
				return fail(fmt.Errorf("takeover: listener %s: %w", spec.Name, err))
			}
			if g.Reuseport() && len(g.Sockets()) > slots {
				if err := listener.MigrateReq(enableMigrateReq); err != nil {
					g.Close()
					return fail(fmt.Errorf("takeover: listener %s has %d slots, this instance wants %d: %w", spec.Name, len(g.Sockets()), slots, err))
				}
				g.Shrink(slots)
			}
			log.Info("takeover: listener taken over", "name", spec.Name, "sockets", len(adopted))
			if spec.WantsFlows() && spec.Kind == listener.Datagram {
				if spec.NeedsFlows() {
					g.Close()
					return fail(fmt.Errorf("takeover: listener %s (flows=%s): the running instance does not keep its UDP flows, and this one cannot start keeping them on sockets it shares with it; restart baton to keep them", spec.Name, spec.Flows))
				}
				g.FlowsErr = fmt.Errorf("%w: the running instance this one took over from did not keep them, and sockets shared with it cannot start; restart baton to keep them", steer.ErrNotSupported)
			}
		}
		out = append(out, g)
	}
	// Listeners this configuration dropped: the old instance closes its
	// copies when it exits; this one does not keep any.
	for i, s := range t.Sockets {
		if s.Fd >= 0 && !used[i] {
			unix.Close(s.Fd) // received, never shared here
			log.Info("takeover: not keeping a listener this configuration does not have", "name", s.Name, "url", s.URL)
		}
		t.Sockets[i].Fd = -1
	}
	return out, nil
}

// balanceOf names the balance a received socket was held with.
func balanceOf(s Socket) string {
	if s.Slot >= 0 {
		return listener.Reuseport
	}
	return listener.Shared
}

// backlogOf is the backlog a received socket of spec listens with: the
// spec's, or the default (datagram sockets have none).
func backlogOf(spec listener.Spec) int {
	if spec.Kind == listener.Datagram {
		return 0
	}
	if spec.Backlog > 0 {
		return spec.Backlog
	}
	return listener.DefaultBacklog()
}

// sameAddress checks a received socket's address against the spec's host.
func sameAddress(spec listener.Spec, s *listener.Socket) error {
	if !spec.IsInet() || spec.Host == "" {
		return nil
	}
	var ip net.IP
	switch a := s.Addr().(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	if want := net.ParseIP(spec.Host); want != nil && !want.Equal(ip) {
		return fmt.Errorf("it is bound to %s, this configuration says %s", ip, spec.Host)
	}
	return nil
}

// joinFlows takes over a UDP listener whose flows the running instance
// keeps: its steering program and maps (their descriptors, FlowObjects)
// and one of its sockets, for the address. The group made binds its own
// sockets into the running instance's reuseport group (listener.
// JoinFlows); the running instance's workers keep theirs, and their
// peers, while they drain. It returns nil when the running instance
// sent no steering for the listener.
func (t *Taken) joinFlows(spec listener.Spec, slots int, used map[int]bool, log *slog.Logger) (*listener.Group, error) {
	byName := map[string]int{}
	at := -1
	for i, s := range t.Sockets {
		switch {
		case s.Name != spec.Name || s.Fd < 0:
		case s.Flow != "":
			byName[s.Flow] = i
		case at < 0:
			at = i
		}
	}
	if len(byName) == 0 {
		return nil, nil
	}
	if !spec.WantsFlows() || at < 0 || len(byName) != len(FlowObjects) {
		return nil, fmt.Errorf("takeover: listener %s: the running instance keeps its UDP flows, this configuration says flows=%s; take over with flows=auto or on", spec.Name, spec.Flows)
	}
	var list []int
	for _, name := range FlowObjects {
		i, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("takeover: listener %s: the running instance did not send its steering %s", spec.Name, name)
		}
		list = append(list, t.Sockets[i].Fd)
	}
	fds, err := steer.FDsOf(list)
	if err != nil {
		return nil, err
	}
	sock, err := listener.Adopt(spec, t.Sockets[at].Fd, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("takeover: listener %s (%s): %w; take over with the same listeners", spec.Name, t.Sockets[at].URL, err)
	}
	t.Sockets[at].Fd = -1 // sock owns it
	used[at] = true
	defer sock.Close() // the running instance's: its workers keep theirs
	if err := sameAddress(spec, sock); err != nil {
		return nil, fmt.Errorf("takeover: listener %s: %w; take over with the same listeners", spec.Name, err)
	}
	for _, i := range byName {
		t.Sockets[i].Fd = -1 // JoinFlows takes them, and closes them on an error
		used[i] = true
	}
	g, err := listener.JoinFlows(spec, fds, sock, slots)
	if err != nil {
		return nil, fmt.Errorf("takeover: listener %s: %w", spec.Name, err)
	}
	log.Info("takeover: listener taken over, its UDP flows kept", "name", spec.Name)
	return g, nil
}
