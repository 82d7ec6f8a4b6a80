"""The requester identity, one per cluster: every requester must derive the same node keys.

A node's message key comes from its own key and the requester's (X25519, see
hivectl/core/auth.py), and it registers with whichever requester of the queue group
answers. For every other requester to authenticate that node's heartbeats, updates and
info, they all hold one requester key. It lives in the cluster bucket (`hive_cluster`,
key `requester-seed`), which the NATS permissions keep from operators and compute nodes:

- the first requester to start stores its seed there: its own `requester.seed` when it
  has one (a single requester upgraded to a cluster: the nodes it knows keep their keys),
  else a new one. The store is a KV create, so of two requesters starting together one
  wins and the other adopts its seed;
- every later requester loads it from there.

The seed crosses the wire only to requesters: their replies come to a private inbox
prefix (Subjects.requester_inbox), not `_INBOX.>`, where operators and nodes may listen.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from hivectl.core.auth import AuthError, Identity, fingerprint
from hivectl.core.subjects import REQUESTER_SEED_KEY, Subjects
from requester.provision import ensure_bucket
from requester.store import Store

log = logging.getLogger("hive.requester")
SEED_FILE = "requester.seed"


class ClusterIdentityError(RuntimeError):
    """The cluster's stored seed is unusable; the message says what to do."""


async def cluster_identity(js: Store, subjects: Subjects, data_dir: Path) -> Identity:
    """The identity every requester sharing this NATS uses, stored on first use."""
    bucket = subjects.cluster_bucket
    await ensure_bucket(js, bucket)
    kv = await js.bucket(bucket)
    for _ in range(2):  # a lost race to create it: read the winner's
        stored = await _stored(js, kv, bucket)
        if stored is not None:
            _compare_local(stored, data_dir / SEED_FILE)
            return stored
        mine = Identity.load_or_create(data_dir / SEED_FILE)
        try:
            await _store(js, kv, bucket, mine)
        except KeyWrongLastSequenceError:
            continue  # another requester stored its seed first (or our reply was lost)
        log.info(
            "stored this requester's key (%s) as the cluster's in %s: every requester "
            "of the cluster uses it",
            fingerprint(mine.public_key),
            bucket,
        )
        return mine
    raise ClusterIdentityError(f"the requester seed in {bucket} keeps changing; start again")


async def _store(js: Store, kv: KeyValue, bucket: str, identity: Identity) -> None:
    """Create the key (a compare-and-set: it fails when any requester stored it first)."""
    await js.retried(bucket, lambda: kv.create(REQUESTER_SEED_KEY, identity.seed))


async def _stored(js: Store, kv: KeyValue, bucket: str) -> Identity | None:
    try:
        entry = await js.retried(bucket, lambda: kv.get(REQUESTER_SEED_KEY))
    except (KeyNotFoundError, KeyDeletedError):
        return None
    if not entry.value:
        return None
    try:
        return Identity(entry.value.strip())
    except AuthError as exc:
        raise ClusterIdentityError(
            f"the cluster's requester seed ({bucket} {REQUESTER_SEED_KEY}) is unusable "
            f"({exc}); restore it from a requester's {SEED_FILE}, or purge the key to "
            "start afresh (every node must then register again)"
        ) from None


def _compare_local(cluster: Identity, path: Path) -> None:
    """Warn when this requester's own seed differs: the nodes that registered with it
    alone have keys the cluster's requesters cannot check until they register again."""
    try:
        local = Identity(path.read_bytes().strip())
    except (OSError, AuthError):
        return
    if local.public_key != cluster.public_key:
        log.warning(
            "this requester's own key in %s (%s) is not the cluster's (%s); it uses the "
            "cluster's. Nodes that registered with it alone must register again "
            "(hive-nodeagent register)",
            path,
            fingerprint(local.public_key),
            fingerprint(cluster.public_key),
        )
