package listener

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/baton-dev/baton/internal/steer"
)

// A UDP listener whose flows are kept (a steered group) has sockets per
// generation instead of per slot: one per generation with balance=shared,
// one per slot of each generation with balance=reuseport, all bound to
// one address with SO_REUSEPORT, so one reuseport group, to which a
// steering program is attached (package steer). A generation claims its
// sockets (ClaimFlows) before its workers start; the supervisor then says,
// after each change, which sockets are in the program's socket array,
// which serve new peers and which are closed (SyncFlows).

// flowSets is the steering of a group: the program and its maps, and the
// sockets of each generation. Its mutex guards everything in it: the
// supervisor's loop changes it, and a status reads it off the loop.
type flowSets struct {
	mu    sync.Mutex
	steer *steer.Group
	sets  map[int]*flowSet // by generation; 0: bound, not claimed yet
	// serving lists the indexes last written to the serving table.
	serving []int
	// retired counts what the program steered to sockets that have
	// been removed, while they no longer served (see flowSock.base).
	retired uint64
}

// flowSet is the sockets of one generation: one (shared) or one per slot
// (reuseport), nil where a slot has none (removed by a scale-down).
type flowSet struct {
	gen   int
	socks []*flowSock
}

// flowSock is a socket of a flowSet and its place in the socket array.
type flowSock struct {
	*Socket
	index int // in the socket array; -1: none
	tag   uint32
	// check is the check of its QUIC cookie (steer.Cookie), chosen
	// when a worker was first told the cookie, or 0; its tag carries it
	// once it is in the array.
	check   uint16
	inArray bool
	serving bool
	// base is what the program had steered to it when it stopped
	// serving: what it steered since went to a draining generation.
	base uint64
}

// FlowKey names a socket of a steered group: its generation and slot
// (-1 for a generation's one socket with balance=shared).
type FlowKey struct {
	Gen, Slot int
}

// FlowFate is what SyncFlows does with a socket.
type FlowFate int

// Fates of a steered socket.
const (
	// FlowIn: in the socket array: its peers reach it.
	FlowIn FlowFate = iota
	// FlowOut: out of the array (its peers follow the serving sockets);
	// baton keeps its copy (a worker of a serving slot may come back to
	// it).
	FlowOut
	// FlowLent: in the array while its workers hold it, but baton's copy
	// closed: a draining generation's socket, which goes (and leaves the
	// array, by the kernel's doing) as soon as its last worker closes it,
	// so that a worker that stops reading and closes it on the stop
	// signal loses only what was queued at that moment.
	FlowLent
	// FlowClosed: out of the array, and baton's copy closed: what it had
	// queued goes with the last worker that holds it.
	FlowClosed
)

// attachHook, when set (by tests), replaces the attach of the program:
// a kernel that refuses it.
var attachHook func(g *steer.Group, fd int) error

// openFlows binds the first sockets of a steered group (slots of them
// with reuseport, else one), loads the program and attaches it. On an
// error nothing stays bound or loaded.
func (g *Group) openFlows(slots int) error {
	sg, err := steer.New(steer.Options{QUIC: g.Spec.QUICFlows()})
	if err != nil {
		return err
	}
	g.flows = &flowSets{steer: sg, sets: map[int]*flowSet{}}
	set, err := g.bindSet(0, slots)
	if err != nil {
		g.flows.close()
		g.flows = nil
		return err
	}
	attach := (*steer.Group).Attach
	if attachHook != nil {
		attach = attachHook
	}
	if err := attach(sg, set.socks[0].fd); err != nil {
		set.close()
		g.flows.close()
		g.flows = nil
		return fmt.Errorf("%w: %w: the kernel refused the program for this socket group; set ?flows=off on the listener", steer.ErrNotSupported, err)
	}
	g.flows.sets[0] = set
	return nil
}

// bindSet binds the sockets of a new set for generation gen: on the
// address the group has (its port, when the spec asked for port 0).
func (g *Group) bindSet(gen, slots int) (*flowSet, error) {
	n := 1
	if g.Reuseport() {
		n = max(slots, 1)
	}
	set := &flowSet{gen: gen}
	for i := range n {
		if err := g.growSet(set, i); err != nil {
			set.close()
			return nil, err
		}
	}
	return set, nil
}

// growTo binds the sockets set lacks among its first slots; on an error
// it closes those it bound and returns the error.
func (g *Group) growTo(set *flowSet, slots int) error {
	var made []int
	for i := range slots {
		if i < len(set.socks) && set.socks[i] != nil {
			continue
		}
		if err := g.growSet(set, i); err != nil {
			for _, j := range made {
				set.socks[j].Close()
				set.socks[j] = nil
			}
			return err
		}
		made = append(made, i)
	}
	return nil
}

