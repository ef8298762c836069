package instance

import (
	"cmp"
	"log/slog"
	"sync"

	"github.com/baton-dev/baton/internal/config"
	"github.com/baton-dev/baton/internal/listener"
	"github.com/baton-dev/baton/internal/supervisor"
)

// bindAll binds every listener of r (one socket per slot for reuseport
// ones), or none (listener.OpenAll), and logs each.
func bindAll(r *config.Resolved, log *slog.Logger) ([]*listener.Group, error) {
	groups, err := listener.OpenAll(r.Specs, r.Supervisor.Workers)
	if err != nil {
		return nil, err
	}
	logListeners(groups, log)
	return groups, nil
}

// logListeners logs each listener baton serves on at start.
func logListeners(groups []*listener.Group, log *slog.Logger) {
	for _, g := range groups {
		spec, socks := g.Spec, g.Sockets()
		if len(socks) == 0 { // a steered listener whose generation has none yet
			logFlows(log, g)
			log.Info("listening", "name", spec.Name, "address", spec.Address(), "kind", spec.Kind)
			continue
		}
		if socks[0].StaleRemoved {
			log.Info("removed a stale socket file nothing answered on", "path", spec.Path)
		}
		if w := socks[0].Warning; w != nil {
			log.Warn("listener's directory lets another user replace its socket file", "name", spec.Name, "err", w)
		}
		logFlows(log, g)
		attrs := []any{"name", spec.Name, "address", socks[0].Addr().String(), "kind", spec.Kind, "backlog", socks[0].Backlog()}
		if g.Reuseport() {
			attrs = append(attrs, "balance", listener.Reuseport, "sockets", len(socks))
			if spec.Kind == listener.Stream {
				if err := listener.MigrateReq(false); err != nil {
					log.Info("a scale-down will need net.ipv4.tcp_migrate_req=1 (or --enable-migrate-req) to close a slot's socket without resetting its queue", "listener", spec.Name)
				}
			}
		} else {
			attrs = append(attrs, "inode", socks[0].Inode())
		}
		log.Info("listening", attrs...)
	}
}

// planner makes the plan of each reload (the supervisor's Prepare): the
// configuration read again, its listeners reconciled with those serving.
type planner struct {
	load func() (*config.Resolved, error)
	log  *slog.Logger

	// prev is the configuration serving now. A Prepare abandoned at its
	// deadline may still run beside the next one: prev is locked, and
	// set only when a reload to a plan has succeeded (its Apply).
	mu   sync.Mutex
	prev *config.Resolved
}

// prepare is the supervisor's Prepare: it reads the configuration again,
// keeps the number of workers a `baton scale` set unless the
// configuration changed it, warns about the settings a reload cannot
// change, and reconciles the listeners (listener.Reconcile). The plan's
// Apply records the configuration as the one serving and makes the
// in-place listener changes.
func (p *planner) prepare(current []*listener.Group, workers int) (*supervisor.Plan, error) {
	next, err := p.load()
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	before := p.prev
	p.mu.Unlock()
	if next.Supervisor.Workers == before.Supervisor.Workers {
		next.Supervisor.Workers = workers // keep a `baton scale` the config did not overrule
	}
	warnFixed(p.log, before, next)
	rec, err := listener.Reconcile(next.Specs, current, next.Supervisor.Workers)
	if err != nil {
		return nil, err
	}
	for _, c := range rec.Changes {
		switch c.Fate {
		case listener.Adjusted:
			p.log.Info("reload: listener changes in place", "name", c.To.Name, "from", c.From.URL(), "to", c.To.URL())
		case listener.Opened:
			address := c.To.Address()
			socks := c.Group.Sockets()
			if len(socks) > 0 {
				address = socks[0].Addr().String()
				if w := socks[0].Warning; w != nil {
					p.log.Warn("listener's directory lets another user replace its socket file", "name", c.To.Name, "err", w)
				}
			}
			p.log.Info("reload: new listener bound", "name", c.To.Name, "address", address)
			logFlows(p.log, c.Group)
		}
	}
	return &supervisor.Plan{
		Config:    next.Supervisor,
		Listeners: rec.Groups,
		Apply: func() (func(), error) {
			p.mu.Lock()
			p.prev = next
			p.mu.Unlock()
			return rec.Apply()
		},
	}, nil
}

// warnFixed logs the settings a reload cannot change.
func warnFixed(log *slog.Logger, prev, next *config.Resolved) {
	fixed := map[string][2]string{
		"name":             {prev.Name, next.Name},
		"control":          {prev.ControlPath, next.ControlPath},
		"control_group":    {prev.ControlGroup, next.ControlGroup},
		"log_format":       {prev.LogFormat, next.LogFormat},
		"log_level":        {prev.LogLevel, next.LogLevel},
		"metrics":          {prev.Metrics, next.Metrics},
		"inspect_interval": {prev.InspectInterval.String(), next.InspectInterval.String()},
	}
	for key, v := range fixed {
		if v[0] != v[1] {
			log.Warn("this setting changed, but a reload cannot apply it: it takes effect when baton restarts", "key", key, "now", v[0], "configured", v[1])
		}
	}
}

// logFlows says, once when it binds a UDP listener, whether baton keeps
// its flows across reloads, and why not when it cannot (flows=auto).
func logFlows(log *slog.Logger, g *listener.Group) {
	switch {
	case g.Steered():
		log.Info("UDP flows are kept across reloads", "name", g.Spec.Name, "flows", cmp.Or(g.Spec.Flows, listener.FlowsAuto))
	case g.FlowsErr != nil:
		log.Warn("listener's UDP flows are not kept: old and new workers share its socket, as with flows=off", "name", g.Spec.Name, "err", g.FlowsErr)
	}
}
