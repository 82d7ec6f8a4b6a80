"""The JetStream streams and object store that carry job traffic, created by the requester.

Node agents publish into these but never create them: one owner keeps one config, and a
node with a compute role's permissions cannot widen retention. Creating them is
idempotent (an existing stream is brought to this config), so every requester start,
and every requester of a cluster, runs the same code.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from hivectl.core.subjects import Subjects
from requester.events import ensure_stream

log = logging.getLogger("hive.requester.streams")

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


async def ensure_job_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """HIVE_EXEC, HIVE_LOGS and the results object store, as they should be."""
    await ensure_stream(js, exec_stream_config(subjects))
    await ensure_stream(js, logs_stream_config(subjects))
    await ensure_results_store(js, subjects.results_store)


async def ensure_results_store(js: JetStreamContext, bucket: str) -> None:
    config = ObjectStoreConfig(bucket=bucket, ttl=RESULTS_TTL, storage=StorageType.FILE)
    try:
        await js.create_object_store(bucket, config=config)
    except BadRequestError as exc:
        # It exists with another config (an operator may have tuned its TTL or size):
        # results already stored there matter more than our default, so keep it.
        log.info("object store %s exists with another config (%s); keeping it", bucket, exc)
