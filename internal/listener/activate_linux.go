package listener

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/sockdiag"
	"github.com/baton-dev/baton/internal/sockfile"
	"github.com/baton-dev/baton/internal/steer"
)

// Activation is what baton does with the sockets its service manager
// handed it at start (socket activation, or its fd store after a
// restart), matched against its listeners by Match. Bind then makes the
// listeners: the handed sockets adopted, the rest bound.
type Activation struct {
	// Stale lists the sockets of the fd store this configuration does
	// not use (already closed here): remove each from the store before
	// Bind, which may need their address.
	Stale []Stale
	// Stored maps the store names of the sockets adopted from the fd
	// store, and kept there under that name, to their inodes.
	Stored map[string]uint64
	// Held lists the inodes of the sockets a socket unit holds (any
	// handed socket not from the store): the service manager keeps them
	// across a restart already, so they never go in the fd store.
	Held map[uint64]bool

	specs []Spec
	slots int
	// socks holds the adopted sockets of each spec (by index), by slot:
	// -1 for a shared listener's socket.
	socks []map[int]*Socket
}

// handed is one descriptor of LISTEN_FDS, as Match sees it.
type handed struct {
	Inherited
	store    bool   // named by the fd store (StorePrefix)
	listener string // store: the listener's name in the name
	slot     int    // store: the slot in the name, -1 for none

	ino       uint64
	sotype    int
	family    int
	sa        unix.Sockaddr
	listening bool
	reuseport bool
	err       error // why it is not a socket baton can use at all
}