// growSet binds the socket of slot i of set, if it has none.
func (g *Group) growSet(set *flowSet, i int) error {
	for len(set.socks) <= i {
		set.socks = append(set.socks, nil)
	}
	if set.socks[i] != nil {
		return nil
	}
	spec := g.Spec
	if first := set.any(); first != nil {
		spec = first.sibling()
	} else if first := g.anySocket(); first != nil {
		spec = first.sibling()
	}
	spec.steer = true
	s, err := Bind(spec)
	if err != nil {
		return fmt.Errorf("listener %s, generation %d, slot %d: %w", g.Spec.Name, set.gen, i, err)
	}
	set.socks[i] = &flowSock{Socket: s, index: -1}
	return nil
}

// anySocket is a socket of the group, or nil.
func (g *Group) anySocket() *Socket {
	if g.flows == nil {
		if socks := g.Sockets(); len(socks) > 0 {
			return socks[0]
		}
		return nil
	}
	for _, set := range g.flows.sets {
		for _, s := range set.socks {
			if s != nil && s.fd >= 0 {
				return s.Socket
			}
		}
	}
	return nil
}

// any is a socket of the set, or nil.
func (set *flowSet) any() *Socket {
	for _, s := range set.socks {
		if s != nil && s.fd >= 0 {
			return s.Socket
		}
	}
	return nil
}

// lend closes baton's copy of the socket, which its workers keep.
func (s *Socket) lend() {
	if s.fd >= 0 {
		s.Close()
	}
}

func (set *flowSet) close() {
	for i, s := range set.socks {
		if s != nil {
			s.Close()
			set.socks[i] = nil
		}
	}
}

func (f *flowSets) close() {
	for _, set := range f.sets {
		set.close()
	}
	f.sets = map[int]*flowSet{}
	if f.steer != nil {
		f.steer.Close()
		f.steer = nil
	}
}

// Steered reports whether the group keeps the flows of its UDP peers
// across generations (its sockets are per generation).
func (g *Group) Steered() bool { return g.flows != nil }

// ClaimFlows gives generation gen its sockets, before its workers start: the
// set bound and not claimed yet (a new listener's), or a new one; with
// balance=reuseport one per slot, up to slots (a generation that claimed
// fewer, before a scale-up, gets more). On an error the sockets bound
// here are closed again and nothing else changed. A group that is not
// steered has nothing to do.
func (g *Group) ClaimFlows(gen, slots int) error {
	f := g.flows
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if set := f.sets[gen]; set != nil {
		if !g.Reuseport() {
			return nil
		}
		return g.growTo(set, slots)
	}
	if set := f.sets[0]; set != nil && gen != 0 {
		if g.Reuseport() {
			set.gen = gen // as its errors name it
			if err := g.growTo(set, slots); err != nil {
				set.gen = 0
				return err
			}
		}
		delete(f.sets, 0)
		set.gen = gen
		f.sets[gen] = set
		return nil
	}
	set, err := g.bindSet(gen, slots)
	if err != nil {
		return err
	}
	f.sets[gen] = set
	return nil
}

