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
// root and baton's own user are served.
//
// The same protocol serves baton's worker socket (ListenAbstract), where
// the handler checks the peer's pid itself. The handler of a method named
// in ConnMethods gets the connection itself (ConnFrom) and speaks on it:
// the takeover, handoff and adopt methods move descriptors on it. Such a
// client sends nothing after its request line until it has read the
// answer; a request followed by more bytes is refused.
package control
