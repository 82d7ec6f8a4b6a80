"""Pieces every daemon shares: its status, and signal handling with a forced second exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from enum import StrEnum

log = logging.getLogger("hive.daemon")


class Status(StrEnum):
    INIT = "init"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about our state: READY=1, STOPPING=1, STATUS=...

    A no-op outside systemd. Written out rather than pulled in: it is one datagram.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address, exc)
        return False
    return True


def install_signal_handlers(stop: asyncio.Event, name: str) -> None:
    """SIGTERM/SIGINT set `stop`; a second one exits at once (as uvicorn does)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s: second %s, exiting now", name, signal.Signals(signum).name)
            os._exit(130)
        log.info("%s: %s received, shutting down", name, signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
