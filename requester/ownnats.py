"""The requester's embedded nats-server: started, watched, and brought back after a full disk.

Two faults are handled here, each the way that recovers surest:

- The server exits (a crash, a kill -9): the requester stops and exits 1, so systemd
  restarts both. A crash's cause is unknown, a fresh start rebuilds every watch and
  consumer, and systemd's start limit catches a crash loop.
- Its store fills up: JetStream refuses writes to the stream that hit the full disk
  until the server restarts, even once space is back. Requests that need the store get
  a "storage full" reply naming the directory, and once it has room again the server is
  restarted in place on the same port; clients reconnect, ordered consumers (the KV
  watches) reset themselves, and what was stored before is all there.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from hivectl.core.config import RequesterConfig
from hivectl.core.credentials import RoleCredentials, authorization_block, ensure_credentials
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.subjects import Subjects

log = logging.getLogger("hive.requester")
ROOM_TO_RESUME = 16 * 1024 * 1024  # free bytes in the store's file system before a restart


class OwnNats:
    """One requester's embedded server; `failure` set by a crash, `trouble()` by a full store."""

    def __init__(
        self, config: RequesterConfig, subjects: Subjects, on_crash: Callable[[], None]
    ) -> None:
        self.config = config
        self.subjects = subjects
        self.on_crash = on_crash
        self.server: EmbeddedNats | None = None
        self.failure = ""
        self.restarts = 0  # after a full store

    @property
    def credentials_dir(self) -> Path:
        """Where the embedded server's role credentials live (one TOML file per role)."""
        return self.config.data_dir.absolute() / "credentials"

    @property
    def store_dir(self) -> Path:
        return self.config.embedded.store_dir or self.config.data_dir / "nats"

    async def start(self) -> EmbeddedNats:
        """Start the server; wait for it off the loop, so signals still work."""
        emb = self.config.embedded
        creds = self._credentials()
        loop = asyncio.get_running_loop()
        self.server = EmbeddedNats(
            self.store_dir,
            host=emb.host,
            port=emb.port,
            max_payload=emb.max_payload,
            extra_config=authorization_block(creds, self.subjects),
            on_exit=lambda code: loop.call_soon_threadsafe(self._crashed, code),
        )
        await self._run(self.server)
        return self.server

    def _credentials(self) -> dict[str, RoleCredentials]:
        directory = self.credentials_dir
        first = not (directory / "compute.toml").exists()
        creds = ensure_credentials(directory)
        where = "wrote NATS credentials for each role to" if first else "NATS credentials in"
        log.info(
            "%s %s: give compute.toml to node agents (hive-nodeagent run --credentials "
            "PATH) and operator.toml to hivectl (HIVE_NATS__CREDENTIALS_FILE)",
            where,
            directory,
            extra={"credentials_dir": str(directory)},
        )
        return creds

    @staticmethod
    async def _run(server: EmbeddedNats) -> None:
        # Spawned on the loop's (main) thread, so the server dies with us even on kill -9.
        server.spawn()
        await asyncio.to_thread(server.wait_ready)

    def _crashed(self, code: int | None) -> None:
        self.failure = f"the embedded nats-server exited (code {code})"
        log.error("%s; stopping the requester so that it is restarted with it", self.failure)
        self.on_crash()

    def trouble(self) -> str:
        """A full store, in words for the user; '' when there is none."""
        if self.server is None or self.server.storage_error is None:
            return ""
        return (
            f"storage full: NATS cannot write to {self.store_dir.absolute()} (no space left); "
            "free space there and Hive resumes by itself"
        )

    async def recover(self) -> None:
        """Restart a server whose store was full, once its file system has room again."""
        server = self.server
        if server is None or server.storage_error is None:
            return
        free = await asyncio.to_thread(_free_bytes, self.store_dir)
        if free < ROOM_TO_RESUME:
            return
        log.warning(
            "the NATS store has room again (%d MiB free); restarting the embedded "
            "nats-server so that JetStream writes resume",
            free // (1024 * 1024),
        )
        await asyncio.to_thread(server.stop)
        await self._run(server)
        self.restarts += 1

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)


def _free_bytes(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
