package instance

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/notify"
)

// activationVars are the variables of the socket-activation protocol
// meant for baton itself; handedSockets removes them from its
// environment.
var activationVars = []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID"}

// handedSockets returns the sockets baton's own service manager handed
// it (LISTEN_FDS, with LISTEN_PID naming baton: a socket unit, or the fd
// store after a restart), and removes the variables from baton's
// environment, as sd_listen_fds(1) does: neither its workers (whose
// environment baton builds itself) nor a baton it re-executes (an
// upgrade, the same pid) may take them for theirs. With upgraded set (this
// baton is an upgrade's: its descriptors are the previous baton's, at any
// number), the variables are only removed: they described descriptors
// of a process that has gone.
func handedSockets(upgraded bool) ([]listener.Inherited, error) {
	defer func() {
		for _, v := range activationVars {
			os.Unsetenv(v)
		}
	}()
	if upgraded {
		return nil, nil
	}
	handed, err := listener.Inherit(os.LookupEnv, os.Getpid(), listener.FirstFd)
	if err != nil {
		return nil, fmt.Errorf("the sockets the service manager handed baton: %w", err)
	}
	return handed, nil
}

// storeLetGo bounds how long a bind waits for the service manager to
// close a stale socket of the fd store that holds its address.
const storeLetGo = 10 * time.Second

// activate makes the listeners of r from the sockets the service manager
// handed (listener.Match and Bind): the stale ones of the fd store are
// removed from it first, and the rest bound. It returns the listeners
// and what the activation found, for the fd store.
func activate(r *config.Resolved, handed []listener.Inherited, sd *notify.Notifier, log *slog.Logger) ([]*listener.Group, *listener.Activation, error) {
	act, err := listener.Match(r.Specs, r.Supervisor.Workers, handed, log)
	if err != nil {
		if errors.Is(err, listener.ErrHanded) {
			return nil, nil, fmt.Errorf("socket activation: %w", err)
		}
		return nil, nil, err
	}
	for _, s := range act.Stale {
		log.Info("fd store: dropping a socket this configuration does not use", "fdname", s.Name, "address", s.Address, "reason", s.Reason)
		sd.Notify("FDSTOREREMOVE=1\nFDNAME=" + s.Name)
	}
	if len(act.Stale) > 0 {
		sd.Flush(time.Second) // sent before a bind needs an address they held
	}
	groups, err := act.Bind(storeLetGo)
	if err != nil {
		return nil, nil, err
	}
	logListeners(groups, log)
	return groups, act, nil
}

// closeHanded closes sockets baton was handed and will not use.
func closeHanded(handed []listener.Inherited) {
	for _, h := range handed {
		unix.Close(h.Fd) // handed to this process, used by nothing
	}
}
