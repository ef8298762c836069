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
	paused   bool // Pause: the reaper leaves exited children alone
}

// mainCalls, once Main runs, carries work to the main thread.
var mainCalls chan func()

// Main runs program on a new goroutine and serves every Spawner from the
// main thread until program returns, then exits with its code. baton's
// main calls it (after RunShim) so that every worker is forked by the main
// thread: the parent-death signal fires when the forking thread exits, and
// the main thread is the one thread that lives exactly as long as the
// process, across an execve of baton itself too (the thread that calls
// execve becomes the new main thread, and Exec runs here as well).
func Main(program func() int) {
	runtime.LockOSThread() // already locked since init; made explicit
	mainCalls = make(chan func())
	code := make(chan int, 1)
	go func() { code <- program() }()
	for {
		select {
		case f := <-mainCalls:
			f()
		case c := <-code:
			os.Exit(c)
		}
	}
}

// New starts the reaper and connects to the spawning thread: the main
// thread when Main runs, otherwise a thread locked for good (tests). There
// is one Spawner per process: the reaper collects every child, so nothing
// else may wait for children.
//
// New makes this process a child subreaper (PR_SET_CHILD_SUBREAPER): a
// process whose parent exits is re-parented to its closest subreaper
// ancestor instead of to init, so what a worker leaves behind stays
// baton's child, which can end it (Processes, Open) and reaps it. On a
// kernel without it (before 3.4) orphans go to init as before.
func New() *Spawner {
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	s := &Spawner{shim: "/proc/self/exe", calls: mainCalls, children: map[int]child{}}
	if s.calls == nil {
		s.calls = make(chan func())
		started := make(chan struct{})
		go func() {
			// Never unlocked and never returns: if this thread exited,
			// every child's parent-death signal would fire.
			runtime.LockOSThread()
			close(started)
			for f := range s.calls {
				f()
			}
		}()
		<-started
	}
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
	// The shim changes directory, not the fork: a chdir(2) into a path
	// that blocks (a mount that does not answer) then holds the worker,
	// never this call, which the supervisor's loop waits for.
	dir := ""
	if spec.Dir != "" {
		env = append(env, dirEnv+"="+spec.Dir)
	}
	var cred *syscall.Credential
	if spec.Direct {
		dir = spec.Dir
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
		Dir:   dir,
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
		return nil, startError(spec, err)
	}
	return proc, nil
}

// startError says why a process could not be started. The child reports
// a failed chdir(2) with the same errno as a failed execve(2); through the
// shim (whose own binary, /proc/self/exe, is there) a path error can only
// be the working directory's, so the error names it, not the command. A
// Direct start names the directory when it is not one now.
func startError(spec Spec, err error) error {
	if spec.Dir != "" && (errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENAMETOOLONG)) {
		fi, serr := os.Stat(spec.Dir)
		if !spec.Direct || serr != nil || !fi.IsDir() {
			return fmt.Errorf("working directory %s: %w", spec.Dir, err)
		}
	}
	return fmt.Errorf("start %s: %w", spec.Path, err)
}

// Orphans counts children reaped that baton did not start (processes
// re-parented to it as PID 1 or subreaper).
func (s *Spawner) Orphans() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.orphans
}

// Started reports whether pid is a child this Spawner started (or
// adopted) that has not been reaped yet. A child being started is waited
// for: a process seen in /proc before Start registered it still counts.
func (s *Spawner) Started(pid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.children[pid]
	return ok
}

// Pause stops the reaper from collecting exited children until Resume, so
// that their exit statuses outlive an execve of baton: the new program
// reaps them. It is the last thing before Exec.
func (s *Spawner) Pause() {
	s.mu.Lock()
	s.paused = true
	s.mu.Unlock()
}

// Resume undoes Pause (the execve failed) and collects what exited since.
func (s *Spawner) Resume() {
	s.mu.Lock()
	s.paused = false
	s.mu.Unlock()
	s.reap()
}

// Exec replaces this process with path (execve), from the spawning thread,
// which keeps every child's parent-death signal armed. It returns only on
// failure. Descriptors meant to survive must have close-on-exec cleared.
func (s *Spawner) Exec(path string, argv, env []string) error {
	errc := make(chan error, 1)
	s.calls <- func() { errc <- syscall.Exec(path, argv, env) }
	return os.NewSyscallError("execve", <-errc)
}

// Adopt registers a child this process did not start itself (it was
// started before baton re-executed itself), so that its exit is reported
// to onExit. It returns os.ErrProcessDone when the child is gone.
func (s *Spawner) Adopt(pid int, onExit func(Exit)) (*Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, os.ErrProcessDone
		}
		return nil, os.NewSyscallError("pidfd_open", err)
	}
	p := &Process{Pid: pid, pidfd: fd}
	s.children[pid] = child{proc: p, onExit: onExit}
	return p, nil
}

func (s *Spawner) reap() {
	for {
		s.mu.Lock()
		paused := s.paused
		s.mu.Unlock()
		if paused {
			return
		}
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
