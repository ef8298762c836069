package spawn

import "syscall"

// Child is a started (or adopted) child as a supervisor uses it: its pid
// and the signals it sends. *Process implements it.
type Child interface {
	// PID is the child's process id, which is also its process group's.
	PID() int
	// Signal sends sig to the child; SignalGroup to its process group.
	// Both return os.ErrProcessDone once the child has been reaped.
	Signal(sig syscall.Signal) error
	SignalGroup(sig syscall.Signal) error
}

// Starter is what a supervisor needs of a Spawner: it starts and adopts
// children, reports their exits, and holds exits back across an execve.
// It is the supervisor's seam for processes, as tableflip's env and Go's
// net/hook_unix.go are theirs: Spawner.Starter is the real one, and a
// supervisor's tests give a fake that starts nothing.
type Starter interface {
	// Start starts a child and calls onExit, from another goroutine,
	// once it has exited (Spawner.Start).
	Start(spec Spec, onExit func(Exit)) (Child, error)
	// Adopt registers a child started before baton re-executed itself;
	// it returns os.ErrProcessDone when that child is gone
	// (Spawner.Adopt).
	Adopt(pid int, onExit func(Exit)) (Child, error)
	// Started reports whether pid is a child started or adopted and not
	// reaped yet (Spawner.Started).
	Started(pid int) bool
	// Orphans counts the children reaped that were not started
	// (Spawner.Orphans).
	Orphans() int
	// Pause and Resume hold exits back across an execve
	// (Spawner.Pause, Spawner.Resume).
	Pause()
	Resume()
}

// PID is the child's process id (Pid), for the Child interface.
func (p *Process) PID() int { return p.Pid }

// Starter returns s as the Starter a supervisor depends on.
func (s *Spawner) Starter() Starter { return starter{s} }

// starter is a Spawner seen through the Starter interface: its Start and
// Adopt return a Child, and never a nil *Process in a non-nil interface.
type starter struct{ *Spawner }

func (s starter) Start(spec Spec, onExit func(Exit)) (Child, error) {
	p, err := s.Spawner.Start(spec, onExit)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (s starter) Adopt(pid int, onExit func(Exit)) (Child, error) {
	p, err := s.Spawner.Adopt(pid, onExit)
	if err != nil {
		return nil, err
	}
	return p, nil
}

var (
	_ Child   = (*Process)(nil)
	_ Starter = starter{}
)
