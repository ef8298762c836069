package steer

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Offsets of struct sk_reuseport_md (include/uapi/linux/bpf.h).
const (
	ctxData     = 0  // void *data: the transport header (UDP's)
	ctxDataEnd  = 8  // void *data_end
	ctxEthProto = 20 // __u32 eth_protocol, network byte order
	ctxHash     = 32 // __u32 hash: the kernel's flow hash of the 4-tuple
)

// eth_protocol as the program loads it (a big-endian 16-bit value read as
// a little-endian word). The program is built for little-endian machines
// (amd64, arm64); New refuses the others.
const (
	ethIPv4 = 0x0008 // ETH_P_IP
	ethIPv6 = 0xdd86 // ETH_P_IPV6
)

// bpfHdrStartNet is BPF_HDR_START_NET: bpf_skb_load_bytes_relative reads
// from the network (IP) header.
const bpfHdrStartNet = 1

// The program's stack: the flow key (keySize bytes at keyOff, 24 zeroed),
// the socket index (idxOff), the key of the serving table (srvOff), the
// key of a counter (cntOff) and a flow's value (valOff: index, tag).
const (
	keyOff = -24 // [16]byte address, be16 port, u16 family
	idxOff = -28
	srvOff = -32
	cntOff = -36
	valOff = -48 // u32 index, u32 tag
)

// Counter indexes: what the program did with a datagram. The per-socket
// counters follow them: numCounters+i counts the datagrams steered to
// socket index i.
const (
	cntKnown    = iota // a known peer, to its socket
	cntNew             // a new peer, to a serving socket, recorded
	cntMoved           // a known peer whose socket has gone, to a serving one
	cntFallback        // no serving socket took it: the kernel's hash chose
	numCounters
)

// The counter of QUIC datagrams steered by their connection ID's cookie
// comes after the per-socket ones (at numCounters+n, n the capacity of
// the socket array), so that the per-socket counters keep their indexes
// in the maps of a baton that did not have it.

// QUIC short headers (RFC 9000, 17.3): the first byte's top bit is 0
// (short), the next is 1 (the fixed bit); the destination connection ID
// follows it. quicAt is where that byte is, after the UDP header the
// context's data points at; quicEnd is the end of the cookie.
const (
	quicFormMask = 0xc0
	quicShort    = 0x40
	quicAt       = 8
	quicEnd      = quicAt + 1 + CookieLen
)

// servingMask and servingBank split the serving table's header: the
// number of serving sockets, and which of its two banks lists them.
const (
	servingMask = 0xffff
	servingBank = 31
)

// maps are the objects the program refers to.
type maps struct {
	flows    *ebpf.Map // LRU hash: peer -> {index, tag}
	socks    *ebpf.Map // REUSEPORT_SOCKARRAY: index -> socket
	tags     *ebpf.Map // array: index -> the tag of the socket there now
	serving  *ebpf.Map // array: header, then two banks of indexes
	counters *ebpf.Map // per-CPU array: numCounters, then one per index
}

