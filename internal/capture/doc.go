// Package capture lets baton serve unmodified programs that bind their own
// port: nginx, a static Go binary, python3 -m http.server.
//
// The worker is started through baton's re-exec shim. On the OS thread
// that will execve the program, the shim (InstallFromEnv, InstallAndSend)
// sets no_new_privs and installs a seccomp filter that turns bind(2) into a
// user notification and allows every other system call. The filter's
// notification descriptor goes to baton over a socketpair (SCM_RIGHTS);
// the shim closes its copy and execs the program, which keeps its pid and
// inherits the filter, as does every process it forks.
//
// Serve answers the notifications. It reads the program's sockaddr from
// its memory, checks that the notification still stands
// (SECCOMP_IOCTL_NOTIF_ID_VALID) before acting on what it read, and, when
// the address matches a socket baton holds and the program's own socket
// has the same family, type and protocol (looked at through pidfd_getfd),
// installs baton's socket at the program's descriptor number
// (SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SETFD) and answers the
// bind with success. The program's listen(2) then succeeds on the already
// listening socket and it accepts from the socket baton holds, so two
// generations share one socket and a reload drops nothing. Every other bind
// (a port baton does not hold, port 0, a unix path) continues unchanged
// (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
//
// Only bind(2) is trapped, so the data path costs nothing, and nothing is
// preloaded, so static binaries work. Supported probes the whole mechanism
// on a throwaway thread before anything starts.
//
// The notification descriptor must live as long as any process under the
// filter: once it is closed, every pending and future bind of those
// processes fails with ENOSYS. Serve therefore never closes it and can be
// stopped and started again on the same descriptor (after a baton re-exec,
// say); notifications that arrive in between wait in the kernel.
//
// # Wiring
//
// The shim learns that it must install the filter from EnvFD, which names
// its end of the socketpair. spawn.RunShim calls InstallFromEnv once it
// knows it is the shim and before it copies the environment for the
// program (InstallFromEnv removes EnvFD), from the goroutine that then
// execs:
//
//	if _, err := capture.InstallFromEnv(); err != nil {
//		fmt.Fprintf(os.Stderr, "baton: %v\n", err)
//		os.Exit(126)
//	}
//
// The supervisor, for each worker started with capture (through the shim,
// never Direct): Supported once before the first start; Socketpair; the
// shim's end as the descriptor after the listeners (Files[3+n] with
// LISTEN_FDS=n) and EnvFD=3+n in the environment; Start; close its copy of
// the shim's end; ReceiveNotifFd on its own end, then close that end; and
// Serve with the worker's listeners until it returns nil, when the
// notification descriptor can be closed. The descriptor goes with the
// worker's state across a baton upgrade.
//
// docs/capture-bind.md describes the limits for users.
package capture
