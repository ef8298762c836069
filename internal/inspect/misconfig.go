package inspect

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// This file holds the analyses of misconfigurations that look healthy:
// every worker is ready, yet nobody serves the port (a wrapper script
// without exec, a program that ignores LISTEN_FDS and binds a port of its
// own), or the slots crash-loop (a program that binds baton's port
// itself and fails with EADDRINUSE). Each warning names the likely cause
// and the fix.

// queued lists the connections waiting in a TCP listener's accept queue,
// among the sockets found on its port: established (or since closed by
// the client) and held by no process. A connection a worker accepted has
// an inode; one it closed is in another state.
func queued(l Listener, socks []sockdiag.Socket) []sockdiag.Socket {
	var out []sockdiag.Socket
	for _, sk := range socks {
		if sk.Inode == 0 && (sk.State == sockdiag.Established || sk.State == sockdiag.CloseWait) && onListener(l, sk) {
			out = append(out, sk)
		}
	}
	return out
}

// waitingConn is a connection seen waiting in a listener's accept queue.
type waitingConn struct {
	first    time.Time // when it was first seen there
	listener string
}

// acceptStall follows the connections waiting in listener l's accept
// queue from one view to the next (by socket cookie; seen collects this
// view's). An accept queue is served first in, first out: when a
// connection has waited for age or more and none has left the queue
// since it was first seen, no worker accepted a connection in all that
// time. It returns how many connections wait, since when the oldest, and
// whether the queue is stalled that way.
func (h *history) acceptStall(l Listener, waiting []sockdiag.Socket, now time.Time, age time.Duration, seen map[uint64]waitingConn) (n int, oldest time.Time, stalled bool) {
	here := map[uint64]bool{}
	for _, sk := range waiting {
		if sk.Cookie == 0 {
			continue // a kernel without cookies: it cannot be followed
		}
		here[sk.Cookie] = true
		first := now
		if w, ok := h.queued[sk.Cookie]; ok {
			first = w.first
		}
		seen[sk.Cookie] = waitingConn{first: first, listener: l.Name}
		if oldest.IsZero() || first.Before(oldest) {
			oldest = first
		}
	}
	for id, w := range h.queued {
		if w.listener == l.Name && !here[id] {
			h.left[l.Name] = now // accepted, or dropped: the queue moves
		}
	}
	if len(here) == 0 {
		delete(h.left, l.Name)
		return 0, time.Time{}, false
	}
	left := h.left[l.Name]
	return len(here), oldest, now.Sub(oldest) >= age && !left.After(oldest)
}

// notAccepting is the warning about a listener whose accept queue no
// worker serves, with the cause found in the workers' process trees. It
// is raised only while a worker is ready: a generation still starting, or
// slots without a worker, explain a queue nobody serves, and have
// warnings of their own.
func notAccepting(l Listener, lv ListenerView, n int, waited time.Duration, in Input, s *sample) (Warning, bool) {
	ready := 0
	for _, w := range in.Workers {
		if w.State == WorkerReady {
			ready++
		}
	}
	if ready == 0 {
		return Warning{}, false
	}
	where := ""
	if len(lv.Sockets) > 1 {
		var slots []string
		for _, sv := range lv.Sockets {
			if sv.Slot != nil && sv.Listening() && sv.RecvQ > 0 {
				slots = append(slots, itoa(*sv.Slot))
			}
		}
		if len(slots) > 0 {
			where = " (in the sockets of slots " + strings.Join(slots, ", ") + ")"
		}
	}
	workers := "1 worker is"
	if ready > 1 {
		workers = itoa(ready) + " workers are"
	}
	return Warning{
		Code: NotAccepting, Listener: l.Name,
		Message: fmt.Sprintf("listener %s: %s waited in the accept queue%s for %s and none was accepted, "+
			"while %s ready: nothing serves %s. %s",
			l.Name, haveWaited(n), where, roundDur(waited), workers, listenerAddr(l), whyNotAccepting(l, in, s)),
	}, true
}

