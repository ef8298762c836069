package steer

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNotSupported is wrapped by the errors of Supported and New when this
// process or kernel cannot steer flows.
var ErrNotSupported = errors.New("UDP flows are not kept across reloads")

// Defaults of Options.
const (
	// DefaultFlows is the flow table's capacity: the least recently seen
	// peers are forgotten past it (and then follow the serving
	// generation, like new ones).
	DefaultFlows = 1 << 17
	// DefaultSockets is the socket array's capacity: the sockets of every
	// generation alive at once, each generation one per slot.
	DefaultSockets = 1024
)

// keySize is the flow key: a 16-byte address, a 2-byte port and a 2-byte
// family. valueSize is a flow's value: the socket index and its tag.
const (
	keySize   = 20
	valueSize = 8
)

// Options size a Group. Zero fields take the defaults.
type Options struct {
	Flows   int // flow table capacity (DefaultFlows)
	Sockets int // socket array capacity (DefaultSockets)
	// QUIC makes the program steer QUIC short-header packets by the
	// cookie at the start of their destination connection ID (Cookie)
	// before it looks their peer up: flows=quic.
	QUIC bool
}

// Group is the steering program of one reuseport group and its maps.
// Its methods are safe for concurrent use.
type Group struct {
	mu   sync.Mutex
	prog *ebpf.Program
	maps
	nsocks int
	next   int          // where the search for a free index starts
	used   map[int]bool // indexes this Group put a socket at
}

// New loads the program and its maps. The group is empty until sockets
// are Put and a serving range is set; Attach it to one of them.
func New(o Options) (*Group, error) {
	if err := littleEndian(); err != nil {
		return nil, err
	}
	if o.Flows == 0 {
		o.Flows = DefaultFlows
	}
	if o.Sockets == 0 {
		o.Sockets = DefaultSockets
	}
	g := &Group{nsocks: o.Sockets, used: map[int]bool{}}
	var err error
	fail := func(what string, err error) (*Group, error) {
		g.Close() // nothing was handed out: release what was made
		return nil, explain(what, err)
	}
	if g.flows, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_flows", Type: ebpf.LRUHash, KeySize: keySize, ValueSize: valueSize, MaxEntries: uint32(o.Flows)}); err != nil {
		return fail("the flow table", err)
	}
	if g.socks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_socks", Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(o.Sockets)}); err != nil {
		return fail("the socket array", err)
	}
	if g.tags, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_tags", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: uint32(o.Sockets)}); err != nil {
		return fail("the socket tags", err)
	}
	if g.serving, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_serving", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: uint32(1 + 2*o.Sockets)}); err != nil {
		return fail("the serving table", err)
	}
	if g.counters, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_counts", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(numCounters + o.Sockets + 1)}); err != nil {
		return fail("the counters", err)
	}
	if g.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "baton_steer",
		Type:         ebpf.SkReuseport,
		License:      "Dual BSD/GPL",
		Instructions: program(g.maps, o.Sockets, o.QUIC),
	}); err != nil {
		return fail("the steering program", err)
	}
	return g, nil
}

// explain turns a failure to create an object into an error that names
// the cause and the fix.
func explain(what string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%w: loading %s: %w: baton needs CAP_BPF and CAP_NET_ADMIN (or root), and kernel.unprivileged_bpf_disabled keeps unprivileged users out; run baton as root, or set ?flows=off on the listener", ErrNotSupported, what, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%w: loading %s: %w: SK_REUSEPORT programs need Linux 4.19 or later; upgrade the kernel, or set ?flows=off on the listener", ErrNotSupported, what, err)
	}
	return fmt.Errorf("%w: loading %s: %w", ErrNotSupported, what, err)
}

// littleEndian refuses machines the program is not built for.
func littleEndian() error {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	if b[0] != 1 {
		return fmt.Errorf("%w: the steering program is built for little-endian machines, and %s is not one", ErrNotSupported, runtime.GOARCH)
	}
	return nil
}

// Supported reports whether this process can steer flows here: it loads
// a group and closes it. The error says why not and how to fix it.
func Supported() error {
	g, err := New(Options{Flows: 16, Sockets: 2})
	if err != nil {
		return err
	}
	return g.Close()
}

// FDs are the descriptors of a Group's program and maps, to hand them to
// another process (an upgrade's execve, a takeover's SCM_RIGHTS): with
// them a new baton goes on steering the same group, with every flow the
// old one recorded.
type FDs struct {
	Prog     int `json:"prog"`
	Flows    int `json:"flows"`
	Socks    int `json:"socks"`
	Tags     int `json:"tags"`
	Serving  int `json:"serving"`
	Counters int `json:"counters"`
}

