package logring

import (
	"context"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"
)

// DefaultLimit is a Ring's bound in bytes when New is given 0: 1 MiB,
// some thousands of lines.
const DefaultLimit = 1 << 20

// MaxLine is the longest text a line keeps; the rest is cut and the line
// marked Truncated.
const MaxLine = 4 << 10

// LineOverhead is what a line costs besides its text, in the Ring's bound
// and a Follower's: the size of its bookkeeping (a Line).
const LineOverhead = int(unsafe.Sizeof(Line{}))

// FollowerLimit is the most bytes (text and overhead) a Follower's queue
// holds for a reader that has not taken them: 256 KiB.
const FollowerLimit = 256 << 10

// Sources of lines.
const (
	SourceWorker = "worker" // a worker's stdout or stderr
	SourceBaton  = "baton"  // baton's own log
)

// Line is one line of output.
type Line struct {
	// Seq numbers the lines a Ring took, from 1, without gaps: a gap
	// between two lines a reader got is lines it missed.
	Seq  uint64
	Time time.Time // when baton read the line
	// Source is SourceWorker or SourceBaton.
	Source string
	// Slot, Generation and PID are the worker's; zero for baton's lines.
	Slot, Generation, PID int
	// Stream is "stdout" or "stderr" for a worker, "log" for baton.
	Stream string
	// Text is the line without its newline, at most MaxLine bytes.
	Text string
	// Truncated says Text was cut at MaxLine.
	Truncated bool
}

// size is what l costs in a bound.
func (l *Line) size() int { return len(l.Text) + LineOverhead }

// Filter selects lines; its zero value selects every line.
type Filter struct {
	// Slot and Generation, when set, select the lines of workers of that
	// slot or generation (and so none of baton's).
	Slot, Generation *int
}

// Match reports whether l is one f selects.
func (f Filter) Match(l *Line) bool {
	if f.Slot == nil && f.Generation == nil {
		return true
	}
	if l.Source != SourceWorker {
		return false
	}
	return (f.Slot == nil || *f.Slot == l.Slot) && (f.Generation == nil || *f.Generation == l.Generation)
}

// Stats says what a Ring holds and what it let go.
type Stats struct {
	Lines     int    // lines held
	Bytes     int    // their cost (text and overhead), at most Limit
	Limit     int    // the bound
	Added     uint64 // lines taken since New
	Evicted   uint64 // lines evicted to make room
	Truncated uint64 // lines cut at MaxLine
	Followers int    // followers now
	// FollowerDropped counts the lines followers lost, not reading fast
	// enough.
	FollowerDropped uint64
}

// Ring holds the most recent lines within a bound in bytes. It is safe
// for concurrent use.
type Ring struct {
	limit    int
	maxLines int // limit / LineOverhead: no more lines can fit

	mu        sync.Mutex
	lines     []Line // a circular buffer: n lines from head
	head, n   int
	bytes     int
	seq       uint64
	evicted   uint64
	truncated uint64
	dropped   uint64 // by followers that left
	followers map[*Follower]struct{}
}

// New returns a Ring that holds at most limit bytes of lines
// (DefaultLimit when limit <= 0; at least one line of MaxLine).
func New(limit int) *Ring {
	if limit <= 0 {
		limit = DefaultLimit
	}
	limit = max(limit, MaxLine+LineOverhead)
	return &Ring{limit: limit, maxLines: limit / LineOverhead, followers: map[*Follower]struct{}{}}
}

// Limit is the Ring's bound in bytes.
func (r *Ring) Limit() int { return r.limit }

// Add takes a line: it numbers it (Seq), stamps it with the time when
// Time is zero, cuts its text at MaxLine, evicts the oldest lines it
// needs room from, and offers it to every follower whose filter it
// matches. It never waits for a reader.
func (r *Ring) Add(l Line) {
	if l.Time.IsZero() {
		l.Time = time.Now()
	}
	if len(l.Text) > MaxLine {
		l.Text, l.Truncated = cut(l.Text, MaxLine), true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	l.Seq = r.seq
	if l.Truncated {
		r.truncated++
	}
	r.hold(l)
	for f := range r.followers {
		if f.filter.Match(&l) {
			f.offer(l)
		}
	}
}

// Restore takes the lines a previous baton held (an upgrade hands them
// over), oldest first, before r takes any of its own: they keep their
// numbers and times, and r numbers its own lines after theirs. Lines
// beyond r's bound are dropped, oldest first, as Add would have; a Ring
// that already took lines restores nothing.
func (r *Ring) Restore(lines []Line) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seq != 0 {
		return
	}
	for _, l := range lines {
		if l.Seq <= r.seq {
			continue // out of order: not from a Ring
		}
		if len(l.Text) > MaxLine {
			l.Text, l.Truncated = cut(l.Text, MaxLine), true
		}
		r.hold(l)
		r.seq = l.Seq
	}
}

