"""The JetStream streams and object store that carry job traffic, created by the requester.

Node agents publish into these but never create them: one owner keeps one config, and a
node with a compute role's permissions cannot widen retention. Creating them is
idempotent (an existing stream is raised to this config, never lowered: see
requester/provision.py), so every requester start, and every requester of a cluster,
runs the same code.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from hivectl.core.subjects import Subjects
from requester.provision import ensure_object_store, ensure_stream
from requester.store import Store

DAY = 24 * 3600.0
EXEC_MAX_AGE = 7 * DAY
LOGS_MAX_AGE = 7 * DAY
RESULTS_TTL = 7 * DAY
# Agents set Nats-Msg-Id on every update; a resend within this window is stored once.
EXEC_DUPLICATE_WINDOW = 120.0
EXEC_CONSUMER = "requester"  # durable: updates sent while no requester runs wait here


def exec_stream_config(subjects: Subjects) -> StreamConfig:
    return StreamConfig(
        name=subjects.exec_stream,
        subjects=[subjects.node_wildcard("exec")],
        storage=StorageType.FILE,
        max_age=EXEC_MAX_AGE,
        duplicate_window=EXEC_DUPLICATE_WINDOW,
        discard=DiscardPolicy.OLD,
    )


def logs_stream_config(subjects: Subjects) -> StreamConfig:
    return StreamConfig(
        name=subjects.logs_stream,
        subjects=[f"{subjects.prefix}.logs.>"],
        storage=StorageType.FILE,
        max_age=LOGS_MAX_AGE,
        discard=DiscardPolicy.OLD,
    )


async def ensure_job_streams(js: Store, subjects: Subjects) -> None:
    """HIVE_EXEC, HIVE_LOGS and the results object store, as they should be."""
    await ensure_stream(js, exec_stream_config(subjects))
    await ensure_stream(js, logs_stream_config(subjects))
    await ensure_object_store(js, subjects.results_store, ttl=RESULTS_TTL)
