package spawn

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ProcInfo is a process as /proc/PID/stat shows it.
type ProcInfo struct {
	PID, PPID int
	// PGID and SID are its process group and session.
	PGID, SID int
	Comm      string // the command name, at most 15 bytes
	State     byte   // R, S, D, Z, T, ...
	// StartTime is when it started, in clock ticks after boot: with the
	// pid it names one process, so a recycled pid is told apart.
	StartTime uint64
}

// Zombie reports whether the process has exited and waits to be reaped.
func (p ProcInfo) Zombie() bool { return p.State == 'Z' || p.State == 'X' }

// Processes lists the processes of baton's pid namespace (/proc), zombies
// included. A process that exits while it is read is left out. It reads
// one file per process: call it off any loop that other work waits for.
func Processes() ([]ProcInfo, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	out := make([]ProcInfo, 0, len(names))
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		if p, err := ReadProc(pid); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// ReadProc reads /proc/PID/stat.
func ReadProc(pid int) (ProcInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcInfo{}, err
	}
	p, err := parseStat(b)
	if err != nil {
		return ProcInfo{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return p, nil
}

// parseStat parses a /proc/PID/stat line: "pid (comm) state ppid pgrp
// session tty tpgid flags minflt cminflt majflt cmajflt utime stime
// cutime cstime priority nice threads itrealvalue starttime ...". The
// command name may hold spaces and parentheses: the fields after it start
// after the last ')'.
func parseStat(b []byte) (ProcInfo, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return ProcInfo{}, errors.New("no command name in parentheses")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return ProcInfo{}, fmt.Errorf("pid: %w", err)
	}
	f := bytes.Fields(b[end+1:])
	if len(f) < 20 || len(f[0]) != 1 {
		return ProcInfo{}, fmt.Errorf("%d fields after the command name, want 20 or more", len(f))
	}
	p := ProcInfo{PID: pid, Comm: string(b[open+1 : end]), State: f[0][0]}
	for i, dst := range []*int{&p.PPID, &p.PGID, &p.SID} {
		if *dst, err = strconv.Atoi(string(f[1+i])); err != nil {
			return ProcInfo{}, fmt.Errorf("field %d: %w", 4+i, err)
		}
	}
	if p.StartTime, err = strconv.ParseUint(string(f[19]), 10, 64); err != nil {
		return ProcInfo{}, fmt.Errorf("starttime: %w", err)
	}
	return p, nil
}

// Handle is a process held through a pidfd: signals reach that process
// and no other, even once its pid is recycled. It is for processes baton
// did not start itself (a worker's leftovers); Close releases it.
type Handle struct {
	Info ProcInfo
	fd   int
}

// Open holds the process info describes, checking that the pid still
// names that process (the same start time): one that exited since and
// whose pid was recycled is not opened. It returns os.ErrProcessDone when
// the process is gone.
func Open(info ProcInfo) (*Handle, error) {
	fd, err := unix.PidfdOpen(info.PID, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, os.ErrProcessDone
		}
		return nil, os.NewSyscallError("pidfd_open", err)
	}
	// The pidfd holds whatever process has the pid now: the one the
	// caller saw if it still has the start time the caller saw.
	now, err := ReadProc(info.PID)
	if err != nil || now.StartTime != info.StartTime {
		unix.Close(fd) // another process, or none: nothing to hold
		return nil, os.ErrProcessDone
	}
	return &Handle{Info: now, fd: fd}, nil
}

// Signal sends sig through the pidfd. It returns os.ErrProcessDone once
// the process has exited and been reaped.
func (h *Handle) Signal(sig syscall.Signal) error {
	if err := unix.PidfdSendSignal(h.fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return os.NewSyscallError("pidfd_send_signal", err)
	}
	return nil
}

// Exited reports whether the process has exited (a zombie counts).
func (h *Handle) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(h.fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// Close releases the pidfd.
func (h *Handle) Close() error { return unix.Close(h.fd) }

// WaitExit waits until every process of hs has exited, until the
// deadline, or until stop is closed (a nil stop never is). It reports
// whether all have exited.
func WaitExit(hs []*Handle, deadline time.Time, stop <-chan struct{}) bool {
	for {
		var fds []unix.PollFd
		for _, h := range hs {
			if !h.Exited() {
				fds = append(fds, unix.PollFd{Fd: int32(h.fd), Events: unix.POLLIN})
			}
		}
		if len(fds) == 0 {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		select {
		case <-stop:
			return false
		default:
		}
		// Short waits, so that stop is noticed: a pidfd cannot be woken
		// by a channel.
		unix.Poll(fds, int(min(left, 50*time.Millisecond)/time.Millisecond)+1)
	}
}
