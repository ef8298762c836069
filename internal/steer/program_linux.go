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

// The program's stack: the flow key (keySize bytes at keyOff), the socket
// index (at idxOff) and the key of the one-entry maps (at zeroOff).
const (
	keyOff  = -24 // [16]byte address, be16 port, u16 family
	idxOff  = -28
	zeroOff = -32
	cntOff  = -36
)

// Counter indexes: what the program did with a datagram.
const (
	cntKnown    = iota // a known peer, to its socket
	cntNew             // a new peer, to a serving socket, recorded
	cntMoved           // a known peer whose socket has gone, to a serving one
	cntFallback        // no serving socket took it: the kernel's hash chose
	numCounters
)

// program builds the SK_REUSEPORT program over the group's maps.
//
// In C it would read:
//
//	key = {source address, source port, family}     (zeroed first)
//	if (v = lookup(flows, key)) {
//	    if (select(ctx, socks, *v) == 0) { count(known); return SK_PASS }
//	    moved = 1
//	}
//	s = lookup(serving, 0)                           // {base, count}
//	if (!s || !s->count) goto fallback
//	idx = s->base + ctx->hash % s->count
//	if (select(ctx, socks, idx) != 0) goto fallback
//	if (key) update(flows, key, idx)
//	count(moved ? moved : new); return SK_PASS
//	fallback: count(fallback); return SK_PASS        // the kernel's hash
func program(flows, socks, serving, counters *ebpf.Map) asm.Instructions {
	// count increments counter i; it clobbers R0-R5.
	count := func(i int32, label string) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Imm(asm.R1, i).WithSymbol(label),
			asm.StoreMem(asm.RFP, cntOff, asm.R1, asm.Word),
			asm.LoadMapPtr(asm.R1, counters.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, cntOff),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, label+"_done"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 1).WithSymbol(label + "_done"), // SK_PASS
			asm.Return(),
		}
	}
	// selectIdx calls bpf_sk_select_reuseport(ctx, socks, &idx, 0).
	selectIdx := asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, socks.FD()),
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
		asm.LoadMem(asm.R2, asm.R6, ctxEthProto, asm.Word),
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

		// A known peer goes to its socket while it is in the group.
		asm.LoadMapPtr(asm.R1, flows.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "serving"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, idxOff, asm.R1, asm.Word),
	)
	p = append(p, selectIdx...)
	p = append(p,
		asm.JEq.Imm(asm.R0, 0, "known"),
		asm.Mov.Imm(asm.R8, cntMoved),

		// A new peer, or one whose socket has gone: the serving
		// generation's socket by the kernel's flow hash, recorded.
		asm.Mov.Imm(asm.R1, 0).WithSymbol("serving"),
		asm.StoreMem(asm.RFP, zeroOff, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, serving.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, zeroOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "fallback"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // base
		asm.LoadMem(asm.R2, asm.R0, 4, asm.Word), // count
		asm.JEq.Imm(asm.R2, 0, "fallback"),
		asm.LoadMem(asm.R1, asm.R6, ctxHash, asm.Word),
		asm.Mod.Reg32(asm.R1, asm.R2),
		asm.Add.Reg(asm.R1, asm.R7),
		asm.StoreMem(asm.RFP, idxOff, asm.R1, asm.Word),
	)
	p = append(p, selectIdx...)
	p = append(p,
		asm.JNE.Imm(asm.R0, 0, "fallback"),
		asm.JEq.Imm(asm.R9, 0, "recorded"),
		asm.LoadMapPtr(asm.R1, flows.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, keyOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, idxOff),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		// count(R8): new or moved
		asm.StoreMem(asm.RFP, cntOff, asm.R8, asm.Word).WithSymbol("recorded"),
		asm.LoadMapPtr(asm.R1, counters.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, cntOff),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "recorded_done"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("recorded_done"),
		asm.Return(),
	)
	p = append(p, count(cntKnown, "known")...)
	p = append(p, count(cntFallback, "fallback")...)
	return p
}
