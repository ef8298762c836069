// Package listener turns listener specifications such as
// "http=tcp://127.0.0.1:8080?backlog=1024" into sockets that baton binds once
// and holds for as long as it runs.
//
// A Spec is parsed without touching the system, so every syntax mistake is
// caught before anything is bound. Bind then creates the socket with
// SOCK_CLOEXEC|SOCK_NONBLOCK, applies the options, binds and listens. The
// resulting Socket keeps the raw file descriptor: baton hands it to workers
// by number and never wraps it in an *os.File whose Fd method would flip the
// shared open file description to blocking mode.
//
// Inherited reads sockets passed with the systemd socket-activation protocol
// (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES); the worker library uses it.
package listener
