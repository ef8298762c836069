package sockfile

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/pathtrust"
	"github.com/baton-dev/baton/internal/sockdiag"
)

// ErrReplaced is wrapped by the errors that say the file at a socket's path
// is not (or no longer) the file the socket is bound to.
var ErrReplaced = errors.New("the socket file was replaced")

// ID identifies a file: its device and inode as fstat(2) reports them.
type ID struct{ Dev, Ino uint64 }

// IsZero reports whether id identifies no file.
func (id ID) IsZero() bool { return id == ID{} }

// File is a socket file opened with O_PATH|O_NOFOLLOW: a handle on one
// inode that no later change at the path can redirect. Close it when done.
type File struct {
	// Path is the path it was opened at.
	Path string
	// ID is the file's identity, from fstat(2) of the descriptor.
	ID   ID
	fd   int
	mode uint32 // st_mode
	uid  uint32
}

// OpenPath opens the file at path without following a symlink there
// (O_PATH|O_NOFOLLOW|O_CLOEXEC: no read, no write, no side effect, even on
// a FIFO or a device) and reads its identity. Symlinks in the directories
// on the way are followed; what they lead to is what the descriptor
// names. The error wraps fs.ErrNotExist when nothing is there.
func OpenPath(path string) (*File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd) // not returned to the caller: nobody else would close it
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	return &File{Path: path, ID: ID{Dev: uint64(st.Dev), Ino: st.Ino}, fd: fd, mode: st.Mode, uid: st.Uid}, nil
}

// Close closes the descriptor.
func (f *File) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := unix.Close(f.fd)
	f.fd = -1
	if err != nil {
		return os.NewSyscallError("close", err)
	}
	return nil
}

// IsSocket reports whether the file is a socket file.
func (f *File) IsSocket() bool { return f.mode&unix.S_IFMT == unix.S_IFSOCK }

// Mode is the file's type and permission bits (st_mode).
func (f *File) Mode() uint32 { return f.mode }

// UID is the file's owner.
func (f *File) UID() uint32 { return f.uid }

// Verify opens the file at path (OpenPath) and checks that it is the file
// the unix socket sockfd is bound to, by the kernel's record of the bind
// (sockdiag.UnixFile). On a mismatch the error wraps ErrReplaced and says
// what is at the path instead: another user who can write to the
// directory replaced the file (with a symlink, say) after bind(2).
//
// When the kernel cannot answer (no unix_diag), the file is accepted if
// it is a socket file in a directory that no other user can change
// (pathtrust.Dir): there nobody could have replaced it. Otherwise the
// error says both why it could not be checked and why it matters.
func Verify(sockfd int, path string) (*File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(sockfd, &st); err != nil {
		return nil, os.NewSyscallError("fstat", err)
	}
	bound, ok, diagErr := boundFile(st.Ino)
	f, err := OpenPath(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w: nothing is at the path any more: a user who can write to %s removed it after bind(2); make that directory writable only by root or baton's user, or use another path", path, ErrReplaced, filepath.Dir(path))
	}
	if err != nil {
		return nil, err
	}
	switch {
	case diagErr != nil && errors.Is(diagErr, sockdiag.ErrNotSupported):
		if terr := pathtrust.Dir(filepath.Dir(path)); terr != nil {
			f.Close() // not verified: the caller gets nothing to act on
			return nil, fmt.Errorf("%s: cannot tell whether it is this socket's file: %w; and %w: load unix_diag (modprobe unix_diag), or put the socket in a directory only root or baton's user can write", path, diagErr, terr)
		}
		if !f.IsSocket() {
			err := f.replaced(ID{})
			f.Close() // not ours: nothing to act on
			return nil, err
		}
		return f, nil
	case diagErr != nil:
		f.Close() // not verified: the caller gets nothing to act on
		return nil, fmt.Errorf("%s: asking the kernel which file the socket is bound to: %w", path, diagErr)
	case !ok:
		f.Close() // not verified: the caller gets nothing to act on
		return nil, fmt.Errorf("%s: the kernel says socket inode %d is bound to no file (an abstract or unbound socket?): nothing to check it against", path, st.Ino)
	}
	if !f.is(bound) {
		err := f.replaced(ID{Dev: bound.Dev, Ino: bound.Ino})
		f.Close() // someone else's file: never act on it
		return nil, err
	}
	return f, nil
}

// boundFile asks the kernel which file the unix socket with inode ino is
// bound to. Tests replace it to see Verify on a kernel without unix_diag.
var boundFile = func(ino uint64) (sockdiag.UnixFile, bool, error) {
	c, err := sockdiag.Dial()
	if err != nil {
		return sockdiag.UnixFile{}, false, err
	}
	defer c.Close()
	return c.UnixFile(ino)
}

// is reports whether the file is the socket file the kernel recorded: a
// socket with that inode (the kernel gives its low 32 bits) on that
// filesystem. The kernel gives the superblock's device, which stat(2)
// also reports except on filesystems with a device per subvolume
// (btrfs) or layer (overlayfs); there the mount's device is compared.
func (f *File) is(bound sockdiag.UnixFile) bool {
	if !f.IsSocket() || f.ID.Ino&0xffffffff != bound.Ino {
		return false
	}
	if f.ID.Dev == bound.Dev {
		return true
	}
	dev, err := mountDev(f.fd)
	return err == nil && dev == bound.Dev
}

