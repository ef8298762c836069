// Package steer keeps each UDP peer on the socket that first received its
// datagrams, across worker generations, with an eBPF program baton owns.
//
// A UDP listener whose flows are kept has one SO_REUSEPORT socket per
// generation (or per slot of a generation), all bound to the same address
// and so in one reuseport group. An SK_REUSEPORT program attached to the
// group (SO_ATTACH_REUSEPORT_EBPF) picks the socket of every datagram:
//
//   - A peer (source address and port) found in the flow table, an LRU
//     hash that bounds its memory, goes to the socket it names, while
//     that socket is in the group's socket array.
//   - Any other peer (new, or whose socket is gone) goes to a socket of
//     the serving generation, chosen by the kernel's flow hash, and is
//     recorded in the flow table.
//   - When no serving socket can take it, the program lets the kernel
//     choose by hash among the group (never a drop).
//
// A reload puts the new generation's sockets in the array and, once the
// generation is ready, makes it the serving one (Group.Serve): new peers
// go to it, known peers stay with the old generation while it drains. An
// exited generation's sockets leave the array (Group.Remove), and its
// peers move to the serving generation.
//
// The program is built with cilium/ebpf's asm package: no compiler is
// needed to build or run baton. Loading it needs CAP_BPF and
// CAP_NET_ADMIN (or root) and Linux 4.19 or later; Supported says why not
// where it cannot. Every object is a descriptor (FDs), so the program,
// its maps and the sockets travel across an upgrade's execve and to a new
// instance over SCM_RIGHTS like the listeners.
package steer