// Match matches the sockets handed to baton (inherited, from Inherit)
// with the listeners of specs, for slots workers, and takes each one it
// can use (Bind adopts them). A handed socket goes to a listener:
//
//   - by its name (LISTEN_FDNAMES): a socket unit's FileDescriptorName=
//     the listener's name, or the name the fd store has it under
//     (StoreName);
//   - otherwise by its address and type: the first listener whose kind,
//     family and address it has (an unnamed socket of
//     systemd-socket-activate, a unit's default name, a listener
//     renamed since the socket was stored).
//
// Match then checks what the kernel tells: the socket's type and family,
// the address it is bound to, that a stream socket listens (a unit with
// Accept=yes hands connections, not a listener), SO_REUSEPORT for a
// balance=reuseport listener, and that the file of a unix socket the
// store kept is still the socket's. A reuseport listener takes up to
// slots sockets: the fd store's by their slot, a unit's in the order
// handed. The backlog in effect is compared with the listener's: a
// unit's socket keeps its own, with a warning; a stored socket is given
// the listener's again (listen(2)).
//
// A socket from a socket unit that is named after a listener and differs
// from it, that matches no listener, or that is one more than a listener
// can take, is an error wrapping ErrHanded that names it (descriptor,
// name, address), says what differs and how to fix it; then every handed
// descriptor is closed. A socket from the fd store that this
// configuration does not use (its listener gone or changed, a slot beyond
// the workers) is closed and listed in Activation.Stale, for the caller
// to remove from the store; that is how a restart applies a changed
// configuration. The same socket handed twice (a unit's and the store's)
// is used once, preferring the unit's.
//
// Match logs, on log, what it adopts and every difference it tolerates.
func Match(specs []Spec, slots int, inherited []Inherited, log *slog.Logger) (*Activation, error) {
	a := &Activation{Stored: map[string]uint64{}, Held: map[uint64]bool{}, specs: specs, slots: slots, socks: make([]map[int]*Socket, len(specs))}
	hs := make([]*handed, len(inherited))
	for i, in := range inherited {
		hs[i] = describe(in)
	}
	fail := func(err error) (*Activation, error) {
		a.Close()
		for _, h := range hs {
			if h.Fd >= 0 {
				unix.Close(h.Fd) // handed to baton, used by nothing
			}
		}
		return nil, err
	}
	stale := func(h *handed, reason string) {
		a.Stale = append(a.Stale, Stale{Name: h.Name, Address: h.address(), Reason: reason})
		unix.Close(h.Fd) // the store's copy goes with FDSTOREREMOVE
		h.Fd = -1
	}

	// The same socket twice: keep the unit's (it holds the socket across
	// restarts anyway), else the first.
	first := map[uint64]*handed{}
	for _, h := range hs {
		if h.err != nil {
			continue
		}
		prev, dup := first[h.ino]
		if !dup {
			first[h.ino] = h
			continue
		}
		drop, keep := h, prev
		if prev.store && !h.store {
			drop, keep = prev, h
			first[h.ino] = h
		}
		if !drop.store {
			unix.Close(drop.Fd) // a unit's second descriptor of the same socket
			drop.Fd = -1
			continue
		}
		stale(drop, fmt.Sprintf("the same socket is handed as %q", keep.Name))
	}

	// Each usable socket goes to a listener, or is stale, or refused.
	assigned := make([][]*handed, len(specs))
	for _, h := range hs {
		if h.Fd < 0 {
			continue
		}
		if h.err != nil {
			if h.store {
				stale(h, h.err.Error())
				continue
			}
			return fail(fmt.Errorf("%w: %s: %w; remove it from the socket unit (baton takes listening sockets only)", ErrHanded, h, h.err))
		}
		i := -1
		if h.store {
			i = slices.IndexFunc(specs, func(s Spec) bool { return s.Name == h.listener })
		} else {
			i = slices.IndexFunc(specs, func(s Spec) bool { return s.Name == h.Name })
		}
		if i >= 0 {
			if why := h.mismatch(specs[i]); why != "" {
				if h.store {
					stale(h, fmt.Sprintf("listener %s is now %s: %s", specs[i].Name, specs[i].URL(), why))
					continue
				}
				return fail(fmt.Errorf("%w: %s is named after listener %s=%s but %s; make the socket unit's Listen...= (or systemd-socket-activate's -l) and the listener the same address and type, or name the socket after the listener it is for (FileDescriptorName=)", ErrHanded, h, specs[i].Name, specs[i].URL(), why))
			}
		} else {
			// By address: a listener on port 0 takes any port, so only
			// its name can match it.
			i = slices.IndexFunc(specs, func(s Spec) bool { return (s.Port != 0 || !s.IsInet()) && h.mismatch(s) == "" })
			if i < 0 {
				if h.store {
					stale(h, "no listener of this configuration has its name or its address")
					continue
				}
				return fail(fmt.Errorf("%w: %s matches no listener by name or address; add a listener for it (-l NAME=%s, and FileDescriptorName=NAME in the socket unit) or remove it from the socket unit", ErrHanded, h, h.url()))
			}
		}
		if h.store {
			if specs[i].WantsFlows() {
				stale(h, fmt.Sprintf("listener %s keeps its UDP flows (flows=%s): its sockets belong to generations and are bound with the steering program, never kept in the store", specs[i].Name, orDefault(specs[i].Flows, FlowsAuto)))
				continue
			}
			if why := h.storedFile(specs[i]); why != "" {
				stale(h, why)
				continue
			}
		}
		assigned[i] = append(assigned[i], h)
	}

	// Slots: a unit's sockets first (they must be used: the unit keeps
	// them open), then the store's by the slot in their name.
	for i, spec := range specs {
		socks := map[int]*Socket{}
		a.socks[i] = socks
		var units, stored []*handed
		for _, h := range assigned[i] {
			if h.store {
				stored = append(stored, h)
			} else {
				units = append(units, h)
			}
		}
		want := 1
		if spec.Balance == Reuseport {
			want = max(slots, 1)
		}
		if len(units) > want {
			var list []string
			for _, h := range units {
				list = append(list, h.String())
			}
			return fail(fmt.Errorf("%w: %d sockets are handed for listener %s, which takes %d (%s); hand at most %d, or run more workers with balance=reuseport: %s", ErrHanded, len(units), spec.Name, want, orDefault(spec.Balance, Shared), want, strings.Join(list, ", ")))
		}
		slot := func(k int) int {
			if spec.Balance == Reuseport {
				return k
			}
			return -1
		}
		for k, h := range units {
			s, err := a.adopt(spec, h, false, log)
			if err != nil {
				return fail(fmt.Errorf("%w: %s for listener %s: %w", ErrHanded, h, spec.Name, err))
			}
			socks[slot(k)] = s
			a.Held[h.ino] = true
		}
		for _, h := range stored {
			k := h.slot
			switch {
			case spec.Balance != Reuseport && len(units) > 0:
				stale(h, fmt.Sprintf("listener %s has its socket from the socket unit", spec.Name))
				continue
			case spec.Balance == Reuseport && k >= want:
				stale(h, fmt.Sprintf("slot %d is beyond the %d workers of listener %s (what was queued in that slot's socket is reset, unless net.ipv4.tcp_migrate_req=1 moved it)", k, want, spec.Name))
				continue
			case socks[k] != nil:
				stale(h, fmt.Sprintf("listener %s has that socket already (%s)", spec.Name, StoreName(spec.Name, k)))
				continue
			}
			s, err := a.adopt(spec, h, true, log)
			if err != nil {
				stale(h, err.Error())
				continue
			}
			socks[k] = s
			a.Stored[h.Name] = h.ino
		}
	}
	// A name that is removed from the store takes every entry of that
	// name with it: a socket adopted under it must be stored again.
	for _, s := range a.Stale {
		delete(a.Stored, s.Name)
	}
	return a, nil
}

