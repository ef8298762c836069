// Package upgrade re-executes baton in place (baton upgrade, SIGUSR2):
// the pid stays, so systemd and every other supervisor keep tracking it,
// the sockets stay open and the workers stay its children.
//
// The new binary is opened once (OpenBinary: a regular ELF file, which
// root runs only if no other user could change it), and that open file is
// what runs, twice. First a pre-flight (Preflight) runs it in a check mode
// with a copy of the state and of every descriptor (Hold); it must answer
// a handshake (Handshake: the nonce in the state, the state version, the
// counts of what it checked) on a descriptor of its own, or the upgrade is
// refused and nothing changes. Only then does baton clear close-on-exec on
// its sockets, write its state to a memfd and execve the new binary
// (Exec), which finds it with Inherited and adopts everything.
package upgrade
