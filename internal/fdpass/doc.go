// Package fdpass passes file descriptors, each with a name, a kind and a
// metadata blob, over a connected unix socket with SCM_RIGHTS. baton uses
// it to hand its listeners to a new instance of itself and to move live
// connections between worker generations.
//
// A transfer is any number of descriptors. Send splits it into batches of
// at most MaxFDsPerBatch (the kernel's SCM_MAX_FD), each a frame: a
// 20-byte header, then one entry per descriptor (name, kind, meta, each
// length-prefixed). The descriptors ride on the frame's first byte. The
// receiver acknowledges every batch with a 12-byte ack, or refuses it with
// a reason; Send returns only after the last ack, so the sender keeps its
// copies until the receiver holds them. The byte layout, the limits and a
// Python peer are in docs/fdpass.md.
//
// The framing survives SOCK_STREAM, which keeps no message boundaries:
// on Linux, descriptors are delivered by the recvmsg(2) that reads the
// first byte of the sendmsg(2) that carried them, and that recvmsg stops
// after it. Recv reads exactly the bytes of each header, body and ack and
// never past them, so every frame's first read carries its descriptors and
// nothing meant for the connection's next user is consumed. SOCK_SEQPACKET
// works too, with frames in records of at most MaxRecord bytes.
//
// The package fails loudly: MSG_CTRUNC (a short control buffer, or a
// receiver whose RLIMIT_NOFILE cannot hold the descriptors) and MSG_TRUNC
// are ErrTruncated; every limit is checked before anything is allocated;
// no error path leaks a descriptor; received descriptors have
// FD_CLOEXEC. Send checks the peer with SO_PEERCRED (CheckPeer) before
// sending anything.
package fdpass
