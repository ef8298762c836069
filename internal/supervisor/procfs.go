package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// procSample is what baton reads of a live worker in /proc: enough to
// tell it apart from a later process with its pid, its resident memory
// and CPU time, and how it handles its stop signal.
type procSample struct {
	// StartTime is when the process started, in clock ticks after boot
	// (/proc/PID/stat field 22): with the pid it names one process.
	StartTime uint64
	// RSS is its resident memory in bytes (field 24, in pages).
	RSS uint64
	// CPU is the user and system time it has used (fields 14 and 15).
	CPU time.Duration
	// Signal says what the stop signal asked about does to it
	// (/proc/PID/status SigCgt, SigIgn, SigBlk).
	Signal sigDisposition
}

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, 100 on
// every architecture Go runs Linux on (the kernel converts its own HZ to
// it for this ABI).
const userHZ = 100

// readProcSample reads /proc/PID/stat and /proc/PID/status for sig. It
// reads files of procfs only (never cmdline or environ, which wait for
// the process's memory map): call it off the supervisor's loop all the
// same.
func readProcSample(pid int, sig syscall.Signal) (procSample, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return procSample{}, err
	}
	p, err := parseProcStat(stat)
	if err != nil {
		return procSample{}, fmt.Errorf("%s/stat: %w", dir, err)
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return procSample{}, err
	}
	masks, err := parseSignalMasks(status)
	if err != nil {
		return procSample{}, fmt.Errorf("%s/status: %w", dir, err)
	}
	p.Signal = masks.disposition(sig)
	if p.Signal == sigBlocked && !blockedInEveryThread(dir, sig) {
		// SigBlk is the main thread's mask, and a thread blocks every
		// signal for an instant now and then (glibc's pthread_create
		// does, around the clone): a process-directed signal goes to a
		// thread that does not block it, whose default action ends the
		// process.
		p.Signal = sigDefault
	}
	if p.Signal == sigDefault && heirHandles(pid, sig) {
		p.Signal = sigPassed
	}
	return p, nil
}

// maxHeirs bounds the processes heirHandles reads.
const maxHeirs = 64

// heirHandles reports whether a descendant of the worker pid, in its
// process group (pid), catches or blocks sig: the process a wrapper
// started, which will get the signal when the wrapper has died on it.
// It walks /proc/PID/task/TID/children, at most maxHeirs processes.
func heirHandles(pid int, sig syscall.Signal) bool {
	queue := []int{pid}
	for seen := 0; len(queue) > 0 && seen < maxHeirs; seen++ {
		p := queue[0]
		queue = queue[1:]
		dir := "/proc/" + strconv.Itoa(p)
		if p != pid {
			stat, err := os.ReadFile(dir + "/stat")
			if err != nil || procPgrp(stat) != pid {
				continue // gone, or in a group of its own: not the worker's
			}
			if status, err := os.ReadFile(dir + "/status"); err == nil {
				if m, err := parseSignalMasks(status); err == nil {
					if d := m.disposition(sig); d == sigCaught || d == sigBlocked && blockedInEveryThread(dir, sig) {
						return true
					}
				}
			}
		}
		tasks, err := os.ReadDir(dir + "/task")
		if err != nil {
			continue
		}
		for _, t := range tasks {
			b, err := os.ReadFile(dir + "/task/" + t.Name() + "/children")
			if err != nil {
				continue
			}
			for _, f := range bytes.Fields(b) {
				if c, err := strconv.Atoi(string(f)); err == nil {
					queue = append(queue, c)
				}
			}
		}
	}
	return false
}

// procPgrp reads the process group (field 5) of /proc/PID/stat, or -1.
func procPgrp(stat []byte) int {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return -1
	}
	f := bytes.Fields(stat[end+1:])
	if len(f) < 3 {
		return -1
	}
	n, err := strconv.Atoi(string(f[2]))
	if err != nil {
		return -1
	}
	return n
}

// blockedInEveryThread reports whether every thread of the process whose
// /proc directory is dir blocks sig (/proc/PID/task/TID/status SigBlk).
// A thread that exits while it is read does not count.
func blockedInEveryThread(dir string, sig syscall.Signal) bool {
	tasks, err := os.ReadDir(dir + "/task")
	if err != nil {
		return true // as the main thread said
	}
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/task/" + t.Name() + "/status")
		if err != nil {
			continue
		}
		m, err := parseSignalMasks(b)
		if err == nil && m.blocked&(1<<(sig-1)) == 0 {
			return false
		}
	}
	return true
}

// parseProcStat reads the start time, CPU time and resident memory from a
// /proc/PID/stat line. The command name may hold spaces and parentheses:
// the fields after it start after the last ')'.
func parseProcStat(b []byte) (procSample, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procSample{}, errors.New("no command name in parentheses")
	}
	// After the name: state (3), ppid, pgrp, session, tty_nr, tpgid,
	// flags, minflt, cminflt, majflt, cmajflt, utime (14), stime (15),
	// cutime, cstime, priority, nice, num_threads, itrealvalue,
	// starttime (22), vsize, rss (24).
	f := bytes.Fields(b[end+1:])
	if len(f) < 22 {
		return procSample{}, fmt.Errorf("%d fields after the command name; want at least 22", len(f))
	}
	var n [4]uint64
	for i, field := range []int{11, 12, 19, 21} {
		v, err := strconv.ParseUint(string(f[field]), 10, 64)
		if err != nil {
			return procSample{}, fmt.Errorf("field %d: %w", field+3, err)
		}
		n[i] = v
	}
	ticks := n[0] + n[1]
	return procSample{
		StartTime: n[2],
		RSS:       n[3] * uint64(os.Getpagesize()),
		CPU:       time.Duration(ticks) * (time.Second / userHZ),
	}, nil
}

// signalMasks are a process's signal masks from /proc/PID/status: bit
// n-1 stands for signal n.
type signalMasks struct {
	caught, ignored, blocked uint64
}

// parseSignalMasks reads SigCgt, SigIgn and SigBlk from /proc/PID/status.
func parseSignalMasks(b []byte) (signalMasks, error) {
	var m signalMasks
	found := 0
	for line := range bytes.SplitSeq(b, []byte{'\n'}) {
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		var dst *uint64
		switch string(key) {
		case "SigCgt":
			dst = &m.caught
		case "SigIgn":
			dst = &m.ignored
		case "SigBlk":
			dst = &m.blocked
		default:
			continue
		}
		v, err := strconv.ParseUint(string(bytes.TrimSpace(val)), 16, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", key, err)
		}
		*dst = v
		found++
	}
	if found < 3 {
		return m, errors.New("no SigCgt, SigIgn and SigBlk lines")
	}
	return m, nil
}

// disposition says what sig does to the process with these masks.
func (m signalMasks) disposition(sig syscall.Signal) sigDisposition {
	if sig < 1 || sig > 64 {
		return sigUnknown
	}
	bit := uint64(1) << (sig - 1)
	switch {
	case m.caught&bit != 0:
		return sigCaught
	case m.ignored&bit != 0:
		return sigIgnored
	case m.blocked&bit != 0:
		// Taken with sigwait(3) or a signalfd, as a handler would.
		return sigBlocked
	}
	switch sig {
	case syscall.SIGCHLD, syscall.SIGCONT, syscall.SIGURG, syscall.SIGWINCH:
		return sigHarmless // their default action is to do nothing
	case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
		return sigHarmless // they stop it, which SIGCONT undoes
	}
	return sigDefault
}
