package takeover

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/spawn"
)

// The environment variables through which a baton hands its state to the
// binary it runs: the number of a memfd holding it.
const (
	upgradeEnv   = "BATON_INTERNAL_UPGRADE"
	preflightEnv = "BATON_INTERNAL_PREFLIGHT"
)

// PreflightTimeout bounds the pre-flight run of a new binary.
const PreflightTimeout = 30 * time.Second

// Inherited returns the state a previous baton handed to this process, and
// whether this is a pre-flight run (check the state, change nothing, exit)
// rather than the upgrade itself. It returns nil when there is none. It
// takes the memfd and removes the variable, so it works once.
func Inherited() (state []byte, preflight bool, err error) {
	env := upgradeEnv
	v, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		env = preflightEnv
		if v, ok = os.LookupEnv(preflightEnv); !ok {
			return nil, false, nil
		}
	}
	os.Unsetenv(env)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, false, fmt.Errorf("%s=%q: not a descriptor; this is baton's internal variable, do not set it", env, v)
	}
	f := os.NewFile(uintptr(fd), "baton-handover")
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return nil, false, fmt.Errorf("reading the state a previous baton handed over (fd %d): %w", fd, err)
	}
	return b, env == preflightEnv, nil
}

// memfd puts state in a memory file, without close-on-exec when it must
// survive an execve.
func memfd(state []byte, cloexec bool) (int, error) {
	flags := 0
	if cloexec {
		flags = unix.MFD_CLOEXEC
	}
	fd, err := unix.MemfdCreate("baton-handover", flags)
	if err != nil {
		return -1, os.NewSyscallError("memfd_create", err)
	}
	for b := state; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			unix.Close(fd) // not handed to anyone yet
			return -1, os.NewSyscallError("write", err)
		}
		b = b[n:]
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("lseek", err)
	}
	return fd, nil
}

// Preflight runs binary with argv in pre-flight mode, giving it state and a
// copy of every descriptor in fds under the same numbers, and waits for it
// (at most PreflightTimeout). It returns nil when the binary exited 0, and
// otherwise an error quoting its output.
func Preflight(ctx context.Context, sp *spawn.Spawner, binary string, argv []string, state []byte, fds []int) error {
	mfd, err := memfd(state, true)
	if err != nil {
		return err
	}
	defer unix.Close(mfd)
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		w.Close()
		return err
	}
	defer devnull.Close()
	top := mfd
	for _, fd := range fds {
		top = max(top, fd)
	}
	files := make([]int, top+1)
	for i := range files {
		files[i] = -1
	}
	files[0], files[1], files[2] = int(devnull.Fd()), int(w.Fd()), int(w.Fd())
	for _, fd := range append(fds, mfd) {
		files[fd] = fd
	}
	env := append(os.Environ(), preflightEnv+"="+strconv.Itoa(mfd))
	exited := make(chan spawn.Exit, 1)
	p, err := sp.Start(spawn.Spec{Path: binary, Args: append([]string{binary}, argv[1:]...), Env: env, Files: files, Direct: true},
		func(e spawn.Exit) { exited <- e })
	w.Close() // the child has its copy: EOF once it exits
	if err != nil {
		return fmt.Errorf("starting %s: %w", binary, err)
	}
	out := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, 64<<10))
		out <- b
	}()
	ctx, cancel := context.WithTimeout(ctx, PreflightTimeout)
	defer cancel()
	select {
	case e := <-exited:
		var b []byte
		select {
		case b = <-out:
		case <-time.After(time.Second):
		}
		if e.Status.Exited() && e.Status.ExitStatus() == 0 {
			return nil
		}
		msg := strings.TrimSpace(string(bytes.TrimPrefix(b, []byte("baton: "))))
		if msg == "" {
			msg = "no output"
		}
		return fmt.Errorf("%s %s: %s", binary, describe(e), msg)
	case <-ctx.Done():
		p.SignalGroup(unix.SIGKILL)
		<-exited
		return fmt.Errorf("%s did not finish its pre-flight within %s", binary, PreflightTimeout)
	}
}

func describe(e spawn.Exit) string {
	if e.Status.Signaled() {
		return "was killed by " + unix.SignalName(e.Status.Signal())
	}
	return fmt.Sprintf("exited with status %d", e.Status.ExitStatus())
}

// Exec re-executes this process as binary with argv, handing it state and
// the descriptors in fds (close-on-exec cleared). The pid stays. It
// returns only on failure, with close-on-exec set again.
func Exec(sp *spawn.Spawner, binary string, argv []string, state []byte, fds []int) error {
	mfd, err := memfd(state, false)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			restore(fds, mfd)
			return fmt.Errorf("keeping fd %d open across the execve: %w", fd, os.NewSyscallError("fcntl", err))
		}
	}
	env := append(os.Environ(), upgradeEnv+"="+strconv.Itoa(mfd))
	err = sp.Exec(binary, append([]string{binary}, argv[1:]...), env)
	restore(fds, mfd)
	return fmt.Errorf("re-executing %s: %w", binary, err)
}

func restore(fds []int, mfd int) {
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	unix.Close(mfd)
}
