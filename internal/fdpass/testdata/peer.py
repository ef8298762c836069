#!/usr/bin/env python3
"""A peer for baton's fdpass protocol in plain Python (see docs/fdpass.md).

Run with a connected unix stream socket as fd 3. It receives one transfer,
prints a JSON line per descriptor (name, kind, meta in hex, inode), then
sends the same descriptors back with b"py:" before each meta.
"""
import json
import os
import socket
import struct
import sys

HEADER = struct.Struct(">4sBBHIII")  # magic, version, flags, nfds, seq, total, body length
ACK = struct.Struct(">4sBBHI")  # magic, version, status, message length, seq
LAST = 1
SCM_MAX_FD = 253


def close_all(fds):
    for fd in fds:
        os.close(fd)


def recv_exact(sock, n, fds_ok=False):
    """Read exactly n bytes, never more. Descriptors may come only with the
    first read of a frame header."""
    buf, fds = b"", []
    while len(buf) < n:
        data, got, flags, _ = socket.recv_fds(sock, n - len(buf), SCM_MAX_FD, socket.MSG_CMSG_CLOEXEC)
        if flags & socket.MSG_CTRUNC:
            close_all(got + fds)
            raise OSError("descriptors dropped (MSG_CTRUNC): raise RLIMIT_NOFILE")
        if got and (not fds_ok or buf):
            close_all(got + fds)
            raise ValueError("descriptors past the first byte of a frame")
        fds += got
        if not data:
            close_all(fds)
            raise EOFError("the peer closed the connection")
        buf += data
    return buf, fds


def recv_transfer(sock):
    """Receive one transfer: a list of (fd, name, kind, meta)."""
    out, seq = [], 0
    try:
        while True:
            hdr, fds = recv_exact(sock, HEADER.size, fds_ok=True)
            magic, version, flags, nfds, hseq, total, blen = HEADER.unpack(hdr)
            out += [(fd, "", "", b"") for fd in fds]  # owned by out from here on
            if magic != b"BFDB" or version != 1 or hseq != seq or len(fds) != nfds:
                raise ValueError("bad frame header")
            body = recv_exact(sock, blen)[0] if blen else b""
            off, first = 0, len(out) - nfds
            for i in range(first, len(out)):
                n = body[off]
                name = body[off + 1:off + 1 + n].decode()
                off += 1 + n
                n = body[off]
                kind = body[off + 1:off + 1 + n].decode()
                off += 1 + n
                (m,) = struct.unpack_from(">I", body, off)
                meta = body[off + 4:off + 4 + m]
                off += 4 + m
                out[i] = (out[i][0], name, kind, meta)
            sock.sendall(ACK.pack(b"BFDA", 1, 0, 0, seq))
            seq += 1
            if flags & LAST:
                return out
    except BaseException:
        close_all(fd for fd, *_ in out)
        raise


def send_transfer(sock, items):
    """Send (fd, name, kind, meta) items; return once the receiver has
    acknowledged the last batch. The caller keeps its fds until then.
    (A batch must also stay under 2 MiB of entries: fine for small metas.)"""
    batches = [items[i:i + SCM_MAX_FD] for i in range(0, len(items), SCM_MAX_FD)] or [[]]
    for seq, batch in enumerate(batches):
        body = b"".join(
            bytes([len(name)]) + name.encode() + bytes([len(kind)]) + kind.encode()
            + struct.pack(">I", len(meta)) + meta
            for _, name, kind, meta in batch)
        flags = LAST if seq == len(batches) - 1 else 0
        frame = HEADER.pack(b"BFDB", 1, flags, len(batch), seq, len(items), len(body)) + body
        fds = [fd for fd, *_ in batch]
        sent = socket.send_fds(sock, [frame], fds) if fds else sock.send(frame)
        sock.sendall(frame[sent:])  # the descriptors went with the first byte
        ack = recv_exact(sock, ACK.size)[0]
        magic, version, status, mlen, aseq = ACK.unpack(ack)
        msg = recv_exact(sock, mlen)[0] if mlen else b""
        if magic != b"BFDA" or version != 1 or aseq != seq:
            raise ValueError("bad acknowledgement")
        if status != 0:
            raise RuntimeError("refused: " + msg.decode(errors="replace"))


def main():
    sock = socket.socket(fileno=3)
    items = recv_transfer(sock)
    for fd, name, kind, meta in items:
        print(json.dumps({"name": name, "kind": kind, "meta": meta.hex(), "ino": os.fstat(fd).st_ino}))
    sys.stdout.flush()
    send_transfer(sock, [(fd, name, kind, b"py:" + meta) for fd, name, kind, meta in items])
    close_all(fd for fd, *_ in items)


if __name__ == "__main__":
    main()
