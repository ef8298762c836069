// Package inspect is baton's view of its sockets from the kernel's side,
// and the warnings about the classic traps that view shows.
//
// Given the listeners baton holds (each with one socket, or one
// SO_REUSEPORT socket per slot, identified by inode) and its workers'
// pids, an Inspector asks the kernel (through internal/sockdiag) for:
//
//   - each listening socket's accept queue, now and its maximum, per inode;
//   - the TCP connections on each listener's address and port, by state
//     (SYN-RECV is the half-open queue), and which worker holds which,
//     matching socket inodes with /proc/PID/fd;
//   - each worker's open fds against its RLIMIT_NOFILE, and its command
//     name; while a worker is a shell or connections wait in an accept
//     queue, its descendants (their LISTEN_PID) and the listening sockets
//     they hold;
//   - the host's counters: /proc/net/netstat (ListenOverflows, ListenDrops,
//     SYN cookies, TCPMigrateReq*) and /proc/net/sockstat.
//
// From that and a little history it raises warnings: a backlog capped by
// net.core.somaxconn, or lowered by a later listen(2) (the program's own,
// under --capture-bind), a worker at the 1024 default RLIMIT_NOFILE or
// above 80% of its limit, an accept queue above 80% full, ListenOverflows
// rising, connections that stay in CLOSE-WAIT on a worker (the program
// never closes them), and TIME-WAIT piling up on a port.
//
// It also warns about misconfigurations that look healthy (misconfig.go):
// a listener whose accept queue nobody serves while workers are ready
// (connections followed by socket cookie: one waited, and none left the
// queue), with the cause read from the workers' process trees (a wrapper
// shell that runs the program without exec, so that the program's
// LISTEN_PID names the shell; a process listening on a port of its own);
// the wrapper itself; and, from the slots of the status, a slot whose
// workers keep exiting with "address already in use" (the program binds
// baton's port) or soon after they start (a crash loop).
//
// A warning carries its severity (api.Severity: "degraded" when the
// service does not serve as configured, which makes `baton status` exit
// 3) and the time it first appeared; the Inspector logs it then, and logs
// again when it clears, whoever asked for the view.
//
// Nothing here runs on the supervisor's loop: the supervisor takes its
// cheap snapshot, and the caller (the control handler, the periodic
// sampler, the metrics collector) hands it to Inspect on its own goroutine.
// An Inspector is safe for concurrent use; calls are serialized, because
// each one updates the history.
package inspect
