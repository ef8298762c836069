//go:build linux

package watch

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testSettle = 100 * time.Millisecond

// watching runs a Watcher of paths and returns the channel of its
// reports; it stops when the test ends.
func watching(t *testing.T, paths ...string) <-chan []Change {
	t.Helper()
	w, err := New(paths, testSettle, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan []Change, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func(cs []Change) { ch <- cs })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return ch
}

// reports waits for reports for a while (ten settle times after the
// last) and returns them.
func reports(ch <-chan []Change) [][]Change {
	var got [][]Change
	for {
		select {
		case cs := <-ch:
			got = append(got, cs)
		case <-time.After(10 * testSettle):
			return got
		}
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWatchReportsEachChangeOnce(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(t *testing.T, dir string) string // returns the path to watch
		change func(t *testing.T, dir, path string)
		what   string // in the report
	}{
		{
			name: "edited in place",
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "app.toml")
				write(t, p, "workers = 2\n")
				return p
			},
			change: func(t *testing.T, dir, path string) {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				for range 20 { // a burst of writes: one report
					f.WriteString("# more\n")
					time.Sleep(testSettle / 10)
				}
			},
			what: "size",
		},
		{
			name:  "replaced by rename",
			setup: func(t *testing.T, dir string) string { p := filepath.Join(dir, "app"); write(t, p, "v1"); return p },
			change: func(t *testing.T, dir, path string) {
				write(t, filepath.Join(dir, ".app.new"), "v2")
				if err := os.Rename(filepath.Join(dir, ".app.new"), path); err != nil {
					t.Fatal(err)
				}
			},
			what: "replaced",
		},
		{
			name: "symlink swung",
			setup: func(t *testing.T, dir string) string {
				os.Mkdir(filepath.Join(dir, "v1"), 0o755)
				os.Mkdir(filepath.Join(dir, "v2"), 0o755)
				p := filepath.Join(dir, "current")
				if err := os.Symlink("v1", p); err != nil {
					t.Fatal(err)
				}
				return p
			},
			change: func(t *testing.T, dir, path string) {
				tmp := filepath.Join(dir, ".current.new")
				if err := os.Symlink("v2", tmp); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			},
			what: "symlink → v2 (was → v1)",
		},
		{
			name: "symlink's target edited",
			setup: func(t *testing.T, dir string) string {
				os.Mkdir(filepath.Join(dir, "v1"), 0o755)
				write(t, filepath.Join(dir, "v1", "app.toml"), "a")
				p := filepath.Join(dir, "app.toml")
				if err := os.Symlink("v1/app.toml", p); err != nil {
					t.Fatal(err)
				}
				return p
			},
			change: func(t *testing.T, dir, path string) { write(t, filepath.Join(dir, "v1", "app.toml"), "abc") },
			what:   "target size 1 → 3",
		},
		{
			name:  "gone, then back",
			setup: func(t *testing.T, dir string) string { p := filepath.Join(dir, "app"); write(t, p, "v1"); return p },
			change: func(t *testing.T, dir, path string) {
				os.Remove(path)
				time.Sleep(3 * testSettle) // gone for a while: no report
				write(t, path, "v22")      // tmpfs may give it the old inode
			},
			what: "size 2 → 3",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.setup(t, dir)
			ch := watching(t, path)
			// A busy file beside it is no change.
			for range 5 {
				write(t, filepath.Join(dir, "other.log"), time.Now().String())
			}
			if got := reports(ch); len(got) != 0 {
				t.Fatalf("reports before any change: %v", got)
			}
			tt.change(t, dir, path)
			got := reports(ch)
			if len(got) != 1 || len(got[0]) != 1 || got[0][0].Path != path || !strings.Contains(got[0][0].What, tt.what) {
				t.Fatalf("reports %v; want one, of %s, saying %q", got, path, tt.what)
			}
		})
	}
}

func TestWatchTwoPathsOneReport(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	write(t, a, "1")
	write(t, b, "1")
	ch := watching(t, a, b)
	write(t, a, "22")
	write(t, b, "22")
	got := reports(ch)
	if len(got) != 1 || len(got[0]) != 2 {
		t.Fatalf("reports %v; want one naming both", got)
	}
	if s := Summary(got[0]); !strings.Contains(s, a+" (size 1 → 2") || !strings.Contains(s, b+" (size 1 → 2") {
		t.Errorf("summary %q", s)
	}
}

func TestWatchRateLimited(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "app")
	write(t, p, "0")
	ch := watching(t, p)
	// A change every settle time and a bit: each one settles, yet
	// reports come at most once per settle time.
	start := time.Now()
	var times []time.Time
	done := time.After(15 * testSettle)
	for i := 1; ; i++ {
		write(t, p, strings.Repeat("x", i))
		select {
		case <-ch:
			times = append(times, time.Now())
		case <-time.After(testSettle + testSettle/5):
		case <-done:
			for i := 1; i < len(times); i++ {
				if gap := times[i].Sub(times[i-1]); gap < testSettle {
					t.Errorf("reports %s apart, less than the settle time %s", gap, testSettle)
				}
			}
			if len(times) == 0 || len(times) > int(time.Since(start)/testSettle)+1 {
				t.Errorf("%d reports in %s", len(times), time.Since(start))
			}
			return
		}
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope"), "no such file"},
		{"relative", "app.toml", "not an absolute path"},
		{"missing directory", filepath.Join(dir, "no", "app"), "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w, err := New([]string{tt.path}, 0, log)
			if err == nil {
				w.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q: want it to name %s and say %q", err, tt.path, tt.want)
			}
		})
	}
}

// TestWatchDirectoryReplaced: the watched file's directory replaced by a
// rename (a release directory swapped in whole) is watched anew: an edit
// in the new directory is reported too. With the old directory's watch
// kept, it went unseen.
func TestWatchDirectoryReplaced(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "baton.toml")
	write(t, path, "one")
	ch := watching(t, path)

	next := filepath.Join(root, "conf.new")
	if err := os.Mkdir(next, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(next, "baton.toml"), "two, longer")
	if err := os.Rename(dir, filepath.Join(root, "conf.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, dir); err != nil {
		t.Fatal(err)
	}
	if got := reports(ch); len(got) != 1 {
		t.Fatalf("the directory replaced: %d reports, want 1: %v", len(got), got)
	}
	write(t, path, "three, longer still")
	if got := reports(ch); len(got) != 1 {
		t.Errorf("an edit in the new directory: %d reports, want 1: %v", len(got), got)
	}
}
