package steer

import (
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
var ErrNotSupported = errors.New("UDP flows cannot be kept across reloads here")

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
// family.
const keySize = 20

// Options size a Group. Zero fields take the defaults.
type Options struct {
	Flows   int // flow table capacity (DefaultFlows)
	Sockets int // socket array capacity (DefaultSockets)
}

// Group is the steering program of one reuseport group and its maps.
// Its methods are safe for concurrent use.
type Group struct {
	mu       sync.Mutex
	prog     *ebpf.Program
	flows    *ebpf.Map // LRU hash: peer -> socket index
	socks    *ebpf.Map // REUSEPORT_SOCKARRAY: index -> socket
	serving  *ebpf.Map // array[1]: {base, count} of the serving sockets
	counters *ebpf.Map // per-CPU array[numCounters]
	nsocks   int
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
	g := &Group{nsocks: o.Sockets}
	var err error
	fail := func(what string, err error) (*Group, error) {
		g.Close() // nothing was handed out: release what was made
		return nil, explain(what, err)
	}
	if g.flows, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_flows", Type: ebpf.LRUHash, KeySize: keySize, ValueSize: 4, MaxEntries: uint32(o.Flows)}); err != nil {
		return fail("the flow table", err)
	}
	if g.socks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_socks", Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(o.Sockets)}); err != nil {
		return fail("the socket array", err)
	}
	if g.serving, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_serving", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}); err != nil {
		return fail("the serving range", err)
	}
	if g.counters, err = ebpf.NewMap(&ebpf.MapSpec{Name: "baton_counts", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: numCounters}); err != nil {
		return fail("the counters", err)
	}
	if g.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "baton_steer",
		Type:         ebpf.SkReuseport,
		License:      "Dual BSD/GPL",
		Instructions: program(g.flows, g.socks, g.serving, g.counters),
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
		return fmt.Errorf("%w: loading %s: %w: baton needs CAP_BPF and CAP_NET_ADMIN (or root), and kernel.unprivileged_bpf_disabled keeps unprivileged users out", ErrNotSupported, what, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%w: loading %s: %w: SK_REUSEPORT programs need Linux 4.19 or later", ErrNotSupported, what, err)
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

// Put places the socket fd (of the group, bound) at index of the socket
// array. The kernel keeps its own reference; the caller keeps fd.
func (g *Group) Put(index, fd int) error {
	if index < 0 || index >= g.nsocks {
		return fmt.Errorf("socket index %d: the array holds %d", index, g.nsocks)
	}
	if err := g.socks.Put(uint32(index), uint64(fd)); err != nil {
		return fmt.Errorf("putting fd %d at index %d of the socket array: %w", fd, index, err)
	}
	return nil
}

// Remove takes the socket at index out of the array: its peers follow the
// serving generation from their next datagram on. Removing an empty index
// is not an error.
func (g *Group) Remove(index int) error {
	if err := g.socks.Delete(uint32(index)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("removing index %d of the socket array: %w", index, err)
	}
	return nil
}

// Serve makes the count sockets from index base the serving ones: new
// peers go to one of them, by the kernel's flow hash. count 0 leaves the
// choice to the kernel's hash among the whole group.
func (g *Group) Serve(base, count int) error {
	if base < 0 || count < 0 || base+count > g.nsocks {
		return fmt.Errorf("serving range %d+%d: the array holds %d", base, count, g.nsocks)
	}
	v := make([]byte, 8)
	binary.NativeEndian.PutUint32(v, uint32(base))
	binary.NativeEndian.PutUint32(v[4:], uint32(count))
	if err := g.serving.Put(uint32(0), v); err != nil {
		return fmt.Errorf("setting the serving range: %w", err)
	}
	return nil
}

// Stats is what the program has done, and what it holds.
type Stats struct {
	Known    uint64 `json:"known"`    // datagrams of known peers, to their socket
	New      uint64 `json:"new"`      // new peers, to a serving socket
	Moved    uint64 `json:"moved"`    // known peers whose socket had gone
	Fallback uint64 `json:"fallback"` // no serving socket: the kernel chose
	// Flows counts the peers in the table, by socket index.
	Flows map[int]int `json:"flows,omitempty"`
	// Capacity is the flow table's size.
	Capacity int `json:"capacity"`
	// Runs and Runtime are the kernel's statistics of the program
	// (kernel.bpf_stats_enabled must be on; zero otherwise).
	Runs    uint64        `json:"runs"`
	Runtime time.Duration `json:"runtime_ns"`
}

// Stats reads the counters and, with flows, walks the flow table (a
// moment per 100,000 peers: not for a hot path).
func (g *Group) Stats(flows bool) (Stats, error) {
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
	if ps, err := g.prog.Stats(); err == nil {
		st.Runs, st.Runtime = ps.RunCount, ps.Runtime
	}
	if flows {
		st.Flows = map[int]int{}
		var key [keySize]byte
		var idx uint32
		it := g.flows.Iterate()
		for it.Next(&key, &idx) {
			st.Flows[int(idx)]++
		}
		if err := it.Err(); err != nil {
			return st, fmt.Errorf("walking the flow table: %w", err)
		}
	}
	return st, nil
}

// Close releases the program and the maps. Sockets it is attached to keep
// the program until they close.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	if g.prog != nil {
		errs = append(errs, g.prog.Close())
	}
	for _, m := range []*ebpf.Map{g.flows, g.socks, g.serving, g.counters} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	g.prog, g.flows, g.socks, g.serving, g.counters = nil, nil, nil, nil, nil
	return errors.Join(errs...)
}
