package instance

import (
	"context"
	"log/slog"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/supervisor"
	"github.com/baton-dev/baton/internal/takeover"
)

// takeOver receives the running instance's sockets, in the window its
// readiness rule gives (takeover.WindowFor), and the control socket fd
// when this instance serves the same path (-1 otherwise).
func takeOver(path string, r *config.Resolved, log *slog.Logger) (*takeover.Taken, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t, err := takeover.Take(ctx, path, takeover.WindowFor(readyWithin(r.Supervisor)))
	if err != nil {
		return nil, -1, err
	}
	ctl := t.ControlFd()
	if ctl >= 0 && r.ControlPath != path {
		unix.Close(ctl) // this instance has its own control socket
		ctl = -1
	}
	log.Info("takeover: received the running instance's sockets", "from_pid", t.OldPID, "sockets", len(t.Sockets))
	return t, ctl, nil
}

// readyWithin is how long a worker of c may take to be ready: its
// readiness deadline (--ready-timeout) with --ready notify or bind, its
// delay with --ready delay.
func readyWithin(c supervisor.Config) time.Duration {
	d, _ := c.Ready.Deadline(c.ReadyTimeout)
	return d
}

// commitOnReady returns the OnReady callback of a taking-over instance:
// the first time its workers are ready it commits (the old instance
// drains and exits), then serves the control socket and calls next; if
// they are not ready by the takeover's give-up time it aborts and stops.
// Every later call is next's.
func commitOnReady(t *takeover.Taken, sup *supervisor.Supervisor, ctl *control.Server, log *slog.Logger, next func()) func() {
	ready := t.CommitWhenReady(takeover.Hooks{
		Committed: func(err error) {
			if err != nil {
				log.Warn("takeover: committed, but the old instance did not confirm; serving anyway", "err", err)
			} else {
				log.Info("takeover: the old instance lets go; this one serves", "old_pid", t.OldPID)
			}
			// This instance answers for the control socket and the unix
			// listeners' socket files now (as it serves anyway).
			sup.ClaimListeners()
			ctl.Own()
			go ctl.Serve(sup.Handle)
			next() // READY=1 once the old instance has named this one the main pid
		},
		GaveUp: func(reason string) {
			log.Error("takeover: the workers were not ready in time; the running instance carries on", "reason", reason)
			sup.Stop("takeover aborted")
		},
	})
	return func() {
		if !ready() {
			next()
		}
	}
}
