"""A TCP proxy between a NATS client and its server that loses one reply.

It passes the NATS protocol through command by command. The first request the client
publishes on `subject` is noted with its reply inbox; when the answer to it comes back
from the server, the proxy drops it and cuts that client's connection, as a network
that fails at the worst moment would: the server side has done the work, the client
never hears. Every later connection is passed through untouched. Deterministic: the
cut follows the reply itself, not a timer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

_WITH_PAYLOAD = (b"PUB", b"HPUB", b"MSG", b"HMSG")  # the last argument is the payload size


def commands(buffer: bytearray) -> Iterator[tuple[list[bytes], bytes]]:
    """Whole protocol commands at the start of `buffer` (taken out of it): the control
    line's words, and the command's bytes. A command not yet complete stays."""
    while (end := buffer.find(b"\r\n")) >= 0:
        words = bytes(buffer[:end]).split()
        size = end + 2
        if words and words[0].upper() in _WITH_PAYLOAD:
            size += int(words[-1]) + 2
        if len(buffer) < size:
            return
        command = bytes(buffer[:size])
        del buffer[:size]
        yield words, command


class ReplyCut:
    """Listens on 127.0.0.1:`port`, forwards to `upstream` ("host:port")."""

    def __init__(self, upstream: str, subject: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.subject = subject.encode()
        self.requests: list[bytes] = []  # every request seen on `subject`, as sent
        self.cut = threading.Event()  # set once the reply was dropped
        self._inbox: bytes | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = [self._listener]

    def __enter__(self) -> ReplyCut:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: done
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
                self._sockets += [client, server]
                for source, sink in ((client, server), (server, client)):
                    args = (source, sink, source is client)
                    threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                buffer += data
                for words, command in commands(buffer):
                    if not from_client and self._is_the_reply(words):
                        self.cut.set()
                        for sock in (source, sink):  # the client sees its connection drop
                            sock.shutdown(socket.SHUT_RDWR)
                        return
                    if from_client:
                        self._note(words, command)
                    sink.sendall(command)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _note(self, words: list[bytes], command: bytes) -> None:
        if len(words) >= 3 and words[0].upper() in (b"PUB", b"HPUB") and words[1] == self.subject:
            self.requests.append(command)
            if self._inbox is None and not self.cut.is_set():
                self._inbox = words[2]  # PUB <subject> <reply-to> ... : the first one's inbox

    def _is_the_reply(self, words: list[bytes]) -> bool:
        return (
            self._inbox is not None
            and not self.cut.is_set()
            and len(words) >= 2
            and words[0].upper() in (b"MSG", b"HMSG")
            and words[1] == self._inbox
        )
