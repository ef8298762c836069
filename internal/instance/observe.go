package instance

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"syscall"
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
	sup       *supervisor.Supervisor
	log       *slog.Logger
	// pending is a metrics address still held by the instance being taken
	// over; it is bound once that instance lets go.
	pending string

	mu     sync.Mutex
	server *metrics.Server
	closed bool
}

// startObserver makes the inspector, which checks the kernel's view every
// interval (0: only when asked), and binds the metrics address (none when
// ""), so that a taken port fails `baton run` before any worker starts;
// version is what the metrics report as baton's. With wait (a takeover),
// an address in use is bound later instead: the instance being taken over
// holds it until it exits.
func startObserver(metricsAddr string, every time.Duration, version string, log *slog.Logger, wait bool) (*observer, error) {
	o := &observer{every: every, log: log}
	// A connection that stays in CLOSE-WAIT for a whole interval counts as
	// never closed, and a condition that may pass (a connection waiting in
	// an accept queue with none accepted, a wrapper shell's child) warns
	// once it has lasted that long; a slot's streak of quick exits is
	// counted by the supervisor's rules.
	o.inspector = inspect.New(inspect.Options{
		Log: log, CloseWaitAge: every, Persist: every,
		StableAfter: supervisor.StableAfter, MinBackoff: supervisor.MinBackoff,
	})
	if metricsAddr == "" {
		return o, nil
	}
	o.metrics = metrics.New(version, func(ctx context.Context) (supervisor.Status, bool) {
		return o.sup.KernelStatus(ctx)
	})
	srv, err := metrics.Listen(metricsAddr, o.metrics.Handler(), log)
	switch {
	case err == nil:
		o.server = srv
	case wait && errors.Is(err, syscall.EADDRINUSE):
		o.pending = metricsAddr
		log.Info("the metrics address is still held by the instance being taken over; serving metrics once it is free", "address", metricsAddr)
	default:
		o.inspector.Close()
		return nil, err
	}
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
	if o.pending != "" {
		go o.bindWhenFree(sup)
		return
	}
	if o.server != nil {
		o.serve(o.server)
	}
}

// serve serves metrics on srv, on a goroutine of its own.
func (o *observer) serve(srv *metrics.Server) {
	o.log.Info("serving metrics", "address", srv.Addr().String(), "path", "/metrics")
	go srv.Serve()
}

// bindWhenFree binds the pending metrics address once nothing else holds
// it, until baton has finished.
func (o *observer) bindWhenFree(sup *supervisor.Supervisor) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-sup.Done():
			return
		case <-t.C:
		}
		srv, err := metrics.Listen(o.pending, o.metrics.Handler(), o.log)
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		if err != nil {
			o.log.Error("cannot serve metrics", "err", err)
			return
		}
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			srv.Close()
			return
		}
		o.server = srv
		o.mu.Unlock()
		o.serve(srv)
		return
	}
}

// close stops the metrics server and the inspector.
func (o *observer) close() {
	o.mu.Lock()
	o.closed = true
	srv := o.server
	o.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
	o.inspector.Close()
}
