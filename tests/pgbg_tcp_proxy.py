"""A TCP proxy in front of PostgreSQL that a test controls, run as its own process.

``python pgbg_tcp_proxy.py PORTFILE UPSTREAM``: listens on 127.0.0.1 (a free port, written
to PORTFILE once it listens) and forwards every connection to UPSTREAM, a Unix socket
path or ``host:port``. SIGUSR1 cuts every connection it carries (new ones are still
accepted); SIGUSR2 freezes them (nothing is forwarded either way, nothing is closed: a
network that silently stopped) or thaws them. SIGTERM ends it.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys


def upstream_socket(address: str) -> socket.socket:
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
    else:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)))
    return sock


def main() -> None:
    portfile, upstream = sys.argv[1], sys.argv[2]
    selector = selectors.DefaultSelector()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    listener = socket.create_server(("127.0.0.1", 0))
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    peers: dict[socket.socket, socket.socket] = {}
    frozen = False

    def close(sock: socket.socket) -> None:
        other = peers.pop(sock, None)
        for s in (sock, other):
            if s is not None:
                peers.pop(s, None)
                try:
                    selector.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()

    def watch(on: bool) -> None:
        for s in peers:
            try:
                if on:
                    selector.register(s, selectors.EVENT_READ, "data")
                else:
                    selector.unregister(s)
            except (KeyError, ValueError):
                pass

    tmp = portfile + ".tmp"
    with open(tmp, "w") as out:
        out.write(str(listener.getsockname()[1]))
    os.rename(tmp, portfile)
    while True:
        for key, _mask in selector.select():
            if key.data == "accept":
                client, _addr = listener.accept()
                server = upstream_socket(upstream)
                peers[client], peers[server] = server, client
                if not frozen:
                    selector.register(client, selectors.EVENT_READ, "data")
                    selector.register(server, selectors.EVENT_READ, "data")
            elif key.data == "signal":
                for signum in os.read(wake_r, 64):
                    if signum == signal.SIGTERM:
                        return
                    if signum == signal.SIGUSR1:
                        for sock in list(peers):
                            close(sock)
                    elif signum == signal.SIGUSR2:
                        frozen = not frozen
                        watch(not frozen)
            else:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock not in peers:
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    close(sock)
                    continue
                try:
                    peers[sock].sendall(data)
                except OSError:
                    close(sock)


if __name__ == "__main__":
    main()
