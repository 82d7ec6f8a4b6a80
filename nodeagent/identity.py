"""Who this node is: its key pair, its node id, and the sentinel of its last registration.

The key pair is the identity (the requester binds the node id to its public key); the
node id comes from the config or the hostname and is never stored, so renaming a host
or setting `name` changes it on the next start. The sentinel only says "this node has
registered with that requester before", which lets a restart re-join instead of
registering; a stale one never blocks anything, because a re-join the requester refuses
falls back to registering.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from hivectl.core.auth import Identity
from hivectl.core.models import ID_PATTERN, utcnow

log = logging.getLogger("hive.nodeagent")

IDENTITY_FILE = "identity.seed"
SENTINEL_FILE = "registration.json"
MAX_ID_LENGTH = 63

_NOT_ID_CHARS = re.compile(r"[^a-z0-9_-]")
_LEADING_JUNK = re.compile(r"^[^a-z0-9]+")
_ID = re.compile(ID_PATTERN)


def load_identity(state_dir: Path) -> Identity:
    """The node's key pair, created (seed file mode 0600) on first start."""
    return Identity.load_or_create(state_dir / IDENTITY_FILE)


def read_identity(state_dir: Path) -> Identity | None:
    """The node's key pair if `load_identity` made one in `state_dir`; never creates one.

    Raises OSError (unreadable) or AuthError, a ValueError (not a seed).
    """
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        return None
    return Identity(path.read_bytes().strip())


def sanitise_node_id(name: str) -> str:
    """`name` made into a valid node id, or '' when nothing usable is left.

    Hostnames may hold upper case, dots and other characters ids may not; the short
    hostname (before the first dot) keeps ids readable and stable across domains.
    """
    short = name.strip().split(".", 1)[0].lower()
    cleaned = _LEADING_JUNK.sub("", _NOT_ID_CHARS.sub("-", short))[:MAX_ID_LENGTH]
    return cleaned if _ID.match(cleaned) else ""


def resolve_node_id(configured: str | None, public_key: str, hostname: str | None = None) -> str:
    """The node id: the configured name, else the sanitised short hostname, else from the key.

    The key fallback ("node-" + 8 characters of the public key) is stable for as long
    as the identity file lives, which is the best a host with an unusable name can get.
    """
    if configured:
        return configured
    from_host = sanitise_node_id(hostname if hostname is not None else socket.gethostname())
    return from_host or f"node-{public_key[:8].lower()}"


@dataclass(frozen=True)
class Sentinel:
    """What `registration.json` holds: which requester this node registered with, when."""

    cluster: str  # the requester's cluster name, as its registration reply gave it
    node_id: str
    requester_key: str  # the message key is derived from this on a re-join
    registered_at: str  # ISO 8601, UTC
    prefix: str = ""  # the NATS subject prefix: the cluster as this agent addresses it

    def matches(self, node_id: str, prefix: str) -> bool:
        """True when this sentinel is about this node id in the cluster the agent uses now."""
        return self.node_id == node_id and self.prefix == prefix

    @classmethod
    def now(cls, cluster: str, node_id: str, requester_key: str, prefix: str) -> Sentinel:
        stamp = utcnow().isoformat(timespec="seconds")
        return cls(cluster, node_id, requester_key, stamp, prefix)


def read_sentinel(state_dir: Path) -> Sentinel | None:
    """The stored sentinel, or None when there is none or it cannot be read.

    An unreadable sentinel is logged and ignored rather than fatal: the worst it
    costs is a registration, which the requester treats as idempotent.
    """
    path = state_dir / SENTINEL_FILE
    try:
        data = json.loads(path.read_text())
        sentinel = Sentinel(
            cluster=str(data["cluster"]),
            node_id=str(data["node_id"]),
            requester_key=str(data["requester_key"]),
            registered_at=str(data["registered_at"]),
            prefix=str(data.get("prefix", "")),
        )
        datetime.fromisoformat(sentinel.registered_at)  # refuse a mangled file
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    return sentinel


def write_sentinel(state_dir: Path, sentinel: Sentinel) -> Path:
    """Store `sentinel` atomically: a crash leaves the old file or the new one, never half."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / SENTINEL_FILE
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{SENTINEL_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(sentinel), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
