package pathtrust

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
// and the way to it must be safe: every directory on it, every symlink on
// it (which must sit in a safe directory, or belong to root or baton's
// user in a sticky one) and, recursively, the way to each symlink's
// target (walk).
func File(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	real, err := walk(abs, abs, false, 0)
	if err != nil {
		return err
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
// is set (as on /tmp); a symlink on the way must sit in such a directory
// (or belong to root or baton's user in a sticky one), and the way to its
// target is checked the same way.
func Dir(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	_, err = walk(abs, abs, true, 0)
	return err
}

// maxLinks bounds the symlinks followed on one path, as the kernel's
// MAXSYMLINKS does (ELOOP).
const maxLinks = 40

// walk follows path from / one component at a time, with lstat, and
// returns the path with every symlink resolved. Each directory it passes
// through must be safe (checkDir); a symlink must be safe where it sits,
// and then the walk goes on along its target, itself checked from /. With
// dir, the last component must be a safe directory too; otherwise it is
// only resolved (File checks it). checked is the path the caller asked
// about, for errors.
func walk(path, checked string, dir bool, links int) (string, error) {
	parts := strings.Split(strings.Trim(filepath.Clean(path), "/"), "/")
	if len(parts) == 1 && parts[0] == "" {
		parts = nil
	}
	cur := "/"
	parent, err := checkDir(cur, checked)
	if err != nil {
		return "", err
	}
	for i, name := range parts {
		last := i == len(parts)-1
		next := filepath.Join(cur, name)
		var st syscall.Stat_t
		if err := syscall.Lstat(next, &st); err != nil {
			return "", &fs.PathError{Op: "lstat", Path: next, Err: err}
		}
		mode := modeOf(st.Mode)
		if mode&fs.ModeSymlink != 0 {
			// The link can be replaced by whoever may write the directory
			// it sits in, or, in a sticky one, by its owner.
			if parent.Perm()&0o022 != 0 && !trusted(st.Uid) {
				return "", &Error{Path: checked, Unsafe: next, UID: st.Uid, Mode: mode, Why: "a symlink of another user in a directory others can write"}
			}
			if links++; links > maxLinks {
				return "", &fs.PathError{Op: "walk", Path: checked, Err: syscall.ELOOP}
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", err
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(cur, target)
			}
			rest := filepath.Join(append([]string{target}, parts[i+1:]...)...)
			return walk(rest, checked, dir, links)
		}
		if last && !dir {
			return next, nil
		}
		if !mode.IsDir() {
			return "", fmt.Errorf("%s is not a directory (%s)", next, typeName(mode))
		}
		if parent, err = checkDir(next, checked); err != nil {
			return "", err
		}
		cur = next
	}
	return cur, nil
}

// checkDir checks one directory: owned by root or baton's user, and not
// writable by group or others unless sticky. It returns its mode.
func checkDir(p, checked string) (fs.FileMode, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		return 0, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	mode := modeOf(st.Mode)
	switch {
	case !mode.IsDir():
		return 0, fmt.Errorf("%s is not a directory (%s)", p, typeName(mode))
	case !trusted(st.Uid):
		return 0, &Error{Path: checked, Unsafe: p, UID: st.Uid, Mode: mode, Why: "owned by another user"}
	case mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0:
		return 0, &Error{Path: checked, Unsafe: p, UID: st.Uid, Mode: mode, Why: "writable by group or others"}
	}
	return mode, nil
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
