package supervisor

import (
	"syscall"
	"time"

	"github.com/baton-dev/baton/internal/spawn"
)

// env is the supervisor's reach into the operating system for processes
// and time: the seams its tests replace, as tableflip's env.go and Go's
// net/hook_unix.go do. Sockets are not in it: the notify and worker
// sockets are real in tests too. New fills it with the real ones; a zero
// field given to newSupervisor gets its real one.
type env struct {
	// procs starts and adopts workers, signals them (through what it
	// returns) and reports their exits: Options.Spawner.Starter().
	procs spawn.Starter
	// clock is the loop's time: every timestamp it records and every
	// timer it arms (realClock).
	clock clock
	// endLeftovers ends what one exited worker left running, on a
	// goroutine of its own (Supervisor.endLeftovers: it reads /proc,
	// signals processes and waits for them). It works in the clock's
	// time: a fake clock goes with a fake endLeftovers.
	endLeftovers func(*leftoverSearch)
	// readProc reads a live worker's /proc entries (resident memory, CPU
	// time, what sig does to it), off the loop (readProcSample).
	readProc func(pid int, sig syscall.Signal) (procSample, error)
}

// clock tells the time and runs timers.
type clock interface {
	// Now is the current time (time.Now).
	Now() time.Time
	// AfterFunc calls f on a goroutine of its own once d has passed
	// (time.AfterFunc).
	AfterFunc(d time.Duration, f func()) timer
}

// timer is a call AfterFunc will make (*time.Timer).
type timer interface {
	// Stop cancels the call, and reports false when it was made or
	// cancelled already.
	Stop() bool
}

// realClock is the system's clock.
type realClock struct{}

// Now returns time.Now().
func (realClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (realClock) AfterFunc(d time.Duration, f func()) timer { return time.AfterFunc(d, f) }

var _ timer = (*time.Timer)(nil)

// now is the loop's current time.
func (s *Supervisor) now() time.Time { return s.env.clock.Now() }

// since is how long ago t was, by the loop's clock.
func (s *Supervisor) since(t time.Time) time.Duration { return s.now().Sub(t) }
