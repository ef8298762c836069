package inspect

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// sample is what one Inspect call gathered from the kernel and /proc,
// before analysis. analyze is a pure function of it and the history, so
// the rules are tested without a kernel.
type sample struct {
	time      time.Time
	took      time.Duration
	somaxconn int // 0: unknown
	maxTW     int // net.ipv4.tcp_max_tw_buckets; 0: unknown
	// queues holds the queue lengths of the listeners' sockets by inode;
	// an inode the kernel did not report is absent.
	queues map[uint64]sockdiag.Queue
	// conns holds, by listener index, the TCP sockets on the listener's
	// port (of its address family); nil when not asked or not answered.
	conns map[int][]sockdiag.Socket
	// owners maps socket inodes to the workers holding them.
	owners map[uint64][]sockdiag.Owner
	fds    map[int]fdUsage
	// procs holds each live worker's command name and parent, by pid.
	procs map[int]proc
	// trees holds, by worker pid, the worker's process tree and the
	// sockets in it; read only when needTrees says so.
	trees    map[int]*tree
	netstat  map[string]map[string]int64
	sockstat map[string]map[string]int64
	errs     []string
}

type fdUsage struct {
	open       int
	soft, hard uint64
}

// history is what an Inspector remembers between views.
type history struct {
	// active holds the warnings of the last view by key, with the time
	// each first appeared.
	active map[string]Warning
	// closeWait holds when each socket (by cookie) was first seen in
	// CLOSE-WAIT on a worker.
	closeWait map[uint64]time.Time
	// closeWaitCount is each worker's CLOSE-WAIT count in the last view.
	closeWaitCount map[int]int
	// overflows is the host's ListenOverflows counter over the rise window.
	overflows series
	// queued holds the connections seen waiting in the TCP listeners'
	// accept queues in the last view, by socket cookie.
	queued map[uint64]waitingConn
	// left holds, by listener name, when a connection was last seen to
	// have left the listener's accept queue (accepted, or dropped).
	left map[string]time.Time
	// wrapped holds when each program a worker runs as its child instead
	// of exec-ing it was first seen, by worker and child pid.
	wrapped map[[2]int]time.Time
}

func newHistory() *history {
	return &history{
		active: map[string]Warning{}, closeWait: map[uint64]time.Time{}, closeWaitCount: map[int]int{},
		queued: map[uint64]waitingConn{}, left: map[string]time.Time{}, wrapped: map[[2]int]time.Time{},
	}
}

type point struct {
	t time.Time
	v int64
}

// series is a counter's samples over a window.
type series []point

// rise adds a sample and returns how much the counter rose since the
// newest sample at least window old (or the oldest there is), and over
// how long. A counter that went down (a new network namespace) starts
// over.
func (s *series) rise(now time.Time, v int64, window time.Duration) (int64, time.Duration) {
	if n := len(*s); n > 0 && v < (*s)[n-1].v {
		*s = nil
	}
	*s = append(*s, point{now, v})
	base := 0
	for i, p := range *s {
		if now.Sub(p.t) >= window {
			base = i
		}
	}
	*s = (*s)[base:]
	b := (*s)[0]
	return v - b.v, now.Sub(b.t)
}

