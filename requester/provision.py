"""Creating Hive's streams, KV buckets and object store, at the configured replicas.

Every requester start (and every requester of a cluster) runs this, so it must agree
with what is already there rather than impose a config: a stream or bucket that does
not exist is created with `[jetstream] replicas`; one that exists is raised to that
many replicas, to Hive's retention, and to the subjects Hive needs, and otherwise kept
as it is. What an operator set higher (replicas, max_age, max_bytes) is never lowered:
it is kept, with one warning naming the setting that would match it. A start that
cannot create what it needs (3 replicas on a single server, say) is an error that
says so, not a half-started requester.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError

from hivectl.core.subjects import Subjects
from requester.store import Store

log = logging.getLogger("hive.requester.store")
T = TypeVar("T")

# Retention limits: more keeps more. 0 or -1 (or none) is "no limit", the most of all.
_LIMITS = ("max_age", "max_bytes", "max_msgs")


class StoreSetupError(RuntimeError):
    """A stream or bucket the requester needs could not be created or brought up to date."""


async def ensure_stream(store: Store, config: StreamConfig) -> None:
    """`config`'s stream at the store's replicas, created or brought up to `config`."""
    wanted = dataclasses.replace(config, num_replicas=store.replicas)
    await _ensure(store, wanted, lambda: store.add_stream(wanted))


async def ensure_bucket(store: Store, bucket: str, *, history: int = 1) -> None:
    """A KV bucket (file storage, no TTL) at the store's replicas."""
    kv = KeyValueConfig(
        bucket=bucket, history=history, storage=StorageType.FILE, replicas=store.replicas
    )
    wanted = StreamConfig(name=Subjects.kv_stream(bucket), num_replicas=store.replicas)
    await _ensure(store, wanted, lambda: store.create_key_value(config=kv))


async def ensure_object_store(store: Store, bucket: str, *, ttl: float) -> None:
    """An object store (file storage) keeping objects `ttl` seconds, at the store's replicas."""
    config = ObjectStoreConfig(
        bucket=bucket, ttl=ttl, storage=StorageType.FILE, replicas=store.replicas
    )
    wanted = StreamConfig(
        name=Subjects.object_stream(bucket), num_replicas=store.replicas, max_age=ttl
    )
    await _ensure(store, wanted, lambda: store.create_object_store(bucket, config=config))


async def _ensure(
    store: Store, wanted: StreamConfig, create: Callable[[], Awaitable[object]]
) -> None:
    """Create the stream (`create`) unless it exists; if it does, `reconcile` it."""
    name = wanted.name
    assert name is not None

    async def retried(what: Callable[[], Awaitable[T]]) -> T:
        return await store.retried(name, what, deadline=store.setup_deadline)

    try:
        try:
            info = await retried(lambda: store.stream_info(name))
        except NotFoundError:
            try:
                await retried(create)
                return
            except BadRequestError:  # another requester created it first, differently
                info = await retried(lambda: store.stream_info(name))
        merged, kept = reconcile(info.config, wanted)
        if kept:
            log.warning(
                "stream %s keeps %s: a starting requester never lowers them "
                "(to match, set [jetstream] replicas; to lower, use the nats CLI)",
                name,
                ", ".join(kept),
            )
        if merged is not None:
            await retried(lambda: store.update_stream(merged))
            log.info("stream %s brought up to date (%d replicas)", name, merged.num_replicas)
    except APIError as exc:
        raise _setup_error(name, wanted, exc) from None


def reconcile(
    existing: StreamConfig, wanted: StreamConfig
) -> tuple[StreamConfig | None, list[str]]:
    """`existing` raised to `wanted` where it has less (None: nothing to raise), and
    what it keeps above `wanted` ("replicas 3 (setting: 1)"). Fields `wanted` leaves
    unset stay as they are."""
    changes: dict[str, object] = {}
    kept: list[str] = []
    have, want = existing.num_replicas or 1, wanted.num_replicas or 1
    if want > have:
        changes["num_replicas"] = want
    elif have > want:
        kept.append(f"replicas {have} (setting: {want})")
    for field in _LIMITS:
        mine, ours = getattr(existing, field), getattr(wanted, field)
        if not _limited(ours):
            continue  # Hive sets no limit here: whatever is there stays
        if _limited(mine) and mine < ours:
            changes[field] = ours
        elif not _limited(mine) or mine > ours:
            kept.append(f"{field} {_shown(field, mine)} (Hive's: {_shown(field, ours)})")
    if wanted.subjects:
        subjects = list(existing.subjects or [])
        missing = [s for s in wanted.subjects if s not in subjects]
        if missing:
            changes["subjects"] = subjects + missing
    if (wanted.duplicate_window or 0) > (existing.duplicate_window or 0):
        changes["duplicate_window"] = wanted.duplicate_window
    if not changes:
        return None, kept
    return dataclasses.replace(existing, **changes), kept  # type: ignore[arg-type]


def _limited(value: float | int | None) -> bool:
    return value is not None and value > 0


def _shown(field: str, value: float | int | None) -> str:
    if not _limited(value):
        return "unlimited"
    assert value is not None
    if field == "max_age":
        return f"{value / 86400:g}d" if value >= 86400 else f"{value:g}s"
    return f"{value:g}"


def _setup_error(name: str, config: StreamConfig, exc: APIError) -> StoreSetupError:
    text = getattr(exc, "description", None) or str(exc)
    hint = ""
    if (config.num_replicas or 1) > 1:
        hint = (
            "; [jetstream] replicas may not exceed the number of NATS servers "
            "(1 for the embedded server)"
        )
    return StoreSetupError(
        f"cannot create stream {name} with {config.num_replicas or 1} replicas: {text}{hint}"
    )