// haveWaited is "1 connection has" or "N connections have".
func haveWaited(n int) string {
	if n == 1 {
		return "1 connection has"
	}
	return itoa(n) + " connections have"
}

// listenerAddr is how a message names a listener's address.
func listenerAddr(l Listener) string {
	if l.Addr.IsValid() {
		return l.Addr.String()
	}
	return "its socket"
}

// whyNotAccepting looks in the ready workers' process trees for why none
// accepts on listener l, and says the likely cause and the fix.
func whyNotAccepting(l Listener, in Input, s *sample) string {
	var anyTree, holds bool
	for _, w := range in.Workers {
		t := s.trees[w.PID]
		if t == nil || w.State != WorkerReady {
			continue
		}
		anyTree = true
		if d, ok := notExeced(w, t); ok {
			msg := fmt.Sprintf("Likely cause: worker slot %d (pid %d) is %s, which runs pid %d (%s) as its child instead of "+
				"exec-ing it, so LISTEN_PID=%d names %s and pid %d ignores the sockets baton passed (LISTEN_FDS)",
				w.Slot, w.PID, shellName(t.self), d.PID, d.Comm, w.PID, t.self.Comm, d.PID)
			if own := t.own[d.PID]; len(own) > 0 {
				msg += " and listens on " + ownAddrs(own) + " itself"
			}
			if isShell(t.self) {
				return msg + fmt.Sprintf(". Fix: end the wrapper script with exec (%s), so that the program is the worker "+
					"baton started, then baton reload", execHint(d))
			}
			return msg + fmt.Sprintf(". Fix: have %s exec the program (or run the program directly), then baton reload", t.self.Comm)
		}
		for _, p := range append([]proc{t.self}, t.descendants...) {
			if own := t.own[p.PID]; len(own) > 0 {
				msg := fmt.Sprintf("Likely cause: pid %d (%s) of worker slot %d listens on %s itself: the program ignores "+
					"LISTEN_FDS and binds a port of its own. Fix: have it take the socket baton passes (LISTEN_FDS from fd 3, "+
					"sd_listen_fds), or run it with --capture-bind (and --ready bind) so that its bind(2) gets baton's socket",
					p.PID, p.Comm, w.Slot, ownAddrs(own))
				if l.Captured {
					msg += "; under --capture-bind it bound an address baton does not hold: give the listener the address the program binds"
				}
				return msg
			}
		}
		for _, sk := range l.Sockets {
			holds = holds || t.holds[sk.Inode]
		}
	}
	if anyTree && !holds {
		return "Likely cause: no ready worker's process holds the socket any more: the program closed the descriptor " +
			"baton passed, or never used it. Fix: have it accept on the socket from LISTEN_FDS (fd 3 onwards), or run it " +
			"with --capture-bind so that its own bind(2) gets baton's socket"
	}
	return "The workers hold the socket but none accepts: the program may be stuck before its accept loop, or ignore " +
		"the socket it inherited (LISTEN_FDS). Look at what a worker does (strace -p PID, a stack dump); a program that " +
		"binds its own port needs --capture-bind, and a wrapper script must exec the program"
}

// notExeced finds, in worker w's tree, a program the worker started as
// its child instead of exec-ing it: a process with LISTEN_FDS whose
// LISTEN_PID names the worker, running another program than the worker
// (a prefork server's children are copies of it, and use the sockets
// their parent received), and not a shell.
func notExeced(w Worker, t *tree) (proc, bool) {
	for _, d := range t.descendants {
		if d.ListenFDs && d.ListenPID == w.PID && d.PID != w.PID && !sameProgram(d, t.self) && !isShell(d) {
			return d, true
		}
	}
	return proc{}, false
}

// ownAddrs lists the addresses of listening sockets.
func ownAddrs(own []ownListener) string {
	addrs := make([]string, len(own))
	for i, o := range own {
		addrs[i] = o.Addr
	}
	return strings.Join(addrs, ", ")
}