// program builds the SK_REUSEPORT program over the group's maps; n is
// the capacity of the socket array (the size of a bank of the serving
// table). With quic, a QUIC short-header packet goes first to the socket
// its connection ID's cookie names (see Cookie), when that socket is
// still the one at the index.
//
// In C it would read:
//
//	if (quic && data + 13 <= data_end && (data[8] & 0xc0) == 0x40) {
//	    idx = data[9]<<8 | data[10]                   // the cookie
//	    t = lookup(tags, idx)
//	    if (t && (*t & 0xffff) == (data[11]<<8 | data[12]) && select(ctx, socks, idx) == 0) {
//	        count(numCounters + n); count(numCounters + idx); return SK_PASS
//	    }
//	}                                                // else: as any datagram
//	key = {source address, source port, family}     (zeroed first)
//	if (v = lookup(flows, key)) {
//	    t = lookup(tags, v->index)
//	    if (t && *t == v->tag && select(ctx, socks, v->index) == 0) {
//	        count(known); count(numCounters + v->index); return SK_PASS
//	    }
//	    kind = moved                                 // its socket has gone
//	}
//	h = serving[0]                                   // bank<<31 | count
//	if (!(h & 0xffff)) goto fallback
//	idx = serving[1 + (h>>31)*n + ctx->hash % (h & 0xffff)]
//	if (select(ctx, socks, idx) != 0) goto fallback
//	if (key) update(flows, key, {idx, tags[idx]})
//	count(kind); count(numCounters + idx); return SK_PASS
//	fallback: count(fallback); return SK_PASS        // the kernel's hash
//
// A socket index is used again by another socket only with another tag,
// so a peer of a socket that has gone never reaches its successor.
func program(m maps, n int, quic bool) asm.Instructions {
	// incr adds 1 to the counter whose index is at cntOff; it clobbers
	// R0-R5 and jumps to done.
	incr := func(label, done string) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, m.counters.FD()).WithSymbol(label),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, cntOff),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, done),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		}
	}
	// countBoth counts the kind in R8 and the socket at idxOff, and
	// passes the datagram to the socket selected.
	countBoth := func(label string) asm.Instructions {
		p := asm.Instructions{asm.StoreMem(asm.RFP, cntOff, asm.R8, asm.Word).WithSymbol(label)}
		p = append(p, incr(label+"_kind", label+"_sock")...)
		p = append(p,
			asm.LoadMem(asm.R1, asm.RFP, idxOff, asm.Word).WithSymbol(label+"_sock"),
			asm.Add.Imm(asm.R1, numCounters),
			asm.StoreMem(asm.RFP, cntOff, asm.R1, asm.Word),
		)
		p = append(p, incr(label+"_sock_incr", label+"_done")...)
		return append(p,
			asm.Mov.Imm(asm.R0, 1).WithSymbol(label+"_done"), // SK_PASS
			asm.Return(),
		)
	}
	// selectIdx calls bpf_sk_select_reuseport(ctx, socks, &idx, 0).
	selectIdx := asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, m.socks.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, idxOff),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
	}
	// loadAddr reads n bytes of the IP header at off into the key.
	loadAddr := func(label string, off, n int32, family int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.R6).WithSymbol(label),
			asm.Mov.Imm(asm.R2, off),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, keyOff),
			asm.Mov.Imm(asm.R4, n),
			asm.Mov.Imm(asm.R5, bpfHdrStartNet),
			asm.FnSkbLoadBytesRelative.Call(),
			asm.JNE.Imm(asm.R0, 0, "serving"),
			asm.Mov.Imm(asm.R1, family),
			asm.StoreMem(asm.RFP, keyOff+18, asm.R1, asm.Half),
			asm.Ja.Label("port"),
		}
	}

	var p asm.Instructions
	p = append(p,
		asm.Mov.Reg(asm.R6, asm.R1), // R6: ctx, for the whole program
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, -24, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, -16, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R9, 0), // R9: 1 once the key names the peer
		asm.Mov.Imm(asm.R8, cntNew),
	)
	if quic {
		p = append(p, quicCookie(m, n, selectIdx)...)
	}
	p = append(p,
		asm.LoadMem(asm.R2, asm.R6, ctxEthProto, asm.Word).WithSymbol("peer"),
		asm.JEq.Imm(asm.R2, ethIPv4, "v4"),
		asm.JEq.Imm(asm.R2, ethIPv6, "v6"),
		asm.Ja.Label("serving"),
	)
	p = append(p, loadAddr("v4", 12, 4, 4)...) // IPv4 source address
	p = append(p, loadAddr("v6", 8, 16, 6)...) // IPv6 source address
	p = append(p,
		// The source port, from the UDP header the context points at.
		asm.LoadMem(asm.R2, asm.R6, ctxData, asm.DWord).WithSymbol("port"),
		asm.LoadMem(asm.R3, asm.R6, ctxDataEnd, asm.DWord),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 8),
		asm.JGT.Reg(asm.R4, asm.R3, "serving"),
		asm.LoadMem(asm.R5, asm.R2, 0, asm.Half),
		asm.StoreMem(asm.RFP, keyOff+16, asm.R5, asm.Half),
		asm.Mov.Imm(asm.R9, 1),

		// A known peer goes to its socket while that very socket (its
		// tag) is in the group.
		asm.LoadMapPtr(asm.R1, m.flows.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "serving"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, idxOff, asm.R1, asm.Word),
		asm.LoadMem(asm.R7, asm.R0, 4, asm.Word), // R7: the flow's tag
		asm.Mov.Imm(asm.R8, cntMoved),            // unless it is found below
		asm.LoadMapPtr(asm.R1, m.tags.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, idxOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "serving"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R7, "serving"),
	)
	p = append(p, selectIdx...)
	p = append(p,
		asm.JNE.Imm(asm.R0, 0, "serving"),
		asm.Mov.Imm(asm.R8, cntKnown),
		asm.Ja.Label("counted"),

		// A new peer, or one whose socket has gone: a serving socket by
		// the kernel's flow hash, recorded.
		asm.Mov.Imm(asm.R1, 0).WithSymbol("serving"),
		asm.StoreMem(asm.RFP, srvOff, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, m.serving.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, srvOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "fallback"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // the header
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.And.Imm(asm.R2, servingMask),
		asm.JEq.Imm(asm.R2, 0, "fallback"),
		asm.LoadMem(asm.R1, asm.R6, ctxHash, asm.Word),
		asm.Mod.Reg32(asm.R1, asm.R2),
		asm.Add.Imm(asm.R1, 1),
		asm.RSh.Imm32(asm.R7, servingBank),
		asm.JEq.Imm(asm.R7, 0, "bank"),
		asm.Add.Imm(asm.R1, int32(n)),
		asm.StoreMem(asm.RFP, srvOff, asm.R1, asm.Word).WithSymbol("bank"),
		asm.LoadMapPtr(asm.R1, m.serving.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, srvOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "fallback"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, idxOff, asm.R1, asm.Word),
	)
	p = append(p, selectIdx...)
	p = append(p,
		asm.JNE.Imm(asm.R0, 0, "fallback"),
		asm.JEq.Imm(asm.R9, 0, "counted"),
		// The value: the index and the tag of the socket there.
		asm.LoadMem(asm.R1, asm.RFP, idxOff, asm.Word),
		asm.StoreMem(asm.RFP, valOff, asm.R1, asm.Word),
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, valOff+4, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, m.tags.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, idxOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "record"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, valOff+4, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, m.flows.FD()).WithSymbol("record"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, valOff),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
	)
	p = append(p, countBoth("counted")...)
	p = append(p, asm.Mov.Imm(asm.R1, cntFallback).WithSymbol("fallback"),
		asm.StoreMem(asm.RFP, cntOff, asm.R1, asm.Word))
	p = append(p, incr("fallback_incr", "fallback_done")...)
	p = append(p,
		asm.Mov.Imm(asm.R0, 1).WithSymbol("fallback_done"),
		asm.Return(),
	)
	return p
}

