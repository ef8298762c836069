package handoff

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/control"
	"github.com/baton-dev/baton/internal/fdpass"
)

// Config configures a Store. Zero fields take their defaults.
type Config struct {
	// Timeout is how long a stored connection waits for a worker to
	// adopt it before the store closes it (DefaultTimeout).
	Timeout time.Duration
	// MaxState bounds one connection's state (DefaultMaxState, at most
	// MaxStateLimit).
	MaxState int
	Log      *slog.Logger

	// room, when set, replaces the descriptor room the store computes
	// from RLIMIT_NOFILE: it gets the descriptors the store holds and
	// has granted, and returns how many more it may take. Tests use it.
	room func(committed int) int
	// check, when set, replaces CheckConn for each received descriptor.
	// Tests that pass socketpairs use it.
	check func(fd int, name string, listeners map[string][]net.Addr) error
}

// WithDefaults fills the zero fields of c and checks the rest.
func (c Config) WithDefaults() (Config, error) {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxState == 0 {
		c.MaxState = DefaultMaxState
	}
	if c.Timeout < 0 {
		return c, fmt.Errorf("handoff timeout %s: want a positive duration", c.Timeout)
	}
	if c.MaxState < 0 || c.MaxState > MaxStateLimit {
		return c, fmt.Errorf("handoff state limit %d bytes: want 1 to %d", c.MaxState, MaxStateLimit)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Source is the worker a handoff connection comes from.
type Source struct {
	PID, Slot, Generation int
	// Listeners are the stream listeners the worker's connections may
	// come from, by name, with their bound addresses: each descriptor
	// received is checked against them (CheckConn).
	Listeners map[string][]net.Addr
}

// Worker is a live worker as the supervisor sees it.
type Worker struct {
	PID, Slot, Generation int
	// Adopt is set when the store may push connections to the worker:
	// it is ready, in the generation that serves, and not stopping.
	Adopt bool
}

// Stats counts connections through the store. Held is a gauge; the other
// counts grow from zero when baton starts.
type Stats struct {
	// Held is how many connections the store holds now, waiting for a
	// worker or on their way to one.
	Held int `json:"held"`
	// Stored counts connections received from workers.
	Stored int `json:"stored"`
	// Adopted counts connections a worker acknowledged.
	Adopted int `json:"adopted"`
	// Expired counts connections closed without being adopted: at their
	// deadline, or when baton stopped.
	Expired int `json:"expired"`
	// Refused counts transfers the store refused, for room or for their
	// size; their connections stayed with the worker that sent them.
	Refused int `json:"refused"`
	// Unconfirmed counts connections pushed to a worker that did not
	// answer within TransferTimeout: baton closed its copies, and the
	// worker may or may not hold them. Never sent twice.
	Unconfirmed int `json:"unconfirmed"`
	// Rejected counts descriptors a worker handed off that were not
	// connections accepted on its listeners (CheckConn): baton closed
	// its copies and told the worker, which keeps its own.
	Rejected int `json:"rejected"`
	// Senders and Subscribers are the handoff and adopt connections open
	// now.
	Senders     int `json:"senders"`
	Subscribers int `json:"subscribers"`
	// MaxState is the bound on one connection's state, in bytes.
	MaxState int `json:"max_state"`
}

// entry is one stored connection.
type entry struct {
	fd       int
	name     string
	state    []byte
	src      int // pid of the worker that handed it off
	deadline time.Time
}

// subscriber is one worker's adopt subscription.
type subscriber struct {
	w       Worker
	maxFDs  int
	work    chan []*entry // the batch assigned to it; capacity 1
	retire  chan struct{} // closed when it must take nothing more
	busy    bool          // a batch is assigned or being pushed
	retired bool
	listed  bool // SetWorkers has listed its pid since it subscribed
	adopted int
}

// Store holds connections handed off by draining workers until workers of
// the next generation adopt them. It is safe for concurrent use: every
// transfer runs on the goroutine of its connection, and the supervisor
// only tells it which workers may adopt (SetWorkers). No method blocks on
// socket I/O while holding the store's lock.
type Store struct {
	cfg    Config
	log    *slog.Logger
	closer *fdpass.Closer

	mu       sync.Mutex
	queue    []*entry // waiting, by deadline (arrival order)
	subs     map[*subscriber]struct{}
	workers  map[int]Worker
	refuse   error // set by StopAccepting
	closed   bool
	reserved int // room granted to senders and not used yet
	stats    Stats
	timer    *time.Timer
	others   fdEstimate
	freed    chan struct{} // closed when room frees, if someone waits
}

// NewStore returns an empty store.
func NewStore(cfg Config) (*Store, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, log: cfg.Log, subs: map[*subscriber]struct{}{}, workers: map[int]Worker{}}
	// What the store lets go of (expired connections, its copies of
	// adopted ones, descriptors it refused) came from a worker, and its
	// last close may block: the store's lock and the transfers never wait
	// for it. Room frees when the closer is done.
	s.closer = fdpass.NewCloser(4, func() {
		s.mu.Lock()
		s.roomFreedLocked()
		s.mu.Unlock()
	})
	s.stats.MaxState = cfg.MaxState
	return s, nil
}

// Config returns the store's configuration, defaults filled in.
func (s *Store) Config() Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// Configure changes the timeout and the state bound (zero: the default).
// Connections stored from now on wait the new timeout; grants and
// subscriptions from now on carry the new bound.
func (s *Store) Configure(timeout time.Duration, maxState int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cfg := s.cfg
	cfg.Timeout, cfg.MaxState = timeout, maxState
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return err
	}
	s.cfg = cfg
	s.stats.MaxState = cfg.MaxState
	return nil
}

