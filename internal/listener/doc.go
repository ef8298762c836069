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
// A unix socket at a path is created in a directory another user may be
// able to write, while baton runs as root. Bind, Adjust and Close never act
// on such a path: the file is born no more open than its ?mode=, checked
// after bind(2) to be the very file the socket is bound to (the kernel's
// record, through internal/sockfile), and changed (?owner=, ?mode=) or
// removed only by descriptor or relative to its opened directory once that
// check holds. A file another user swapped in is refused with the reason;
// a directory another user can change is a warning (Socket.Warning).
//
// Inherit reads sockets passed with the systemd socket-activation protocol
// (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES); the worker library uses it,
// and so does baton when its own service manager activates it. Match then
// gives each socket handed to baton to its listener (by name, or by
// address and type), checks it, and refuses what it cannot use; Bind binds
// only what was not handed. Sockets baton keeps in systemd's file
// descriptor store come back the same way after a restart, named
// StoreName ("baton/http", "baton/http/1" for a reuseport slot).
//
// Sockets are Linux's: on other systems only Spec and Parse are here (the
// worker library parses the address it binds itself in development with
// them) and Inherit returns an error naming the system.
package listener
