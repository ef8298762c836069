package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
	"github.com/baton-dev/baton/internal/takeover"
)

// giveAway serves a takeover request from a new instance (baton run
// --takeover): it hands over every listener and the control socket, and,
// once the new instance committed (its workers are ready), drains its own
// workers and exits. Until then it serves as before; if the new instance
// aborts, dies or has not committed within the time it asked for,
// nothing has changed.
func (s *Supervisor) giveAway(ctx context.Context, peer control.Peer, within time.Duration) (any, error) {
	conn := control.ConnFrom(ctx)
	if conn == nil {
		return nil, errors.New("takeover: the control server did not hand over the connection")
	}
	var socks []takeover.Socket
	var err error
	if !s.call(func() { socks, err = s.offer() }) {
		return nil, ErrStopping
	}
	if err != nil {
		return nil, err
	}
	defer s.call(func() { s.takingOver = false })
	s.log.Info("takeover: handing the sockets to a new instance", "pid", peer.PID, "sockets", len(socks))
	newPID, err := takeover.Give(ctx, conn, socks, within, func(c fdpass.Cred) error {
		if c.PID != peer.PID {
			return fmt.Errorf("the peer changed from pid %d to %d", peer.PID, c.PID)
		}
		return nil
	})
	if err != nil {
		s.log.Warn("takeover did not happen; serving on, unchanged", "err", err)
		s.call(func() {
			// The new instance may have made its workers serve UDP
			// peers: this one's serve again.
			for l := range s.groups {
				l.ForgetServing()
			}
		})
		return control.Hijacked, nil
	}
	s.log.Info("takeover: the new instance serves now; draining and exiting", "new_pid", newPID)
	if s.opts.OnTakenOver != nil {
		s.opts.OnTakenOver(newPID)
	}
	if s.opts.Control != nil {
		s.opts.Control.Release() // the socket file is the new instance's now
	}
	// So are the unix listeners' socket files: closing baton's copies of
	// the sockets must not remove them.
	s.call(func() {
		for l := range s.groups {
			l.Disown()
		}
		s.givenAway = true // the new instance decides which UDP sockets serve
	})
	s.Stop(fmt.Sprintf("taken over by pid %d", newPID))
	return control.Hijacked, nil
}

// offer lists the sockets to hand over and blocks reloads meanwhile.
func (s *Supervisor) offer() ([]takeover.Socket, error) {
	switch {
	case s.stopping:
		return nil, ErrStopping
	case s.takingOver:
		return nil, errors.New("takeover: another takeover is in progress")
	case s.upgrading.on:
		return nil, errors.New("takeover: baton is upgrading itself; try again when baton status shows the upgrade done")
	case s.reloading():
		return nil, errors.New("takeover: a reload is in progress; try again when it has finished")
	}
	var socks []takeover.Socket
	for _, l := range s.active.listeners {
		if fds, ok := l.SteerFDs(); ok {
			// The program and maps, and a socket for the address: the new
			// instance binds its own into the group.
			for i, fd := range fds.List() {
				socks = append(socks, takeover.Socket{Name: l.Spec.Name, URL: l.Spec.URL(), Slot: -1, Flow: takeover.FlowObjects[i], Fd: fd})
			}
			if sock := l.SocketOf(s.active.id, 0); sock != nil {
				socks = append(socks, takeover.Socket{Name: l.Spec.Name, URL: l.Spec.URL(), Slot: -1, Fd: sock.Fd()})
			}
			continue
		}
		for _, sock := range l.Sockets() {
			socks = append(socks, takeover.Socket{Name: l.Spec.Name, URL: l.Spec.URL(), Slot: l.SlotOf(sock), Fd: sock.Fd()})
		}
	}
	if s.opts.Control != nil {
		socks = append(socks, takeover.Socket{URL: "control", Slot: -1, Fd: s.opts.Control.Fd()})
	}
	s.takingOver = true
	return socks, nil
}

// ClaimListeners makes every listener's socket file baton's to remove
// when it closes (listener.Group.Claim): an instance that took over calls
// it once the old one has let go.
func (s *Supervisor) ClaimListeners() {
	s.call(func() {
		for g := range s.groups {
			g.Claim()
		}
	})
}