// Stats returns the store's counts.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// SetWorkers tells the store every live worker that is not stopping, and
// which of them may adopt now. A subscription whose worker was listed and
// no longer is (it exited or was asked to stop) gets nothing more and is
// closed once a transfer in flight has ended. The supervisor calls it
// from its loop; it does no I/O.
func (s *Store) SetWorkers(ws []Worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.workers)
	for _, w := range ws {
		s.workers[w.PID] = w
	}
	for sub := range s.subs {
		if _, ok := s.workers[sub.w.PID]; ok {
			sub.listed = true
		} else if sub.listed {
			s.retireLocked(sub)
		}
	}
	s.dispatchLocked()
}

// StopAccepting makes the store refuse every handoff from now on with err
// (baton is stopping: no generation will adopt).
func (s *Store) StopAccepting(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refuse = err
}

// Close closes every stored connection (counted as expired) and ends
// every subscription. Transfers still running store nothing more.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if n := len(s.queue); n > 0 {
		s.log.Warn("closing connections no worker adopted: baton is stopping", "connections", n)
	}
	for _, e := range s.queue {
		s.dropLocked(e, &s.stats.Expired)
	}
	s.queue = nil
	if s.timer != nil {
		s.timer.Stop()
	}
	for sub := range s.subs {
		s.retireLocked(sub)
	}
}

func (s *Store) retireLocked(sub *subscriber) {
	if !sub.retired {
		sub.retired = true
		close(sub.retire)
	}
}

// dropLocked closes a stored connection (through the closer) and counts
// it in *counter.
func (s *Store) dropLocked(e *entry, counter *int) {
	s.closer.Close(e.fd)
	s.stats.Held--
	*counter++
	s.roomFreedLocked()
}

// roomFreedLocked wakes the senders waiting for room.
func (s *Store) roomFreedLocked() {
	if s.freed != nil {
		close(s.freed)
		s.freed = nil
	}
}

// grant says how much a worker's first transfer may carry, or refuses:
// baton is stopping, or its RLIMIT_NOFILE has no room left (after
// waiting for some, as grantLocked does). The room stays reserved until
// the caller hands the grant to Receive or gives it back with release:
// a second connection granted in between must not count it as free
// (two first transfers granted the same room overran the limit, and the
// kernel cut the second short with MSG_CTRUNC).
func (s *Store) grant(ctx context.Context) (Grant, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grantLocked(ctx)
}

