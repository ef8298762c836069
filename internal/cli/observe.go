package cli

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/spf13/pflag"

	"github.com/baton-dev/baton/internal/inspect"
	"github.com/baton-dev/baton/internal/metrics"
	"github.com/baton-dev/baton/internal/supervisor"
)

// observeFlags are `baton run`'s flags for the kernel's view and metrics.
type observeFlags struct {
	metrics         string
	inspectInterval time.Duration
}

func (f *observeFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (HOST:PORT, or :PORT for every address); see docs/metrics.md")
	fl.DurationVar(&f.inspectInterval, "inspect-interval", 10*time.Second, "how often baton checks the kernel's view of its sockets and logs new warnings (0 turns the checks off; status still shows them); a connection that stays in CLOSE-WAIT this long counts as never closed")
}

func (f observeFlags) validate() error {
	if f.metrics != "" {
		if _, port, err := net.SplitHostPort(f.metrics); err != nil || port == "" {
			return usagef("--metrics %q: want HOST:PORT or :PORT, for example 127.0.0.1:9100", f.metrics)
		}
	}
	if f.inspectInterval < 0 {
		return usagef("--inspect-interval %s: want a duration such as 10s, or 0 to turn the checks off", f.inspectInterval)
	}
	return nil
}

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

// start makes the inspector and binds the metrics address, so that a
// taken port fails `baton run` before any worker starts.
func (f observeFlags) start(log *slog.Logger) (*observer, error) {
	o := &observer{every: f.inspectInterval, log: log}
	o.inspector = inspect.New(inspect.Options{Log: log, CloseWaitAge: f.inspectInterval})
	if f.metrics == "" {
		return o, nil
	}
	o.metrics = metrics.New(Version, func(ctx context.Context) (supervisor.Status, bool) {
		return o.sup.KernelStatus(ctx)
	})
	srv, err := metrics.Listen(f.metrics, o.metrics.Handler(), log)
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
