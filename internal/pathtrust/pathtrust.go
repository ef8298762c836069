package pathtrust

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUntrusted is wrapped by every error that says a path could be
// changed by another user.
var ErrUntrusted = errors.New("another user could change it")

// Error says which path on the way is unsafe, and why.
type Error struct {
	// Path is the path that was checked; Unsafe the component that is not
	// safe (Path itself or one of its directories).
	Path, Unsafe string
	UID          uint32
	Mode         fs.FileMode
	Why          string
}

func (e *Error) Error() string {
	what := e.Unsafe
	if e.Unsafe != e.Path {
		what = fmt.Sprintf("%s (on the way to %s)", e.Unsafe, e.Path)
	}
	return fmt.Sprintf("%s is %s (owner uid %d, mode %04o): %v; %s", what, e.Why, e.UID, e.Mode.Perm()|e.Mode&(fs.ModeSticky|fs.ModeSetuid|fs.ModeSetgid), ErrUntrusted, fix(e))
}

func fix(e *Error) string {
	return fmt.Sprintf("make it owned by root (or uid %d, baton's user) and not writable by group or others (chmod go-w %s), or use another path", os.Geteuid(), e.Unsafe)
}

// Is makes errors.Is(err, ErrUntrusted) true.
func (e *Error) Is(target error) bool { return target == ErrUntrusted }

// trusted reports whether uid may own what baton relies on.
func trusted(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// File checks a file that baton reads or executes: it must be a regular
// file owned by root or baton's user and not writable by group or others,
// and every directory on the way to it must be safe (Dir). A symlink is
// followed, and both the directories of the link and those of its target
// are checked.
func File(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := Dir(filepath.Dir(abs)); err != nil {
		return wrapPath(err, abs)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	if real != abs {
		if err := Dir(filepath.Dir(real)); err != nil {
			return wrapPath(err, abs)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(real, &st); err != nil {
		return &fs.PathError{Op: "stat", Path: real, Err: err}
	}
	mode := modeOf(st.Mode)
	switch {
	case !mode.IsRegular():
		return fmt.Errorf("%s is not a regular file (%s)", abs, typeName(mode))
	case !trusted(st.Uid):
		return &Error{Path: abs, Unsafe: real, UID: st.Uid, Mode: mode, Why: "owned by another user"}
	case mode.Perm()&0o022 != 0:
		return &Error{Path: abs, Unsafe: real, UID: st.Uid, Mode: mode, Why: "writable by group or others"}
	}
	return nil
}

// Dir checks a directory that baton creates files in or reads files from:
// it and every directory above it, up to /, must be owned by root or
// baton's user and not writable by group or others, unless the sticky bit
// is set (as on /tmp). Symlinks on the way are resolved, and the
// directories they lead to are checked instead.
func Dir(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	for p := real; ; p = filepath.Dir(p) {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		mode := modeOf(st.Mode)
		switch {
		case !mode.IsDir():
			return fmt.Errorf("%s is not a directory (%s)", p, typeName(mode))
		case !trusted(st.Uid):
			return &Error{Path: abs, Unsafe: p, UID: st.Uid, Mode: mode, Why: "owned by another user"}
		case mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0:
			return &Error{Path: abs, Unsafe: p, UID: st.Uid, Mode: mode, Why: "writable by group or others"}
		}
		if p == "/" || p == "." {
			return nil
		}
	}
}

// wrapPath makes an Error found on the way name the file it was for.
func wrapPath(err error, path string) error {
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Path = path
		return &c
	}
	return err
}

// modeOf converts a stat(2) mode to an fs.FileMode.
func modeOf(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & syscall.S_IFMT {
	case syscall.S_IFDIR:
		mode |= fs.ModeDir
	case syscall.S_IFLNK:
		mode |= fs.ModeSymlink
	case syscall.S_IFIFO:
		mode |= fs.ModeNamedPipe
	case syscall.S_IFSOCK:
		mode |= fs.ModeSocket
	case syscall.S_IFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFBLK:
		mode |= fs.ModeDevice
	}
	if m&syscall.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	if m&syscall.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	return mode
}

// typeName names a file type for an error message.
func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return "not a regular file"
}
