#!/usr/bin/env python3
"""Both sides of baton's connection handoff in Python, standard library only
(Python 3.9+ for socket.send_fds/recv_fds). docs/handoff.md quotes it; the Go
tests run it against baton's fd store.

    handoff_peer.py send     hand off the sockets inherited as fds 3, 4, ...
                             (HANDOFF_N of them, listener "web", state "py-I")
    handoff_peer.py adopt    adopt HANDOFF_N connections; on each send
                             "adopted by python: STATE\\n" and close it

Both print one line per connection to stdout.
"""

import json
import os
import socket
import struct
import sys

HEADER = struct.Struct(">4sBBHIII")  # magic, version, flags, nfds, seq, total, body length
ACK = struct.Struct(">4sBBHI")       # magic, version, status, message length, seq
LAST = 1
MAX_BODY = 2 << 20                   # fdpass: a batch's body is at most 2 MiB


def connect_baton():
    """Connect to $BATON_SOCKET, an abstract unix socket ("@name")."""
    path = os.environ["BATON_SOCKET"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("\0" + path[1:] if path.startswith("@") else path)
    return sock


def read_line(sock):
    """Read one JSON line and nothing past its newline: descriptors may ride
    on the very next byte, and a read that takes that byte drops them."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            raise EOFError("baton closed the connection")
        buf += b
    return json.loads(buf)


def request(sock, method, params=None):
    """Send one request line; return the result of baton's answer."""
    req = {"method": method}
    if params:
        req["params"] = params
    sock.sendall(json.dumps(req).encode() + b"\n")
    reply = read_line(sock)
    if not reply["ok"]:
        raise RuntimeError("baton refused %s: %s" % (method, reply["error"]))
    return reply["result"]


def recv_exact(sock, n, fds_ok=False):
    """Read exactly n bytes; descriptors only with the first read of a header."""
    buf, fds = b"", []
    while len(buf) < n:
        data, got, flags, _ = socket.recv_fds(sock, n - len(buf), 253, socket.MSG_CMSG_CLOEXEC)
        if flags & socket.MSG_CTRUNC:
            for fd in got + fds:
                os.close(fd)
            raise OSError("descriptors dropped (MSG_CTRUNC): raise RLIMIT_NOFILE")
        if got and (not fds_ok or buf):
            for fd in got + fds:
                os.close(fd)
            raise ValueError("descriptors past the first byte of a frame")
        fds += got
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the peer closed the connection")
        buf += data
    return buf, fds


def entry(name, state):
    name, kind = name.encode(), b"conn"
    return bytes([len(name)]) + name + bytes([len(kind)]) + kind + struct.pack(">I", len(state)) + state


# --- The draining worker: hand connections to baton -------------------------

def send_transfer(sock, conns):
    """Send conns, [(socket, listener name, state bytes)], as one transfer
    (here one batch: at most 253 and a body under 2 MiB) and wait for baton's
    acknowledgement. Only then may the caller close its copies."""
    body = b"".join(entry(name, state) for _, name, state in conns)
    assert len(conns) <= 253 and len(body) <= MAX_BODY
    frame = HEADER.pack(b"BFDB", 1, LAST, len(conns), 0, len(conns), len(body)) + body
    sent = socket.send_fds(sock, [frame], [c.fileno() for c, _, _ in conns])
    sock.sendall(frame[sent:])  # the descriptors went with the first byte
    magic, version, status, mlen, seq = ACK.unpack(recv_exact(sock, ACK.size)[0])
    msg = recv_exact(sock, mlen)[0] if mlen else b""
    if magic != b"BFDA" or status != 0:
        raise RuntimeError("baton refused the transfer: " + msg.decode(errors="replace"))


def hand_off(conns):
    """Hand off conns, [(socket, listener name, state bytes)]; return how many
    baton took (those are closed here). The rest are still the caller's."""
    sock = connect_baton()
    grant = request(sock, "handoff")
    done = 0
    try:
        while done < len(conns):
            batch = conns[done:done + grant["max_fds"]]
            send_transfer(sock, batch)
            for c, _, _ in batch:
                c.close()  # baton holds them now
            done += len(batch)
            reply = read_line(sock)  # the grant for the next transfer
            if not reply["ok"]:
                print("baton takes no more:", reply["error"], file=sys.stderr)
                break
            grant = reply["result"]
    finally:
        sock.close()
    return done


# --- The next generation: adopt connections ---------------------------------

def recv_transfer(sock):
    """Receive one transfer, acknowledging each batch; return
    [(socket, listener name, state bytes)], or None when baton ended the
    subscription."""
    out, seq = [], 0
    while True:
        try:
            hdr, fds = recv_exact(sock, HEADER.size, fds_ok=True)
        except EOFError:
            if seq == 0:
                return None
            raise
        magic, version, flags, nfds, hseq, total, blen = HEADER.unpack(hdr)
        if magic != b"BFDB" or version != 1 or hseq != seq or len(fds) != nfds:
            for fd in fds:
                os.close(fd)
            raise ValueError("not an fdpass frame")
        body = recv_exact(sock, blen)[0] if blen else b""
        for fd in fds:
            n = body[0]
            name, body = body[1:1 + n].decode(), body[1 + n:]
            k = body[0]
            body = body[1 + k:]
            (m,) = struct.unpack(">I", body[:4])
            state, body = body[4:4 + m], body[4 + m:]
            out.append((socket.socket(fileno=fd), name, state))
        sock.sendall(ACK.pack(b"BFDA", 1, 0, 0, seq))  # they are ours now
        if flags & LAST:
            return out
        seq += 1


def adopt(on_conn, max_fds=253):
    """Subscribe and call on_conn(socket, listener name, state) for every
    connection baton pushes, until baton ends the subscription (this worker
    was asked to stop)."""
    sock = connect_baton()
    request(sock, "adopt", {"max_fds": max_fds})
    try:
        while True:
            conns = recv_transfer(sock)
            if conns is None:
                return
            for c in conns:
                on_conn(*c)
    finally:
        sock.close()


def main():
    n = int(os.environ["HANDOFF_N"])
    if sys.argv[1] == "send":
        conns = [(socket.socket(fileno=3 + i), "web", b"py-%d" % i) for i in range(n)]
        print("handed off", hand_off(conns), flush=True)
    elif sys.argv[1] == "adopt":
        got = 0

        def on_conn(c, name, state):
            nonlocal got
            c.sendall(b"adopted by python: " + state + b"\n")
            c.close()
            print("adopted", name, state.decode(), flush=True)
            got += 1
            if got == n:
                raise SystemExit(0)

        adopt(on_conn)


if __name__ == "__main__":
    main()
