package outbuf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/batontest"
)

// waitFor polls cond until it reports true, for at most 10 seconds, and
// fails with its last detail. It waits for a state; it times nothing.
func waitFor(tb testing.TB, what string, cond func() (bool, string)) {
	tb.Helper()
	batontest.WaitFor(tb, 10*time.Second, func() error {
		if ok, detail := cond(); !ok {
			return fmt.Errorf("waiting for %s: last: %s", what, detail)
		}
		return nil
	})
}

// smallPipe is a pipe whose buffer is one page, so that a reader that
// does not read makes writes block at once.
func smallPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, 4096); err != nil {
		t.Logf("F_SETPIPE_SZ: %v (the pipe keeps its 64 KiB)", err)
	}
	return r, w
}

// TestNeverBlocksAndReportsDrops: with a reader that does not read, every
// write returns at once, what does not fit is dropped and counted, and
// once the reader reads, the notice comes first, then the lines written
// after the drops: every line written is either read whole or counted.
func TestNeverBlocksAndReportsDrops(t *testing.T) {
	batontest.CheckLeaks(t)
	r, wf := smallPipe(t)
	defer r.Close()
	defer wf.Close()
	const limit = 16 << 10
	w := New("stdout", wf, Options{Limit: limit})

	// A direct write to this pipe would block after 4 KiB; these are 4000
	// lines of 100 bytes.
	line := strings.Repeat("x", 90)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := range 2000 {
			fmt.Fprintf(w, "%05d %s\n", i, line)
			w.WriteLine("", fmt.Sprintf("%05d %s", 2000+i, line))
		}
	}()
	select {
	case <-wrote:
	case <-time.After(10 * time.Second):
		t.Fatal("writes blocked on a pipe nobody reads")
	}
	st := w.Stats()
	if st.Dropped == 0 || st.Buffered > limit || st.DroppingSince.IsZero() {
		t.Fatalf("stats after 400 KB into a 16 KiB buffer nobody drains: %+v; want lines dropped, at most %d buffered, dropping since set", st, limit)
	}
	waitFor(t, "the writer to block on the full pipe", func() (bool, string) {
		st := w.Stats()
		return !st.WritingSince.IsZero(), fmt.Sprintf("%+v", st)
	})
	dropped := st.Dropped

	// A line written after the drops, with the reader still asleep, is
	// dropped too; then the reader wakes up.
	w.WriteLine("", "after the drops")
	got := make(chan []string)
	go func() {
		var ls []string
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ls = append(ls, sc.Text())
		}
		got <- ls
	}()
	waitFor(t, "the buffer to drain", func() (bool, string) {
		st := w.Stats()
		return st.Buffered == 0 && st.DroppingSince.IsZero(), fmt.Sprintf("%+v", st)
	})
	w.WriteLine("", "last")
	if err := w.Flush(5 * time.Second); err != nil {
		t.Fatalf("Flush with the reader reading: %v", err)
	}
	if err := w.Close(5 * time.Second); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wf.Close()
	ls := <-got

	// Each notice counts the lines dropped since the one before (writing
	// may have worked for a moment while the burst filled the buffer);
	// together they count every line dropped, and every line written is
	// read whole or counted.
	var read int
	var reported int64
	lastNotice := -1
	for i, l := range ls {
		switch {
		case strings.HasPrefix(l, "baton: "):
			var n int64
			if _, err := fmt.Sscanf(l, "baton: %d lines of stdout dropped since ", &n); err != nil ||
				!strings.HasSuffix(l, "nothing read stdout fast enough (its 16 KiB buffer was full)") {
				t.Errorf("notice %q: want the count, since when and why", l)
			}
			reported += n
			lastNotice = i
		case l == "after the drops" || l == "last":
			read++
		case len(l) == 6+len(line):
			read++
		default:
			t.Errorf("line %d cut or mixed: %q", i, l)
		}
	}
	total := w.Stats().Dropped
	if lastNotice < 0 || lastNotice > len(ls)-2 || ls[len(ls)-1] != "last" {
		t.Errorf("the last notice is line %d of %d, the last line %q: want a notice before the lines written after the drops", lastNotice, len(ls), ls[len(ls)-1])
	}
	if reported != total {
		t.Errorf("the notices report %d lines dropped, the Writer counted %d", reported, total)
	}
	if int64(read)+total != 4002 || total < dropped {
		t.Errorf("%d lines read and %d dropped (%d at first): want 4002 in all", read, total, dropped)
	}
}

