package logring

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func intp(n int) *int { return &n }

// texts is the text of each line.
func texts(ls []Line) []string {
	out := []string{}
	for _, l := range ls {
		out = append(out, l.Text)
	}
	return out
}

func TestRingBound(t *testing.T) {
	tests := []struct {
		name  string
		limit int
		lines int
		size  int
	}{
		{name: "short lines", limit: 64 << 10, lines: 10000, size: 10},
		{name: "long lines", limit: 64 << 10, lines: 1000, size: 3000},
		{name: "over max", limit: 64 << 10, lines: 500, size: 10000},
		{name: "tiny limit", limit: 1, lines: 100, size: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(tt.limit)
			text := strings.Repeat("x", tt.size)
			for range tt.lines {
				r.Add(Line{Source: SourceWorker, Text: text})
				if st := r.Stats(); st.Bytes > r.Limit() {
					t.Fatalf("holds %d bytes, over its limit of %d", st.Bytes, r.Limit())
				}
			}
			st := r.Stats()
			if st.Added != uint64(tt.lines) || uint64(st.Lines)+st.Evicted != st.Added {
				t.Errorf("stats %+v: want %d added, held+evicted = added", st, tt.lines)
			}
			if len(r.lines) > r.maxLines {
				t.Errorf("buffer of %d lines, more than %d fit", len(r.lines), r.maxLines)
			}
			all := r.Tail(Filter{}, 0)
			if len(all) != st.Lines || all[len(all)-1].Seq != uint64(tt.lines) {
				t.Errorf("Tail has %d lines ending at seq %d; want %d ending at %d", len(all), all[len(all)-1].Seq, st.Lines, tt.lines)
			}
			for i := 1; i < len(all); i++ {
				if all[i].Seq != all[i-1].Seq+1 {
					t.Fatalf("gap in the lines held: seq %d then %d", all[i-1].Seq, all[i].Seq)
				}
			}
		})
	}
}

func TestRingTruncates(t *testing.T) {
	tests := []struct {
		name      string
		text      string
		want      int // length kept
		truncated bool
	}{
		{name: "short", text: "hello", want: 5},
		{name: "exactly max", text: strings.Repeat("a", MaxLine), want: MaxLine},
		{name: "one over", text: strings.Repeat("a", MaxLine+1), want: MaxLine, truncated: true},
		{name: "rune on the edge", text: strings.Repeat("a", MaxLine-1) + "é" + "tail", want: MaxLine - 1, truncated: true},
		{name: "huge", text: strings.Repeat("b", 1<<20), want: MaxLine, truncated: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(0)
			r.Add(Line{Text: tt.text})
			l := r.Tail(Filter{}, 1)[0]
			if len(l.Text) != tt.want || l.Truncated != tt.truncated || !utf8.ValidString(l.Text) {
				t.Errorf("kept %d bytes (truncated %v, valid UTF-8 %v); want %d (truncated %v)", len(l.Text), l.Truncated, utf8.ValidString(l.Text), tt.want, tt.truncated)
			}
			if got := r.Stats().Truncated; got != map[bool]uint64{true: 1}[tt.truncated] {
				t.Errorf("Stats().Truncated = %d", got)
			}
		})
	}
}