// adopt makes h a Socket of spec: the backlog in effect checked (and,
// for a socket of the store, set to the listener's), the socket file of
// a stored unix socket claimed as baton's (its Close removes it).
func (a *Activation) adopt(spec Spec, h *handed, stored bool, log *slog.Logger) (*Socket, error) {
	backlog := 0
	if spec.Kind == Stream {
		want := spec.Backlog
		if want == 0 {
			want = DefaultBacklog()
		}
		if n, err := Somaxconn(); err == nil && n > 0 {
			want = min(want, n)
		}
		backlog = want
		got, diagErr := backlogOf(h)
		if diagErr != nil {
			log.Debug("cannot read the backlog of a handed socket", "listener", spec.Name, "fd", h.Fd, "err", diagErr)
		}
		switch {
		case stored:
			// baton's own socket: the listener's backlog, which a
			// configuration changed since the restart may have changed
			// (listen(2) again sets it on a listening socket).
			if err := unix.Listen(h.Fd, want); err != nil {
				return nil, fmt.Errorf("setting its backlog to %d: %w", want, os.NewSyscallError("listen", err))
			}
			if diagErr == nil && got != want {
				log.Info("socket from the fd store: backlog changed to the listener's", "listener", spec.Name, "from", got, "to", want)
			}
		case diagErr == nil && got != want:
			backlog = got
			log.Warn("the socket unit's backlog differs from the listener's; the socket keeps the unit's (set Backlog= in the socket unit to change it)",
				"listener", spec.Name, "fd", h.Fd, "backlog", got, "listener_backlog", want)
		}
	}
	pathIno := uint64(0)
	if stored {
		pathIno = 1 // the previous baton bound it: its file is baton's
	}
	s, err := Adopt(spec, h.Fd, backlog, pathIno)
	if err != nil {
		return nil, err
	}
	h.Fd = -1 // the Socket's now
	from := "socket unit"
	if stored {
		from = "fd store"
	}
	log.Info("listening on a socket handed by the service manager", "name", spec.Name, "from", from, "fdname", h.Name, "address", s.Addr().String(), "inode", s.Inode())
	return s, nil
}

// backlogOf is the accept queue's maximum of a listening stream socket,
// as the kernel has it (sock_diag: what ss shows as Send-Q).
func backlogOf(h *handed) (int, error) {
	c, err := sockdiag.Dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var q map[uint64]sockdiag.Queue
	if h.family == unix.AF_UNIX {
		q, err = c.UnixQueues(h.ino)
	} else {
		q, err = c.ListenQueues(h.ino)
	}
	if err != nil {
		return 0, err
	}
	got, ok := q[h.ino]
	if !ok {
		return 0, fmt.Errorf("sock_diag does not list socket inode %d", h.ino)
	}
	return int(got.SendQ), nil
}

// Bind makes the listeners, one group per spec in order: the sockets
// Match adopted (a reuseport listener's missing slots bound beside them),
// the other listeners bound (OpenGroup). The fd store closes a stale
// socket only once it has read the FDSTOREREMOVE sent for it, so an
// address still in use is tried again, for at most wait, when Match found
// stale sockets. On an error every socket of the activation is closed.
func (a *Activation) Bind(wait time.Duration) ([]*Group, error) {
	var out []*Group
	fail := func(err error) ([]*Group, error) {
		for _, g := range out {
			g.Close()
		}
		a.Close()
		return nil, err
	}
	deadline := time.Now().Add(wait)
	retry := func(op func() error) error {
		delay := 10 * time.Millisecond
		for {
			err := op()
			if err == nil || len(a.Stale) == 0 || !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline) {
				return err
			}
			time.Sleep(delay) // the service manager closing its copy: nothing to observe but the bind
			delay = min(2*delay, 200*time.Millisecond)
		}
	}
	for i, spec := range a.specs {
		socks := a.socks[i]
		a.socks[i] = nil // in a group from here on, which fail closes
		if len(socks) == 0 {
			var g *Group
			err := retry(func() (err error) {
				g, err = OpenGroup(spec, a.slots)
				return err
			})
			if err != nil {
				return fail(err)
			}
			out = append(out, g)
			continue
		}
		g := AdoptGroup(spec, socks)
		out = append(out, g)
		if spec.WantsFlows() {
			// A socket unit's UDP socket: systemd holds it too, so baton
			// cannot give each generation sockets of its own (how it
			// keeps flows, docs/udp.md).
			if spec.NeedsFlows() {
				return fail(fmt.Errorf("listener %s (flows=%s): %w: baton keeps UDP flows on sockets of its own, one set per generation, and the socket unit holds this one; set flows=auto or off, or leave the listener out of the socket unit", spec.Name, spec.Flows, ErrHanded))
			}
			g.FlowsErr = fmt.Errorf("%w: the socket unit handed its socket, which systemd holds too; leave the listener out of the socket unit to keep its flows", steer.ErrNotSupported)
		}
		if err := retry(func() error { return g.Grow(a.slots) }); err != nil {
			return fail(err)
		}
	}
	return out, nil
}