// SocketOf is the socket a worker of generation gen in slot receives:
// its generation's (steered group), or the group's for that slot. It is
// nil when there is none.
func (g *Group) SocketOf(gen, slot int) *Socket {
	f := g.flows
	if f == nil {
		return g.Socket(slot)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	set := f.sets[gen]
	if set == nil {
		return nil
	}
	if !g.Reuseport() {
		slot = 0
	}
	if slot < 0 || slot >= len(set.socks) || set.socks[slot] == nil || set.socks[slot].fd < 0 {
		return nil
	}
	return set.socks[slot].Socket
}

// key is the FlowKey of slot i of set.
func (g *Group) key(set *flowSet, i int) FlowKey {
	if !g.Reuseport() {
		return FlowKey{Gen: set.gen, Slot: -1}
	}
	return FlowKey{Gen: set.gen, Slot: i}
}

// FlowKeys lists the steered sockets that belong to a generation (not
// those bound and not claimed yet), by generation and slot.
func (g *Group) FlowKeys() []FlowKey {
	return slices.DeleteFunc(g.allKeys(), func(k FlowKey) bool { return k.Gen == 0 })
}

// allKeys is FlowKeys with the sockets not claimed yet (generation 0).
func (g *Group) allKeys() []FlowKey {
	f := g.flows
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []FlowKey
	for _, set := range f.sets {
		for i, s := range set.socks {
			if s != nil {
				out = append(out, g.key(set, i))
			}
		}
	}
	slices.SortFunc(out, func(a, b FlowKey) int { return cmp.Or(cmp.Compare(a.Gen, b.Gen), cmp.Compare(a.Slot, b.Slot)) })
	return out
}

// SyncFlows makes the program steer as the supervisor says: fate tells,
// for each socket of a generation, whether it is in the socket array,
// out of it, or closed; serving lists the sockets new peers go to (those
// of them in the array), in order, and nil leaves the serving list as it
// is (another baton decides it, during a takeover). It acts only on what changed since the
// last call, so calling it after every event costs nothing when nothing
// did. A set left without sockets is forgotten. What fails is returned,
// and tried again at the next call.
func (g *Group) SyncFlows(fate func(FlowKey) FlowFate, serving []FlowKey) error {
	f := g.flows
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for gen, set := range f.sets {
		if gen == 0 {
			continue
		}
		live := false
		for i, s := range set.socks {
			if s == nil {
				continue
			}
			switch fate(g.key(set, i)) {
			case FlowIn:
				if !s.inArray {
					errs = append(errs, f.put(s))
				}
			case FlowOut:
				errs = append(errs, f.remove(s, false))
			case FlowLent:
				if s.fd >= 0 {
					if !s.inArray {
						errs = append(errs, f.put(s))
					}
					s.Socket.lend()
				}
			case FlowClosed:
				if err := f.remove(s, true); err != nil {
					errs = append(errs, err)
					break
				}
				s.Close()
				set.socks[i] = nil
				continue
			}
			live = true
		}
		if !live {
			delete(f.sets, gen)
		}
	}
	if serving != nil {
		var want []int
		for _, k := range serving {
			if s := f.sock(g, k); s != nil && s.inArray && !slices.Contains(want, s.index) {
				want = append(want, s.index)
			}
		}
		if !slices.Equal(want, f.serving) {
			if err := f.steer.Serve(want); err != nil {
				errs = append(errs, fmt.Errorf("listener %s: %w", g.Spec.Name, err))
			} else {
				f.serving = want
			}
		}
	}
	for _, set := range f.sets {
		for _, s := range set.socks {
			if s == nil || !s.inArray {
				continue
			}
			switch now := slices.Contains(f.serving, s.index); {
			case now && !s.serving:
				s.serving = true
			case !now && s.serving:
				s.serving = false
				s.base, _ = f.steer.Delivered(s.index)
			}
		}
	}
	return errors.Join(errs...)
}

// sock finds the socket k names.
func (f *flowSets) sock(g *Group, k FlowKey) *flowSock {
	set := f.sets[k.Gen]
	if set == nil {
		return nil
	}
	i := max(k.Slot, 0)
	if i >= len(set.socks) {
		return nil
	}
	return set.socks[i]
}

// put places s in the socket array, at a free index.
func (f *flowSets) put(s *flowSock) error {
	if s.fd < 0 {
		return nil // lent: the workers' copies are all there is
	}
	if s.index < 0 {
		i, err := f.steer.Alloc()
		if err != nil {
			return err
		}
		s.index = i
	}
	if s.check == 0 {
		s.check = f.steer.NewCheck(s.index)
	}
	tag, err := f.steer.PutChecked(s.index, s.fd, s.check)
	if err != nil {
		return err
	}
	s.tag, s.inArray, s.serving, s.base = tag, true, false, 0
	return nil
}

// remove takes s out of the socket array; with free its index goes back
// to the allocator.
func (f *flowSets) remove(s *flowSock, free bool) error {
	if s.inArray {
		if n, err := f.steer.Delivered(s.index); err == nil && !s.serving {
			f.retired += n - min(s.base, n)
		}
		if err := f.steer.Remove(s.index, free); err != nil {
			return err
		}
		s.inArray, s.serving = false, false
	} else if free && s.index >= 0 {
		f.steer.Remove(s.index, true)
	}
	if free {
		s.index, s.check = -1, 0
	}
	return nil
}

// QUICCookie is the cookie of the socket a worker of generation gen in
// slot receives, for a listener with flows=quic: the worker puts it at
// the start of its QUIC connection IDs, and the program steers the
// short-header packets that carry it to that socket. The socket gets
// its place in the array now, if it has none yet, so that the cookie
// holds once it is put there. False when the listener does not steer
// QUIC, or the socket is not there.
func (g *Group) QUICCookie(gen, slot int) (steer.Cookie, bool) {
	f := g.flows
	if f == nil || !g.Spec.QUICFlows() {
		return steer.Cookie{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !g.Reuseport() {
		slot = -1
	}
	s := f.sock(g, FlowKey{Gen: gen, Slot: slot})
	if s == nil || f.steer == nil {
		return steer.Cookie{}, false
	}
	if s.index < 0 {
		i, err := f.steer.Alloc()
		if err != nil {
			return steer.Cookie{}, false // put fails the same way, and says so
		}
		s.index = i
	}
	if s.check == 0 {
		s.check = steer.CheckOf(s.tag) // zero without a tag, or with one whose low half is
	}
	if s.check == 0 {
		s.check = f.steer.NewCheck(s.index)
	}
	return steer.CookieOf(s.index, s.check), true
}

// FlowStats is what a steered group's program did and holds, for the
// status.
type FlowStats struct {
	steer.Stats
	// Evicted estimates the peers the flow table forgot to make room
	// (new peers recorded less those it holds).
	Evicted uint64
	// Draining counts the datagrams steered to sockets that no longer
	// served: peers kept by a draining generation.
	Draining uint64
	// Generations is the sockets of each generation, in order.
	Generations []FlowGeneration
}

// FlowGeneration is the part of a steered group one generation has.
type FlowGeneration struct {
	Gen      int
	Sockets  int    // in the socket array
	Serving  bool   // new peers go to it
	Flows    int    // peers steered to it
	Draining uint64 // datagrams it got since it stopped serving
}

// FlowStats reads the program's counters and walks its flow table: about
// 12 ms for 100,000 peers (steer's BenchmarkStats), so not on the
// supervisor's loop.
func (g *Group) FlowStats() (FlowStats, error) {
	f := g.flows
	if f == nil {
		return FlowStats{}, errors.New("not steered")
	}
	type sockInfo struct {
		gen     int
		serving bool
		base    uint64
	}
	f.mu.Lock()
	if f.steer == nil {
		f.mu.Unlock()
		return FlowStats{}, errors.New("closed")
	}
	sg := f.steer
	byIndex := map[int]sockInfo{}
	for _, set := range f.sets {
		for _, s := range set.socks {
			if s != nil && s.inArray {
				byIndex[s.index] = sockInfo{set.gen, s.serving, s.base}
			}
		}
	}
	retired := f.retired
	f.mu.Unlock()
	st, err := sg.Stats(true)
	if err != nil {
		return FlowStats{}, err
	}
	out := FlowStats{Stats: st, Draining: retired}
	if st.New > uint64(st.Entries) {
		out.Evicted = st.New - uint64(st.Entries)
	}
	gens := map[int]*FlowGeneration{}
	for idx, info := range byIndex {
		fg := gens[info.gen]
		if fg == nil {
			fg = &FlowGeneration{Gen: info.gen}
			gens[info.gen] = fg
		}
		fg.Sockets++
		fg.Serving = fg.Serving || info.serving
		fg.Flows += st.Flows[idx]
		if !info.serving {
			if n, err := sg.Delivered(idx); err == nil && n > info.base {
				fg.Draining += n - info.base
				out.Draining += n - info.base
			}
		}
	}
	for _, fg := range gens {
		out.Generations = append(out.Generations, *fg)
	}
	slices.SortFunc(out.Generations, func(a, b FlowGeneration) int { return cmp.Compare(a.Gen, b.Gen) })
	return out, nil
}

// FlowState is a steered group as an upgrade hands it over: the
// program's and maps' descriptors, and each socket with its generation,
// slot and place in the socket array.
type FlowState struct {
	FDs     steer.FDs         `json:"fds"`
	Sockets []FlowSocketState `json:"sockets"`
	Serving []int             `json:"serving"`
	Retired uint64            `json:"retired,omitempty"`
}

// FlowSocketState is one socket of a steered group.
type FlowSocketState struct {
	Gen     int    `json:"generation"`
	Slot    int    `json:"slot"` // -1: the generation's one socket (shared)
	Fd      int    `json:"fd"`
	Index   int    `json:"index"` // -1: not in the socket array
	Tag     uint32 `json:"tag,omitempty"`
	Check   uint16 `json:"check,omitempty"`
	InArray bool   `json:"in_array,omitempty"`
	Serving bool   `json:"serving,omitempty"`
	Base    uint64 `json:"base,omitempty"`
}

// FlowState is the group's steering for a hand-over, nil when it is not
// steered. The descriptors stay the group's.
func (g *Group) FlowState() *FlowState {
	f := g.flows
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &FlowState{FDs: f.steer.FDs(), Serving: slices.Clone(f.serving), Retired: f.retired}
	for _, set := range f.sets {
		for i, s := range set.socks {
			if s == nil {
				continue
			}
			k := g.key(set, i)
			st.Sockets = append(st.Sockets, FlowSocketState{Gen: k.Gen, Slot: k.Slot, Fd: s.fd, Index: s.index, Tag: s.tag, Check: s.check, InArray: s.inArray, Serving: s.serving, Base: s.base})
		}
	}
	return st
}

// Fds lists every descriptor of the state.
func (st *FlowState) Fds() []int {
	fds := st.FDs.List()
	for _, s := range st.Sockets {
		if s.Fd >= 0 {
			fds = append(fds, s.Fd)
		}
	}
	return fds
}

// AdoptFlows rebuilds a steered group from the state an upgrade handed
// over: each socket is checked and adopted (Adopt), the program and maps
// wrapped (steer.FromFDs), and the program keeps steering as it did.
func AdoptFlows(spec Spec, st *FlowState) (*Group, error) {
	g := &Group{Spec: spec}
	f := &flowSets{sets: map[int]*flowSet{}, serving: st.Serving, retired: st.Retired}
	for _, ss := range st.Sockets {
		sock := &Socket{Spec: spec, fd: -1} // lent: only its index is left
		if ss.Fd >= 0 {
			var err error
			if sock, err = Adopt(spec, ss.Fd, 0, 0); err != nil {
				f.close()
				return nil, fmt.Errorf("listener %s, generation %d: %w", spec.Name, ss.Gen, err)
			}
		}
		set := f.sets[ss.Gen]
		if set == nil {
			set = &flowSet{gen: ss.Gen}
			f.sets[ss.Gen] = set
		}
		i := max(ss.Slot, 0)
		for len(set.socks) <= i {
			set.socks = append(set.socks, nil)
		}
		set.socks[i] = &flowSock{Socket: sock, index: ss.Index, tag: ss.Tag, check: ss.Check, inArray: ss.InArray, serving: ss.Serving, base: ss.Base}
	}
	sg, err := steer.FromFDs(st.FDs)
	if err != nil {
		f.close()
		return nil, fmt.Errorf("listener %s: %w", spec.Name, err)
	}
	for _, ss := range st.Sockets {
		if ss.Index >= 0 {
			sg.Reserve(ss.Index)
		}
	}
	f.steer = sg
	g.flows = f
	return g, nil
}

// SteerFDs are the descriptors of a steered group's program and maps, for
// a takeover (they stay the group's); false when it is not steered.
func (g *Group) SteerFDs() (steer.FDs, bool) {
	f := g.flows
	if f == nil {
		return steer.FDs{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.steer == nil {
		return steer.FDs{}, false
	}
	return f.steer.FDs(), true
}

// ForgetServing makes the next SyncFlows write the serving list even if
// it has not changed here: another baton may have written its own (a
// takeover that was then aborted).
func (g *Group) ForgetServing() {
	if f := g.flows; f != nil {
		f.mu.Lock()
		f.serving = []int{-1}
		f.mu.Unlock()
	}
}

// JoinFlows makes the group of a UDP listener taken over from a running
// baton whose flows it keeps: fds are its program and maps (the group
// takes them, and closes them on an error), at is one of its sockets,
// whose address the new sockets are bound to (the caller keeps it). The
// group binds its first sockets (for slots slots), which join the running
// baton's reuseport group, where the program is attached already; the
// running baton's sockets stay in the program's array, with their peers,
// until its workers have drained.
func JoinFlows(spec Spec, fds steer.FDs, at *Socket, slots int) (*Group, error) {
	sg, err := steer.FromFDs(fds)
	if err != nil {
		return nil, err
	}
	g := &Group{Spec: spec, flows: &flowSets{steer: sg, sets: map[int]*flowSet{}}}
	set := &flowSet{}
	n := 1
	if g.Reuseport() {
		n = max(slots, 1)
	}
	for i := range n {
		spec := at.sibling()
		spec.steer = true
		s, err := Bind(spec)
		if err != nil {
			set.close()
			sg.Close()
			return nil, fmt.Errorf("listener %s, slot %d: %w", g.Spec.Name, i, err)
		}
		set.socks = append(set.socks, &flowSock{Socket: s, index: -1})
	}
	g.flows.sets[0] = set
	return g, nil
}