// TestStallDropsShortLines: once a line found no room, a shorter one that
// would fit is dropped too, until a write ends: one gap, one notice, and
// the notice comes when writing works again.
func TestStallDropsShortLines(t *testing.T) {
	batontest.CheckLeaks(t)
	r, wf := smallPipe(t)
	defer r.Close()
	defer wf.Close()
	size := fillPipe(t, wf)
	w := New("stdout", wf, Options{Limit: 1000})
	long := strings.Repeat("a", 599)
	w.WriteLine("", long) // taken; its write blocks on the full pipe
	waitFor(t, "the write to block", func() (bool, string) {
		st := w.Stats()
		return !st.WritingSince.IsZero(), fmt.Sprintf("%+v", st)
	})
	w.WriteLine("", long)    // no room: dropped
	w.WriteLine("", "short") // would fit, but dropped while stalled
	if st := w.Stats(); st.Dropped != 2 || st.Buffered != 600 {
		t.Fatalf("stats %+v; want 2 lines dropped, the first long line alone held", st)
	}
	if _, err := io.ReadFull(r, make([]byte, size)); err != nil { // the reader wakes up
		t.Fatal(err)
	}
	waitFor(t, "the notice", func() (bool, string) {
		st := w.Stats()
		return st.Buffered == 0 && st.DroppingSince.IsZero(), fmt.Sprintf("%+v", st)
	})
	w.WriteLine("", "after")
	if err := w.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	wf.Close()
	b, _ := io.ReadAll(r)
	ls := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(ls) != 3 || ls[0] != long || !strings.HasPrefix(ls[1], "baton: 2 lines of stdout dropped since ") || ls[2] != "after" {
		t.Errorf("output %q; want the long line, one notice of 2 lines, then the line after", ls)
	}
}

// fillPipe fills the pipe w writes to, so that the next write blocks,
// and returns how much it wrote.
func fillPipe(t *testing.T, w *os.File) int {
	t.Helper()
	size, err := unix.FcntlInt(w.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte{'z'}, size)); err != nil {
		t.Fatal(err)
	}
	return size
}

// TestCloseGivesUpOnAStoppedReader: Close waits at most its timeout, and
// the writing goroutine ends once its write does.
func TestCloseGivesUpOnAStoppedReader(t *testing.T) {
	batontest.CheckLeaks(t)
	r, wf := smallPipe(t)
	defer wf.Close()
	w := New("stderr", wf, Options{})
	w.Write(bytes.Repeat([]byte("y\n"), 8192)) // more than the pipe holds
	waitFor(t, "the write to block", func() (bool, string) {
		st := w.Stats()
		return !st.WritingSince.IsZero() && st.Buffered > 0, fmt.Sprintf("%+v", st)
	})
	if err := w.Flush(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "stderr: 16384 bytes still unwritten after 50ms") {
		t.Errorf("Flush with the reader asleep: %v", err)
	}
	err := w.Close(50 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "stderr: gave up after 50ms with 16384 bytes unwritten") {
		t.Errorf("Close with the reader asleep: %v", err)
	}
	w.WriteLine("", "after Close") // dropped, and must not block
	r.Close()                      // the blocked write fails with EPIPE: the goroutine ends
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the writing goroutine did not end when its write failed")
	}
}

