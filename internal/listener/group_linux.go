package listener

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/sockfile"
	"github.com/baton-dev/baton/internal/steer"
)

// Group is one named listener and the sockets baton holds for it: a single
// socket every worker shares, or, with balance=reuseport, one SO_REUSEPORT
// socket per slot. A slot keeps its socket for as long as the slot exists,
// so a worker that replaces another in its slot (a reload, a crash restart)
// accepts from the very queue its predecessor did, and nothing queued there
// is ever reset.
//
// A UDP listener whose flows are kept (flows=auto or on, where baton may
// steer) has sockets per generation instead: see ClaimFlows and
// SyncFlows.
type Group struct {
	Spec    Spec
	sockets []*Socket // shared: one; reuseport: index = slot, nil once released
	flows   *flowSets // a steered group's sockets and program; nil otherwise

	// FlowsErr, for a UDP listener with flows=auto that is not steered,
	// says why and how to fix it; nil otherwise.
	FlowsErr error
}

// OpenGroup binds the sockets of a listener for the given number of slots.
// On an error nothing stays bound. A UDP listener that wants its flows
// kept (Spec.WantsFlows) gets them kept where the program loads and
// attaches; with flows=auto, where it does not, the group is an ordinary
// one and FlowsErr says why, and with flows=on or quic that is OpenGroup's
// error.
func OpenGroup(spec Spec, slots int) (*Group, error) {
	g := &Group{Spec: spec}
	if spec.WantsFlows() {
		err := g.openFlows(slots)
		switch {
		case err == nil:
			return g, nil
		case spec.NeedsFlows() || !errors.Is(err, steer.ErrNotSupported):
			return nil, fmt.Errorf("listener %s (flows=%s): %w", spec.Name, cmp.Or(spec.Flows, FlowsAuto), err)
		}
		g.FlowsErr = err
	}
	if !g.Reuseport() {
		slots = 1
	}
	if err := g.Grow(slots); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// Reuseport reports whether the group has one socket per slot.
func (g *Group) Reuseport() bool { return g.Spec.Balance == Reuseport }

// Socket is the socket the worker of a slot receives: the shared socket,
// or the slot's own. It is nil for a reuseport slot that has none.
//
// A steered group's sockets belong to generations: see SocketOf.
func (g *Group) Socket(slot int) *Socket {
	if g.flows != nil {
		return nil
	}
	if !g.Reuseport() {
		return g.sockets[0]
	}
	if slot < 0 || slot >= len(g.sockets) {
		return nil
	}
	return g.sockets[slot]
}

// Sockets lists the sockets held, by slot (one for a shared listener);
// for a steered group, by generation and slot.
func (g *Group) Sockets() []*Socket {
	var out []*Socket
	if g.flows != nil {
		for _, k := range g.allKeys() {
			if s := g.SocketOf(k.Gen, max(k.Slot, 0)); s != nil {
				out = append(out, s)
			}
		}
		return out
	}
	for _, s := range g.sockets {
		if s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Grow makes sure slots 0..slots-1 each have a socket (a shared listener
// has one socket whatever the number of slots). New reuseport sockets
// join the group on the address the first one got, so port 0 means one
// real port for every slot.
//
// A steered group grows per generation (ClaimFlows): Grow does nothing.
func (g *Group) Grow(slots int) error {
	if g.flows != nil {
		return nil
	}
	if !g.Reuseport() {
		slots = 1
	}
	for len(g.sockets) < slots {
		g.sockets = append(g.sockets, nil)
	}
	for i := 0; i < slots; i++ {
		if g.sockets[i] != nil {
			continue
		}
		spec := g.Spec
		if first := g.Sockets(); len(first) > 0 {
			spec = first[0].sibling()
		}
		s, err := Bind(spec)
		if err != nil {
			return fmt.Errorf("listener %s, slot %d: %w", g.Spec.Name, i, err)
		}
		g.sockets[i] = s
	}
	return nil
}

// sibling is the spec of another socket in the same reuseport group: the
// same options on the address this one is bound to.
func (s *Socket) sibling() Spec {
	spec := s.Spec
	if a, ok := s.addr.(*net.TCPAddr); ok {
		spec.Host, spec.Port = a.IP.String(), a.Port
	}
	if a, ok := s.addr.(*net.UDPAddr); ok {
		spec.Host, spec.Port = a.IP.String(), a.Port
	}
	return spec
}

// Release closes a reuseport slot's socket, when the slot is removed. What
// is queued in it is reset unless net.ipv4.tcp_migrate_req is 1 (then the
// kernel moves it to another socket of the group): check MigrateReq first.
func (g *Group) Release(slot int) error {
	if g.flows != nil || !g.Reuseport() || slot >= len(g.sockets) || g.sockets[slot] == nil {
		return nil
	}
	err := g.sockets[slot].Close()
	g.sockets[slot] = nil
	return err
}

// Close closes every socket of the group, and a steered group's program
// and maps (the sockets workers still hold keep the program until they
// close).
func (g *Group) Close() {
	if f := g.flows; f != nil {
		f.mu.Lock()
		f.close()
		f.mu.Unlock()
	}
	for i, s := range g.sockets {
		if s != nil {
			s.Close()
			g.sockets[i] = nil
		}
	}
}

// MigrateReqPath is the sysctl that lets the kernel move the connections
// queued on a closing SO_REUSEPORT socket to another socket of its group
// (Linux 5.14).
const MigrateReqPath = "/proc/sys/net/ipv4/tcp_migrate_req"

// ErrNoMigrate is returned by MigrateReq when closing a reuseport socket
// would reset what is queued in it.
var ErrNoMigrate = errors.New("net.ipv4.tcp_migrate_req is 0")

// MigrateReq checks that closing a reuseport socket loses nothing queued
// in it. With set, it turns the sysctl on when it is off (root only; the
// setting belongs to the network namespace).
func MigrateReq(set bool) error {
	b, err := os.ReadFile(MigrateReqPath)
	if err != nil {
		return fmt.Errorf("%w: %s cannot be read (%v); this kernel (before 5.14?) cannot move queued connections off a closing reuseport socket", ErrNoMigrate, MigrateReqPath, err)
	}
	if v, _ := strconv.Atoi(strings.TrimSpace(string(b))); v == 1 {
		return nil
	}
	if !set {
		return fmt.Errorf("%w: closing a slot's socket would reset the connections queued in it; run `sysctl -w net.ipv4.tcp_migrate_req=1`, or start baton with --enable-migrate-req", ErrNoMigrate)
	}
	if err := os.WriteFile(MigrateReqPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("%w, and setting it failed: %v: run `sysctl -w net.ipv4.tcp_migrate_req=1` as root", ErrNoMigrate, err)
	}
	return nil
}

// Shrink closes the reuseport sockets of slots n and above (a shared
// listener keeps its socket). See Release.
func (g *Group) Shrink(n int) {
	if g.flows != nil {
		return // its sockets go with their generations (SyncFlows)
	}
	for i := n; i < len(g.sockets); i++ {
		g.Release(i)
	}
	if g.Reuseport() && n < len(g.sockets) {
		g.sockets = g.sockets[:max(n, 0)]
	}
}

// Adjust applies spec to the group's live sockets: listen(2) again with a
// new backlog (Linux updates the queue limit of a listening socket), chown
// and chmod a socket file. Only differences InPlace allows are applied.
//
// A socket file is changed by descriptor, and only once the file at the
// path has been checked to be the one the socket is bound to (the
// kernel's word, sockfile.Verify): a file another user swapped in since
// (a symlink to a root-only file, say) is left alone, and the error says
// so. The socket then keeps its previous mode and owner, and a later
// reload tries again.
//
// Adjust makes the system calls (which, on a path, may block: a mount
// that does not answer) and changes nothing in the group: commit records
// what was applied. Call Adjust off the loop that owns the group, commit
// on it, and do not close the group in between.
func (g *Group) Adjust(spec Spec) (commit func(), err error) {
	type change struct {
		s       *Socket
		backlog int // 0: unchanged
		spec    Spec
	}
	var changes []change
	var errs []error
	kept := false
	for _, s := range g.Sockets() {
		c := change{s: s, spec: spec}
		if spec.Kind == Stream && spec.Backlog != s.Spec.Backlog {
			backlog := spec.Backlog
			if backlog == 0 {
				backlog = DefaultBacklog()
			}
			if err := unix.Listen(s.fd, backlog); err != nil {
				errs = append(errs, &Error{Op: "listen", Spec: spec, Err: os.NewSyscallError("listen", err)})
			} else {
				c.backlog = backlog
			}
		}
		if spec.IsUnix() && !spec.Abstract() && (spec.Mode != s.Spec.Mode || spec.UID != s.Spec.UID || spec.GID != s.Spec.GID) {
			if err := s.adjustFile(spec); err != nil {
				errs = append(errs, err)
				// Not applied: keep what the file has, so that the
				// next reload with this spec tries again.
				c.spec.Mode, c.spec.Owner, c.spec.UID, c.spec.GID = s.Spec.Mode, s.Spec.Owner, s.Spec.UID, s.Spec.GID
				kept = true
			}
		}
		changes = append(changes, c)
	}
	return func() {
		for _, c := range changes {
			if c.backlog != 0 {
				c.s.backlog = c.backlog
			}
			c.s.Spec = c.spec
		}
		g.Spec = spec
		if kept && len(changes) > 0 {
			first := changes[0].spec
			g.Spec.Mode, g.Spec.Owner, g.Spec.UID, g.Spec.GID = first.Mode, first.Owner, first.UID, first.GID
		}
	}, errors.Join(errs...)
}

// adjustFile gives the socket's file the owner and mode of spec, once it
// is verified to be the socket's file.
func (s *Socket) adjustFile(spec Spec) error {
	f, err := sockfile.Verify(s.fd, spec.Path)
	if err != nil {
		return &Error{Op: "chmod", Spec: spec, Err: err}
	}
	defer f.Close() // only needed for the changes made here
	return applyOwnership(f, spec)
}

// Adopt takes over a socket baton inherited across an execve of itself
// (baton upgrade): it checks that fd is a socket of the spec's kind bound
// to the spec's port, and makes it close-on-exec again. backlog is what
// the previous baton recorded; pathIno, when not 0, says that the previous
// baton made the socket file, which Close then removes: which file that is
// comes from the kernel (sockfile.Verify), not from pathIno, and a file
// that is no longer at the path is not removed.
func Adopt(spec Spec, fd, backlog int, pathIno uint64) (*Socket, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("fd %d is not a socket: %w", fd, os.NewSyscallError("getsockopt", err))
	}
	want := unix.SOCK_STREAM
	if spec.Kind == Datagram {
		want = unix.SOCK_DGRAM
	}
	if typ != want {
		return nil, fmt.Errorf("fd %d is a socket of type %d, want %d (%s)", fd, typ, want, spec.Kind)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("fd %d: %w", fd, os.NewSyscallError("getsockname", err))
	}
	s := &Socket{Spec: spec, fd: fd, addr: netAddr(spec, local), backlog: backlog}
	if spec.IsInet() && spec.Port != 0 && s.Port() != spec.Port {
		return nil, fmt.Errorf("fd %d is bound to port %d, want %d", fd, s.Port(), spec.Port)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("fd %d: %w", fd, os.NewSyscallError("fstat", err))
	}
	s.ino = st.Ino
	if pathIno != 0 && spec.IsUnix() && !spec.Abstract() {
		// Not verified (replaced or removed meanwhile): not ours to
		// remove, and the next Adjust says why.
		if f, err := sockfile.Verify(fd, spec.Path); err == nil {
			s.file = f.ID
			f.Close() // the identity is all that is kept
		}
	}
	unix.CloseOnExec(fd)
	return s, nil
}

// AdoptGroup rebuilds a group from adopted sockets: the shared socket at
// slot -1, or one per slot.
func AdoptGroup(spec Spec, sockets map[int]*Socket) *Group {
	g := &Group{Spec: spec}
	if !g.Reuseport() {
		g.sockets = []*Socket{sockets[-1]}
		return g
	}
	for slot, s := range sockets {
		for len(g.sockets) <= slot {
			g.sockets = append(g.sockets, nil)
		}
		g.sockets[slot] = s
	}
	return g
}

// Disown makes Close leave the group's socket files where they are:
// another process answers on them now (a baton that took the listeners
// over). Without it, the instance that handed its listeners over would
// remove their socket files when it stops, and clients could no longer
// reach the new instance by path.
func (g *Group) Disown() {
	for _, s := range g.Sockets() {
		s.file = sockfile.ID{}
	}
}

// Claim makes Close remove the group's socket files from now on, as if
// this process had bound them: an instance that took the listeners over
// claims them once the old one has let go (until then a failed takeover
// must leave the files to the instance that carries on). Which file is
// each socket's comes from the kernel (sockfile.Verify); one no longer at
// its path is not claimed.
func (g *Group) Claim() {
	for _, s := range g.Sockets() {
		if s.fd < 0 || !s.Spec.IsUnix() || s.Spec.Abstract() {
			continue
		}
		if f, err := sockfile.Verify(s.fd, s.Spec.Path); err == nil {
			s.file = f.ID
			f.Close() // the identity is all that is kept
		}
	}
}

// PathIno is the inode of the socket file Bind created and verified (0 for
// none), which Close removes only while the path still names that file.
// An upgrade passes it on, to Adopt.
func (s *Socket) PathIno() uint64 { return s.file.Ino }

// SlotOf is the slot of a socket of a reuseport group, -1 for a shared
// socket or one not in the group.
func (g *Group) SlotOf(s *Socket) int {
	if !g.Reuseport() || g.flows != nil {
		return -1
	}
	return slices.Index(g.sockets, s)
}
