package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/pathtrust"
)

// MaxFileSize is the largest config file baton reads: 1 MiB, far more
// than any configuration needs, and a bound on what a wrong path (a log
// file, a device) can make baton read.
const MaxFileSize = 1 << 20

// readFile reads the config file at path, which must be a regular file
// that only root or baton's user can change (pathtrust.File: as OpenSSH's
// StrictModes, since the file names the command baton runs, often as
// root), of at most MaxFileSize bytes.
//
// It never blocks on what the path turns out to be: the type is checked
// before the open, and the open itself is O_NONBLOCK (a FIFO swapped in
// after the check opens at once, with no writer) and checked again with
// fstat, so a FIFO, socket or device is refused, never read.
func readFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		where := ""
		if !filepath.IsAbs(path) {
			where = fmt.Sprintf(" (a relative one is from baton's working directory, %s)", workingDir())
		}
		return nil, fmt.Errorf("%w %s does not exist: check the path%s; docs/config.md has an example", ErrFile, path, where)
	}
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrFile, path, err)
	}
	if err := regular(path, fi.Mode()); err != nil {
		return nil, err
	}
	if err := pathtrust.File(path); err != nil {
		if errors.Is(err, pathtrust.ErrUntrusted) {
			return nil, fmt.Errorf("%w: %w; the file names the command baton runs, so no other user may be able to change it", ErrFile, err)
		}
		return nil, fmt.Errorf("%w %s: %w", ErrFile, path, err)
	}
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrFile, path, err)
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(path) // it grew while read
	}
	return data, nil
}

// workingDir is baton's working directory, for messages about relative
// paths; "unknown" when it cannot be had.
func workingDir() string {
	wd, err := os.Getwd()
	if err != nil {
		return "unknown"
	}
	return wd
}

// openRegular opens path for reading without blocking, whatever it is,
// and returns it only if it is a regular file of at most MaxFileSize
// bytes.
func openRegular(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrFile, path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close() // nothing was read from it
		return nil, fmt.Errorf("%w %s: %w", ErrFile, path, os.NewSyscallError("fstat", err))
	}
	if err := regular(path, statMode(st.Mode)); err != nil {
		f.Close() // not a file to read: a FIFO opened this way has no writer yet
		return nil, err
	}
	if st.Size > MaxFileSize {
		f.Close()
		return nil, tooLarge(path)
	}
	return f, nil
}

func tooLarge(path string) error {
	return fmt.Errorf("%w %s is larger than %d bytes (1 MiB), more than any configuration needs: check that the path names the config file", ErrFile, path, MaxFileSize)
}

// regular refuses what is not a regular file, naming its type.
func regular(path string, m fs.FileMode) error {
	if m.IsRegular() {
		return nil
	}
	return fmt.Errorf("%w %s is %s, not a regular file: baton reads its configuration only from a regular file (anything else can block it or never end); put the configuration in a regular file at that path", ErrFile, path, fileType(m))
}

// fileType names the type of a file that is not a regular one.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "of an unknown type"
}

// statMode converts a stat(2) mode's file type to an fs.FileMode.
func statMode(m uint32) fs.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return 0
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	}
	return fs.ModeIrregular
}
