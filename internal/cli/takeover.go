package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/supervisor"
	"github.com/baton-dev/baton/internal/takeover"
)

// takenOver is a takeover from a running instance in progress: the
// sockets received, not yet committed.
type takenOver struct {
	t       *takeover.Taken
	control int // the old instance's control socket, -1 when not taken
	once    sync.Once
}

// takeOver receives the running instance's sockets.
func takeOver(path string, r *config.Resolved, log *slog.Logger) (*takenOver, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t, err := takeover.Take(ctx, path, commitWithin(r.Supervisor))
	if err != nil {
		return nil, err
	}
	to := &takenOver{t: t, control: -1}
	for i, s := range t.Sockets {
		if s.URL == "control" {
			if r.ControlPath == path {
				to.control = s.Fd
			} else {
				unix.Close(s.Fd) // this instance has its own control socket
			}
			t.Sockets[i].Fd = -1
		}
	}
	log.Info("takeover: received the running instance's sockets", "from_pid", t.OldPID, "sockets", len(t.Sockets))
	return to, nil
}

// commitWithin is how long this instance asks the running one to wait
// for its verdict: its workers' readiness deadline (or delay), and a
// minute to bind new listeners and start them.
func commitWithin(c supervisor.Config) time.Duration {
	wait, _ := c.Ready.Deadline(c.ReadyTimeout)
	return wait + time.Minute
}

// abort tells the old instance to carry on and closes what is left here.
// It is a no-op on nil.
func (to *takenOver) abort(reason string) {
	if to == nil {
		return
	}
	to.once.Do(func() {
		to.t.Abort(reason)
		for _, s := range to.t.Sockets {
			if s.Fd >= 0 {
				unix.Close(s.Fd)
			}
		}
	})
}

// listeners builds this instance's listeners from the received sockets,
// checked against its own specifications (kind, address, balance); a
// listener the old instance did not have is bound here. A mismatch is an
// error, and then nothing has changed: the caller aborts.
func (to *takenOver) listeners(r *config.Resolved, log *slog.Logger) ([]*listener.Group, error) {
	var out []*listener.Group
	var socks map[int]*listener.Socket // the listener's sockets adopted so far
	fail := func(err error) ([]*listener.Group, error) {
		// What was adopted is closed once, here; the rest is abort's.
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
	for _, spec := range r.Specs {
		socks = map[int]*listener.Socket{}
		for i, s := range to.t.Sockets {
			if s.Name != spec.Name || s.Fd < 0 {
				continue
			}
			if (s.Slot >= 0) != (spec.Balance == listener.Reuseport) {
				return fail(fmt.Errorf("takeover: listener %s: the running instance holds it with balance %s, this configuration says %s; take over with the same balance", spec.Name, map[bool]string{true: "reuseport", false: "shared"}[s.Slot >= 0], spec.Balance))
			}
			// The socket file stays the old instance's until it lets go
			// (Group.Claim after the commit).
			sock, err := listener.Adopt(spec, s.Fd, backlogOf(spec), 0)
			if err != nil {
				return fail(fmt.Errorf("takeover: listener %s (%s): %w; take over with the same listeners", spec.Name, s.URL, err))
			}
			to.t.Sockets[i].Fd = -1 // the Socket owns it now
			socks[s.Slot] = sock
			used[i] = true
			if err := sameAddress(spec, sock); err != nil {
				return fail(fmt.Errorf("takeover: listener %s (%s): %w; take over with the same listeners", spec.Name, s.URL, err))
			}
		}
		var g *listener.Group
		adopted := socks
		socks = nil // in a group from here on, which fail closes
		if len(adopted) == 0 {
			var err error
			if g, err = listener.OpenGroup(spec, r.Supervisor.Workers); err != nil {
				return fail(fmt.Errorf("takeover: listener %s, which the running instance does not have: %w", spec.Name, err))
			}
			log.Info("takeover: new listener bound", "name", spec.Name)
		} else {
			g = listener.AdoptGroup(spec, adopted)
			if err := g.Grow(r.Supervisor.Workers); err != nil {
				g.Close()
				return fail(fmt.Errorf("takeover: listener %s: %w", spec.Name, err))
			}
			if g.Reuseport() && len(g.Sockets()) > r.Supervisor.Workers {
				if err := listener.MigrateReq(r.Supervisor.EnableMigrateReq); err != nil {
					g.Close()
					return fail(fmt.Errorf("takeover: listener %s has %d slots, this instance wants %d: %w", spec.Name, len(g.Sockets()), r.Supervisor.Workers, err))
				}
				g.Shrink(r.Supervisor.Workers)
			}
			log.Info("takeover: listener taken over", "name", spec.Name, "sockets", len(adopted))
		}
		out = append(out, g)
	}
	// Listeners this configuration dropped: the old instance closes its
	// copies when it exits; this one does not keep any.
	for i, s := range to.t.Sockets {
		if s.Fd >= 0 && !used[i] {
			unix.Close(s.Fd)
			log.Info("takeover: not keeping a listener this configuration does not have", "name", s.Name, "url", s.URL)
		}
		to.t.Sockets[i].Fd = -1
	}
	return out, nil
}

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

// commitOnReady returns the OnReady callback of a taking-over instance:
// the first time its workers are ready it commits (the old instance drains
// and exits), then serves the control socket; if they are not ready within
// timeout it aborts and stops.
func (to *takenOver) commitOnReady(sup *supervisor.Supervisor, ctl *control.Server, log *slog.Logger, timeout time.Duration, next func()) func() {
	var once sync.Once
	committed := make(chan struct{})
	timer := time.AfterFunc(timeout, func() {
		select {
		case <-committed:
		default:
			log.Error("takeover: the workers were not ready in time; the running instance carries on", "timeout", timeout)
			to.abort("the new instance's workers were not ready within " + timeout.String())
			sup.Stop("takeover aborted")
		}
	})
	return func() {
		first := false
		once.Do(func() {
			first = true
			close(committed)
			timer.Stop()
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := to.t.Commit(ctx); err != nil {
					log.Warn("takeover: committed, but the old instance did not confirm; serving anyway", "err", err)
				} else {
					log.Info("takeover: the old instance lets go; this one serves", "old_pid", to.t.OldPID)
				}
				// This instance answers for the control socket and the unix
				// listeners' socket files now (as it serves anyway).
				sup.ClaimListeners()
				ctl.Own()
				go ctl.Serve(sup.Handle)
				next() // READY=1 once the old instance has named this one the main pid
			}()
		})
		if !first {
			next()
		}
	}
}