// List is the descriptors in the order of the fields.
func (f FDs) List() []int { return []int{f.Prog, f.Flows, f.Socks, f.Tags, f.Serving, f.Counters} }

// FDsOf lists descriptors in the order of List.
func FDsOf(l []int) (FDs, error) {
	if len(l) != 6 {
		return FDs{}, fmt.Errorf("%d descriptors for a steering program and its maps; want 6", len(l))
	}
	return FDs{Prog: l[0], Flows: l[1], Socks: l[2], Tags: l[3], Serving: l[4], Counters: l[5]}, nil
}

// FDs are the Group's descriptors; they stay the Group's.
func (g *Group) FDs() FDs {
	return FDs{Prog: g.prog.FD(), Flows: g.flows.FD(), Socks: g.socks.FD(), Tags: g.tags.FD(), Serving: g.serving.FD(), Counters: g.counters.FD()}
}

// FromFDs makes a Group of the descriptors another baton handed over,
// which it then owns (on an error, it has closed them all). It checks
// each is the object it should be: a descriptor that is not, or a map
// of another shape, is refused.
func FromFDs(f FDs) (*Group, error) {
	g := &Group{used: map[int]bool{}}
	var err error
	fail := func(err error) (*Group, error) {
		g.Close()
		for _, fd := range f.List() {
			if fd >= 0 {
				unix.Close(fd) // not taken by a wrapper: ours to close
			}
		}
		return nil, fmt.Errorf("the steering program and its maps handed over: %w", err)
	}
	if g.prog, err = ebpf.NewProgramFromFD(f.Prog); err != nil {
		return fail(fmt.Errorf("fd %d: %w", f.Prog, err))
	}
	f.Prog = -1
	if g.prog.Type() != ebpf.SkReuseport {
		return fail(fmt.Errorf("the program is of type %s, not SK_REUSEPORT", g.prog.Type()))
	}
	want := []struct {
		m   **ebpf.Map
		fd  *int
		typ ebpf.MapType
		key uint32
		val uint32
	}{
		{&g.flows, &f.Flows, ebpf.LRUHash, keySize, valueSize},
		{&g.socks, &f.Socks, ebpf.ReusePortSockArray, 4, 8},
		{&g.tags, &f.Tags, ebpf.Array, 4, 4},
		{&g.serving, &f.Serving, ebpf.Array, 4, 4},
		{&g.counters, &f.Counters, ebpf.PerCPUArray, 4, 8},
	}
	for _, w := range want {
		m, err := ebpf.NewMapFromFD(*w.fd)
		if err != nil {
			return fail(fmt.Errorf("fd %d: %w", *w.fd, err))
		}
		*w.fd, *w.m = -1, m
		if m.Type() != w.typ || m.KeySize() != w.key || m.ValueSize() != w.val {
			return fail(fmt.Errorf("a map is %s with %d-byte keys and %d-byte values, want %s with %d and %d", m.Type(), m.KeySize(), m.ValueSize(), w.typ, w.key, w.val))
		}
	}
	g.nsocks = int(g.socks.MaxEntries())
	if g.serving.MaxEntries() != uint32(1+2*g.nsocks) || g.tags.MaxEntries() != uint32(g.nsocks) {
		return fail(errors.New("the maps' sizes do not match each other"))
	}
	return g, nil
}

// Attach attaches the program to the reuseport group of the bound socket
// fd (SO_ATTACH_REUSEPORT_EBPF): it serves every socket of that group,
// those bound later too. The group's sockets must all be bound by one
// effective uid, and with SO_REUSEPORT.
func (g *Group) Attach(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, g.prog.FD()); err != nil {
		return fmt.Errorf("attaching the steering program to the socket group (fd %d): %w", fd, os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_EBPF", err))
	}
	return nil
}

// Capacity is the number of sockets the array holds.
func (g *Group) Capacity() int { return g.nsocks }

// Alloc finds a free index of the socket array: one this Group does not
// use and where no socket is (another baton's, during a takeover). The
// search goes round the array, so an index is used again as late as
// possible.
func (g *Group) Alloc() (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var cookie uint64
	for range g.nsocks {
		i := g.next
		g.next = (g.next + 1) % g.nsocks
		if g.used[i] {
			continue
		}
		if err := g.socks.Lookup(uint32(i), &cookie); err == nil {
			continue // another baton's socket
		}
		g.used[i] = true
		return i, nil
	}
	return -1, fmt.Errorf("the socket array is full (%d sockets): too many generations or slots at once", g.nsocks)
}

