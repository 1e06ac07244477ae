"""A TCP forwarder for tests that can cut the network silently.

Cut, it forwards nothing either way and closes nothing (no FIN, no RST), as a firewall dropping
packets or a NAT that forgot the connection would: each side's writes still succeed (the kernel
buffers them) and its reads wait forever. Healed, it delivers what it held back, late, which is what
retransmissions do once a route comes back: the server may run statements a worker sent long ago.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class SilentProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream_url = upstream_url
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.open = 0
        """Client connections not yet closed on both sides (accepted and waiting included)."""
        self.upstream_ports: set[int] = set()
        """The local ports of its connections to the server (pg_stat_activity.client_port)."""
        threading.Thread(target=self.accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        """upstream_url with this proxy as its host and port."""
        parts = urlsplit(self.upstream_url)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(
            parts._replace(netloc=f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}")
        )

    def cut(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def idle(self) -> bool:
        """Every connection it ever took has ended on both sides, all it held delivered."""
        with self.lock:
            return self.open == 0

    def close(self) -> None:
        self.heal()
        self.server.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked on it; close() would not
                sock.close()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.open += 1
                self.sockets.append(client)
            threading.Thread(target=self.connect, args=(client,), daemon=True).start()

    def connect(self, client: socket.socket) -> None:
        self.flowing.wait()  # cut: a new connection is accepted and then hears nothing
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            self.ended(client)
            return
        with self.lock:
            self.sockets.append(upstream)
            self.upstream_ports.add(upstream.getsockname()[1])
        pumps = [
            threading.Thread(target=self.pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self.pump, args=(upstream, client), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        threading.Thread(target=self.close_pair, args=(pumps, client, upstream), daemon=True).start()

    def pump(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            self.flowing.wait()  # cut: hold this chunk (and the kernel the rest) until healed
            try:
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return

    def close_pair(
        self, pumps: list[threading.Thread], client: socket.socket, upstream: socket.socket
    ) -> None:
        for pump in pumps:
            pump.join()
        upstream.close()
        self.ended(client)

    def ended(self, client: socket.socket) -> None:
        client.close()
        with self.lock:
            self.open -= 1
