// Package batontest holds what baton's tests share: waiting for a
// condition instead of a duration, a leak check for descriptors and
// goroutines, counting this process's descriptors, and making a TCP
// socket whose last close would block.
//
// It is imported by tests only; nothing in it is baton's behaviour.
//
//   - WaitFor and Wait retry a condition with backoff until it holds or a
//     timeout passes, and report the condition's last error: a test waits
//     for what it can observe, never for a time it hopes is long enough.
//     Stop makes a condition give up at once (the process it waits on has
//     exited, say).
//   - CheckLeaks counts goroutines and open descriptors when a test starts
//     and fails it if more remain at its end, after a bounded wait for the
//     ones that are on their way out (tailscale's tstest.ResourceCheck).
//   - CountFDs and NumFDs count the descriptors in /proc/self/fd; OpenFDs
//     says what each one is.
//   - LingeringTCP and NewLingeringTCP (Linux) make a connected TCP socket
//     whose last close(2) would block for its SO_LINGER time: the input of
//     every test that proves baton never closes a descriptor from a
//     worker or a peer where that close could stall it.
//
// Descriptors are read from /proc, so off Linux CountFDs and OpenFDs
// return an error naming runtime.GOOS, NumFDs skips its test and
// CheckLeaks checks goroutines only; the package builds everywhere, like
// the worker library whose tests use it.
package batontest
