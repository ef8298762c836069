package inspect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/sockdiag"
)

// Options tune an Inspector. The zero value of each field means its
// default.
type Options struct {
	// Log receives each warning when it first appears (level WARN) and
	// when it clears (INFO). nil logs nothing.
	Log *slog.Logger
	// CloseWaitAge is how long a worker's connection must stay in
	// CLOSE-WAIT before it counts as never closed (10s).
	CloseWaitAge time.Duration
	// RiseWindow is how far back a rise of ListenOverflows is reported
	// (1m).
	RiseWindow time.Duration
	// QueueFull is the accept queue fill above which it warns (0.8).
	QueueFull float64
	// FDUsage is the fraction of RLIMIT_NOFILE in use at which it warns
	// (0.8).
	FDUsage float64
	// TimeWait is how many TIME-WAIT sockets on one listener's port make a
	// pile-up (a quarter of net.ipv4.tcp_max_tw_buckets, at most 16384).
	TimeWait int
	// Persist is how long a condition that may pass by itself must last
	// before it is a warning (10s): a connection waiting in a TCP
	// listener's accept queue with none accepted meanwhile (nobody
	// accepts on the listener), a child of a wrapper shell (a shell
	// runs helpers before it execs the program: pyenv's and rbenv's
	// shims do).
	Persist time.Duration
	// StableAfter is how long a slot's worker must stay up for the slot
	// to count as no longer crash-looping: the supervisor's StableAfter
	// (10s).
	StableAfter time.Duration
	// MinBackoff is the supervisor's first restart backoff (100ms), from
	// which a slot's backoff tells how many of its workers in a row
	// exited within StableAfter of their start.
	MinBackoff time.Duration
	// CrashLoop is how many workers of a slot in a row must exit within
	// StableAfter of their start for the slot to be crash-looping (3).
	CrashLoop int
}

func (o Options) withDefaults() Options {
	if o.CloseWaitAge <= 0 {
		o.CloseWaitAge = 10 * time.Second
	}
	if o.RiseWindow <= 0 {
		o.RiseWindow = time.Minute
	}
	if o.QueueFull <= 0 {
		o.QueueFull = 0.8
	}
	if o.FDUsage <= 0 {
		o.FDUsage = 0.8
	}
	if o.Persist <= 0 {
		o.Persist = 10 * time.Second
	}
	if o.StableAfter <= 0 {
		o.StableAfter = 10 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.CrashLoop <= 0 {
		o.CrashLoop = 3
	}
	return o
}

// Inspector asks the kernel about baton's sockets and remembers what it
// needs to say that something is growing, rising, or when it first
// appeared. Create it with New; Close it when done.
type Inspector struct {
	opts Options
	now  func() time.Time // a seam for tests

	mu   sync.Mutex
	conn *sockdiag.Conn // nil until dialed, and after a failure
	hist *history
}

// New returns an Inspector. It opens its netlink socket on first use.
func New(o Options) *Inspector {
	return &Inspector{opts: o.withDefaults(), now: time.Now, hist: newHistory()}
}

// Close releases the netlink socket.
func (in *Inspector) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.conn == nil {
		return nil
	}
	err := in.conn.Close()
	in.conn = nil
	return err
}

// Inspect asks the kernel about the input's sockets and workers and
// returns the view, with warnings. It never fails as a whole: what could
// not be learned is listed in View.Errors. It logs warnings that appeared
// or cleared since the previous call.
func (in *Inspector) Inspect(ctx context.Context, input Input) *View {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.gather(ctx, input)
	v, raised, cleared := analyze(input, s, in.hist, in.opts)
	if log := in.opts.Log; log != nil {
		for _, w := range raised {
			log.Warn(w.Message, warningAttrs(w)...)
		}
		for _, w := range cleared {
			log.Info("warning cleared", warningAttrs(w, "was", w.Message)...)
		}
	}
	return v
}

// warningAttrs are the log attributes of w, then extra.
func warningAttrs(w Warning, extra ...any) []any {
	a := []any{"warning", string(w.Code)}
	if w.Listener != "" {
		a = append(a, "listener", w.Listener)
	}
	if w.Slot != nil {
		a = append(a, "slot", *w.Slot)
	}
	if w.PID != 0 {
		a = append(a, "pid", w.PID)
	}
	return append(a, extra...)
}