// release gives back the room reserved for g when no transfer will use it.
func (s *Store) release(g Grant) {
	s.mu.Lock()
	s.reserved -= g.MaxFDs
	s.roomFreedLocked()
	s.mu.Unlock()
}

// grantLocked computes a grant and reserves its room. When the store has
// no room but a worker is adopting, room frees as it does: grantLocked
// waits for it, up to transferTimeout, instead of refusing, so that a
// move larger than baton's RLIMIT_NOFILE flows through baton, the senders
// held back at the pace of the adopters. It unlocks s.mu while it waits.
func (s *Store) grantLocked(ctx context.Context) (Grant, error) {
	var timeout <-chan time.Time
	for {
		g, err := s.tryGrantLocked()
		var full noRoomError
		if err == nil || !errors.As(err, &full) || !s.adoptingLocked() {
			if err != nil {
				s.stats.Refused++
			}
			return g, err
		}
		if timeout == nil {
			t := time.NewTimer(transferTimeout)
			defer t.Stop()
			timeout = t.C
		}
		if s.freed == nil {
			s.freed = make(chan struct{})
		}
		freed := s.freed
		s.mu.Unlock()
		select {
		case <-freed:
			s.mu.Lock()
			continue
		case <-timeout:
			err = fmt.Errorf("%w (waited %s for the next generation to adopt what baton holds)", err, transferTimeout)
		case <-ctx.Done():
		}
		s.mu.Lock()
		s.stats.Refused++
		return Grant{}, err
	}
}

// tryGrantLocked is grantLocked without waiting.
func (s *Store) tryGrantLocked() (Grant, error) {
	if s.closed {
		return Grant{}, errors.New("baton is shutting down: no connection can be handed off; close it yourself")
	}
	if s.refuse != nil {
		return Grant{}, s.refuse
	}
	room, err := s.roomLocked()
	if err != nil {
		return Grant{}, err
	}
	n := min(MaxFDs, room)
	s.reserved += n
	return Grant{MaxFDs: n, MaxState: s.cfg.MaxState, MaxBytes: MaxTransferBytes}, nil
}

// adoptingLocked reports whether a worker may adopt now, so that what
// the store holds will leave it.
func (s *Store) adoptingLocked() bool {
	for sub := range s.subs {
		if w, ok := s.workers[sub.w.PID]; ok && w.Adopt && !sub.retired {
			return true
		}
	}
	return false
}

// noRoomError is the refusal of a store whose room is used up.
type noRoomError struct{ msg string }

func (e noRoomError) Error() string { return e.msg }

// roomLocked is how many more descriptors the store may take, or an
// error that says why none.
func (s *Store) roomLocked() (int, error) {
	committed := s.stats.Held + s.reserved + s.closer.Pending()
	if s.cfg.room != nil {
		if r := s.cfg.room(committed); r > 0 {
			return r, nil
		}
		return 0, noRoomError{fmt.Sprintf("no room for more connections (test limit); %d held", s.stats.Held)}
	}
	lim, err := GetNOFILE()
	if err != nil {
		return 0, err
	}
	others := s.others.get(s.stats.Held, false)
	open := others + committed
	room := int(min(lim.Soft, 1<<30)) - open - Reserve
	if room < 2*MaxFDs {
		// Tight: the count may be up to fdRefresh old, and a reload opens
		// descriptors meanwhile (pipes, pidfds, connections). Count again
		// rather than grant room the kernel then cuts short (MSG_CTRUNC).
		others = s.others.get(s.stats.Held, true)
		open = others + committed
		room = int(min(lim.Soft, 1<<30)) - open - Reserve
	}
	if room < 1 {
		return 0, noRoomError{fmt.Sprintf("baton (pid %d) has no room for more connections: about %d descriptors open or promised of its RLIMIT_NOFILE %d, %d of them kept in reserve, %d handed-off connections held: raise baton's limit (LimitNOFILE= in its systemd unit, or ulimit -n before baton run), or let the next generation adopt what baton holds first",
			os.Getpid(), open, lim.Soft, Reserve, s.stats.Held)}
	}
	return room, nil
}

