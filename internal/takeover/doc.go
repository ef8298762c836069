// Package takeover moves a running baton's sockets and workers to a new
// program without closing anything.
//
// An upgrade (baton upgrade, SIGUSR2) re-executes baton in place: the pid
// stays, so systemd and every other supervisor keep tracking it, and the
// workers stay its children. The new binary is opened once (OpenBinary:
// a regular ELF file, which root runs only if no other user could change
// it), and that open file is what runs, twice. First a pre-flight runs it
// in a check mode with a copy of the state and of every descriptor; it
// must answer a handshake (Handshake: the nonce in the state, the state
// version, the counts of what it checked) on a descriptor of its own, or
// the upgrade is refused. Only then does baton clear close-on-exec on its
// sockets, write its state to a memfd and execve the new binary, which
// adopts everything.
//
// A takeover between two independent instances (baton run --takeover)
// passes the listening sockets over the old instance's control socket with
// SCM_RIGHTS (internal/fdpass); the old instance keeps its copies until the
// new one has acknowledged them and its workers are ready.
package takeover
