// Package api is baton's control API: the control socket's method names,
// the params of each request and the replies, shared by the server (the
// supervisor answers them) and its clients (the command line, the
// end-to-end tests), and a typed Client over internal/control's Call.
//
// Everything here is what goes over the wire, as JSON, and nothing else:
// the package imports no other part of baton but internal/control (for
// the client), so a client of the control socket never imports the
// supervisor. docs/status.md documents the status reply field by field;
// fields may be added, none is removed or changes meaning without a note
// there.
//
// The takeover method is named here, and its params are here, but its
// exchange (descriptors passed on the connection, then a verdict) is
// internal/takeover's: it has no method on Client.
package api