// fdEstimate caches how many descriptors the process holds besides the
// store's own, recounted at most every refresh.
type fdEstimate struct {
	n  int
	at time.Time
}

const fdRefresh = 200 * time.Millisecond

// fdRefreshTight is how old the count may be when room is tight.
const fdRefreshTight = 20 * time.Millisecond

func (f *fdEstimate) get(held int, fresh bool) int {
	if age := time.Since(f.at); age > fdRefresh || fresh && age > fdRefreshTight {
		if n, err := CountFDs(); err == nil {
			f.n, f.at = max(n-held, 0), time.Now()
		}
	}
	return f.n
}

// ServeHandoff serves a handoff request on c, the worker socket connection
// it came on: it answers with the first grant, lets c carry descriptors
// (the worker socket refuses them otherwise: control.AcceptRights), and
// receives transfers until the worker closes c or ctx ends (Receive).
// When it could not answer with a grant, it returns answered false and
// the reason, for the caller to answer with.
func (s *Store) ServeHandoff(ctx context.Context, c *net.UnixConn, src Source) (answered bool, err error) {
	g, err := s.grant(ctx)
	if err != nil {
		return false, err
	}
	if err := control.AcceptRights(c); err != nil {
		s.release(g)
		return false, fmt.Errorf("handoff: letting the connection carry descriptors: %w", err)
	}
	// Whatever the worker still has queued when the exchange ends leaves
	// through the closer: closing c with descriptors queued would close
	// them here.
	defer fdpass.Drain(c, s.discard)
	if err := WriteResult(c, g); err != nil {
		s.release(g)
		return true, err
	}
	return true, s.Receive(ctx, c, src, g)
}

// discard gives descriptors to the store's closer.
func (s *Store) discard(fds []int) { s.closer.Close(fds...) }

// Receive serves a handoff connection after its first grant g (from
// grant, whose room Receive now owns and gives back) has been sent: it
// receives transfers until the worker closes the connection or ctx ends,
// storing each and answering with the next grant. It returns nil when
// the worker closed the connection between transfers.
func (s *Store) Receive(ctx context.Context, c *net.UnixConn, src Source, g Grant) error {
	s.mu.Lock()
	s.stats.Senders++
	s.mu.Unlock()
	total := 0
	defer func() {
		s.mu.Lock()
		s.stats.Senders--
		s.reserved -= g.MaxFDs
		s.roomFreedLocked()
		s.mu.Unlock()
		if total > 0 {
			s.log.Info("connections handed off", "pid", src.PID, "slot", src.Slot, "generation", src.Generation, "connections", total)
		}
	}()
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	for {
		ictx, cancel := context.WithTimeout(ctx, idleTimeout)
		err := waitReadableCtx(ictx, c, raw)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no transfer for %s: the handoff connection is closed (send the next one sooner, or open a new connection): %w", idleTimeout, err)
			}
			return err
		}
		tctx, cancel := context.WithTimeout(ctx, transferTimeout)
		fds, err := fdpass.Recv(tctx, c, fdpass.Limits{MaxFDs: g.MaxFDs, MaxMeta: max(g.MaxState, 1), MaxBytes: MaxTransferBytes, Discard: s.discard})
		cancel()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			s.mu.Lock()
			s.stats.Refused++
			s.mu.Unlock()
			s.log.Warn("refused a handoff transfer; the worker keeps those connections", "pid", src.PID, "slot", src.Slot, "generation", src.Generation, "err", err)
			return err
		}
		fds, refused := s.sort(fds, src)
		total += len(fds)
		s.mu.Lock()
		s.reserved -= g.MaxFDs
		s.stats.Rejected += len(refused)
		g = Grant{}
		s.storeLocked(fds, src.PID)
		next, gerr := s.grantLocked(ctx)
		s.mu.Unlock()
		next.Stored = len(fds)
		next.Refused = refused
		if err := writeReply(c, next, gerr); err != nil {
			return err
		}
		if gerr != nil {
			s.log.Warn("refusing further handoff transfers", "pid", src.PID, "err", gerr)
			return gerr
		}
		g = next
	}
}

