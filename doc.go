// Package baton is the worker side of baton, the zero-downtime socket
// manager: a Go program imports it to receive its listening sockets, say
// when it is ready, learn when to stop, serve HTTP with a drain that
// loses no request, and hand its live connections to the next generation.
//
// It speaks the plain systemd protocols (socket activation with LISTEN_FDS,
// LISTEN_PID and LISTEN_FDNAMES; readiness with READY=1 on NOTIFY_SOCKET),
// so the same program also runs under systemd socket activation, and, when
// started by neither, binds the address it is given so it runs unchanged in
// development.
//
//	func main() {
//		http.HandleFunc("/", hello)
//		log.Fatal(baton.Serve(&http.Server{Addr: "127.0.0.1:8080"}))
//	}
//
// # The Worker
//
// A Worker holds what the library knows of its process: the sockets it
// inherited and those it made of them, where it reports readiness, the
// signal that asks it to stop, and baton's worker socket for handing
// connections on. The package-level functions (Listener, Ready, Stopping,
// Serve, Handoff, Adopted, ...) are the methods of Default, the Worker
// made from the process's environment on first use. Code that should not
// reach for package-level state takes a *Worker instead, and the program
// hands it Default(). A process has that one Worker only, because an
// inherited descriptor can be taken only once; tests of the library make
// others, of fake environments.
//
// The Worker reads these variables when it is made, so a program may
// change its environment afterwards (to keep them from its own children,
// say) without changing what the library does:
//
//	LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES  the inherited sockets, from fd 3
//	NOTIFY_SOCKET                          where Ready and Status report
//	BATON_SOCKET                           baton's worker socket (Handoff, Adopted)
//	BATON_SLOT, BATON_GENERATION           Slot and Generation
//	BATON_STOP_SIGNAL                      the stop signal besides SIGTERM and SIGINT
//
// # Other systems
//
// baton runs on Linux; a program that imports this package builds and
// runs wherever Go does, so it can be developed on a laptop. Off Linux,
// Listener, PacketConn and Serve always listen on the address they are
// given, Activated reports false and Listeners returns no socket, Handoff
// returns an error matching both ErrNotSupported and ErrNoHandoff (the
// connection stays the caller's), and the channel of Adopted is closed at
// once. Ready, Status and Stopping work as on Linux (SIGTERM and SIGINT,
// where the system has them, are the stop signals).
package baton
