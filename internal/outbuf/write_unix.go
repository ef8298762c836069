//go:build unix

package outbuf

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// fileFd returns f's descriptor without File.Fd, which would switch the
// open file description, shared with baton's parent and its workers, to
// blocking mode. -1 when f has none.
func fileFd(f *os.File) int {
	fd := -1
	if f == nil {
		return fd
	}
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(s uintptr) { fd = int(s) })
	}
	return fd
}

// write writes all of b with write(2) on the raw descriptor, so that a
// broken pipe on baton's stdout or stderr is an error here and not the
// os package's exit by SIGPIPE. A descriptor someone made non-blocking is
// waited for with poll(2). It returns how much was written and why not
// all.
func (w *core) write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(w.fd, b[done:])
		if n > 0 {
			done += n
		}
		switch err {
		case nil:
			if n == 0 {
				return done, io.ErrShortWrite
			}
		case unix.EINTR:
		case unix.EAGAIN:
			pfd := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 1000); err != nil && err != unix.EINTR {
				return done, os.NewSyscallError("poll", err)
			}
		default:
			return done, os.NewSyscallError("write", err)
		}
	}
	return done, nil
}
