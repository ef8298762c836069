// Package metrics serves baton's Prometheus metrics from a registry of its
// own (never the global one): listeners, accept queue depth and maximum,
// connections by state, workers by state and their fds, restarts, reloads
// and their duration, handoffs, warnings, and the host counters that
// explain dropped connections. docs/metrics.md lists every metric.
//
// Reload durations and the counters of restarts, exits and handoffs come
// from the supervisor's event hook (Metrics.Event as
// supervisor.Options.Events), which only touches atomic counters, so the
// supervisor's loop never waits for a scrape. Everything else is read at
// scrape time from a status snapshot with the kernel's view, asked for on
// the scrape's goroutine.
package metrics