// replaced describes what is at the path instead of the socket file.
func (f *File) replaced(want ID) error {
	what := "a file that is not a socket"
	switch f.mode & unix.S_IFMT {
	case unix.S_IFLNK:
		what = "a symlink"
		buf := make([]byte, 256)
		if n, err := unix.Readlinkat(f.fd, "", buf); err == nil {
			what = fmt.Sprintf("a symlink to %q", buf[:n])
		}
	case unix.S_IFSOCK:
		what = fmt.Sprintf("another socket file (inode %d, uid %d)", f.ID.Ino, f.uid)
		if want.Ino != 0 {
			what = fmt.Sprintf("another socket file (inode %d, uid %d; the socket is bound to inode %d)", f.ID.Ino, f.uid, want.Ino)
		}
	case unix.S_IFDIR:
		what = "a directory"
	case unix.S_IFREG:
		what = fmt.Sprintf("a regular file (uid %d)", f.uid)
	}
	return fmt.Errorf("%s is %s, not the file this socket is bound to: %w after bind(2) by a user who can write to %s; nothing was changed: make that directory writable only by root or baton's user, or use another path", f.Path, what, ErrReplaced, filepath.Dir(f.Path))
}

// Chmod sets the file's permission bits, on the descriptor:
// fchmodat2(fd, "", mode, AT_EMPTY_PATH) (Linux 6.6), else chmod(2) of
// /proc/self/fd/N, which names the same inode.
func (f *File) Chmod(mode uint32) error {
	err := unix.Fchmodat(f.fd, "", mode, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		err = chmodProc(f.fd, mode)
	}
	if err != nil {
		return &fs.PathError{Op: "chmod", Path: f.Path, Err: err}
	}
	return nil
}

// chmodProc is Chmod before fchmodat2: the magic link leads to the
// descriptor's inode (a socket file, checked by the caller, so no symlink
// is followed from it).
func chmodProc(fd int, mode uint32) error { return unix.Chmod(procFd(fd), mode) }

// Chown sets the file's owner and group (-1 leaves one unchanged), on the
// descriptor: fchownat(fd, "", uid, gid, AT_EMPTY_PATH).
func (f *File) Chown(uid, gid int) error {
	if err := unix.Fchownat(f.fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return &fs.PathError{Op: "chown", Path: f.Path, Err: err}
	}
	return nil
}

// Answers reports whether a process accepts connections on the socket
// file, by connecting to it through the descriptor (/proc/self/fd/N), so
// that the file probed is the file opened, whatever the path names now.
// It tries each socket type: a stream, datagram or seqpacket socket may
// be bound there. pid is the answering process (SO_PEERCRED of a stream
// or seqpacket connection; 0 when the kernel does not say).
func (f *File) Answers() (alive bool, pid int, err error) {
	target := procFd(f.fd)
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		// No /proc: the path itself, whose file is checked again
		// before anything is removed (Remove).
		target = f.Path
	}
	for _, typ := range []int{unix.SOCK_STREAM, unix.SOCK_DGRAM, unix.SOCK_SEQPACKET} {
		fd, err := unix.Socket(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return false, 0, os.NewSyscallError("socket", err)
		}
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: target})
		if err == nil && typ != unix.SOCK_DGRAM {
			if cred, cerr := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED); cerr == nil {
				pid = int(cred.Pid)
			}
		}
		unix.Close(fd) // a probe only: never used for anything else
		switch {
		case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINPROGRESS):
			return true, pid, nil
		case errors.Is(err, unix.EPROTOTYPE):
			continue // bound, but to another socket type: try the next
		case errors.Is(err, unix.ECONNREFUSED):
			return false, 0, nil
		default:
			return false, 0, os.NewSyscallError("connect", err)
		}
	}
	return false, 0, nil
}

// Remove unlinks the file at path if it is still the file id, and reports
// whether it did. The directory is opened once (O_PATH|O_DIRECTORY), and
// both the check (fstatat(2), not following a symlink) and unlinkat(2)
// are relative to it: a directory on the way swapped for a symlink in
// between cannot make it remove a file elsewhere. Nothing at the path is
// not an error.
func Remove(path string, id ID) (bool, error) {
	if id.IsZero() {
		return false, nil
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd) // only this function uses it
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &fs.PathError{Op: "fstatat", Path: path, Err: err}
	}
	if uint64(st.Dev) != id.Dev || st.Ino != id.Ino {
		return false, nil // not ours (any more): leave it
	}
	if err := unix.Unlinkat(dfd, base, 0); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, &fs.PathError{Op: "unlink", Path: path, Err: err}
	}
	return true, nil
}

// procFd is the /proc magic link that names the descriptor's file.
func procFd(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// mountDev returns the device of the filesystem (its superblock) that the
// descriptor's file is on: the major:minor that /proc/self/mountinfo lists
// for its mount (statx STATX_MNT_ID, Linux 5.8).
func mountDev(fd int) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, os.NewSyscallError("statx", err)
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, errors.New("statx: the kernel does not report the mount id")
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return 0, err
	}
	defer mi.Close()
	id := strconv.FormatUint(stx.Mnt_id, 10)
	sc := bufio.NewScanner(mi)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != id {
			continue
		}
		maj, min, ok := strings.Cut(fields[2], ":")
		major, err1 := strconv.ParseUint(maj, 10, 32)
		minor, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return 0, fmt.Errorf("/proc/self/mountinfo: mount %s: device %q", id, fields[2])
		}
		return unix.Mkdev(uint32(major), uint32(minor)), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("/proc/self/mountinfo: %w", err)
	}
	return 0, fmt.Errorf("/proc/self/mountinfo: no mount %s", id)
}