// Reserve marks index as used by this Group (a socket an upgrade handed
// over).
func (g *Group) Reserve(index int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.used[index] = true
}

// Put places the socket fd (of the group, bound) at index of the socket
// array with a new tag, which it returns: flows recorded for whatever was
// at index before go to the serving sockets. The kernel keeps its own
// reference; the caller keeps fd.
func (g *Group) Put(index, fd int) (uint32, error) {
	if index < 0 || index >= g.nsocks {
		return 0, fmt.Errorf("socket index %d: the array holds %d", index, g.nsocks)
	}
	return g.PutChecked(index, fd, g.NewCheck(index))
}

// NewCheck picks the check of a socket about to be put at index (see
// Cookie): random, not zero, and not the check of the last socket that
// was there, so that the QUIC cookies of that socket do not name this
// one.
func (g *Group) NewCheck(index int) uint16 {
	var last uint32
	g.tags.Lookup(uint32(index), &last) // none: zero, which no check is
	var b [2]byte
	for {
		rand.Read(b[:])
		if c := binary.NativeEndian.Uint16(b[:]); c != 0 && c != CheckOf(last) {
			return c
		}
	}
}

// PutChecked is Put with the check the tag carries in its low 16 bits
// (NewCheck's, chosen before: the cookie a worker was told): the socket's
// QUIC cookie is CookieOf(index, check). The tag's high bits are new at
// every call, so that the peers recorded for the index before still
// move.
func (g *Group) PutChecked(index, fd int, check uint16) (uint32, error) {
	if index < 0 || index >= g.nsocks {
		return 0, fmt.Errorf("socket index %d: the array holds %d", index, g.nsocks)
	}
	if check == 0 {
		return 0, fmt.Errorf("socket index %d: a check of 0 names no socket", index)
	}
	g.Reserve(index)
	var b [2]byte
	rand.Read(b[:])
	tag := uint32(binary.NativeEndian.Uint16(b[:]))<<16 | uint32(check)
	// The tag first: from now on, the peers of what was here before move.
	if err := g.tags.Put(uint32(index), tag); err != nil {
		return 0, fmt.Errorf("tagging index %d of the socket array: %w", index, err)
	}
	zero := make([]uint64, ebpfPossibleCPUs())
	if err := g.counters.Put(uint32(numCounters+index), zero); err != nil {
		return 0, fmt.Errorf("resetting the counter of index %d: %w", index, err)
	}
	if err := g.socks.Put(uint32(index), uint64(fd)); err != nil {
		return 0, fmt.Errorf("putting fd %d at index %d of the socket array: %w", fd, index, err)
	}
	return tag, nil
}

// ebpfPossibleCPUs is the number of values of a per-CPU map.
func ebpfPossibleCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return runtime.NumCPU()
	}
	return n
}

// Remove takes the socket at index out of the array: its peers follow the
// serving sockets from their next datagram on. Removing an empty index
// is not an error. free gives the index back to Alloc.
func (g *Group) Remove(index int, free bool) error {
	if err := g.socks.Delete(uint32(index)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing index %d of the socket array: %w", index, err)
	}
	if free {
		g.mu.Lock()
		delete(g.used, index)
		g.mu.Unlock()
	}
	return nil
}

// Serve makes the sockets at indexes the serving ones: new peers go to
// one of them, by the kernel's flow hash. It writes the bank of the
// serving table the program does not read, then switches banks with one
// write: a datagram sees the old list or the new one, never a mix. No
// index leaves the choice to the kernel's hash among the whole group.
func (g *Group) Serve(indexes []int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(indexes) > g.nsocks || len(indexes) > servingMask {
		return fmt.Errorf("%d serving sockets: the array holds %d", len(indexes), g.nsocks)
	}
	var head uint32
	if err := g.serving.Lookup(uint32(0), &head); err != nil {
		return fmt.Errorf("reading the serving table: %w", err)
	}
	bank := 1 - head>>servingBank
	for j, idx := range indexes {
		if idx < 0 || idx >= g.nsocks {
			return fmt.Errorf("serving socket index %d: the array holds %d", idx, g.nsocks)
		}
		if err := g.serving.Put(uint32(1+int(bank)*g.nsocks+j), uint32(idx)); err != nil {
			return fmt.Errorf("writing the serving table: %w", err)
		}
	}
	if err := g.serving.Put(uint32(0), bank<<servingBank|uint32(len(indexes))); err != nil {
		return fmt.Errorf("switching the serving table: %w", err)
	}
	return nil
}