// gather asks the kernel and /proc everything analyze needs.
func (in *Inspector) gather(ctx context.Context, input Input) *sample {
	start := in.now()
	s := &sample{
		time:   start,
		queues: map[uint64]sockdiag.Queue{},
		conns:  map[int][]sockdiag.Socket{},
		fds:    map[int]fdUsage{},
		procs:  map[int]proc{},
		trees:  map[int]*tree{},
	}
	fail := func(err error) { s.errs = append(s.errs, err.Error()) }
	if n, err := readSysctl("net/core/somaxconn"); err == nil {
		s.somaxconn = n
	} else {
		fail(err)
	}
	if n, err := readSysctl("net/ipv4/tcp_max_tw_buckets"); err == nil {
		s.maxTW = n
	}

	if err := in.gatherSockets(input, s); err != nil && in.conn != nil {
		// The error is in s.errs. A netlink socket that failed is
		// replaced on the next call.
		in.conn.Close()
		in.conn = nil
	}
	if ctx.Err() != nil {
		fail(fmt.Errorf("kernel view cut short: %w", ctx.Err()))
		s.took = in.now().Sub(start)
		return s
	}

	var pids []int
	for _, w := range input.Workers {
		pids = append(pids, w.PID)
		open, soft, hard, err := sockdiag.FDUsage(w.PID)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) { // not exited since the snapshot
				fail(fmt.Errorf("fd use of worker pid %d: %w", w.PID, err))
			}
			continue
		}
		s.fds[w.PID] = fdUsage{open, soft, hard}
		if p, err := readProc(w.PID, false); err == nil {
			s.procs[w.PID] = p
		}
	}
	if len(s.conns) > 0 {
		owners, err := sockdiag.Owners(pids...)
		if err != nil {
			fail(fmt.Errorf("which worker holds which connection: %w", err))
		}
		s.owners = owners
	}
	if needTrees(input, s, in.hist, in.opts.Persist) {
		in.gatherTrees(input, s)
	}
	var err error
	if s.netstat, err = sockdiag.ReadNetstat(); err != nil {
		fail(fmt.Errorf("host counters: %w", err))
	}
	if s.sockstat, err = sockdiag.ReadSockstat(); err != nil {
		fail(fmt.Errorf("host socket counts: %w", err))
	}
	s.took = in.now().Sub(start)
	return s
}

// gatherSockets fills the queues and connections from sock_diag. It
// returns an error only when the netlink socket itself is unusable; a
// question the kernel cannot answer is noted in s.errs.
func (in *Inspector) gatherSockets(input Input, s *sample) error {
	if len(input.Listeners) == 0 {
		return nil
	}
	if in.conn == nil {
		c, err := sockdiag.Dial()
		if err != nil {
			s.errs = append(s.errs, err.Error())
			return nil
		}
		in.conn = c
	}
	c := in.conn
	var tcp, unixInodes []uint64
	for _, l := range input.Listeners {
		for _, sk := range l.Sockets {
			switch l.Protocol {
			case TCP:
				tcp = append(tcp, sk.Inode)
			case Unix, UnixGram:
				unixInodes = append(unixInodes, sk.Inode)
			}
		}
	}
	note := func(err error) bool {
		if err == nil {
			return false
		}
		s.errs = append(s.errs, err.Error())
		return !errors.Is(err, sockdiag.ErrNotSupported) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES)
	}
	if len(tcp) > 0 {
		q, err := c.ListenQueues(tcp...)
		if note(err) {
			return errBroken
		}
		for ino, v := range q {
			s.queues[ino] = v
		}
	}
	if len(unixInodes) > 0 {
		q, err := c.UnixQueues(unixInodes...)
		if note(err) {
			return errBroken
		}
		for ino, v := range q {
			s.queues[ino] = v
		}
	}
	// Connections on each TCP port, and UDP sockets' queues; one query per
	// family and port, however many listeners share it.
	type key struct {
		proto  uint8
		family uint8
		port   uint16
	}
	asked := map[key][]sockdiag.Socket{}
	for li, l := range input.Listeners {
		if l.Protocol != TCP && l.Protocol != UDP {
			continue
		}
		k := key{unix.IPPROTO_TCP, family(l), l.Addr.Port()}
		states := sockdiag.AllStates &^ sockdiag.States(sockdiag.Listen)
		if l.Protocol == UDP {
			k.proto, states = unix.IPPROTO_UDP, sockdiag.AllStates
		}
		socks, ok := asked[k]
		if !ok {
			var err error
			socks, err = c.Query(sockdiag.Query{Family: k.family, Protocol: k.proto, States: states, LocalPort: k.port})
			if note(err) {
				return errBroken
			}
			if err != nil {
				continue
			}
			asked[k] = socks
		}
		if l.Protocol == TCP {
			s.conns[li] = socks
			continue
		}
		for _, sk := range socks {
			for _, ls := range l.Sockets {
				if sk.Inode == ls.Inode {
					s.queues[sk.Inode] = sockdiag.Queue{State: sk.State, RecvQ: sk.RecvQ, SendQ: sk.SendQ}
				}
			}
		}
	}
	return nil
}