// sort checks each descriptor of a transfer (CheckConn) and returns
// those that are connections on src's listeners, and the others' refusals,
// having given the refused descriptors to the closer.
func (s *Store) sort(fds []fdpass.FD, src Source) ([]fdpass.FD, []Refusal) {
	var refused []Refusal
	kept := fds[:0]
	check := CheckConn
	if s.cfg.check != nil {
		check = s.cfg.check
	}
	for i, f := range fds {
		if err := check(f.Fd, f.Name, src.Listeners); err != nil {
			refused = append(refused, Refusal{Index: i, Reason: err.Error()})
			s.closer.Close(f.Fd)
			continue
		}
		kept = append(kept, f)
	}
	if len(refused) > 0 {
		s.log.Warn("refused handed-off descriptors that are not connections on the worker's listeners; the worker keeps them", "pid", src.PID, "slot", src.Slot, "generation", src.Generation, "refused", len(refused), "of", len(refused)+len(kept), "first", refused[0].Reason)
	}
	return kept, refused
}

// storeLocked adds received connections to the queue.
func (s *Store) storeLocked(fds []fdpass.FD, src int) {
	if s.closed {
		for _, f := range fds {
			s.closer.Close(f.Fd)
		}
		s.stats.Stored += len(fds)
		s.stats.Expired += len(fds)
		return
	}
	deadline := time.Now().Add(s.cfg.Timeout)
	wasEmpty := len(s.queue) == 0
	sorted := wasEmpty || !deadline.Before(s.queue[len(s.queue)-1].deadline)
	for _, f := range fds {
		s.queue = append(s.queue, &entry{fd: f.Fd, name: f.Name, state: f.Meta, src: src, deadline: deadline})
	}
	s.stats.Stored += len(fds)
	s.stats.Held += len(fds)
	if !sorted {
		// The timeout was shortened: keep the queue in deadline order.
		slices.SortStableFunc(s.queue, func(a, b *entry) int { return a.deadline.Compare(b.deadline) })
	}
	if wasEmpty || !sorted {
		s.armLocked()
	}
	s.dispatchLocked()
}

// requeueLocked puts back a batch a push did not deliver, in deadline
// order, and closes what has expired meanwhile.
func (s *Store) requeueLocked(b []*entry) {
	if s.closed {
		for _, e := range b {
			s.dropLocked(e, &s.stats.Expired)
		}
		return
	}
	now := time.Now()
	expired := 0
	for _, e := range b {
		if !e.deadline.After(now) {
			s.dropLocked(e, &s.stats.Expired)
			expired++
			continue
		}
		s.queue = append(s.queue, e)
	}
	if expired > 0 {
		s.log.Warn("closed handed-off connections no worker adopted in time", "connections", expired, "timeout", s.cfg.Timeout)
	}
	slices.SortStableFunc(s.queue, func(a, b *entry) int { return a.deadline.Compare(b.deadline) })
	s.armLocked()
	s.dispatchLocked()
}

// armLocked sets the deadline timer for the queue's first entry.
func (s *Store) armLocked() {
	if len(s.queue) == 0 || s.closed {
		return
	}
	d := time.Until(s.queue[0].deadline)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, s.expire)
	} else {
		s.timer.Reset(d)
	}
}

// expire closes the connections whose deadline has passed.
func (s *Store) expire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	i := 0
	for ; i < len(s.queue) && !s.queue[i].deadline.After(now); i++ {
		s.dropLocked(s.queue[i], &s.stats.Expired)
		s.queue[i] = nil
	}
	if i > 0 {
		s.queue = s.queue[i:]
		s.log.Warn("closed handed-off connections no worker adopted in time", "connections", i, "timeout", s.cfg.Timeout)
	}
	s.armLocked()
}

