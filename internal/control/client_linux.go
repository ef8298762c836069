package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// dialer is the dialer of Call. Its socket refuses descriptors
// (SO_PASSRIGHTS=0, Linux 6.16): a control client never wants any, and a
// descriptor sent unasked can be a trap (a socket whose last close blocks
// for its linger time). Older kernels lack the option and keep their
// default.
func dialer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSRIGHTS, 0)
		}); cerr != nil {
			return cerr
		}
		if errors.Is(err, unix.ENOPROTOOPT) {
			return nil // before Linux 6.16
		}
		return os.NewSyscallError("setsockopt SO_PASSRIGHTS", err)
	}}
}

// ErrUntrustedServer is wrapped by the error CheckServer returns when the
// process that answers is neither root nor the caller's user.
var ErrUntrustedServer = errors.New("answered by a process of another user")

// CheckServer checks who answers on a connection to a control socket at
// path, before anything is sent on it: the process that listens there
// (SO_PEERCRED) must run as root or as this process's user. Anyone else
// can be there only by having put their own socket at the path (in a
// directory they could write), and would be told what baton was asked
// and answer as they please, so the error names them, says why they are
// not trusted, and what to do.
func CheckServer(c *net.UnixConn, path string) error {
	cred, err := peerCred(c)
	if err != nil {
		return fmt.Errorf("control socket %s: cannot tell who answers there: %w", path, err)
	}
	if euid := os.Geteuid(); cred.Uid != 0 && int(cred.Uid) != euid {
		return fmt.Errorf("control socket %s: %w: pid %d of uid %d, neither root nor you (uid %d); a baton of yours or root's would run as one of those, so this is not one: nothing was sent. Find out who made %s (ls -l), stop that process, remove the file and start baton again, or pass the --name or --control your baton uses", path, ErrUntrustedServer, cred.Pid, cred.Uid, euid, path)
	}
	return nil
}