// Close closes the sockets Match adopted that Bind has not put in a
// group. It leaves their socket files alone: the service manager still
// holds the sockets.
func (a *Activation) Close() {
	for i, socks := range a.socks {
		for _, s := range socks {
			s.file = sockfile.ID{}
			s.Close()
		}
		a.socks[i] = nil
	}
}

// describe asks the kernel what the handed descriptor is.
func describe(in Inherited) *handed {
	h := &handed{Inherited: in, slot: -1}
	h.listener, h.slot, h.store = ParseStoreName(in.Name)
	if !h.store {
		h.slot = -1
	}
	var st unix.Stat_t
	if err := unix.Fstat(in.Fd, &st); err != nil {
		h.err = fmt.Errorf("not an open descriptor: %w", os.NewSyscallError("fstat", err))
		return h
	}
	h.ino = st.Ino
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		h.err = errors.New("not a socket (a FIFO, a file or a device: ListenFIFO= or ListenSpecial=)")
		return h
	}
	var err error
	if h.sotype, err = unix.GetsockoptInt(in.Fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		h.err = os.NewSyscallError("getsockopt SO_TYPE", err)
		return h
	}
	if h.family, err = unix.GetsockoptInt(in.Fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		h.err = os.NewSyscallError("getsockopt SO_DOMAIN", err)
		return h
	}
	switch h.family {
	case unix.AF_INET, unix.AF_INET6, unix.AF_UNIX:
	default:
		h.err = fmt.Errorf("a socket of address family %d; baton takes inet, inet6 and unix sockets", h.family)
		return h
	}
	if h.sa, err = unix.Getsockname(in.Fd); err != nil {
		h.err = os.NewSyscallError("getsockname", err)
		return h
	}
	if h.sotype == unix.SOCK_STREAM {
		v, err := unix.GetsockoptInt(in.Fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		h.listening = err == nil && v == 1
	}
	v, err := unix.GetsockoptInt(in.Fd, unix.SOL_SOCKET, unix.SO_REUSEPORT)
	h.reuseport = err == nil && v == 1
	return h
}

// String names the socket for an error: `fd 3 "http" (tcp
// 127.0.0.1:8080)`.
func (h *handed) String() string {
	name := "unnamed"
	if h.Name != "" {
		name = fmt.Sprintf("%q", h.Name)
	}
	if h.err != nil || h.sa == nil {
		return fmt.Sprintf("fd %d %s", h.Fd, name)
	}
	return fmt.Sprintf("fd %d %s (%s)", h.Fd, name, h.address())
}

// address is the socket's kind and address: "tcp 127.0.0.1:8080", "udp
// [::]:53", "unix /run/app.sock", "unixgram @name".
func (h *handed) address() string {
	u := h.url()
	scheme, rest, _ := strings.Cut(u, "://")
	return scheme + " " + rest
}

// url is the socket as a listener address: tcp://127.0.0.1:8080.
func (h *handed) url() string {
	kind := map[int]string{unix.SOCK_STREAM: "stream", unix.SOCK_DGRAM: "datagram", unix.SOCK_SEQPACKET: "seqpacket"}[h.sotype]
	switch a := h.sa.(type) {
	case *unix.SockaddrInet4:
		scheme := map[string]string{"stream": "tcp", "datagram": "udp"}[kind]
		return fmt.Sprintf("%s://%s", orKind(scheme, kind), netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)))
	case *unix.SockaddrInet6:
		scheme := map[string]string{"stream": "tcp", "datagram": "udp"}[kind]
		return fmt.Sprintf("%s://%s", orKind(scheme, kind), netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)))
	case *unix.SockaddrUnix:
		scheme := map[string]string{"stream": "unix", "datagram": "unixgram"}[kind]
		name := a.Name
		if name == "" {
			name = "(unbound)"
		}
		return fmt.Sprintf("%s://%s", orKind(scheme, kind), name)
	}
	return kind + "://?"
}

