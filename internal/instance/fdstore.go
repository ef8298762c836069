package instance

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/baton-dev/baton/internal/listener"
)

// fdStore keeps the serving listeners' sockets in baton's service
// manager's file descriptor store (systemd's FileDescriptorStoreMax=),
// so that after baton restarts (systemctl restart, a crash, an OOM kill)
// they come back through LISTEN_FDS and never close: nothing queued on
// them is lost and no client is refused while baton is down.
//
// Its sync runs on the supervisor's loop after every event
// (supervisor.Options.OnListeners) and tells the manager what changed
// since: "FDSTORE=1" with the socket for each socket it does not have yet
// (a listener bound at start or by a reload, a reuseport slot a scale
// added), "FDSTOREREMOVE=1" for each it has that no serving listener
// holds any more (a listener a reload removed or replaced, a slot a
// scale removed). Names are listener.StoreName's. The sockets a socket
// unit handed are not stored: the unit keeps them anyway; nor are those
// of a UDP listener that keeps its flows (flows=auto or on, docs/udp.md),
// whose sockets belong to generations: it is bound again after a restart.
type fdStore struct {
	// send is Notifier.NotifyFds: it queues the notification and owns
	// the descriptors from then on.
	send func(state string, fds []int)
	// max is FileDescriptorStoreMax= ($FDSTORE): the store refuses
	// more.
	max int
	log *slog.Logger

	stored map[string]uint64 // what the manager holds: name -> inode
	held   map[uint64]bool   // a socket unit's sockets, by inode
	// last is what the previous sync saw (group and inode, in order),
	// to skip the events that change no listener; scratch is the next
	// one's room.
	last, scratch []groupSocket
	groups        []*listener.Group
	full          bool            // warned that max is too small
	tooLong       map[string]bool // names warned to be too long
}

// maxFDName is the longest name systemd keeps a descriptor under
// (FDNAME_MAX).
const maxFDName = 255

// groupSocket is one socket of a group, for fdStore.last.
type groupSocket struct {
	g   *listener.Group
	ino uint64
}

// storeMax is how many descriptors baton's service manager keeps for it:
// $FDSTORE, which systemd 254 and later set to FileDescriptorStoreMax=
// (a unit for an older systemd sets it with Environment=). 0 when unset:
// there is no store, or no service manager.
func storeMax(getenv func(string) string) int {
	if getenv("NOTIFY_SOCKET") == "" {
		return 0
	}
	n, err := strconv.Atoi(getenv("FDSTORE"))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// newFDStore returns the store for a manager that keeps max descriptors,
// starting from what the activation found in it (act, nil for none), or
// nil when max is 0.
func newFDStore(send func(string, []int), max int, act *listener.Activation, log *slog.Logger) *fdStore {
	if max <= 0 {
		return nil
	}
	f := &fdStore{send: send, max: max, log: log, stored: map[string]uint64{}, held: map[uint64]bool{}, tooLong: map[string]bool{}}
	if act != nil {
		for name, ino := range act.Stored {
			f.stored[name] = ino
		}
		for ino := range act.Held {
			f.held[ino] = true
		}
	}
	return f
}

// sync brings the store in line with the serving listeners. Removals go
// first: the manager keeps one entry per socket, so a socket stored
// again under another name (a listener renamed) must leave its old name
// before it can take the new one.
func (f *fdStore) sync(groups []*listener.Group) {
	if f == nil || !f.changed(groups) {
		return
	}
	f.groups = groups
	want := map[string]*listener.Socket{}
	for _, g := range groups {
		if g.Spec.WantsFlows() {
			// A UDP listener whose flows baton keeps has sockets per
			// generation, with the steering program: after a restart it
			// is bound again, with a program of its own.
			continue
		}
		for _, s := range g.Sockets() {
			if !f.held[s.Inode()] {
				want[listener.StoreName(g.Spec.Name, g.SlotOf(s))] = s
			}
		}
	}
	for _, name := range sortedKeys(f.stored) {
		if s, ok := want[name]; !ok || s.Inode() != f.stored[name] {
			f.send("FDSTOREREMOVE=1\nFDNAME="+name, nil)
			delete(f.stored, name)
			f.log.Info("fd store: removed a socket no listener holds any more", "fdname", name)
		}
	}
	for _, name := range sortedKeys(want) {
		if _, ok := f.stored[name]; ok {
			continue
		}
		if len(f.stored) >= f.max {
			if !f.full {
				f.full = true
				f.log.Warn("the service manager's fd store is full: these sockets close when baton restarts; raise FileDescriptorStoreMax= (and FDSTORE= with systemd before 254) to the number of sockets",
					"max", f.max, "sockets", len(want))
			}
			continue
		}
		if len(name) > maxFDName {
			if !f.tooLong[name] {
				f.tooLong[name] = true
				f.log.Warn("fd store: a listener's name is too long for the store; its socket closes if baton restarts: use a shorter name", "fdname", name, "max", maxFDName)
			}
			continue
		}
		s := want[name]
		// A duplicate goes to the Notifier, which sends it from its own
		// goroutine: the group may close its socket meanwhile.
		dup, err := unix.FcntlInt(uintptr(s.Fd()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			f.log.Warn("fd store: cannot duplicate a listener's socket; it closes if baton restarts", "fdname", name, "err", os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err))
			continue
		}
		// FDPOLL=0: systemd would drop a socket from the store on
		// POLLERR, which a UDP socket reports for an ICMP error.
		f.send(fmt.Sprintf("FDSTORE=1\nFDNAME=%s\nFDPOLL=0", name), []int{dup})
		f.stored[name] = s.Inode()
		f.log.Debug("fd store: stored a listener's socket", "fdname", name, "inode", s.Inode())
	}
}

// changed reports whether the groups or their sockets differ from the
// last sync's, and records them.
func (f *fdStore) changed(groups []*listener.Group) bool {
	now := f.scratch[:0]
	for _, g := range groups {
		if g.Spec.WantsFlows() {
			continue // never stored (sync): its sockets change nothing here
		}
		for _, s := range g.Sockets() {
			now = append(now, groupSocket{g, s.Inode()})
		}
	}
	if slices.Equal(now, f.last) && f.last != nil {
		f.scratch = now
		return false
	}
	f.last, f.scratch = now, f.last
	return true
}

// disown leaves the stored listeners' socket files in place when baton
// stops: the store keeps the sockets, and after a restart the next baton
// serves on them at the same path. (A file left after the store was
// dropped, with the unit stopped for good, is one nothing answers on,
// which the next bind removes.)
func (f *fdStore) disown() {
	if f == nil {
		return
	}
	for _, g := range f.groups {
		g.Disown()
	}
}

// sortedKeys is m's keys in order, so that notifications go out in an
// order a test can expect.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
