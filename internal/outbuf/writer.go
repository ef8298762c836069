package outbuf

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"time"
)

// DefaultLimit is how many bytes a Writer holds for its file when
// Options.Limit is 0: 1 MiB, some seconds of a busy service's output,
// and little memory for baton.
const DefaultLimit = 1 << 20

// Backoff after a failed write (EPIPE, EIO, ENOSPC): the next attempt
// waits minBackoff, doubling up to maxBackoff, so that a file that keeps
// failing costs a write now and then, never a loop. Variables for tests.
var (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Options tune a Writer; the zero value means the defaults.
type Options struct {
	// Limit is the most bytes the Writer holds, the batch being written
	// included (DefaultLimit when 0). A notice may go over it by its own
	// length.
	Limit int
	// Notice formats the line written after lines were dropped (one line,
	// ending in a newline). Nil writes Drop.String. It is called with the
	// Writer's lock held: it must not write to the Writer.
	Notice func(Drop) []byte
}

// Drop describes lines a Writer dropped, for its notice.
type Drop struct {
	Name  string    // the Writer's name: "stdout", "stderr"
	Lines int64     // how many lines were dropped
	Since time.Time // when the first of them was
	Limit int       // the buffer's size, in bytes
	Err   error     // the write error that lost them; nil when the buffer was full
}

// Reason says in words why the lines were lost.
func (d Drop) Reason() string {
	if d.Err != nil {
		return fmt.Sprintf("writing to %s failed: %v", d.Name, d.Err)
	}
	return fmt.Sprintf("nothing read %s fast enough (its %s buffer was full)", d.Name, Size(d.Limit))
}

// String is the default notice: "baton: 12 lines of stderr dropped since
// 2025-01-02T15:04:05.000Z: nothing read stderr fast enough (its 1 MiB
// buffer was full)".
func (d Drop) String() string {
	lines := "lines"
	if d.Lines == 1 {
		lines = "line"
	}
	return fmt.Sprintf("baton: %d %s of %s dropped since %s: %s", d.Lines, lines, d.Name, d.Since.Format(timeFormat), d.Reason())
}

// timeFormat is how notices write times: RFC 3339 with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// Size formats a byte count the way baton's docs write limits: "1 MiB",
// "64 KiB", "300 B".
func Size(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// Stats is what a Writer holds and what it lost.
type Stats struct {
	Buffered int   // bytes waiting, the batch being written included
	Limit    int   // the most it holds
	Dropped  int64 // lines dropped since New
	// DroppingSince is when the first line was dropped that no notice
	// has reported yet; zero when none waits to be reported.
	DroppingSince time.Time
	// WritingSince is when the write in progress began; zero when the
	// Writer is idle. Long ago means the reader is not reading.
	WritingSince time.Time
	// Err is the last write's error; nil once a write worked.
	Err error
}

// notice is a notice line in a batch: where it is, and the drops it
// reports, which are pending again if it is not written whole.
type notice struct {
	start, end int
	d          Drop
}

// Writer is an io.Writer to a file that never blocks: see the package
// documentation. Each Write (or WriteLine) should be whole lines; it is
// taken or dropped whole. A Writer is safe for concurrent use.
type Writer struct {
	*core
	file *os.File // what File returns: the file, or an alias's own
}

// core is a Writer's buffer, counts and writing goroutine, which an
// alias shares.
type core struct {
	name   string
	f      *os.File // kept referenced: fd is its descriptor
	fd     int
	limit  int
	format func(Drop) []byte

	mu           sync.Mutex
	buf          []byte   // accepted, not yet taken by the writing goroutine
	notices      []notice // the notices in buf
	spare        []byte   // the last batch's storage, for the next
	inflight     int      // bytes of the batch being written
	writingSince time.Time
	pending      Drop  // lines dropped and not reported yet (Lines 0: none)
	stalled      bool  // a line found no room: drop until a write ends
	dropped      int64 // lines dropped since New
	lastErr      error
	attempts     int           // batches written or tried, for tests
	accepted     int64         // bytes taken into buf since New
	settled      int64         // of those, bytes written or lost
	progress     chan struct{} // closed and replaced when settled grows
	closing      bool          // Close was called: write what is held, then end
	exited       bool          // the writing goroutine has ended: writes are dropped

	wake chan struct{} // there is something to write (capacity 1)
	quit chan struct{} // closed by Close
	done chan struct{} // closed when the writing goroutine has ended
}

// New returns a Writer to f, which it names name in notices and errors,
// and starts its writing goroutine. f must stay open until Close has
// returned; the Writer never closes it.
func New(name string, f *os.File, o Options) *Writer {
	w := &core{
		name: name, f: f, fd: fileFd(f), limit: o.Limit, format: o.Notice,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		progress: make(chan struct{}),
	}
	if w.limit <= 0 {
		w.limit = DefaultLimit
	}
	if w.format == nil {
		w.format = func(d Drop) []byte { return []byte(d.String() + "\n") }
	}
	w.pending.Name, w.pending.Limit = name, w.limit
	go w.run()
	return &Writer{core: w, file: f}
}

// Alias returns a Writer for f that shares w's buffer, counts and
// writing goroutine, and writes to w's file: for stdout and stderr that
// are one file (2>&1, the journal's stream), so that their lines never
// interleave mid-line and keep their order. Only File differs.
func (w *Writer) Alias(f *os.File) *Writer { return &Writer{core: w.core, file: f} }

// Same reports whether w and o share one buffer (one is an alias of the
// other).
func (w *Writer) Same(o *Writer) bool { return o != nil && w.core == o.core }

// Name is the name New was given.
func (w *core) Name() string { return w.name }

// File is the file the Writer stands for, for a child that should write
// to it directly: the one given to New, or to Alias.
func (w *Writer) File() *os.File { return w.file }

// Write takes p (whole lines) to be written, or drops and counts it when
// the buffer has no room for it. It never blocks on the file and never
// fails.
func (w *core) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.admit(len(p), lines(p)) {
		w.buf = append(w.buf, p...)
		w.accepted += int64(len(p))
		w.kick()
	}
	w.mu.Unlock()
	return len(p), nil
}

// WriteLine is Write of prefix, line and a newline, without making the
// line first.
func (w *core) WriteLine(prefix, line string) {
	w.mu.Lock()
	if w.admit(len(prefix)+len(line)+1, 1) {
		w.buf = append(append(append(w.buf, prefix...), line...), '\n')
		w.accepted += int64(len(prefix) + len(line) + 1)
		w.kick()
	}
	w.mu.Unlock()
}

// admit reports whether n more bytes (of nl lines) fit; if not, they are
// counted as dropped. Once a line found no room, every line is dropped
// until a write ends (a short line that would still fit too): the gap in
// the output is one, and the notice, which goes before the first line
// taken after it, marks where it was and says how long it is. w.mu is
// held.
func (w *core) admit(n int, nl int64) bool {
	if w.exited || w.stalled || len(w.buf)+w.inflight+n > w.limit {
		w.stalled = !w.exited
		w.drop(nl, nil)
		w.kick() // an idle writer writes the notice, which ends the stall
		return false
	}
	if w.pending.Lines > 0 {
		w.addNotice()
	}
	return true
}

// drop counts nl lines as dropped, for err (nil: no room). w.mu is held.
func (w *core) drop(nl int64, err error) {
	w.dropped += nl
	w.pend(Drop{Lines: nl, Since: time.Now(), Err: err})
}

// pend adds d to the drops the next notice reports. w.mu is held.
func (w *core) pend(d Drop) {
	if w.pending.Lines == 0 || d.Since.Before(w.pending.Since) {
		w.pending.Since = d.Since
	}
	w.pending.Lines += d.Lines
	if d.Err != nil {
		w.pending.Err = d.Err
	}
}

// addNotice appends the notice of the pending drops to buf. w.mu is held.
func (w *core) addNotice() {
	line := w.format(w.pending)
	if len(line) == 0 || line[len(line)-1] != '\n' {
		line = append(line, '\n')
	}
	w.notices = append(w.notices, notice{start: len(w.buf), end: len(w.buf) + len(line), d: w.pending})
	w.buf = append(w.buf, line...)
	w.accepted += int64(len(line))
	w.pending = Drop{Name: w.name, Limit: w.limit}
	w.kick()
}

// kick wakes the writing goroutine.
func (w *core) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// lines counts the lines in p: its newlines, and a last line without one.
func lines(p []byte) int64 {
	n := int64(bytes.Count(p, []byte{'\n'}))
	if len(p) > 0 && p[len(p)-1] != '\n' {
		n++
	}
	return n
}

// run is the writing goroutine: it takes everything buffered as one batch
// and writes it, until Close and the buffer is empty.
func (w *core) run() {
	defer close(w.done)
	var backoff time.Duration
	for {
		w.mu.Lock()
		if len(w.buf) == 0 && w.pending.Lines > 0 {
			w.addNotice() // nothing else to write: the notice goes now
		}
		if len(w.buf) == 0 {
			if w.closing {
				w.exited = true
				w.mu.Unlock()
				return
			}
			w.mu.Unlock()
			select {
			case <-w.wake:
			case <-w.quit:
			}
			continue
		}
		batch, notices := w.buf, w.notices
		w.buf, w.notices, w.spare = w.spare[:0], nil, nil
		w.inflight, w.writingSince = len(batch), time.Now()
		w.attempts++
		w.mu.Unlock()

		n, err := w.write(batch)

		w.mu.Lock()
		w.inflight, w.writingSince, w.lastErr, w.stalled = 0, time.Time{}, err, false
		if err != nil {
			w.lost(batch, n, notices, err)
		}
		w.settle(len(batch))
		if cap(batch) <= 2*w.limit {
			w.spare = batch[:0]
		}
		closing := w.closing
		if err != nil && closing {
			// Baton is exiting and the file fails: what is left is lost.
			w.lost(w.buf, 0, w.notices, err)
			w.settle(len(w.buf))
			w.buf, w.notices, w.exited = nil, nil, true
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		if err == nil {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-w.quit:
			t.Stop()
		}
	}
}

// lost accounts for a batch whose bytes from written on did not reach the
// file: its lines are dropped, and the drops its unwritten notices
// reported are pending again. w.mu is held.
func (w *core) lost(batch []byte, written int, notices []notice, err error) {
	nl := lines(batch[written:])
	for _, nt := range notices {
		if nt.end > written {
			nl-- // a notice is not a line of output
			w.pend(nt.d)
		}
	}
	if nl > 0 {
		w.drop(nl, err)
	}
}

// settle records that n more accepted bytes were written or lost, and
// wakes Flush. w.mu is held.
func (w *core) settle(n int) {
	w.settled += int64(n)
	close(w.progress)
	w.progress = make(chan struct{})
}

// Flush waits until what was written before it has reached the file (or
// was lost to a write error), at most timeout. It returns an error when
// the time ran out: the reader is not reading.
func (w *core) Flush(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	w.mu.Lock()
	target := w.accepted
	for w.settled < target && !w.exited {
		ch := w.progress
		w.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("%s: %d bytes still unwritten after %s: nothing reads it", w.name, w.Stats().Buffered, timeout)
		}
		w.mu.Lock()
	}
	w.mu.Unlock()
	return nil
}

// Stats returns what the Writer holds and what it dropped.
func (w *core) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := Stats{Buffered: len(w.buf) + w.inflight, Limit: w.limit, Dropped: w.dropped, WritingSince: w.writingSince, Err: w.lastErr}
	if w.pending.Lines > 0 {
		st.DroppingSince = w.pending.Since
	}
	return st
}

// Close writes what is buffered, waiting at most timeout, and ends the
// writing goroutine. Later writes are dropped. If the file does not take
// everything within timeout (its reader is stopped), Close gives up and
// says so; the goroutine then ends when its write returns, if ever.
func (w *core) Close(timeout time.Duration) error {
	w.mu.Lock()
	if !w.closing {
		w.closing = true
		close(w.quit)
	}
	w.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.done:
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.pending.Lines > 0 {
			return fmt.Errorf("%s: %d lines lost: %s", w.name, w.pending.Lines, w.pending.Reason())
		}
		return nil
	case <-t.C:
		st := w.Stats()
		return fmt.Errorf("%s: gave up after %s with %d bytes unwritten: nothing reads it", w.name, timeout, st.Buffered)
	}
}