func TestRingFilters(t *testing.T) {
	r := New(0)
	r.Add(Line{Source: SourceBaton, Stream: "log", Text: "baton starts"})
	for g := 1; g <= 2; g++ {
		for s := range 2 {
			r.Add(Line{Source: SourceWorker, Stream: "stdout", Generation: g, Slot: s, Text: fmt.Sprintf("g%d s%d", g, s)})
		}
	}
	tests := []struct {
		name string
		f    Filter
		n    int
		want []string
	}{
		{name: "all", want: []string{"baton starts", "g1 s0", "g1 s1", "g2 s0", "g2 s1"}},
		{name: "last 2", n: 2, want: []string{"g2 s0", "g2 s1"}},
		{name: "slot 1", f: Filter{Slot: intp(1)}, want: []string{"g1 s1", "g2 s1"}},
		{name: "generation 1", f: Filter{Generation: intp(1)}, want: []string{"g1 s0", "g1 s1"}},
		{name: "both", f: Filter{Slot: intp(0), Generation: intp(2)}, want: []string{"g2 s0"}},
		{name: "slot 0 last 1", f: Filter{Slot: intp(0)}, n: 1, want: []string{"g2 s0"}},
		{name: "none", f: Filter{Slot: intp(7)}, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, texts(r.Tail(tt.f, tt.n))); diff != "" {
				t.Errorf("Tail (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRingConcurrentWriters(t *testing.T) {
	r := New(32 << 10)
	_, f := r.Follow(Filter{Slot: intp(3)}, 0, 1<<30)
	defer f.Close()
	var wg sync.WaitGroup
	const writers, each = 8, 2000
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r.Add(Line{Source: SourceWorker, Slot: w, Text: fmt.Sprintf("w%d %d", w, i)})
			}
		}()
	}
	go func() {
		for {
			r.Tail(Filter{}, 10)
			if r.Stats().Added == writers*each {
				return
			}
		}
	}()
	wg.Wait()
	st := r.Stats()
	if st.Added != writers*each || st.Bytes > st.Limit {
		t.Fatalf("stats %+v: want %d added within the limit", st, writers*each)
	}
	// The follower of slot 3 got each of its lines, in order.
	var got []Line
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(got) < each {
		ls, dropped, err := f.Next(ctx)
		if err != nil || dropped != 0 {
			t.Fatalf("Next: %v, %d dropped, after %d lines", err, dropped, len(got))
		}
		got = append(got, ls...)
	}
	for i, l := range got {
		if want := fmt.Sprintf("w3 %d", i); l.Text != want {
			t.Fatalf("follower line %d is %q, want %q", i, l.Text, want)
		}
	}
}

func TestFollowerSeesNewLinesOnly(t *testing.T) {
	r := New(0)
	r.Add(Line{Text: "old 1"})
	r.Add(Line{Text: "old 2"})
	backlog, f := r.Follow(Filter{}, 1, 0)
	defer f.Close()
	r.Add(Line{Text: "new"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	next, dropped, err := f.Next(ctx)
	if err != nil || dropped != 0 {
		t.Fatalf("Next: %v, %d dropped", err, dropped)
	}
	if diff := cmp.Diff([]string{"old 2", "new"}, append(texts(backlog), texts(next)...)); diff != "" {
		t.Errorf("backlog and next (-want +got):\n%s", diff)
	}
}

func TestFollowerThatDoesNotReadDrops(t *testing.T) {
	r := New(0)
	limit := 10 * (LineOverhead + 10)
	_, f := r.Follow(Filter{}, 0, limit)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			r.Add(Line{Text: fmt.Sprintf("line %04d", i)}) // 9 bytes: 10 fit
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Add waited for a follower that does not read")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lines, dropped, err := f.Next(ctx)
	if err != nil || len(lines) != 10 || dropped != 990 {
		t.Fatalf("Next = %d lines, %d dropped, %v; want 10 lines then 990 dropped", len(lines), dropped, err)
	}
	if lines[9].Text != "line 0009" {
		t.Errorf("last line queued is %q, want line 0009", lines[9].Text)
	}
	// Reading again, it gets new lines.
	r.Add(Line{Text: "after"})
	lines, dropped, err = f.Next(ctx)
	if err != nil || dropped != 0 || len(lines) != 1 || lines[0].Text != "after" {
		t.Errorf("Next after reading = %v, %d dropped, %v; want [after]", texts(lines), dropped, err)
	}
	f.Close()
	if st := r.Stats(); st.FollowerDropped != 990 || st.Followers != 0 {
		t.Errorf("stats %+v: want 990 dropped by followers, none left", st)
	}
	r.Add(Line{Text: "after close"}) // offered to nobody
}

func TestFollowerNextEndsWithContext(t *testing.T) {
	r := New(0)
	_, f := r.Follow(Filter{}, 0, 0)
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := f.Next(ctx); err == nil {
		t.Fatal("Next returned without lines or a cancelled context")
	}
}

func TestWriterSplitsLines(t *testing.T) {
	r := New(0)
	w := Writer{Ring: r, Source: SourceBaton, Stream: "log"}
	w.Write([]byte("time=1 msg=one\ntime=2 msg=two\n"))
	w.Write([]byte(strings.Repeat("z", 2*MaxLine) + "\n"))
	got := r.Tail(Filter{}, 0)
	if diff := cmp.Diff([]string{"time=1 msg=one", "time=2 msg=two"}, texts(got[:2])); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if len(got) != 3 || !got[2].Truncated || got[2].Source != SourceBaton || got[2].Stream != "log" {
		t.Errorf("long line = %+v, want it truncated, from baton's log", got[len(got)-1])
	}
}

// BenchmarkAdd is the cost of adding one line of 100 bytes to a full
// ring (evicting one), with no follower.
func BenchmarkAdd(b *testing.B) {
	r := New(0)
	text := strings.Repeat("x", 100)
	b.ReportAllocs()
	for b.Loop() {
		r.Add(Line{Source: SourceWorker, Stream: "stdout", Text: text})
	}
}

// BenchmarkAddFollowed is BenchmarkAdd with 4 followers, which nothing
// reads (they drop).
func BenchmarkAddFollowed(b *testing.B) {
	r := New(0)
	for range 4 {
		_, f := r.Follow(Filter{}, 0, 0)
		defer f.Close()
	}
	text := strings.Repeat("x", 100)
	b.ReportAllocs()
	for b.Loop() {
		r.Add(Line{Source: SourceWorker, Stream: "stdout", Text: text})
	}
}

// BenchmarkAddParallel is BenchmarkAdd from GOMAXPROCS goroutines (the
// copiers of many workers' output).
func BenchmarkAddParallel(b *testing.B) {
	r := New(0)
	text := strings.Repeat("x", 100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.Add(Line{Source: SourceWorker, Stream: "stdout", Text: text})
		}
	})
}