var errBroken = errors.New("the sock_diag netlink socket failed")

// needTrees reports whether the workers' process trees are worth reading
// (they cost a read of each descendant's /proc): a worker is a shell (a
// wrapper script), or a connection has waited in a TCP listener's accept
// queue for persist or more, as the history says (to tell why nobody
// accepts it). A busy server's queue, whose connections come and go,
// costs nothing more.
func needTrees(input Input, s *sample, h *history, persist time.Duration) bool {
	for _, p := range s.procs {
		if isShell(p) {
			return true
		}
	}
	for li, l := range input.Listeners {
		for _, sk := range queued(l, s.conns[li]) {
			if w, ok := h.queued[sk.Cookie]; ok && sk.Cookie != 0 && s.time.Sub(w.first) >= persist {
				return true
			}
		}
	}
	return false
}

// gatherTrees reads the process tree of every worker that is not
// draining (its descendants, each one's command name and LISTEN_PID),
// which of baton's sockets the tree holds, and the TCP listening sockets
// in it that are not baton's.
func (in *Inspector) gatherTrees(input Input, s *sample) {
	batons := map[uint64]bool{}
	for _, l := range input.Listeners {
		for _, sk := range l.Sockets {
			batons[sk.Inode] = true
		}
	}
	treeOf := map[int]*tree{} // by the pid of any process in it
	var pids []int
	for _, w := range input.Workers {
		self, ok := s.procs[w.PID]
		if !ok || w.State == WorkerDraining {
			continue
		}
		kids, err := descendants(w.PID, maxDescendants)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				s.errs = append(s.errs, fmt.Sprintf("processes of worker pid %d: %v", w.PID, err))
			}
			continue
		}
		t := &tree{self: self, own: map[int][]ownListener{}, holds: map[uint64]bool{}}
		treeOf[w.PID] = t
		pids = append(pids, w.PID)
		for _, k := range kids {
			p, err := readProc(k, true)
			if err != nil {
				continue // exited meanwhile
			}
			t.descendants = append(t.descendants, p)
			treeOf[k] = t
			pids = append(pids, k)
		}
		s.trees[w.PID] = t
	}
	if len(pids) == 0 {
		return
	}
	owners, err := sockdiag.Owners(pids...)
	if err != nil {
		s.errs = append(s.errs, fmt.Sprintf("sockets of the workers' processes: %v", err))
		return
	}
	listening := map[uint64]string{}
	if in.conn != nil {
		socks, err := in.conn.Query(sockdiag.Query{Protocol: unix.IPPROTO_TCP, States: sockdiag.States(sockdiag.Listen)})
		if err != nil {
			s.errs = append(s.errs, fmt.Sprintf("listening sockets: %v", err))
		}
		for _, sk := range socks {
			listening[sk.Inode] = sk.Local.String()
		}
	}
	for ino, holders := range owners {
		for _, o := range holders {
			t := treeOf[o.PID]
			switch addr, ok := listening[ino]; {
			case batons[ino]:
				t.holds[ino] = true
			case ok && !slices.ContainsFunc(t.own[o.PID], func(l ownListener) bool { return l.Inode == ino }):
				t.own[o.PID] = append(t.own[o.PID], ownListener{Addr: addr, Inode: ino})
			}
		}
	}
	for _, t := range s.trees {
		for _, own := range t.own {
			slices.SortFunc(own, func(a, b ownListener) int { return strings.Compare(a.Addr, b.Addr) })
		}
	}
}

// family is the address family whose sockets a listener's connections
// are: an IPv6 listener's are IPv6 sockets, IPv4-mapped ones included.
func family(l Listener) uint8 {
	if l.Addr.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// readSysctl reads an integer from /proc/sys.
func readSysctl(name string) (int, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", strings.ReplaceAll(name, "/", "."), err)
	}
	return n, nil
}
