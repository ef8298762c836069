package spawn

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spec describes a process to start.
type Spec struct {
	Path string   // resolved path of the command
	Args []string // argv, including argv[0]
	Env  []string
	Dir  string
	// Files are the child's descriptors: Files[i] becomes fd i. -1 leaves
	// that number closed. Descriptors not listed are not inherited.
	Files []int
	// Pdeathsig is sent to the child if baton dies.
	Pdeathsig syscall.Signal
	// User, when set, is the identity the command runs as. The shim
	// starts as baton's user, applies Nofile, then drops to User, so a
	// limit above the user's own hard limit can still be given.
	User *Credential
	// Nofile, when not 0, is the command's RLIMIT_NOFILE (soft and hard).
	Nofile uint64
	// Direct starts Path itself instead of going through the shim; used
	// for processes that need no LISTEN_PID.
	Direct bool
}

// Exit describes how a child ended.
type Exit struct {
	Pid    int
	Status syscall.WaitStatus
}

// Process is a started child. It stays valid after the child exits:
// signalling it then is a no-op.
type Process struct {
	Pid int

	mu     sync.Mutex
	pidfd  int
	exited bool
}

// Signal sends sig to the process through its pidfd, so a signal never
// reaches a recycled pid. It returns os.ErrProcessDone once the process
// has been reaped.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return os.ErrProcessDone
	}
	if err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return os.NewSyscallError("pidfd_send_signal", err)
	}
	return nil
}

// SignalGroup sends sig to the process's whole process group (every child
// runs in a group of its own), reaching helpers it forked. It is a no-op
// once the process has been reaped, since the group id could then be
// reused.
func (p *Process) SignalGroup(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return os.ErrProcessDone
	}
	if err := unix.Kill(-p.Pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return os.NewSyscallError("kill", err)
	}
	return nil
}

func (p *Process) markExited() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.exited = true
	unix.Close(p.pidfd)
	p.pidfd = -1
}

type child struct {
	proc   *Process
	onExit func(Exit)
}

// Spawner starts processes from one locked OS thread and reaps every child
// of this process.
type Spawner struct {
	shim  string
	calls chan func()

	mu       sync.Mutex
	children map[int]child
	orphans  int
}

// New starts the spawning thread and the reaper. There is one Spawner per
// process: the reaper collects every child, so nothing else may wait for
// children.
func New() *Spawner {
	s := &Spawner{shim: "/proc/self/exe", calls: make(chan func()), children: map[int]child{}}
	started := make(chan struct{})
	go func() {
		// Never unlocked and never returns: if this thread exited, every
		// child's parent-death signal would fire.
		runtime.LockOSThread()
		close(started)
		for f := range s.calls {
			f()
		}
	}()
	<-started
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go func() {
		for range sigchld {
			s.reap()
		}
	}()
	return s
}

// Start starts a process and calls onExit, from the reaper goroutine, when
// it has exited and been reaped.
func (s *Spawner) Start(spec Spec, onExit func(Exit)) (*Process, error) {
	path, argv := s.shim, append([]string{"baton-shim", spec.Path}, spec.Args...)
	env := append(spec.Env[:len(spec.Env):len(spec.Env)], shimEnv+"=1", keepEnv+"="+strconv.Itoa(max(len(spec.Files), 3)),
		ppidEnv+"="+strconv.Itoa(os.Getpid()), pdeathEnv+"="+strconv.Itoa(int(spec.Pdeathsig)))
	if spec.User != nil {
		env = append(env, userEnv+"="+spec.User.String())
	}
	if spec.Nofile > 0 {
		env = append(env, nofileEnv+"="+strconv.FormatUint(spec.Nofile, 10))
	}
	var cred *syscall.Credential
	if spec.Direct {
		path, argv, env = spec.Path, spec.Args, spec.Env
		if spec.User != nil {
			cred = &syscall.Credential{Uid: spec.User.UID, Gid: spec.User.GID, Groups: spec.User.Groups}
		}
	}
	files := make([]uintptr, len(spec.Files))
	for i, fd := range spec.Files {
		files[i] = uintptr(fd)
	}
	pidfd := -1
	attr := &syscall.ProcAttr{
		Dir:   spec.Dir,
		Env:   env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Setpgid:    true,
			Pdeathsig:  spec.Pdeathsig,
			Credential: cred,
			PidFD:      &pidfd,
		},
	}
	var (
		proc *Process
		err  error
	)
	done := make(chan struct{})
	s.calls <- func() {
		defer close(done)
		// Hold the lock across fork and registration so the reaper cannot
		// collect this child before it is known.
		s.mu.Lock()
		defer s.mu.Unlock()
		var pid int
		if pid, _, err = syscall.StartProcess(path, argv, attr); err == nil {
			proc = &Process{Pid: pid, pidfd: pidfd}
			s.children[pid] = child{proc: proc, onExit: onExit}
		}
	}
	<-done
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Path, err)
	}
	return proc, nil
}

// Orphans counts children reaped that baton did not start (processes
// re-parented to it as PID 1 or subreaper).
func (s *Spawner) Orphans() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.orphans
}

func (s *Spawner) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		s.mu.Lock()
		c, ok := s.children[pid]
		delete(s.children, pid)
		if !ok {
			s.orphans++
		}
		s.mu.Unlock()
		if ok {
			c.proc.markExited()
			if c.onExit != nil {
				c.onExit(Exit{Pid: pid, Status: ws})
			}
		}
	}
}