// analyze turns a sample into a view, with warnings, and updates the
// history. It returns the warnings that appeared and those that cleared.
func analyze(in Input, s *sample, h *history, o Options) (v *View, raised, cleared []Warning) {
	v = &View{
		Time:      s.time,
		Took:      math.Round(s.took.Seconds()*1e6) / 1e6,
		Listeners: []ListenerView{},
		Workers:   []WorkerView{},
		Warnings:  []Warning{},
		Errors:    s.errs,
		Host:      Host{Somaxconn: s.somaxconn, MaxTimeWait: s.maxTW, Sockstat: s.sockstat},
	}
	if tcpExt := s.netstat["TcpExt"]; tcpExt != nil {
		v.Host.Netstat = map[string]int64{}
		for _, name := range NetstatCounters {
			if n, ok := tcpExt[name]; ok {
				v.Host.Netstat[name] = n
			}
		}
	}
	var warns []Warning

	// Which worker holds which connection.
	workerOf := map[int]int{} // pid → index in in.Workers
	for i, w := range in.Workers {
		workerOf[w.PID] = i
	}
	perWorker := make([]map[string]int, len(in.Workers))
	closeWait := make([]int, len(in.Workers))
	stuck := make([]int, len(in.Workers))
	oldest := make([]time.Time, len(in.Workers))
	seenCW := map[uint64]time.Time{}
	seenQ := map[uint64]waitingConn{}

	var full []string // listeners above the queue threshold, for the overflow warning
	for li, l := range in.Listeners {
		lv := ListenerView{Name: l.Name, Protocol: l.Protocol, Backlog: l.Backlog, Sockets: []SocketView{}}
		for _, sk := range l.Sockets {
			sv := SocketView{Inode: sk.Inode}
			if sk.Slot != Shared {
				sv.Slot = intp(sk.Slot)
			}
			if q, ok := s.queues[sk.Inode]; ok {
				sv.State, sv.RecvQ, sv.SendQ = q.State.String(), q.RecvQ, q.SendQ
			}
			lv.Sockets = append(lv.Sockets, sv)
			if w, ok := queueFull(l, sv, o.QueueFull); ok {
				warns = append(warns, w)
				full = append(full, fmt.Sprintf("%s%s (%d of %d)", l.Name, slotSuffix(sv.Slot), sv.RecvQ, sv.SendQ))
			}
		}
		if w, ok := backlogClamped(l, lv.Sockets, s.somaxconn); ok {
			warns = append(warns, w)
		}
		if socks, ok := s.conns[li]; ok && l.Protocol == TCP {
			if n, oldest, stalled := h.acceptStall(l, queued(l, socks), s.time, o.Persist, seenQ); stalled {
				if w, ok := notAccepting(l, lv, n, s.time.Sub(oldest), in, s); ok {
					warns = append(warns, w)
				}
			}
		}
		if socks, ok := s.conns[li]; ok && l.Protocol == TCP {
			lv.Connections = map[string]int{}
			for _, sk := range socks {
				if sk.State == sockdiag.Listen || !onListener(l, sk) {
					continue
				}
				state := sk.State.String()
				lv.Connections[state]++
				if sk.Inode == 0 {
					continue // queued, half-open or closed: no process holds it
				}
				for _, pid := range ownerPIDs(s.owners[sk.Inode]) {
					wi, ok := workerOf[pid]
					if !ok {
						continue
					}
					if perWorker[wi] == nil {
						perWorker[wi] = map[string]int{}
					}
					perWorker[wi][state]++
					if sk.State != sockdiag.CloseWait {
						continue
					}
					closeWait[wi]++
					id := sk.Cookie
					if id == 0 {
						id = sk.Inode
					}
					first, ok := h.closeWait[id]
					if !ok {
						first = s.time
					}
					seenCW[id] = first
					if s.time.Sub(first) >= o.CloseWaitAge {
						stuck[wi]++
						if oldest[wi].IsZero() || first.Before(oldest[wi]) {
							oldest[wi] = first
						}
					}
				}
			}
			if w, ok := timeWaitPileUp(l, lv.Connections[sockdiag.TimeWait.String()], s, o); ok {
				warns = append(warns, w)
			}
		}
		v.Listeners = append(v.Listeners, lv)
	}
	h.closeWait = seenCW
	h.queued = seenQ

	if tcpExt := s.netstat["TcpExt"]; tcpExt != nil {
		if n, ok := tcpExt["ListenOverflows"]; ok {
			rose, over := h.overflows.rise(s.time, n, o.RiseWindow)
			if rose > 0 {
				warns = append(warns, overflowWarning(rose, over, full))
			}
		}
	}

	cwCount := map[int]int{}
	for i, w := range in.Workers {
		wv := WorkerView{PID: w.PID, Slot: w.Slot, Generation: w.Generation, Connections: perWorker[i]}
		if u, ok := s.fds[w.PID]; ok {
			wv.FDs, wv.FDLimit, wv.FDLimitHard = u.open, limit(u.soft), limit(u.hard)
			warns = append(warns, nofileWarnings(w, u, o.FDUsage)...)
		}
		v.Workers = append(v.Workers, wv)
		cwCount[w.PID] = closeWait[i]
		if stuck[i] > 0 {
			warns = append(warns, closeWaitWarning(w, closeWait[i], stuck[i], s.time.Sub(oldest[i]), h.closeWaitCount[w.PID]))
		}
	}
	h.closeWaitCount = cwCount
	if w, ok := h.wrapperWarning(in, s, o.Persist); ok {
		warns = append(warns, w)
	}
	warns = append(warns, slotWarnings(in, s.time, o)...)

	// Stamp each warning with when it first appeared; note the new and
	// the cleared ones.
	now := map[string]Warning{}
	for i, w := range warns {
		w.Severity = w.Code.Severity()
		k := warningKey(w)
		if old, ok := h.active[k]; ok {
			w.Since = old.Since
		} else {
			w.Since = s.time
			raised = append(raised, w)
		}
		warns[i] = w
		now[k] = w
	}
	for k, w := range h.active {
		if _, ok := now[k]; !ok {
			cleared = append(cleared, w)
		}
	}
	sort.Slice(cleared, func(i, j int) bool { return warningKey(cleared[i]) < warningKey(cleared[j]) })
	h.active = now
	v.Warnings = warns
	return v, raised, cleared
}