// Delivered reads how many datagrams the program steered to the socket at
// index since it was put there.
func (g *Group) Delivered(index int) (uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.counters == nil {
		return 0, errClosed
	}
	var per []uint64
	if err := g.counters.Lookup(uint32(numCounters+index), &per); err != nil {
		return 0, fmt.Errorf("reading the counter of index %d: %w", index, err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Stats is what the program has done, and what it holds.
type Stats struct {
	Known    uint64 `json:"known"`    // datagrams of known peers, to their socket
	New      uint64 `json:"new"`      // new peers, to a serving socket
	Moved    uint64 `json:"moved"`    // known peers whose socket had gone
	Fallback uint64 `json:"fallback"` // no serving socket: the kernel chose
	// QUIC counts the QUIC datagrams steered by their connection ID's
	// cookie (flows=quic).
	QUIC uint64 `json:"quic"`
	// Flows counts the peers in the table by the socket index they are
	// steered to, the socket there now; Stale those whose socket has gone
	// (they move on their next datagram). Entries is all of them.
	Flows   map[int]int `json:"flows,omitempty"`
	Stale   int         `json:"stale"`
	Entries int         `json:"entries"`
	// Capacity is the flow table's size.
	Capacity int `json:"capacity"`
	// Runs and Runtime are the kernel's statistics of the program
	// (kernel.bpf_stats_enabled must be on; zero otherwise).
	Runs    uint64        `json:"runs"`
	Runtime time.Duration `json:"runtime_ns"`
}

// Stats reads the counters and, with flows, walks the flow table (about
// 12 ms for 100,000 peers on 2 CPUs, BenchmarkStats: not for a hot path).
//
// It holds the Group's lock throughout, so that Close (baton's exit, on
// a goroutine of its own) never closes a map it reads: a closed map's
// descriptor number may already name another file.
func (g *Group) Stats(flows bool) (Stats, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.prog == nil {
		return Stats{}, errClosed
	}
	st := Stats{Capacity: int(g.flows.MaxEntries())}
	for i, p := range []*uint64{&st.Known, &st.New, &st.Moved, &st.Fallback} {
		var per []uint64
		if err := g.counters.Lookup(uint32(i), &per); err != nil {
			return st, fmt.Errorf("reading counter %d: %w", i, err)
		}
		for _, n := range per {
			*p += n
		}
	}
	var per []uint64
	if g.counters.Lookup(uint32(numCounters+g.nsocks), &per) == nil { // none in an older baton's maps
		for _, n := range per {
			st.QUIC += n
		}
	}
	if ps, err := g.prog.Stats(); err == nil {
		st.Runs, st.Runtime = ps.RunCount, ps.Runtime
	}
	if !flows {
		return st, nil
	}
	tags := make([]uint32, g.nsocks)
	for i := range tags {
		g.tags.Lookup(uint32(i), &tags[i])
	}
	live := map[int]bool{}
	var cookie uint64
	for i := range g.nsocks {
		if tags[i] != 0 && g.socks.Lookup(uint32(i), &cookie) == nil {
			live[i] = true
		}
	}
	st.Flows = map[int]int{}
	err := g.walk(func(idx, tag uint32) {
		st.Entries++
		if int(idx) < len(tags) && live[int(idx)] && tags[idx] == tag {
			st.Flows[int(idx)]++
		} else {
			st.Stale++
		}
	})
	return st, err
}

// walk calls f with the value of every flow, in batches where the kernel
// has them.
func (g *Group) walk(f func(idx, tag uint32)) error {
	const batch = 4096
	keys := make([][keySize]byte, batch)
	vals := make([]uint64, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := g.flows.BatchLookup(&cursor, keys, vals, nil)
		for _, v := range vals[:n] {
			f(uint32(v), uint32(v>>32))
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			return g.iterate(f)
		case err != nil:
			return fmt.Errorf("walking the flow table: %w", err)
		}
	}
}

// iterate is walk one flow at a time, for kernels without batches.
func (g *Group) iterate(f func(idx, tag uint32)) error {
	var key [keySize]byte
	var v uint64
	it := g.flows.Iterate()
	for it.Next(&key, &v) {
		f(uint32(v), uint32(v>>32))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walking the flow table: %w", err)
	}
	return nil
}

// errClosed is what a Group answers once closed.
var errClosed = errors.New("steering: the program and its maps are closed (baton is exiting)")

// Close releases the program and the maps. Sockets it is attached to keep
// the program until they close.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	if g.prog != nil {
		errs = append(errs, g.prog.Close())
	}
	for _, m := range []*ebpf.Map{g.flows, g.socks, g.tags, g.serving, g.counters} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	g.prog, g.maps = nil, maps{}
	return errors.Join(errs...)
}
