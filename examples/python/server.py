#!/usr/bin/env python3
"""A baton worker in Python, standard library only.

It takes its listening socket from baton with the systemd socket-activation
protocol (fds from 3, LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), tells baton it
is ready with READY=1 on NOTIFY_SOCKET, and on SIGTERM drains without losing a
request: it stops accepting, closes its copy of the listening socket (never
shutdown(): the socket is shared with baton and the next generation), lets the
requests it has accepted finish, and exits.

From the top of the repository, after make build:

    bin/baton run -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- python3 examples/python/server.py

Run without baton it listens on 127.0.0.1:8080 itself.
"""

import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SD_LISTEN_FDS_START = 3


def listen_fds():
    """Return the sockets passed with socket activation, by name."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}  # meant for another process, or not activated at all
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    socks = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)  # do not leak it into programs we start
        name = names[i] if i < len(names) and names[i] else "fd%d" % fd
        socks[name] = socket.socket(fileno=fd)
    return socks


def sd_notify(state):
    """Send a notification such as READY=1 to NOTIFY_SOCKET, if set."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())


class Hello(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so draining never has to close
    # an idle keep-alive connection under a client.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = ("hello from python, slot %s generation %s pid %d\n" % (
            os.environ.get("BATON_SLOT", "-"), os.environ.get("BATON_GENERATION", "-"), os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass  # one line per request would drown baton's log


def main():
    socks = listen_fds()
    server = ThreadingHTTPServer(("127.0.0.1", 8080), Hello, bind_and_activate=not socks)
    if socks:
        server.socket.close()
        server.socket = socks.get("http") or next(iter(socks.values()))
        # The socket is shared and non-blocking: when several workers are
        # woken for one connection, the losers' accept() fails with EAGAIN,
        # which socketserver ignores.
        server.socket.setblocking(False)
    server.daemon_threads = False  # server_close() waits for every request
    # The signal handler only sets a flag, which a thread started here looks
    # at every 50 ms. The handler must not start a thread itself (or take any
    # lock): it runs in the main thread between two bytecodes, possibly while
    # that thread holds threading's own lock in Thread.start() for a request,
    # and a second Thread.start() there deadlocks the worker for good, with a
    # request accepted and never answered.
    stopping = []
    stop_signal = getattr(signal, os.environ.get("BATON_STOP_SIGNAL", "SIGTERM"), signal.SIGTERM)
    for sig in {stop_signal, signal.SIGINT}:
        signal.signal(sig, lambda signum, _: stopping.append(signum))

    def stop_when_asked():
        while not stopping:
            time.sleep(0.05)
        server.shutdown()  # serve_forever returns once its loop sees it

    threading.Thread(target=stop_when_asked, daemon=True).start()
    sd_notify("READY=1")
    server.serve_forever(poll_interval=0.05)
    sd_notify("STOPPING=1")
    server.server_close()  # closes our copy of the socket, joins request threads


if __name__ == "__main__":
    main()
