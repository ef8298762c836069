package cli

import (
	"context"
	"log/slog"
	"time"

	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/metrics"
	"github.com/baton-dev/baton/internal/supervisor"
)

// observer is what `baton run` sets up to watch itself: the inspector
// behind status and warnings, and the metrics server.
type observer struct {
	every     time.Duration
	inspector *inspect.Inspector
	metrics   *metrics.Metrics
	server    *metrics.Server
	sup       *supervisor.Supervisor
	log       *slog.Logger
}

// startObserver makes the inspector, which checks the kernel's view every
// interval (0: only when asked), and binds the metrics address (none when
// ""), so that a taken port fails `baton run` before any worker starts.
func startObserver(metricsAddr string, every time.Duration, log *slog.Logger) (*observer, error) {
	o := &observer{every: every, log: log}
	// A connection that stays in CLOSE-WAIT for a whole interval counts as
	// never closed.
	o.inspector = inspect.New(inspect.Options{Log: log, CloseWaitAge: every})
	if metricsAddr == "" {
		return o, nil
	}
	o.metrics = metrics.New(Version, func(ctx context.Context) (supervisor.Status, bool) {
		return o.sup.KernelStatus(ctx)
	})
	srv, err := metrics.Listen(metricsAddr, o.metrics.Handler(), log)
	if err != nil {
		o.inspector.Close()
		return nil, err
	}
	o.server = srv
	return o, nil
}

// options are the supervisor's hooks into the observer.
func (o *observer) options() (*inspect.Inspector, func(supervisor.Event)) {
	if o.metrics == nil {
		return o.inspector, nil
	}
	return o.inspector, o.metrics.Event
}

// run starts the periodic check and the metrics server for sup.
func (o *observer) run(sup *supervisor.Supervisor) {
	o.sup = sup
	go sup.WatchKernel(o.every)
	if o.server != nil {
		o.log.Info("serving metrics", "address", o.server.Addr().String(), "path", "/metrics")
		go o.server.Serve()
	}
}

func (o *observer) close() {
	if o.server != nil {
		o.server.Close()
	}
	o.inspector.Close()
}
