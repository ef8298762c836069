// Package supervisor runs worker generations on the sockets baton holds.
//
// A generation is the set of workers started by one start or reload, one per
// slot 0..N-1. Workers move through starting → ready → draining → exited.
// A reload starts a whole new generation; only when every one of its workers
// is ready does the previous generation get its stop signal and drain. A new
// worker that exits meanwhile is restarted in its slot (comingup.go); if a
// slot crash-loops or has no ready worker within its readiness deadline, the
// new generation is stopped instead and the old one keeps serving. Reloads
// asked for while one runs are coalesced into one more reload; none is
// dropped.
//
// A worker that exits with status 0 on its own recycled itself and is
// restarted at once; baton recycles workers itself past --max-rss or
// --max-uptime, one slot at a time, the replacement ready first
// (recycle.go). Each live worker's /proc entries are read every second off
// the loop (sample.go): its memory and CPU for the status, and whether its
// stop signal would kill it at once, in which case it is stopped only when
// idle (drain.go, quiesce.go).
//
// A reload may instead roll (Rollout, rolling.go): replace a few slots at
// a time, each new worker beside the old one of its slot, so that at most
// slots+K workers run, or try canary slots first and watch them for a
// window (canary.go) before going on. The rolling generation is pending
// until every slot is replaced; a failure after some were rolls them back
// to the previous generation first.
//
// All state is owned by one goroutine (the loop). Everything else (the
// reaper, the notify socket, timers, the control socket, signals) posts
// closures to it, so the state machine needs no locks and handles one event
// at a time in the order they happened.
//
// When a worker counts as ready is its ReadyMode's to say (notify, bind or
// delay:D), and so is how long it is given: ReadyMode.Deadline, from which
// every readiness timer is armed.
//
// The loop reaches processes and time through seams (env.go): a
// spawn.Starter that starts, adopts and signals workers, a clock for every
// timestamp and timer, and the search for what exited workers left
// running. New wires the real ones; the package's tests drive the loop
// in-process with fake workers and a fake clock (fake_test.go,
// machine_test.go, rolling_test.go), and keep the notify and worker sockets real.
package supervisor