// onListener reports whether a socket found on the listener's port is on
// its address: every address when the listener is bound to the
// unspecified one.
func onListener(l Listener, s sockdiag.Socket) bool {
	if s.Local.Port() != l.Addr.Port() {
		return false
	}
	a := l.Addr.Addr().Unmap()
	return a.IsUnspecified() || s.Local.Addr().Unmap() == a
}

// ownerPIDs lists the distinct pids among a socket's owners.
func ownerPIDs(owners []sockdiag.Owner) []int {
	var pids []int
	for i, o := range owners {
		if i == 0 || o.PID != owners[i-1].PID {
			pids = append(pids, o.PID)
		}
	}
	return pids
}

func queueFull(l Listener, s SocketView, threshold float64) (Warning, bool) {
	if !s.Listening() || s.RecvQ == 0 {
		return Warning{}, false
	}
	fill := float64(s.RecvQ) / float64(max(s.SendQ, 1))
	if fill <= threshold {
		return Warning{}, false
	}
	return Warning{
		Code: AcceptQueueFull, Listener: l.Name, Slot: s.Slot,
		Message: fmt.Sprintf("listener %s%s: accept queue holds %d connections of at most %d (%.0f%%): "+
			"the workers are not accepting fast enough, and once it is full the kernel drops new connections "+
			"(ListenOverflows); add workers (--workers), find what keeps them from calling accept, or raise the backlog",
			l.Name, slotSuffix(s.Slot), s.RecvQ, s.SendQ, 100*fill),
	}, true
}

// backlogClamped warns when a listener's accept queue is shorter than
// the backlog baton asked listen(2) for: the maximum the kernel reports
// for the socket (or else somaxconn) is below it. When somaxconn explains
// it, somaxconn capped it (backlog_clamped); when the maximum is below
// somaxconn too, a later listen(2) call on the socket lowered it
// (backlog_lowered): a worker's, and under --capture-bind the program's
// own, on the socket baton installed at its bind.
func backlogClamped(l Listener, socks []SocketView, somaxconn int) (Warning, bool) {
	if l.Backlog <= 0 || (l.Protocol != TCP && l.Protocol != Unix) {
		return Warning{}, false
	}
	eff := -1
	for _, s := range socks {
		if s.Listening() {
			eff = int(s.SendQ)
			break
		}
	}
	if eff < 0 && somaxconn > 0 {
		eff = min(l.Backlog, somaxconn)
	}
	if eff < 0 || eff >= l.Backlog {
		return Warning{}, false
	}
	if somaxconn > 0 && eff < min(l.Backlog, somaxconn) {
		return backlogLowered(l, eff, somaxconn), true
	}
	return Warning{
		Code: BacklogClamped, Listener: l.Name,
		Message: fmt.Sprintf("listener %s: backlog %d is capped at %d by net.core.somaxconn, so the accept queue holds "+
			"at most %d connections; to get %d, run sysctl -w net.core.somaxconn=%d (and persist it in /etc/sysctl.d/), "+
			"then restart baton: the cap is applied when a socket starts listening",
			l.Name, l.Backlog, eff, eff+1, l.Backlog, l.Backlog),
	}, true
}

// backlogLowered is the warning about a listener whose accept queue a
// later listen(2) call shortened to eff.
func backlogLowered(l Listener, eff, somaxconn int) Warning {
	who := "a worker called listen(2) again on the socket it inherited, with backlog " + itoa(eff)
	if l.Captured {
		who = fmt.Sprintf("the program called listen(%d): under --capture-bind its bind(2) got baton's socket, so its "+
			"own listen(2) set that socket's backlog (Python's socketserver asks for 5, nginx for 511)", eff)
	}
	return Warning{
		Code: BacklogLowered, Listener: l.Name,
		Message: fmt.Sprintf("listener %s: the accept queue holds at most %d connections, not the %d baton asked listen(2) "+
			"for, and net.core.somaxconn (%d) does not explain it: %s; raise the backlog the program asks for to %d or "+
			"more (Python: request_queue_size; nginx: listen ... backlog=N; Go's net.Listen asks for somaxconn), "+
			"then baton reload (or, if somaxconn was %d when baton began listening, restart baton)",
			l.Name, eff+1, l.Backlog, somaxconn, who, l.Backlog, eff),
	}
}