// wrapperWarning warns when a ready worker is a shell that runs the
// program as its child instead of exec-ing it (a wrapper script without
// exec): LISTEN_PID then names the shell, and the stop signal reaches
// the shell, not the program. The child must have run for persist: a
// shell may run helpers before it execs the program (pyenv's shims do).
// One warning covers every such worker.
func (h *history) wrapperWarning(in Input, s *sample, persist time.Duration) (Warning, bool) {
	var first Worker
	var prog proc
	n := 0
	seen := map[[2]int]time.Time{}
	for _, w := range in.Workers {
		t := s.trees[w.PID]
		if t == nil || w.State != WorkerReady || !isShell(t.self) {
			continue
		}
		d, ok := notExeced(w, t)
		if !ok {
			continue
		}
		k := [2]int{w.PID, d.PID}
		since, ok := h.wrapped[k]
		if !ok {
			since = s.time
		}
		seen[k] = since
		if s.time.Sub(since) < persist {
			continue
		}
		if n == 0 {
			first, prog = w, d
		}
		n++
	}
	h.wrapped = seen
	if n == 0 {
		return Warning{}, false
	}
	others := ""
	switch {
	case n == 2:
		others = " (and so does 1 other worker)"
	case n > 2:
		others = fmt.Sprintf(" (and so do %d other workers)", n-1)
	}
	shell := shellName(s.trees[first.PID].self)
	return Warning{
		Code: WrapperWithoutExec,
		Message: fmt.Sprintf("%s is a shell (%s) that runs pid %d (%s) as its child instead of exec-ing it%s: LISTEN_PID=%d "+
			"names the shell, so a program that checks it (sd_listen_fds, go-systemd, baton's library) ignores the sockets "+
			"baton passes and may bind a port of its own, and baton's stop signal reaches the shell, not the program; end "+
			"the wrapper script with exec (%s), or run the program directly",
			workerName(first), shell, prog.PID, prog.Comm, others, first.PID, execHint(prog)),
	}, true
}

// execHint is the line a wrapper script should end with to run p: exec
// and p's command line, shortened.
func execHint(p proc) string {
	cmd := p.Cmdline
	if cmd == "" {
		cmd = p.Comm + ` "$@"`
	}
	return "exec " + shorten(cmd, 80)
}

// restartSlack is how much later than its backoff a slot's restart may
// start a worker (the exit is handled once the worker's output has been
// read, up to 200ms after it) and still count as that restart.
const restartSlack = time.Second

// slotWarnings warns about slots whose workers keep exiting: with
// "address already in use" (binds_own_port), or soon after they start
// (crash_loop). A slot is in such a streak while it waits to restart, or
// while its worker, started by that restart, has been up less than
// StableAfter; a worker a reload started ends it.
func slotWarnings(in Input, now time.Time, o Options) []Warning {
	started := map[int]time.Time{}
	for _, w := range in.Workers {
		started[w.PID] = w.Started
	}
	var warns []Warning
	for _, sl := range in.Slots {
		if sl.LastError == "" || sl.LastErrorTime.IsZero() {
			continue
		}
		streak := false
		switch sl.State {
		case SlotBackoff:
			streak = true
		case SlotUp:
			t, ok := started[sl.PID]
			streak = ok && now.Sub(t) < o.StableAfter && t.Sub(sl.LastErrorTime) <= sl.Backoff+restartSlack
		}
		if !streak {
			continue
		}
		next := ""
		if sl.State == SlotBackoff && sl.NextIn > 0 {
			next = "; the next try is in " + sl.NextIn.Round(100*time.Millisecond).String()
		}
		if addrInUse(sl.LastError) {
			warns = append(warns, bindsOwnPort(sl, in, next))
			continue
		}
		if n := quickExits(sl.Backoff, o.MinBackoff); n >= o.CrashLoop {
			warns = append(warns, Warning{
				Code: CrashLoop, Slot: intp(sl.Slot),
				Message: fmt.Sprintf("worker slot %d is crash-looping: %d workers in a row exited within %s of their start "+
					"(%s%s), and it serves nothing while it waits to restart: fix what makes the program exit, "+
					"and the next restart (or baton reload) picks the fix up; the last: %s",
					sl.Slot, n, roundDur(o.StableAfter), plural(sl.Restarts, "restart"), next, shorten(sl.LastError, 400)),
			})
		}
	}
	return warns
}

