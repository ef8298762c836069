package listener

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/pathtrust"
	"github.com/baton-dev/baton/internal/sockfile"
)

// Socket is a bound (and, for stream kinds, listening) socket that baton
// holds. The zero value is not usable; get one from Bind.
type Socket struct {
	Spec Spec
	// StaleRemoved is set when Bind removed a unix socket file that
	// nothing answered on.
	StaleRemoved bool

	// Warning, when set, is something about a unix socket file that the
	// caller should log: its directory lets another user replace the
	// file (see Bind). Nothing baton does depends on that directory.
	Warning error

	fd      int
	addr    net.Addr
	ino     uint64
	backlog int
	// file identifies the socket file Bind created and verified (zero
	// for none, or one baton does not own): Close removes it only while
	// the path still names that very file.
	file sockfile.ID
}

// Error is a failure to create, bind or listen on a socket. Its message
// names the address, the cause and, where there is one, the fix.
type Error struct {
	Op   string // "socket", "bind", "listen", ...
	Spec Spec
	Err  error
	Hint string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s %s %s: %v", e.Op, e.Spec.Scheme, e.Spec.Address(), e.Err)
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Fd is the socket's file descriptor. It stays owned by the Socket.
func (s *Socket) Fd() int { return s.fd }

// Addr is the address the socket is bound to, with the real port when the
// spec asked for port 0.
func (s *Socket) Addr() net.Addr { return s.addr }

// Port is the bound port of an inet socket, 0 for unix sockets.
func (s *Socket) Port() int {
	switch a := s.addr.(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	}
	return 0
}

// Backlog is the backlog given to listen(2), 0 for datagram sockets. The
// kernel caps it at net.core.somaxconn.
func (s *Socket) Backlog() int { return s.backlog }

// Inode is the socket's inode number, as shown by ss and /proc/PID/fd.
func (s *Socket) Inode() uint64 { return s.ino }

// Close closes baton's descriptor. Workers that inherited the socket keep
// theirs. A unix socket file is removed if the path still names the very
// file Bind made (same device and inode, checked and unlinked relative to
// the directory opened once: sockfile.Remove), never a file another user
// put there.
// Close never calls shutdown(2): on a shared listening socket that would
// reset every queued connection for every holder.
func (s *Socket) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	// Best effort: a file that cannot be removed (its directory gone, or
	// not writable any more) is a stale file the next Bind clears.
	sockfile.Remove(s.Spec.Path, s.file)
	s.file = sockfile.ID{}
	if err != nil {
		return os.NewSyscallError("close", err)
	}
	return nil
}

