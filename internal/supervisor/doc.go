// Package supervisor runs worker generations on the sockets baton holds.
//
// A generation is the set of workers started by one start or reload, one per
// slot 0..N-1. Workers move through starting → ready → draining → exited.
// A reload starts a whole new generation; only when every one of its workers
// is ready does the previous generation get its stop signal and drain. If a
// new worker exits or misses its readiness deadline, the new generation is
// stopped instead and the old one keeps serving. Reloads asked for while one
// runs are coalesced into one more reload; none is dropped.
//
// All state is owned by one goroutine (the loop). Everything else (the
// reaper, the notify socket, timers, the control socket, signals) posts
// closures to it, so the state machine needs no locks and handles one event
// at a time in the order they happened.
package supervisor