// timeWaitThreshold is how many TIME-WAIT sockets on one port make a
// pile-up: the option, or a quarter of tcp_max_tw_buckets up to 16384.
func timeWaitThreshold(s *sample, o Options) int {
	if o.TimeWait > 0 {
		return o.TimeWait
	}
	if s.maxTW > 0 {
		return max(1, min(16384, s.maxTW/4))
	}
	return 16384
}

func timeWaitPileUp(l Listener, n int, s *sample, o Options) (Warning, bool) {
	if n < timeWaitThreshold(s, o) {
		return Warning{}, false
	}
	host := ""
	if tw, ok := s.sockstat["TCP"]["tw"]; ok && s.maxTW > 0 {
		host = fmt.Sprintf("; the host has %d of net.ipv4.tcp_max_tw_buckets %d, past which it drops TIME-WAIT state early", tw, s.maxTW)
	}
	return Warning{
		Code: TimeWait, Listener: l.Name,
		Message: fmt.Sprintf("listener %s: %d connections on port %d are in TIME-WAIT: the server closes connections "+
			"first, and each then stays for 60s%s; keep connections alive (HTTP keep-alive) or let clients close first "+
			"(net.ipv4.tcp_tw_reuse does not help a server)",
			l.Name, n, l.Addr.Port(), host),
	}, true
}

func overflowWarning(rose int64, over time.Duration, full []string) Warning {
	where := "; none of baton's accept queues is near full now, so look for the listener with `ss -ltn` " +
		"(Recv-Q near Send-Q) and `nstat -az TcpExtListenOverflows`"
	if len(full) > 0 {
		where = "; baton's " + strings.Join(full, ", ") + " is near full: add workers or raise the backlog"
	}
	return Warning{
		Code: ListenOverflows,
		Message: fmt.Sprintf("host: TcpExt ListenOverflows rose by %d in the last %s: an accept queue overflowed "+
			"and the kernel dropped the connections%s", rose, roundDur(over), where),
	}
}

// nofileDefault is the soft RLIMIT_NOFILE most systems start processes
// with.
const nofileDefault = 1024

func nofileWarnings(w Worker, u fdUsage, threshold float64) []Warning {
	var warns []Warning
	who := workerName(w)
	if u.soft == nofileDefault {
		hard := "its hard limit " + limitString(u.hard)
		warns = append(warns, Warning{
			Code: NofileDefault, PID: w.PID, Slot: intp(w.Slot),
			Message: fmt.Sprintf("%s runs with RLIMIT_NOFILE %d, the default soft limit: it cannot hold much more "+
				"than 1000 connections before accept fails with EMFILE; raise it before baton starts (ulimit -n, "+
				"LimitNOFILE= in a systemd unit, --ulimit nofile= in docker; %s) or have the program raise its "+
				"soft limit to the hard one", who, u.soft, hard),
		})
	}
	if u.soft > 0 && u.soft != math.MaxUint64 && float64(u.open) >= threshold*float64(u.soft) {
		warns = append(warns, Warning{
			Code: NofileHeadroom, PID: w.PID, Slot: intp(w.Slot),
			Message: fmt.Sprintf("%s has %d of its %d fds open (%.0f%%): at the limit accept fails with EMFILE "+
				"and clients wait in the accept queue; raise RLIMIT_NOFILE, or look for a descriptor leak "+
				"(ls -l /proc/%d/fd)", who, u.open, u.soft, 100*float64(u.open)/float64(u.soft), w.PID),
		})
	}
	return warns
}

func closeWaitWarning(w Worker, n, stuck int, age time.Duration, before int) Warning {
	trend := ""
	if n > before && before > 0 {
		trend = fmt.Sprintf(", up from %d", before)
	}
	return Warning{
		Code: CloseWait, PID: w.PID, Slot: intp(w.Slot),
		Message: fmt.Sprintf("%s holds %d connections in CLOSE-WAIT%s, %d of them for %s or more: their clients "+
			"closed them and the program never called close(); each keeps an fd and memory until it does, so "+
			"find the code path that stops using a connection without closing it",
			workerName(w), n, trend, stuck, roundDur(age)),
	}
}

func workerName(w Worker) string {
	return fmt.Sprintf("worker slot %d (pid %d, generation %d)", w.Slot, w.PID, w.Generation)
}

func slotSuffix(slot *int) string {
	if slot == nil {
		return ""
	}
	return " slot " + itoa(*slot)
}

func limit(v uint64) int64 {
	if v > math.MaxInt64 {
		return -1
	}
	return int64(v)
}

func limitString(v uint64) string {
	if v == math.MaxUint64 {
		return "is unlimited"
	}
	return "is " + strconv.FormatUint(v, 10)
}

func roundDur(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func intp(i int) *int { return &i }

func itoa(i int) string { return strconv.Itoa(i) }
