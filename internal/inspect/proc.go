package inspect

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// proc is what the analysis needs of one process of a worker's tree.
type proc struct {
	PID, PPID int
	// Comm is its command name as /proc/PID/stat has it (at most 15
	// bytes): "sh", "python3", "hello".
	Comm string
	// ListenPID is LISTEN_PID in the environment it was started with, 0
	// when unset or unreadable; ListenFDs is set when LISTEN_FDS is
	// there. A process whose LISTEN_PID is not its own pid is one that
	// sd_listen_fds (and every library like it) gives no sockets.
	ListenPID int
	ListenFDs bool
	// Exe is the base name of its executable (/proc/PID/exe): for a
	// script run directly, the interpreter ("dash"), while Comm is the
	// script's name. "" when unreadable.
	Exe string
	// Cmdline is its command line, arguments joined by spaces (read with
	// its environment; "" when unreadable).
	Cmdline string
}

// tree is a worker's process and its descendants, with the listening
// sockets they hold.
type tree struct {
	self proc
	// descendants are its children and theirs, parents before children,
	// at most maxDescendants of them.
	descendants []proc
	// own holds, by pid (the worker's or a descendant's), the TCP
	// listening sockets the process holds that are none of baton's: a
	// port the program bound itself.
	own map[int][]ownListener
	// holds has the inode of each of baton's sockets a process of the
	// tree holds.
	holds map[uint64]bool
}

// ownListener is a listening TCP socket that a process of a worker's tree
// holds and baton does not.
type ownListener struct {
	Addr  string
	Inode uint64
}

// maxDescendants bounds the processes read per worker: a prefork server
// with hundreds of children is judged by the first ones.
const maxDescendants = 64

// shells are the command names of the shells a wrapper script runs in.
var shells = map[string]bool{
	"sh": true, "bash": true, "dash": true, "ash": true, "zsh": true, "ksh": true, "mksh": true,
	"yash": true, "busybox": true,
}

// isShell reports whether a process is a shell: its command name is a
// shell's (sh -c, /bin/sh script), or its executable is (a script run
// directly, ./start.sh, has the script's name as its command name).
func isShell(p proc) bool { return shells[p.Comm] || shells[p.Exe] }

// shellName names a shell process in a message: "sh", or "start.sh, a
// dash script".
func shellName(p proc) string {
	if shells[p.Comm] || p.Exe == "" || p.Exe == p.Comm {
		return p.Comm
	}
	return p.Comm + ", a " + p.Exe + " script"
}

// sameProgram reports whether two processes run the same program: the
// same executable when both are known, else the same command name. A
// prefork server's children are copies of it.
func sameProgram(a, b proc) bool {
	if a.Exe != "" && b.Exe != "" {
		return a.Exe == b.Exe
	}
	return a.Comm == b.Comm
}

var errStat = errors.New("unexpected format")

// parseStat reads the pid, command name and parent pid of a
// /proc/PID/stat line: "pid (comm) state ppid ...". The command name may
// hold spaces and parentheses: the fields after it start after the last
// ')'.
func parseStat(b []byte) (proc, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return proc{}, fmt.Errorf("%w: no command name in parentheses", errStat)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return proc{}, fmt.Errorf("%w: pid: %w", errStat, err)
	}
	f := bytes.Fields(b[end+1:])
	if len(f) < 2 {
		return proc{}, fmt.Errorf("%w: %d fields after the command name", errStat, len(f))
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return proc{}, fmt.Errorf("%w: ppid: %w", errStat, err)
	}
	return proc{PID: pid, PPID: ppid, Comm: string(b[open+1 : end])}, nil
}

// parseEnviron finds LISTEN_PID and LISTEN_FDS in the NUL-separated
// contents of /proc/PID/environ.
func parseEnviron(b []byte) (listenPID int, listenFDs bool) {
	for len(b) > 0 {
		kv := b
		if i := bytes.IndexByte(b, 0); i >= 0 {
			kv, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if v, ok := bytes.CutPrefix(kv, []byte("LISTEN_PID=")); ok {
			listenPID, _ = strconv.Atoi(string(v))
		} else if bytes.HasPrefix(kv, []byte("LISTEN_FDS=")) {
			listenFDs = true
		}
	}
	return listenPID, listenFDs
}

// parseChildren parses /proc/PID/task/TID/children: pids separated by
// spaces.
func parseChildren(b []byte, dst []int) []int {
	for _, f := range bytes.Fields(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
			dst = append(dst, pid)
		}
	}
	return dst
}

// parseCmdline joins the NUL-separated arguments of /proc/PID/cmdline
// with spaces.
func parseCmdline(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}