// hold keeps l, evicting the oldest lines it needs room from. r.mu is
// held.
func (r *Ring) hold(l Line) {
	size := l.size()
	for r.n > 0 && (r.bytes+size > r.limit || r.n == r.maxLines) {
		r.evictOldest()
	}
	r.push(l)
	r.bytes += size
}

// cut returns the first n bytes of s at most, cut before a rune that
// would be split, as a copy: the line s came from can be much longer, and
// must not stay in memory through a substring.
func cut(s string, n int) string {
	for i := n; i > 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			n = i
			break
		}
	}
	return strings.Clone(s[:n])
}

// push appends l, growing the buffer (doubling, up to maxLines) when it
// is full. r.mu is held.
func (r *Ring) push(l Line) {
	if r.n == len(r.lines) {
		grown := make([]Line, min(max(2*len(r.lines), 64), r.maxLines))
		for i := range r.n {
			grown[i] = r.lines[(r.head+i)%len(r.lines)]
		}
		r.lines, r.head = grown, 0
	}
	r.lines[(r.head+r.n)%len(r.lines)] = l
	r.n++
}

// evictOldest drops the oldest line. r.mu is held.
func (r *Ring) evictOldest() {
	old := &r.lines[r.head]
	r.bytes -= old.size()
	*old = Line{} // let its text go
	r.head = (r.head + 1) % len(r.lines)
	r.n--
	r.evicted++
}

// Tail returns the last n lines that f selects, oldest first; every line
// held that f selects when n <= 0.
func (r *Ring) Tail(f Filter, n int) []Line {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tail(f, n)
}

// tail is Tail with r.mu held.
func (r *Ring) tail(f Filter, n int) []Line {
	var out []Line
	for i := r.n - 1; i >= 0 && (n <= 0 || len(out) < n); i-- {
		l := &r.lines[(r.head+i)%len(r.lines)]
		if f.Match(l) {
			out = append(out, *l)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Follow returns the last n lines that f selects (as Tail; none when
// n < 0) and a Follower that gets every line f selects added after them:
// none is missed or repeated in between. The Follower's queue holds at
// most limit bytes (FollowerLimit when limit <= 0). Close it when done.
func (r *Ring) Follow(f Filter, n, limit int) ([]Line, *Follower) {
	if limit <= 0 {
		limit = FollowerLimit
	}
	fl := &Follower{ring: r, filter: f, limit: limit, wake: make(chan struct{}, 1)}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.followers[fl] = struct{}{}
	if n < 0 {
		return nil, fl
	}
	return r.tail(f, n), fl
}

// Stats returns what the Ring holds.
func (r *Ring) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{Lines: r.n, Bytes: r.bytes, Limit: r.limit, Added: r.seq, Evicted: r.evicted,
		Truncated: r.truncated, Followers: len(r.followers), FollowerDropped: r.dropped}
	for f := range r.followers {
		f.mu.Lock()
		st.FollowerDropped += f.droppedTotal
		f.mu.Unlock()
	}
	return st
}

// Follower is a reader of the lines added to a Ring after it began: see
// Ring.Follow.
type Follower struct {
	ring   *Ring
	filter Filter
	limit  int
	wake   chan struct{} // lines or drops wait (capacity 1)

	mu           sync.Mutex
	queue        []Line
	bytes        int
	dropped      int64 // lines lost since the last Next
	stalled      bool  // a line found no room: drop until Next
	droppedTotal uint64
	closed       bool
}

// offer queues l, or drops and counts it when the queue is full. Once a
// line was dropped, every line is dropped until the reader takes the
// queue: the gap is one, right after what it takes. r.mu is held.
func (f *Follower) offer(l Line) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	if size := l.size(); f.stalled || f.bytes+size > f.limit {
		f.stalled = true
		f.dropped++
		f.droppedTotal++
	} else {
		f.queue = append(f.queue, l)
		f.bytes += size
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Next waits until lines or drops wait, or ctx is done, and returns the
// lines queued (oldest first) and how many lines were dropped right
// after them, for want of room. It returns ctx's error when ctx is done
// first.
func (f *Follower) Next(ctx context.Context) ([]Line, int64, error) {
	for {
		f.mu.Lock()
		lines, dropped := f.queue, f.dropped
		f.queue, f.bytes, f.dropped, f.stalled = nil, 0, 0, false
		f.mu.Unlock()
		if len(lines) > 0 || dropped > 0 {
			return lines, dropped, nil
		}
		select {
		case <-f.wake:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// Close ends the Follower: the Ring no longer offers it lines.
func (f *Follower) Close() {
	r := f.ring
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.followers[f]; !ok {
		return
	}
	delete(r.followers, f)
	f.mu.Lock()
	f.closed = true
	r.dropped += f.droppedTotal
	f.queue = nil
	f.mu.Unlock()
}