// Bind creates the socket a spec describes: socket(2) with
// SOCK_CLOEXEC|SOCK_NONBLOCK, options, bind(2), and listen(2) for stream
// kinds. Errors are *Error.
//
// For a unix socket at a path, which baton (often root) creates in a
// directory other users may be able to write:
//   - A stale socket file (one nothing answers on) is removed first; one
//     that something answers on is an error. The file probed is the file
//     removed (sockfile.OpenPath, Answers, Remove).
//   - With ?mode=, the file is born with at most the owner's bits of that
//     mode (fchmod(2) of the socket before bind(2)), so it is never more
//     open than asked for, even if what follows fails.
//   - After bind(2), the file at the path must be the one the kernel
//     recorded for the socket (sockfile.Verify): if another user replaced
//     it in between (with a symlink to a root-only file, say), Bind fails
//     and changes nothing. ?owner= and ?mode= are then applied to that
//     verified file by descriptor, never by path.
//   - A directory another user can change (pathtrust.Dir) is not an
//     error: nothing baton does follows a path there. Socket.Warning says
//     so, because that user can replace the socket file with their own
//     and be reached by clients that connect to the path.
func Bind(spec Spec) (*Socket, error) {
	sa, family, err := sockaddr(spec)
	if err != nil {
		return nil, &Error{Op: "resolve", Spec: spec, Err: err, Hint: "use an IP address or a name this host resolves"}
	}
	typ := unix.SOCK_STREAM
	if spec.Kind == Datagram {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, &Error{Op: "socket", Spec: spec, Err: os.NewSyscallError("socket", err)}
	}
	s := &Socket{Spec: spec, fd: fd}
	if err := s.setup(sa, family); err != nil {
		// The descriptor is ours alone until Bind returns: close it (and
		// remove the socket file, if one was made and verified) so a
		// failed start holds nothing.
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Socket) setup(sa unix.Sockaddr, family int) error {
	spec := s.Spec
	fail := func(op string, err error, hint string) error {
		return &Error{Op: op, Spec: spec, Err: os.NewSyscallError(op, err), Hint: hint}
	}
	if spec.IsInet() && spec.Kind == Stream {
		// Rebinding while old connections sit in TIME_WAIT must work.
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail("setsockopt", err, "")
		}
	}
	if spec.Balance == Reuseport || spec.steer {
		// Each slot's socket joins one group; the kernel hashes every new
		// connection (or datagram flow) to one socket of the group.
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("setsockopt SO_REUSEPORT", err, "")
		}
	}
	if family == unix.AF_INET6 {
		v6only := spec.Scheme == "tcp6" || spec.Scheme == "udp6"
		if spec.V6Only != nil {
			v6only = *spec.V6Only
		}
		if err := unix.SetsockoptInt(s.fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(v6only)); err != nil {
			return fail("setsockopt", err, "")
		}
	}
	if spec.IsUnix() && !spec.Abstract() {
		removed, err := clearStalePath(spec)
		if err != nil {
			return err
		}
		s.StaleRemoved = removed
		if spec.Mode != 0 {
			// bind(2) gives the file the socket inode's mode less the
			// umask: born with the owner's bits only, it is never more
			// open than asked for, and widened once verified.
			if err := unix.Fchmod(s.fd, spec.Mode&0o700); err != nil {
				return fail("fchmod", err, "")
			}
		}
	}
	if err := unix.Bind(s.fd, sa); err != nil {
		return fail("bind", err, bindHint(spec, err))
	}
	if spec.IsUnix() && !spec.Abstract() {
		if afterBind != nil {
			afterBind(spec.Path)
		}
		f, err := sockfile.Verify(s.fd, spec.Path)
		if err != nil {
			return &Error{Op: "bind", Spec: spec, Err: err}
		}
		s.file = f.ID
		err = applyOwnership(f, spec)
		f.Close() // only needed for the changes just made
		if err != nil {
			return err
		}
		if err := pathtrust.Dir(filepath.Dir(spec.Path)); err != nil {
			s.Warning = fmt.Errorf("socket file %s: another user can replace it with a socket of their own, which clients that connect to the path would then reach (baton itself acts only on the file it bound, checked by inode): %w", spec.Path, err)
		}
	}
	if spec.Kind == Stream {
		backlog := spec.Backlog
		if backlog == 0 {
			backlog = DefaultBacklog()
		}
		if err := unix.Listen(s.fd, backlog); err != nil {
			return fail("listen", err, bindHint(spec, err))
		}
		s.backlog = backlog
	}
	local, err := unix.Getsockname(s.fd)
	if err != nil {
		return fail("getsockname", err, "")
	}
	s.addr = netAddr(spec, local)
	var st unix.Stat_t
	if err := unix.Fstat(s.fd, &st); err != nil {
		return fail("fstat", err, "")
	}
	s.ino = st.Ino
	return nil
}

// DefaultBacklog is the listen backlog used when a spec sets none: the
// kernel's net.core.somaxconn, which caps any larger value anyway.
func DefaultBacklog() int {
	if n, err := Somaxconn(); err == nil && n > 0 {
		return n
	}
	return 4096
}

// Somaxconn reads net.core.somaxconn, the cap the kernel puts on every
// listen backlog.
func Somaxconn() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// afterBind, when set (by tests), runs between bind(2) and the check of
// the socket file: where another user would swap the file.
var afterBind func(path string)

// applyOwnership gives a verified socket file the owner and then the mode
// of its spec, by descriptor. The owner comes first, so the file is never
// open to a group or user it is not meant for.
func applyOwnership(f *sockfile.File, spec Spec) error {
	if spec.UID >= 0 || spec.GID >= 0 {
		if err := f.Chown(spec.UID, spec.GID); err != nil {
			return &Error{Op: "chown", Spec: spec, Err: err, Hint: "changing the owner of a socket file needs root or CAP_CHOWN"}
		}
	}
	if spec.Mode != 0 {
		if err := f.Chmod(spec.Mode); err != nil {
			return &Error{Op: "chmod", Spec: spec, Err: err}
		}
	}
	return nil
}