// TestWriteErrorBacksOff: a file that fails (EPIPE) is tried again only
// after a backoff, not at every line; the lines are counted, and when a
// reader comes back the notice names the error.
func TestWriteErrorBacksOff(t *testing.T) {
	batontest.CheckLeaks(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	// O_RDWR opens a FIFO without waiting for the other end.
	rd, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	wf, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()
	rd.Close() // no reader: writes fail with EPIPE

	defer func(lo, hi time.Duration) { minBackoff, maxBackoff = lo, hi }(minBackoff, maxBackoff)
	minBackoff, maxBackoff = time.Hour, time.Hour
	w := New("stdout", wf, Options{})
	w.WriteLine("", "lost")
	waitFor(t, "the first write to fail", func() (bool, string) {
		st := w.Stats()
		return st.Err != nil, fmt.Sprintf("%+v", st)
	})
	if st := w.Stats(); !errors.Is(st.Err, syscall.EPIPE) || st.Dropped != 1 {
		t.Errorf("after a write to a FIFO without a reader: %+v; want EPIPE and 1 line dropped", st)
	}
	for range 100 {
		w.WriteLine("", "waits for the backoff")
	}
	w.mu.Lock()
	attempts := w.attempts
	w.mu.Unlock()
	if attempts != 1 {
		t.Errorf("%d write attempts after a failure and 100 more lines; want 1 until the backoff is over", attempts)
	}

	// A reader comes back; Close ends the backoff and writes what waits,
	// the notice first.
	rd, err = os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if err := w.Close(5 * time.Second); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wf.Close()
	b, _ := io.ReadAll(rd)
	ls := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(ls) != 101 || !strings.HasPrefix(ls[0], "baton: 1 line of stdout dropped since ") ||
		!strings.HasSuffix(ls[0], ": writing to stdout failed: write: broken pipe") {
		t.Errorf("read %d lines, first %q; want the notice of the lost line and its error, then 100 lines", len(ls), ls[0])
	}
}

func TestNoticeFormat(t *testing.T) {
	r, wf := smallPipe(t)
	defer r.Close()
	defer wf.Close()
	var got []Drop
	var mu sync.Mutex
	w := New("stderr", wf, Options{Limit: 10, Notice: func(d Drop) []byte {
		mu.Lock()
		got = append(got, d)
		mu.Unlock()
		return []byte("custom") // no newline: the Writer adds it
	}})
	// The pipe is full: "two\nlines\n" is held until the reader reads.
	size := fillPipe(t, wf)
	w.Write([]byte("two\nlines\n")) // fits
	w.Write([]byte("too long\n"))   // dropped while "two\nlines\n" is held
	if _, err := io.ReadFull(r, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the notice", func() (bool, string) {
		st := w.Stats()
		return st.Buffered == 0 && st.DroppingSince.IsZero(), fmt.Sprintf("%+v", st)
	})
	if err := w.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	wf.Close()
	b, _ := io.ReadAll(r)
	if diff := cmp.Diff("two\nlines\ncustom\n", string(b)); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
	if len(got) != 1 || got[0].Lines != 1 || got[0].Name != "stderr" || got[0].Limit != 10 || got[0].Err != nil {
		t.Errorf("drops given to Notice: %+v; want one of 1 line, for a full buffer", got)
	}
}

func TestLinesAndSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64
	}{
		{"empty", "", 0},
		{"one", "a\n", 1},
		{"two", "a\nb\n", 2},
		{"unterminated", "a\nb", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lines([]byte(tt.in)); got != tt.want {
				t.Errorf("lines(%q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
	for n, want := range map[int]string{1 << 20: "1 MiB", 64 << 10: "64 KiB", 300: "300 B", 1<<20 + 1: "1048577 B"} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d) = %q, want %q", n, got, want)
		}
	}
}