// quicCookie is the program's first part with flows=quic: a QUIC
// short-header packet whose cookie names a socket in the array, with the
// check of the socket there now, goes to it (R8 names the cookie counter,
// and it jumps to "counted"); anything else goes on at "peer". The
// bytes are read in place, within data_end: where the packet's first
// bytes are not in its linear part, it goes on at "peer" too. It keeps
// R6 (the context) and R9.
func quicCookie(m maps, n int, selectIdx asm.Instructions) asm.Instructions {
	// R2: data; R3: a byte read; R4: a 16-bit value being built.
	byte16 := func(off int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMem(asm.R4, asm.R2, off, asm.Byte),
			asm.LSh.Imm(asm.R4, 8),
			asm.LoadMem(asm.R3, asm.R2, off+1, asm.Byte),
			asm.Or.Reg(asm.R4, asm.R3),
		}
	}
	p := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, ctxData, asm.DWord),
		asm.LoadMem(asm.R3, asm.R6, ctxDataEnd, asm.DWord),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, quicEnd),
		asm.JGT.Reg(asm.R4, asm.R3, "peer"),
		asm.LoadMem(asm.R3, asm.R2, quicAt, asm.Byte),
		asm.And.Imm(asm.R3, quicFormMask),
		asm.JNE.Imm(asm.R3, quicShort, "peer"),
	}
	p = append(p, byte16(quicAt+1)...) // the index
	p = append(p, asm.StoreMem(asm.RFP, idxOff, asm.R4, asm.Word))
	p = append(p, byte16(quicAt+3)...) // the check
	p = append(p,
		asm.Mov.Reg(asm.R7, asm.R4), // R7: the check, across the lookup
		asm.LoadMapPtr(asm.R1, m.tags.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, idxOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "peer"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.And.Imm(asm.R1, 0xffff),
		asm.JNE.Reg(asm.R1, asm.R7, "peer"),
	)
	p = append(p, selectIdx...)
	return append(p,
		asm.JNE.Imm(asm.R0, 0, "peer"), // an empty slot: its socket has gone
		asm.Mov.Imm(asm.R8, int32(numCounters+n)),
		asm.Ja.Label("counted"),
	)
}
