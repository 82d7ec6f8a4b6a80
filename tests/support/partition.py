"""A TCP proxy that can partition a client from its server: a network that goes silent.

While cut, bytes are read and dropped both ways and new connections are accepted but
get nothing, as a switch that stops forwarding does; no connection is reset, so the
client only learns of it by missing answers. `heal()` forwards again (new connections;
the old ones, out of step now, are closed then, as a real peer would time them out).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Partition:
    """Listens on 127.0.0.1:`port` (see `url`), forwards to `upstream` ("host:port")."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("nats://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.cut_off = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []

    def __enter__(self) -> Partition:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        self._close_pairs()

    def cut(self) -> None:
        self.cut_off.set()

    def heal(self) -> None:
        self._close_pairs()
        self.cut_off.clear()

    def _close_pairs(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.cut_off.is_set():
                    sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.close()