// orKind is scheme, or the socket type where no scheme of baton's has it
// (seqpacket).
func orKind(scheme, kind string) string {
	if scheme == "" {
		return kind
	}
	return scheme
}

// mismatch says how the socket differs from spec, "" when it is a socket
// of spec: its type, family and address, a stream socket listening,
// SO_REUSEPORT for balance=reuseport, and, for a socket of the store, the
// balance its name says.
func (h *handed) mismatch(spec Spec) string {
	want := unix.SOCK_STREAM
	if spec.Kind == Datagram {
		want = unix.SOCK_DGRAM
	}
	if h.sotype != want {
		scheme, _, _ := strings.Cut(h.url(), "://")
		return fmt.Sprintf("it is a %s socket, the listener wants %s", scheme, spec.Scheme)
	}
	if why := h.addressMismatch(spec); why != "" {
		return why
	}
	if want == unix.SOCK_STREAM && !h.listening {
		return "it is not listening (a connection, from a socket unit with Accept=yes?); use Accept=no"
	}
	if spec.Balance == Reuseport && !h.reuseport {
		return "the listener has balance=reuseport and the socket does not have SO_REUSEPORT (ReusePort=yes in the socket unit)"
	}
	if h.store && (h.slot >= 0) != (spec.Balance == Reuseport) {
		return fmt.Sprintf("its balance was not %s", orDefault(spec.Balance, Shared))
	}
	return ""
}

// orDefault is s, or def when s is "".
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// addressMismatch compares the socket's family and address with spec's.
func (h *handed) addressMismatch(spec Spec) string {
	if spec.IsUnix() {
		a, ok := h.sa.(*unix.SockaddrUnix)
		if !ok {
			return fmt.Sprintf("it is bound to %s, the listener wants the unix socket %s", h.address(), spec.Path)
		}
		if a.Name != spec.Path {
			return fmt.Sprintf("it is bound to %s, the listener wants %s", orDefault(a.Name, "no name"), spec.Path)
		}
		return ""
	}
	var ip netip.Addr
	var port int
	switch a := h.sa.(type) {
	case *unix.SockaddrInet4:
		ip, port = netip.AddrFrom4(a.Addr), a.Port
	case *unix.SockaddrInet6:
		ip, port = netip.AddrFrom16(a.Addr), a.Port
	default:
		return fmt.Sprintf("it is bound to %s, the listener wants %s", h.address(), spec.Address())
	}
	if spec.Port != 0 && port != spec.Port {
		return fmt.Sprintf("it is bound to port %d, the listener wants %d", port, spec.Port)
	}
	switch {
	case spec.family == "inet4" && h.family != unix.AF_INET:
		return fmt.Sprintf("it is an IPv6 socket (%s), the listener wants IPv4 (%s)", ip, spec.Scheme)
	case spec.family == "inet6" && h.family != unix.AF_INET6:
		return fmt.Sprintf("it is an IPv4 socket (%s), the listener wants IPv6 (%s)", ip, spec.Scheme)
	}
	if spec.Host == "" {
		if !ip.IsUnspecified() {
			return fmt.Sprintf("it is bound to %s, the listener wants every address (%s)", ip, spec.Address())
		}
		return ""
	}
	sa, _, err := sockaddr(spec)
	if err != nil {
		return fmt.Sprintf("the listener's host %s does not resolve: %v", spec.Host, err)
	}
	var want netip.Addr
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		want = netip.AddrFrom4(a.Addr)
	case *unix.SockaddrInet6:
		want = netip.AddrFrom16(a.Addr)
	}
	if want.Unmap() != ip.Unmap() {
		return fmt.Sprintf("it is bound to %s, the listener wants %s", ip.Unmap(), want.Unmap())
	}
	return ""
}

// storedFile checks that the file of a unix socket from the fd store is
// still the socket's: a socket whose file was removed or replaced while
// baton was down cannot be reached at the path, and is bound again.
func (h *handed) storedFile(spec Spec) string {
	if !spec.IsUnix() || spec.Abstract() {
		return ""
	}
	f, err := sockfile.Verify(h.Fd, spec.Path)
	if err != nil {
		return fmt.Sprintf("its socket file is not reachable at the path any more: %v", err)
	}
	f.Close() // the check is all that is needed; Adopt claims the file
	return ""
}
