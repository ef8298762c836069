// Package instance is one running baton, what `baton run` starts: it binds
// the listeners (or takes them over from a running baton, or adopts them
// from the baton that re-executed itself as this one), serves the control
// socket, runs the supervisor, plans each reload from the configuration
// read again, answers signals, and tells systemd, until baton stops.
//
// The command line (internal/cli) parses and validates the configuration
// and calls Run; everything a running baton decides is here or below:
// the listener reconcile of a reload is internal/listener's (Reconcile),
// the takeover's deadlines and listener groups internal/takeover's, the
// worker state machine internal/supervisor's.
//
// baton's output goes through bounded buffers (internal/outbuf) that never
// block it, and its log is log/slog in text or JSON.
package instance