// dispatchLocked assigns waiting connections to idle subscribers that may
// adopt, spread evenly, those with the fewest adoptions first.
func (s *Store) dispatchLocked() {
	if len(s.queue) == 0 || s.closed {
		return
	}
	var idle []*subscriber
	for sub := range s.subs {
		if w, ok := s.workers[sub.w.PID]; ok && w.Adopt && !sub.busy && !sub.retired {
			idle = append(idle, sub)
		}
	}
	if len(idle) == 0 {
		return
	}
	slices.SortFunc(idle, func(a, b *subscriber) int {
		return cmp.Or(cmp.Compare(a.adopted, b.adopted), cmp.Compare(a.w.Slot, b.w.Slot), cmp.Compare(a.w.PID, b.w.PID))
	})
	per := (len(s.queue) + len(idle) - 1) / len(idle)
	for _, sub := range idle {
		if len(s.queue) == 0 {
			break
		}
		b := s.takeLocked(min(per, sub.maxFDs), sub.w.PID)
		if len(b) == 0 {
			continue
		}
		sub.busy = true
		sub.work <- b // never blocks: a subscriber has one batch at most
	}
}

// takeLocked removes up to n entries, not from pid, within
// MaxTransferBytes, oldest first.
func (s *Store) takeLocked(n int, pid int) []*entry {
	var b []*entry
	bytes := 0
	keep := s.queue[:0]
	skipped := false
	i := 0
	for ; i < len(s.queue) && len(b) < n; i++ {
		e := s.queue[i]
		size := entrySize(e.name, e.state)
		if e.src == pid || len(b) > 0 && bytes+size > MaxTransferBytes {
			keep = append(keep, e)
			skipped = true
			continue
		}
		b = append(b, e)
		bytes += size
	}
	if !skipped {
		clear(s.queue[:i])
		s.queue = s.queue[i:]
		return b
	}
	rest := len(s.queue) - i
	copy(s.queue[len(keep):], s.queue[i:])
	clear(s.queue[len(keep)+rest:])
	s.queue = s.queue[:len(keep)+rest]
	return b
}

// Subscribe checks an adopt request's params and returns the
// subscription to answer it with.
func (s *Store) Subscribe(p AdoptParams) (Subscription, error) {
	if p.MaxFDs < 0 || p.MaxFDs > MaxFDs {
		return Subscription{}, fmt.Errorf("adopt: max_fds %d: want 1 to %d, or 0 for %d", p.MaxFDs, MaxFDs, MaxFDs)
	}
	n := p.MaxFDs
	if n == 0 {
		n = MaxFDs
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return Subscription{MaxFDs: n, MaxState: s.cfg.MaxState, MaxBytes: MaxTransferBytes}, nil
}

// errPeerGone ends a subscription whose worker closed it.
var errPeerGone = errors.New("the worker closed its subscription")

// Adopt serves an adopt subscription of worker w after sub (from
// Subscribe) has been sent: whenever connections wait and w may adopt,
// it pushes them, one transfer at a time. It returns when the worker
// closes the subscription, is retired by SetWorkers, refuses a transfer,
// or ctx ends.
func (s *Store) Adopt(ctx context.Context, c *net.UnixConn, w Worker, sub Subscription) error {
	me := &subscriber{w: w, maxFDs: sub.MaxFDs, work: make(chan []*entry, 1), retire: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	_, me.listed = s.workers[w.PID]
	s.subs[me] = struct{}{}
	s.stats.Subscribers++
	s.dispatchLocked()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, me)
		s.stats.Subscribers--
		select {
		case b := <-me.work:
			s.requeueLocked(b)
		default:
		}
		s.mu.Unlock()
		if me.adopted > 0 {
			s.log.Info("connections adopted", "pid", w.PID, "slot", w.Slot, "generation", w.Generation, "connections", me.adopted)
		}
	}()
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	// Pushes go to the process that subscribed (the worker, or a process
	// it started), and only while it is the peer.
	peer, err := fdpass.PeerCred(c)
	if err != nil {
		return err
	}
	for {
		b, err := s.nextBatch(ctx, c, raw, me)
		if b == nil {
			return err
		}
		if err := s.push(ctx, c, me, peer.PID, b); err != nil {
			return err
		}
	}
}