// TestRestore: a new Ring takes a previous one's lines with their numbers
// and times, within its own bound, and numbers its own after them; a
// Ring that already took lines restores nothing.
func TestRestore(t *testing.T) {
	old := New(0)
	for i := range 100 {
		old.Add(Line{Source: SourceWorker, Stream: "stdout", Slot: i % 2, Generation: 1, PID: 42, Text: fmt.Sprintf("line %d", i)})
	}
	lines := old.Tail(Filter{}, 0)

	r := New(0)
	r.Restore(lines)
	if got := r.Tail(Filter{}, 0); !reflect.DeepEqual(got, lines) {
		t.Fatalf("restored %d lines, not the %d handed over: first %+v", len(got), len(lines), got[:min(1, len(got))])
	}
	r.Add(Line{Source: SourceBaton, Stream: "log", Text: "after"})
	if got := r.Tail(Filter{}, 1); got[0].Seq != 101 {
		t.Errorf("the first line after a restore is numbered %d, want 101", got[0].Seq)
	}
	r.Restore(lines)
	if st := r.Stats(); st.Lines != 101 {
		t.Errorf("a second Restore changed the ring: %d lines, want 101", st.Lines)
	}

	// A small ring keeps the newest lines that fit.
	small := New(MaxLine + LineOverhead)
	big := strings.Repeat("x", MaxLine/2)
	var many []Line
	for i := range 10 {
		many = append(many, Line{Seq: uint64(i + 1), Source: SourceBaton, Stream: "log", Text: big})
	}
	small.Restore(many)
	got := small.Tail(Filter{}, 0)
	if len(got) == 0 || got[len(got)-1].Seq != 10 || small.Stats().Bytes > small.Limit() {
		t.Errorf("a small ring restored %+v, %d of %d bytes; want the newest lines within its bound", got, small.Stats().Bytes, small.Limit())
	}
}
