"""Pieces every daemon shares: its status, and signal handling with a forced second exit.

A daemon stops on the first SIGTERM/SIGINT whatever it is doing: before its event loop
runs (`exit_on_signal_until_loop`), while it starts (`until_stopped` cuts the start
short, however long connecting or loading takes), and while it runs. A second signal
exits at once, whatever the first one left running (a drain, a job's grace period).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Coroutine
from enum import StrEnum
from types import FrameType
from typing import Any

log = logging.getLogger("hive.daemon")
FORCED_EXIT = 130  # the status of a second signal's exit (128 + SIGINT, as shells use)
CANCEL_GRACE = 1.0  # seconds a cancelled start may take to unwind before shutdown goes on
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# A young collection every 10,000 new objects, a full one after a hundred middle ones.
# CPython's (700, 10, 10) runs a full collection every hundred young ones while a quarter
# of the old objects are new since the last; after gc.freeze() the frozen ones do not
# count, so a requester placing small jobs (its records churning) ran one twice a second,
# 90 ms each over its store: a sixth of its time, and its heartbeats late by as much.
GC_THRESHOLDS = (10_000, 10, 100)


def settle_memory() -> None:
    """Once a daemon has started: what it loaded lives as long as it does, so it leaves
    the collector's sight (gc.freeze), and collections come less often (GC_THRESHOLDS)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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


def exit_on_signal_until_loop() -> None:
    """Until `install_signal_handlers` takes over, SIGTERM/SIGINT exit at once with 0.

    Before the event loop runs (reading the config, importing) nothing has been started
    that needs stopping, so the first signal simply ends the program, quietly: no
    KeyboardInterrupt traceback, and the same status as a clean stop.
    """

    def leave(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    for signum in _SIGNALS:
        signal.signal(signum, leave)


def install_signal_handlers(stop: asyncio.Event, name: str) -> None:
    """SIGTERM/SIGINT set `stop`; a second one exits at once (as uvicorn does)."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s: second %s, exiting now", name, signal.Signals(signum).name)
            os._exit(FORCED_EXIT)
        log.info("%s: %s received, shutting down", name, signal.Signals(signum).name)
        stop.set()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks, name)


def log_tasks(name: str) -> None:
    """SIGUSR1: log what every task of the daemon is waiting on, one line each (the
    innermost frame), for an operator asking a daemon that seems stuck what it does."""
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    log.warning("%s: %d tasks (SIGUSR1)", name, len(tasks))
    for task in tasks:
        stack = task.get_stack(limit=None)
        where = " <- ".join(
            f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:"
            f"{frame.f_lineno})"
            for frame in reversed(stack[-4:])
        )
        log.warning("task %s: %s", task.get_name(), where or "not started")


async def until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` to its end (True), or cancel it when `stop` is set first (False).

    Starting a daemon can wait on things that never come (a NATS that is not there is
    retried forever, a JetStream that does not answer); a signal must still stop it.
    """
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopper.cancel()
    if task.done():
        task.result()  # its exception, if it failed
        return True
    task.cancel()
    # nats-py's connect loop can swallow a cancellation that lands inside its own
    # wait_for; shutdown must not hang on it, so give it a moment and move on.
    done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
    if not done:
        log.warning("starting did not stop when cancelled; leaving it behind")
    elif not task.cancelled() and task.exception() is not None:
        log.debug("start cut short: %s", task.exception())
    return False


class Backoff:
    """Capped exponential delays with jitter, so many agents do not retry in step."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = max(cap, first)
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._next = self.first


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True when `event` was set within `seconds` (a daemon loop's interruptible wait)."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
