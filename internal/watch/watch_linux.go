//go:build linux

package watch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirEvents are the inotify events of a watched directory that may mean
// a watched file changed.
const dirEvents = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_ATTRIB | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// Watcher reports lasting changes of a set of paths; see the package
// documentation. Make one with New, then call Run.
type Watcher struct {
	paths  []string
	settle time.Duration
	log    *slog.Logger
	f      *os.File // the inotify instance, non-blocking: reads park in the poller

	mu    sync.Mutex       // guards names (the reader reads it)
	names map[int]dirNames // watch descriptor → its directory and the names that matter in it
	wds   map[string]int   // directory → watch descriptor
	last  map[string]stamp // each path's stamp as last reported (or first seen)
	gone  map[string]bool  // paths found gone, logged once
	now   func() time.Time // for tests
}

// dirNames is a watched directory and the names in it that are watched
// paths or what they resolve to.
type dirNames struct {
	dir   string
	names map[string]bool
}

// New watches paths (absolute, each existing) for changes that last
// settle (DefaultSettle when 0). It fails, naming the path, when one
// does not exist or its directory cannot be watched.
func New(paths []string, settle time.Duration, log *slog.Logger) (*Watcher, error) {
	if settle <= 0 {
		settle = DefaultSettle
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watch: %w", os.NewSyscallError("inotify_init1", err))
	}
	w := &Watcher{settle: settle, log: log, f: os.NewFile(uintptr(fd), "inotify"),
		names: map[int]dirNames{}, wds: map[string]int{}, last: map[string]stamp{}, gone: map[string]bool{}, now: time.Now}
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			w.f.Close()
			return nil, fmt.Errorf("watch %s: not an absolute path", p)
		}
		s, err := stampOf(p)
		if err == nil && !s.Exists {
			err = fmt.Errorf("no such file or directory: give the path of the binary, the config or the symlink to watch")
		}
		if err != nil {
			w.f.Close() // nothing watches yet: release the instance
			return nil, fmt.Errorf("watch %s: %w", p, err)
		}
		w.paths = append(w.paths, p)
		w.last[p] = s
		if err := w.watchDirs(p); err != nil {
			w.f.Close()
			return nil, err
		}
	}
	return w, nil
}

// watchDirs adds the directories of path (dirsOf) to the inotify
// instance, and the names that matter in them.
func (w *Watcher) watchDirs(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, dn := range dirsOf(path) {
		dir, name := dn[0], dn[1]
		// Added every time: the kernel answers with the same descriptor
		// for the directory it already watches, and with a new one when
		// the directory at that path is another (replaced by a rename,
		// or removed and made again), whose old watch it has dropped.
		wd, err := w.addWatch(dir)
		if err != nil {
			return fmt.Errorf("watch %s: watching its directory %s: %w", path, dir, os.NewSyscallError("inotify_add_watch", err))
		}
		if old, ok := w.wds[dir]; ok && old != wd {
			delete(w.names, old)
		}
		w.wds[dir] = wd
		dn := w.names[wd]
		if dn.names == nil {
			dn = dirNames{dir: dir, names: map[string]bool{}}
		}
		dn.names[name] = true
		w.names[wd] = dn
	}
	return nil
}

// addWatch wraps inotify_add_watch(2) of dir, on the instance's
// descriptor reached through SyscallConn (File.Fd would make it
// blocking, and Close could not end a read).
func (w *Watcher) addWatch(dir string) (int, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var wd int
	var werr error
	if err := rc.Control(func(fd uintptr) { wd, werr = unix.InotifyAddWatch(int(fd), dir, dirEvents|unix.IN_ONLYDIR) }); err != nil {
		return 0, err
	}
	return wd, werr
}

// Run waits for changes until ctx is done, and calls changed with the
// paths whose change lasted the settle time (at most once per settle
// time; the next change is looked at once changed has returned). It
// closes the inotify instance when it returns.
func (w *Watcher) Run(ctx context.Context, changed func([]Change)) {
	hint := make(chan struct{}, 1)
	go w.read(hint)
	stop := context.AfterFunc(ctx, func() { w.f.Close() }) // ends read
	defer stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var lastReport time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-hint:
			if !ok {
				return
			}
			timer.Reset(w.settle) // coalesce: the file must be quiet for settle
		case <-timer.C:
			if wait := w.settle - w.now().Sub(lastReport); wait > 0 {
				timer.Reset(wait) // at most one report per settle time
				continue
			}
			if cs := w.check(); len(cs) > 0 {
				lastReport = w.now()
				changed(cs)
			}
		}
	}
}

// read reads inotify events and sends a hint for those that name a
// watched path (or overflowed), until the instance is closed.
func (w *Watcher) read(hint chan<- struct{}) {
	defer close(hint)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.log.Warn("watch: reading inotify events failed; files are no longer watched", "err", err)
			}
			return
		}
		if w.matters(buf[:n]) {
			select {
			case hint <- struct{}{}:
			default:
			}
		}
	}
}

// matters reports whether events (a read's worth) name a watched path,
// lost events (IN_Q_OVERFLOW), or a watched directory that went away.
func (w *Watcher) matters(events []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for off := 0; off+unix.SizeofInotifyEvent <= len(events); {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&events[off]))
		name := events[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
		off += unix.SizeofInotifyEvent + int(ev.Len)
		if ev.Mask&(unix.IN_Q_OVERFLOW|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
			return true
		}
		if dn, ok := w.names[int(ev.Wd)]; ok && dn.names[string(bytes.TrimRight(name, "\x00"))] {
			return true
		}
	}
	return false
}

// check compares each path's stamp with the last reported, and returns
// the changes (and takes the new stamps as reported). A path that is
// gone is logged once and left out until it is back. The directories of
// where symlinks resolve to now are watched from here on.
func (w *Watcher) check() []Change {
	var cs []Change
	for _, p := range w.paths {
		s, err := stampOf(p)
		if err != nil {
			w.log.Warn("watch: cannot read a watched path", "path", p, "err", err)
			continue
		}
		if !s.Exists {
			if !w.gone[p] {
				w.log.Warn("watch: a watched path is gone; no reload until it is back", "path", p)
				w.gone[p] = true
			}
			continue
		}
		delete(w.gone, p)
		if err := w.watchDirs(p); err != nil {
			w.log.Warn("watch: cannot watch where a symlink leads now", "path", p, "err", err)
		}
		old := w.last[p]
		if s == old {
			continue
		}
		cs = append(cs, Change{Path: p, What: s.describe(old)})
		w.last[p] = s
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Path < cs[j].Path })
	return cs
}

// Close releases the inotify instance of a Watcher that never ran.
func (w *Watcher) Close() error { return w.f.Close() }