// nextBatch waits for a batch for me while watching the connection: the
// worker sends nothing on it between transfers, so anything to read means
// it closed the subscription.
func (s *Store) nextBatch(ctx context.Context, c *net.UnixConn, raw syscall.RawConn, me *subscriber) ([]*entry, error) {
	watch := make(chan error, 1)
	go func() { watch <- waitReadable(raw) }()
	stopWatch := func() error {
		c.SetReadDeadline(aLongTimeAgo)
		err := <-watch
		c.SetReadDeadline(time.Time{})
		return err
	}
	select {
	case b := <-me.work:
		gone := stopWatch() == nil
		s.mu.Lock()
		defer s.mu.Unlock()
		if gone || me.retired {
			me.busy = false
			s.requeueLocked(b)
			if gone {
				return nil, errPeerGone
			}
			return nil, nil
		}
		return b, nil
	case err := <-watch:
		if err == nil {
			return nil, errPeerGone
		}
		return nil, err
	case <-me.retire:
		stopWatch()
		return nil, nil
	case <-ctx.Done():
		stopWatch()
		return nil, ctx.Err()
	}
}

// push sends batch b to me's worker and settles it: adopted, back in the
// queue (the worker refused or is gone: it does not hold them), or closed
// as unconfirmed (no answer in time: it might hold them, so they are
// never sent to another worker).
func (s *Store) push(ctx context.Context, c *net.UnixConn, me *subscriber, peer int, b []*entry) error {
	fds := make([]fdpass.FD, len(b))
	for i, e := range b {
		fds[i] = fdpass.FD{Fd: e.fd, Name: e.name, Kind: Kind, Meta: e.state}
	}
	pctx, cancel := context.WithTimeout(ctx, transferTimeout)
	err := fdpass.SendAllow(pctx, c, fds, func(cr fdpass.Cred) error {
		if cr.PID != peer {
			return fmt.Errorf("the subscription belongs to pid %d", peer)
		}
		return nil
	})
	unsure := err != nil && pctx.Err() != nil && !errors.Is(err, fdpass.ErrRefused)
	cancel()
	if err == nil {
		// The worker holds them: baton's copies go to the closer (if the
		// worker has closed its own already, baton's close is the last,
		// and may block).
		done := make([]int, len(b))
		for i, e := range b {
			done[i] = e.fd
		}
		s.closer.Close(done...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	me.busy = false
	switch {
	case err == nil:
		s.stats.Held -= len(b)
		s.stats.Adopted += len(b)
		s.roomFreedLocked()
		me.adopted += len(b)
		s.dispatchLocked()
		return nil
	case unsure:
		for _, e := range b {
			s.dropLocked(e, &s.stats.Unconfirmed)
		}
		s.log.Warn("a worker did not acknowledge connections in time; closed baton's copies, the worker may hold them", "pid", me.w.PID, "connections", len(b), "err", err)
		return err
	}
	s.log.Warn("a worker did not adopt connections; they wait for another", "pid", me.w.PID, "connections", len(b), "err", err)
	s.requeueLocked(b)
	return err
}

// transferTimeout is TransferTimeout, idleTimeout IdleTimeout; tests
// shorten them.
var (
	transferTimeout = TransferTimeout
	idleTimeout     = IdleTimeout
)

// aLongTimeAgo is a deadline that has passed: setting it wakes a blocked
// read.
var aLongTimeAgo = time.Unix(1, 0)

// waitReadable waits until the connection has something to read (bytes
// or the end of the stream) without reading it, and returns nil then, or
// the error that ended the wait (a deadline, a closed connection).
func waitReadable(raw syscall.RawConn) error {
	return raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN && err != unix.EINTR
	})
}

// waitReadableCtx is waitReadable until ctx ends.
func waitReadableCtx(ctx context.Context, c *net.UnixConn, raw syscall.RawConn) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(aLongTimeAgo) })
	err := waitReadable(raw)
	if !stop() {
		c.SetReadDeadline(time.Time{})
		return ctx.Err()
	}
	return err
}