// quickExits is how many workers of a slot in a row exited within
// StableAfter of their start, as its backoff tells: the first restart
// waits minBackoff, each next one twice as long.
func quickExits(backoff, minBackoff time.Duration) int {
	n := 0
	for b := minBackoff; b > 0 && b <= backoff; b *= 2 {
		n++
	}
	return n
}

// addrInUse reports whether a worker's exit says that a bind failed with
// EADDRINUSE: "Address already in use" is how C (nginx's "(98: Address
// already in use)"), Python ("[Errno 98] Address already in use"), Go
// ("bind: address already in use"), Java, Ruby and Node ("listen
// EADDRINUSE") put it.
func addrInUse(s string) bool {
	s = strings.ToLower(s)
	return strings.Contains(s, "address already in use") || strings.Contains(s, "eaddrinuse")
}

// bindsOwnPort is the warning about a slot whose workers exit with
// "address already in use".
func bindsOwnPort(sl Slot, in Input, next string) Warning {
	msg := fmt.Sprintf("worker slot %d keeps exiting with \"address already in use\" (%s%s): the program binds a port "+
		"of its own instead of taking the socket baton passes it (LISTEN_FDS, from fd 3)", sl.Slot, plural(sl.Restarts, "restart"), next)
	if l, port, ok := namedPort(in, sl.LastError); ok {
		msg += fmt.Sprintf(", and port %d is listener %s's, which baton holds. Run the program with --capture-bind, so "+
			"that its bind(2) of %s gets baton's socket, and --ready bind, so that a worker counts as ready once it has "+
			"bound; or make it use the inherited socket (sd_listen_fds)", port, l.Name, listenerAddr(l))
	} else {
		msg += ". If that port is one of baton's listeners, run the program with --capture-bind (and --ready bind), so " +
			"that its bind(2) gets baton's socket, or make it use the inherited socket (sd_listen_fds); if it is another " +
			"port (an admin or metrics port), every worker binds it: give each slot its own (BATON_SLOT) or bind it in " +
			"one slot only"
	}
	return Warning{Code: BindsOwnPort, Slot: intp(sl.Slot), Message: msg}
}

// namedPort finds the TCP listener whose port the worker command names
// (python3 -m http.server 8080) or its last error does (nginx:
// "bind() to 0.0.0.0:8080 failed").
func namedPort(in Input, lastErr string) (Listener, int, bool) {
	var tokens []string
	for _, a := range in.Command {
		tokens = append(tokens, strings.FieldsFunc(a, notDigit)...)
	}
	for _, l := range in.Listeners {
		if l.Protocol != TCP || !l.Addr.IsValid() || l.Addr.Port() == 0 {
			continue
		}
		p := strconv.Itoa(int(l.Addr.Port()))
		for _, tok := range tokens {
			if tok == p {
				return l, int(l.Addr.Port()), true
			}
		}
		for rest := lastErr; ; {
			i := strings.Index(rest, ":"+p)
			if i < 0 {
				break
			}
			rest = rest[i+1+len(p):]
			if rest == "" || notDigit(rune(rest[0])) {
				return l, int(l.Addr.Port()), true
			}
		}
	}
	return Listener{}, 0, false
}

// notDigit reports whether r is not a decimal digit: it splits a command
// line into numbers.
func notDigit(r rune) bool { return !unicode.IsDigit(r) }

// shorten cuts s to at most n bytes, on a rune boundary, marking the cut.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// plural is n and the noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return itoa(n) + " " + noun + "s"
}
