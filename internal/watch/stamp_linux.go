//go:build linux

package watch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// fileStamp is what identifies a version of a file: lstat(2)'s device,
// inode, size, mtime and mode.
type fileStamp struct {
	Dev, Ino uint64
	Size     int64
	Mtime    time.Time
	Mode     uint32
}

// stamp is a watched path's state: the path itself, and with a symlink
// its target and the file it resolves to.
type stamp struct {
	Exists bool
	File   fileStamp
	Link   string    // the symlink's target, as readlink(2) says; "" when not a symlink
	Target fileStamp // what a symlink resolves to (stat(2)); zero when not one, or dangling
}

// lstatStamp is the fileStamp of path itself (lstat(2)), or of what it
// resolves to (stat(2)) with follow.
func lstatStamp(path string, follow bool) (fileStamp, error) {
	var st unix.Stat_t
	var err error
	if follow {
		err = unix.Stat(path, &st)
	} else {
		err = unix.Lstat(path, &st)
	}
	if err != nil {
		name := "lstat"
		if follow {
			name = "stat"
		}
		return fileStamp{}, &fs.PathError{Op: name, Path: path, Err: err}
	}
	return fileStamp{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Mtime: time.Unix(st.Mtim.Unix()), Mode: st.Mode}, nil
}

// stampOf reads path's stamp. A path that does not exist has a stamp
// (Exists false); other errors (a directory baton cannot search) are
// returned.
func stampOf(path string) (stamp, error) {
	f, err := lstatStamp(path, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return stamp{}, nil
	}
	if err != nil {
		return stamp{}, err
	}
	s := stamp{Exists: true, File: f}
	if f.Mode&unix.S_IFMT == unix.S_IFLNK {
		if s.Link, err = os.Readlink(path); err != nil {
			return stamp{}, err
		}
		s.Target, _ = lstatStamp(path, true) // dangling: zero
	}
	return s, nil
}

// describe says in words how s differs from old: "replaced (inode 12 →
// 34)", "size 100 → 200", "symlink → v2 (was v1)".
func (s stamp) describe(old stamp) string {
	switch {
	case !old.Exists && s.Exists:
		return "appeared"
	case old.Exists && !s.Exists:
		return "gone"
	}
	var parts []string
	if s.Link != old.Link {
		parts = append(parts, fmt.Sprintf("symlink → %s (was → %s)", s.Link, old.Link))
	}
	parts = append(parts, s.File.describe(old.File, "")...)
	if s.Link == old.Link && s.Link != "" {
		parts = append(parts, s.Target.describe(old.Target, "target ")...)
	}
	if len(parts) == 0 {
		return "unchanged"
	}
	return strings.Join(parts, ", ")
}

// describe lists how f differs from old, each with prefix.
func (f fileStamp) describe(old fileStamp, prefix string) []string {
	var parts []string
	if f.Dev != old.Dev || f.Ino != old.Ino {
		parts = append(parts, fmt.Sprintf("%sreplaced (inode %d → %d)", prefix, old.Ino, f.Ino))
	}
	if f.Size != old.Size {
		parts = append(parts, fmt.Sprintf("%ssize %d → %d", prefix, old.Size, f.Size))
	}
	if !f.Mtime.Equal(old.Mtime) {
		parts = append(parts, fmt.Sprintf("%smodified %s", prefix, f.Mtime.Format("15:04:05.000")))
	}
	if f.Mode != old.Mode {
		parts = append(parts, fmt.Sprintf("%smode %o → %o", prefix, old.Mode&0o7777, f.Mode&0o7777))
	}
	return parts
}

// dirsOf are the files to watch for path, as their directories and
// names: path, and the file it resolves to when that differs (a
// symlink). Both may be in one directory.
func dirsOf(path string) [][2]string {
	dirs := [][2]string{{filepath.Dir(path), filepath.Base(path)}}
	if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
		dirs = append(dirs, [2]string{filepath.Dir(real), filepath.Base(real)})
	}
	return dirs
}