// BenchmarkWrite compares a line written through a Writer with a line
// written straight to the same file (what baton did before), to
// /dev/null and to a pipe a goroutine drains.
//
//	go test -run '^$' -bench . -benchmem ./internal/outbuf
func BenchmarkWrite(b *testing.B) {
	line := strings.Repeat("x", 100)
	for _, dest := range []string{"devnull", "pipe"} {
		open := func(b *testing.B) *os.File {
			if dest == "devnull" {
				f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { f.Close() })
				return f
			}
			r, w, err := os.Pipe()
			if err != nil {
				b.Fatal(err)
			}
			go io.Copy(io.Discard, r)
			b.Cleanup(func() { w.Close(); r.Close() })
			return w
		}
		b.Run(dest+"/direct", func(b *testing.B) {
			f := open(b)
			var mu sync.Mutex // as baton's sink held one
			b.ReportAllocs()
			for b.Loop() {
				buf := make([]byte, 0, len(line)+12)
				buf = append(append(append(buf, "[g1 s0 42] "...), line...), '\n')
				mu.Lock()
				f.Write(buf)
				mu.Unlock()
			}
		})
		b.Run(dest+"/outbuf", func(b *testing.B) {
			w := New("bench", open(b), Options{})
			b.ReportAllocs()
			for b.Loop() {
				w.WriteLine("[g1 s0 42] ", line)
			}
			b.StopTimer()
			w.Close(10 * time.Second)
			b.ReportMetric(float64(w.Stats().Dropped)/float64(b.N), "dropped/op")
		})
		// The same, waiting for the file every 256 lines so that nothing
		// is dropped: what a line costs when the reader keeps up.
		b.Run(dest+"/outbuf-flushed", func(b *testing.B) {
			w := New("bench", open(b), Options{})
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				w.WriteLine("[g1 s0 42] ", line)
				if i++; i%256 == 0 {
					w.Flush(10 * time.Second)
				}
			}
			b.StopTimer()
			w.Close(10 * time.Second)
			b.ReportMetric(float64(w.Stats().Dropped)/float64(b.N), "dropped/op")
		})
	}
}

// TestAlias: an alias writes into the same buffer, in order, and only its
// File differs.
func TestAlias(t *testing.T) {
	batontest.CheckLeaks(t)
	r, wf := smallPipe(t)
	defer r.Close()
	defer wf.Close()
	w := New("stdout and stderr", wf, Options{})
	a := w.Alias(os.Stdout)
	other := New("other", wf, Options{})
	defer other.Close(time.Second)
	if !w.Same(a) || !a.Same(w) || w.Same(other) || a.File() != os.Stdout || w.File() != wf || a.Name() != w.Name() {
		t.Fatalf("alias: same %v, file %v (want os.Stdout), name %q", w.Same(a), a.File(), a.Name())
	}
	w.WriteLine("", "one")
	a.WriteLine("", "two")
	w.WriteLine("", "three")
	if err := a.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	wf.Close()
	b, _ := io.ReadAll(r)
	if diff := cmp.Diff("one\ntwo\nthree\n", string(b)); diff != "" {
		t.Errorf("output (-want +got):\n%s", diff)
	}
}

// TestLineLargerThanTheBuffer: a line that can never fit is dropped and
// reported, and does not stall the lines after it.
func TestLineLargerThanTheBuffer(t *testing.T) {
	batontest.CheckLeaks(t)
	r, wf := smallPipe(t)
	defer r.Close()
	defer wf.Close()
	w := New("stderr", wf, Options{Limit: 100})
	w.WriteLine("", "first")
	if err := w.Flush(5 * time.Second); err != nil { // the writer is idle now
		t.Fatal(err)
	}
	w.WriteLine("", strings.Repeat("L", 200))
	waitFor(t, "the notice of the long line", func() (bool, string) {
		st := w.Stats()
		return st.Dropped == 1 && st.DroppingSince.IsZero(), fmt.Sprintf("%+v", st)
	})
	w.WriteLine("", "next")
	if err := w.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	wf.Close()
	b, _ := io.ReadAll(r)
	ls := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(ls) != 3 || ls[0] != "first" || !strings.HasPrefix(ls[1], "baton: 1 line of stderr dropped since ") || ls[2] != "next" {
		t.Errorf("output %q; want the first line, the notice, then the next line", ls)
	}
}
