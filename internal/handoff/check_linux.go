package handoff

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CheckConn checks that fd, which a worker handed off as a connection
// accepted on its listener called name, is one: a connected stream
// socket (TCP, MPTCP or unix) that is not itself listening, whose local
// address is that of a listener of that name (listeners: each stream
// listener's bound addresses, by name). It returns why not, in words
// that name the descriptor's kind. A worker could otherwise hand baton a
// pipe, a file, a UDP socket or a listener, and baton would pass it to
// the next generation as a client's connection.
func CheckConn(fd int, name string, listeners map[string][]net.Addr) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("it is %s, not a socket", fileKind(fd, st.Mode))
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("getsockopt SO_DOMAIN: %w", err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("getsockopt SO_TYPE: %w", err)
	}
	switch {
	case domain != unix.AF_INET && domain != unix.AF_INET6 && domain != unix.AF_UNIX:
		return fmt.Errorf("it is a socket of address family %d, not a TCP or unix connection", domain)
	case typ != unix.SOCK_STREAM:
		return fmt.Errorf("it is a %s socket, not a stream connection", sockType(typ))
	}
	if domain != unix.AF_UNIX {
		proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			return fmt.Errorf("getsockopt SO_PROTOCOL: %w", err)
		}
		if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_MPTCP {
			return fmt.Errorf("it is a stream socket of protocol %d, not TCP", proto)
		}
	}
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil {
		return fmt.Errorf("getsockopt SO_ACCEPTCONN: %w", err)
	} else if on != 0 {
		return errors.New("it is a listening socket, not a connection")
	}
	if _, err := unix.Getpeername(fd); err != nil {
		if errors.Is(err, unix.ENOTCONN) {
			return errors.New("it is not connected (never was, or its peer has gone)")
		}
		return fmt.Errorf("getpeername: %w", err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	addrs, ok := listeners[name]
	if !ok {
		return fmt.Errorf("the worker has no stream listener called %q", name)
	}
	for _, a := range addrs {
		if onListener(local, a) {
			return nil
		}
	}
	return fmt.Errorf("its local address %s is not that of listener %s (%v)", sockaddrString(local), name, addrs)
}

// onListener reports whether a connection with local address local was
// accepted on a listener bound to a: the same port, and the same address
// unless the listener is bound to every address; for unix sockets, the
// same path.
func onListener(local unix.Sockaddr, a net.Addr) bool {
	switch l := a.(type) {
	case *net.TCPAddr:
		ip, port, ok := inetOf(local)
		if !ok || port != l.Port {
			return false
		}
		want, ok := netip.AddrFromSlice(l.IP)
		return !ok || want.Unmap().IsUnspecified() || want.Unmap() == ip.Unmap()
	case *net.UnixAddr:
		u, ok := local.(*unix.SockaddrUnix)
		return ok && u.Name == l.Name
	}
	return false
}

func inetOf(sa unix.Sockaddr) (netip.Addr, int, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(a.Addr), a.Port, true
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(a.Addr), a.Port, true
	}
	return netip.Addr{}, 0, false
}

func sockaddrString(sa unix.Sockaddr) string {
	if ip, port, ok := inetOf(sa); ok {
		return netip.AddrPortFrom(ip.Unmap(), uint16(port)).String()
	}
	if u, ok := sa.(*unix.SockaddrUnix); ok {
		return u.Name
	}
	return fmt.Sprintf("%T", sa)
}

// fileKind names what a descriptor that is not a socket is, as
// /proc/self/fd shows it ("pipe:[123]", "anon_inode:[eventpoll]", a path).
func fileKind(fd int, mode uint32) string {
	kind := "a file"
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		kind = "a pipe or FIFO"
	case unix.S_IFREG:
		kind = "a regular file"
	case unix.S_IFDIR:
		kind = "a directory"
	case unix.S_IFCHR, unix.S_IFBLK:
		kind = "a device"
	}
	if target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
		if strings.HasPrefix(target, "anon_inode:") {
			kind = "an anonymous inode"
		}
		kind += " (" + target + ")"
	}
	return kind
}

func sockType(t int) string {
	switch t {
	case unix.SOCK_DGRAM:
		return "datagram"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	case unix.SOCK_RAW:
		return "raw"
	}
	return fmt.Sprintf("type %d", t)
}
