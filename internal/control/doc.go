// Package control is baton's control socket: a unix stream socket (mode
// 0600) over which `baton reload`, `baton status` and `baton stop` talk to a
// running baton.
//
// The protocol is one JSON request per connection, a single line of at most
// MaxRequest bytes, read within RequestTimeout:
//
//	{"method":"reload","params":{"wait":true}}
//
// answered by one JSON line:
//
//	{"ok":true,"result":{...}}
//	{"ok":false,"error":"reload failed: ..."}
//
// The peer is checked with SO_PEERCRED before the request is read: only
// root and baton's own user (and, with AllowGroup, a group's members) are
// served.
//
// The socket's directory must be baton's alone: Listen refuses one that
// is missing (CreateDir makes the default ones, 0700), a symlink, owned by another user,
// writable by group or others, or below a directory another user can
// change, since that user could remove baton's socket and answer in its
// place. The socket file is born 0600, and its mode and group are set on
// the file verified to be the socket's (internal/sockfile), by descriptor.
//
// The client side checks the server in turn: Call (and takeover.Take)
// refuse, before sending anything, a process that answers at the path as
// another user than root or the caller's own (CheckServer), and Call's
// socket refuses descriptors (SO_PASSRIGHTS=0, Linux 6.16).
//
// The same protocol serves baton's worker socket (ListenAbstract), where
// the handler checks the peer's pid itself. The handler of a method named
// in ConnMethods gets the connection itself (ConnFrom) and speaks on it:
// the takeover, handoff and adopt methods move descriptors on it. Such a
// client sends nothing after its request line until it has read the
// answer; a request followed by more bytes is refused.
package control