// clearStalePath removes a unix socket file left behind by a process that
// died, after making sure nothing answers on it. It reports whether it
// removed one. The file is opened without following a symlink, probed
// through that descriptor, and removed only if the path still names it:
// another user who can write to the directory cannot make it probe or
// remove something else.
func clearStalePath(spec Spec) (bool, error) {
	f, err := sockfile.OpenPath(spec.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, &Error{Op: "stat", Spec: spec, Err: err}
	}
	defer f.Close() // only the probe and the check need it
	if !f.IsSocket() {
		return false, &Error{Op: "bind", Spec: spec, Err: syscall.EEXIST, Hint: "the path exists and is not a socket; remove it or choose another path"}
	}
	if alive, _, err := f.Answers(); err != nil {
		return false, &Error{Op: "connect", Spec: spec, Err: err, Hint: "cannot tell whether the socket file is in use"}
	} else if alive {
		hint := "a running program answers on this socket; stop it or choose another path"
		if who := holderOfUnixPath(spec.Path); who != "" {
			hint = "held by " + who + "; stop it or choose another path"
		}
		return false, &Error{Op: "bind", Spec: spec, Err: syscall.EADDRINUSE, Hint: hint}
	}
	removed, err := sockfile.Remove(spec.Path, f.ID)
	if err != nil {
		return false, &Error{Op: "remove stale socket", Spec: spec, Err: err}
	}
	return removed, nil
}

func bindHint(spec Spec, err error) string {
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		if who := holderOfPort(spec); who != "" {
			return "held by " + who + "; stop that process or choose another port"
		}
		if spec.IsUnix() {
			return "another socket is bound to this name; choose another"
		}
		return "another socket is bound to this port; stop its program or choose another port"
	case errors.Is(err, unix.EACCES) && spec.IsInet() && spec.Port > 0 && spec.Port < 1024:
		return "ports below 1024 need root or CAP_NET_BIND_SERVICE (or a lower net.ipv4.ip_unprivileged_port_start)"
	case errors.Is(err, unix.EACCES) && spec.IsUnix():
		return "the directory does not let this user create the socket file; choose another path or fix its permissions"
	case errors.Is(err, unix.ENOENT) && spec.IsUnix():
		return "the directory does not exist; create it first"
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return "no interface on this host has that address"
	}
	return ""
}

// sockaddr resolves a spec's address. An empty host means every address:
// [::] with IPV6_V6ONLY off where IPv6 exists, 0.0.0.0 otherwise.
func sockaddr(spec Spec) (unix.Sockaddr, int, error) {
	if spec.IsUnix() {
		return &unix.SockaddrUnix{Name: spec.Path}, unix.AF_UNIX, nil
	}
	var ip netip.Addr
	switch {
	case spec.Host == "" && spec.family == "inet4":
		ip = netip.IPv4Unspecified()
	case spec.Host == "" && (spec.family == "inet6" || ipv6Supported()):
		ip = netip.IPv6Unspecified()
	case spec.Host == "":
		ip = netip.IPv4Unspecified()
	default:
		var err error
		if ip, err = resolve(spec); err != nil {
			return nil, 0, err
		}
	}
	if ip.Is4() || ip.Is4In6() && spec.family == "inet4" {
		return &unix.SockaddrInet4{Port: spec.Port, Addr: ip.Unmap().As4()}, unix.AF_INET, nil
	}
	sa := &unix.SockaddrInet6{Port: spec.Port, Addr: ip.As16()}
	if zone := ip.Zone(); zone != "" {
		ifi, err := net.InterfaceByName(zone)
		if err != nil {
			return nil, 0, err
		}
		sa.ZoneId = uint32(ifi.Index)
	}
	return sa, unix.AF_INET6, nil
}

// resolve turns the host of a spec into one address, preferring IPv4 for
// plain tcp/udp so that "localhost" means 127.0.0.1 as most clients expect.
func resolve(spec Spec) (netip.Addr, error) {
	if ip, err := netip.ParseAddr(spec.Host); err == nil {
		return ip, nil
	}
	network := map[string]string{"inet": "ip", "inet4": "ip4", "inet6": "ip6"}[spec.family]
	ips, err := net.DefaultResolver.LookupNetIP(context.Background(), network, spec.Host)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			return ip.Unmap(), nil
		}
	}
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("%s has no %s address", spec.Host, network)
	}
	return ips[0], nil
}

func ipv6Supported() bool {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

func netAddr(spec Spec, sa unix.Sockaddr) net.Addr {
	var ip net.IP
	var port int
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		ip, port = net.IP(a.Addr[:]).To16(), a.Port
	case *unix.SockaddrInet6:
		ip, port = net.IP(a.Addr[:]), a.Port
	case *unix.SockaddrUnix:
		network := "unix"
		if spec.Kind == Datagram {
			network = "unixgram"
		}
		return &net.UnixAddr{Name: a.Name, Net: network}
	}
	if spec.Kind == Datagram {
		return &net.UDPAddr{IP: ip, Port: port}
	}
	return &net.TCPAddr{IP: ip, Port: port}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
