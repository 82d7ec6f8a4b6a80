"""Hive on a real three-server NATS cluster: replicas as a setting, and a stream leader
killed (-9) while submits run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StreamConfig, StreamInfo

from hivectl.core.bus import BusError, connect_daemon, request
from hivectl.core.config import JetStreamSettings, RequesterConfig
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import ExecState, JobGetReply, JobGetRequest
from hivectl.core.subjects import Subjects
from nodeagent.publish import Publisher
from requester.jobs.streams import ensure_job_streams
from requester.provision import StoreSetupError
from requester.service import Requester
from requester.store import Store
from tests.support.cluster import RunningRequester, requester_config, wait_for
from tests.support.natscluster import NatsCluster

S = Subjects()
DAY = 86400.0
JOB = "j-0123456789abcdef"
# Every stream a requester creates: its KV buckets, its streams, its object store.
HIVE_STREAMS = {
    S.kv_stream(S.nodes_bucket),
    S.kv_stream(S.jobs_bucket),
    S.kv_stream(S.execs_bucket),
    S.kv_stream(S.cluster_bucket),
    S.kv_stream(S.leases_bucket),
    S.kv_stream(S.tokens_bucket),
    S.kv_stream(S.users_bucket),
    S.kv_stream(S.quotas_bucket),
    S.exec_stream,
    S.logs_stream,
    S.events_stream,
    S.usage_stream,
    S.object_stream(S.results_store),
}


def on_cluster(cluster: NatsCluster, data_dir: Path, replicas: int) -> RequesterConfig:
    return requester_config(
        cluster.url,
        data_dir,
        nats=cluster.settings("requester"),
        jetstream=JetStreamSettings(replicas=replicas),
    )


@pytest.fixture
async def admin(nats_cluster: NatsCluster) -> AsyncIterator[Client]:
    """A connection with the requester's rights, as an operator with the nats CLI has."""
    nc = await connect_daemon(nats_cluster.settings("requester"), "admin")
    yield nc
    await nc.close()


async def replicas(nc: Client) -> dict[str, int]:
    """Replicas of every stream there is. A stream whose replicas were just raised may
    miss from a listing while its new peers catch up: it is asked for by name."""
    js = nc.jetstream()
    names = HIVE_STREAMS | {info.config.name for info in await js.streams_info()}
    found: dict[str, int] = {}
    for name in sorted(n for n in names if n):
        info = await wait_for(lambda n=name: _info(js, n), what=f"{name}'s info")  # type: ignore[misc]
        found[name] = int(info.config.num_replicas or 1)
    return found


async def _info(js: JetStreamContext, name: str) -> StreamInfo | None:
    try:
        return await js.stream_info(name)
    except (NatsError, TimeoutError):
        return None


# -- replicas --------------------------------------------------------------------------


async def test_replicas_are_raised_to_the_setting_and_never_lowered(
    nats_cluster: NatsCluster, admin: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with RunningRequester(on_cluster(nats_cluster, tmp_path / "r1", replicas=1)):
        assert await replicas(admin) == dict.fromkeys(HIVE_STREAMS, 1)
    async with RunningRequester(on_cluster(nats_cluster, tmp_path / "r3", replicas=3)):
        assert await replicas(admin) == dict.fromkeys(HIVE_STREAMS, 3)  # raised
    # An operator keeps logs longer than Hive would; a requester configured for one
    # replica (the default) starts against it all.
    js = admin.jetstream()
    logs = (await js.stream_info(S.logs_stream)).config
    await js.update_stream(StreamConfig(**{**logs.__dict__, "max_age": 30 * DAY}))
    with caplog.at_level(logging.WARNING, logger="hive.requester.store"):
        async with RunningRequester(on_cluster(nats_cluster, tmp_path / "r1", replicas=1)):
            assert await replicas(admin) == dict.fromkeys(HIVE_STREAMS, 3)  # not lowered
            assert (await js.stream_info(S.logs_stream)).config.max_age == 30 * DAY
    warned = [r.getMessage() for r in caplog.records if "keeps" in r.getMessage()]
    assert len(warned) == len(HIVE_STREAMS), warned  # one line per stream, per start
    logs_line = next(line for line in warned if S.logs_stream in line)
    assert "replicas 3 (setting: 1)" in logs_line and "max_age 30d (Hive's: 7d)" in logs_line


async def test_a_requester_with_three_replicas_creates_everything_with_three(
    nats_cluster: NatsCluster, admin: Client, tmp_path: Path
) -> None:
    async with RunningRequester(on_cluster(nats_cluster, tmp_path / "r", replicas=3)):
        assert await replicas(admin) == dict.fromkeys(HIVE_STREAMS, 3)


async def test_more_replicas_than_servers_is_a_clear_start_error(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    config = requester_config(
        nats_server.url, tmp_path / "r", jetstream=JetStreamSettings(replicas=3)
    )
    requester = Requester(config)
    with pytest.raises(StoreSetupError) as failed:
        await requester.serve()
    assert str(failed.value).startswith(
        "cannot create stream KV_hive_cluster with 3 replicas: replicas > 1 not supported "
        "in non-clustered mode; [jetstream] replicas may not exceed the number of NATS "
        "servers (1 for the embedded server)"
    )


# -- a leader killed -------------------------------------------------------------------


class Submitter:
    """`hivectl job submit` as an operator runs it, from `workers` shells in a loop."""

    def __init__(self, cluster: NatsCluster, base: Path, workers: int = 3) -> None:
        empty = base / "empty.toml"
        empty.write_text("")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")} | {
            "HIVE_CONFIG": str(empty),
            "HIVE_NATS__CREDENTIALS_FILE": str(cluster.credentials["operator"].path),
        }
        self.url = cluster.url
        self.workers = workers
        self.done: list[tuple[float, float, int, str, str]] = []  # start, end, rc, out, err
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._loop())

    async def _loop(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            rc, out, err = await self.hivectl(
                "job", "submit", "--id-only", "--engine", "process", "--", "true"
            )
            self.done.append((started, time.monotonic(), rc, out.strip(), err))

    async def hivectl(self, *args: str) -> tuple[int, str, str]:
        """One hivectl command, as the operator runs it: (exit status, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hivectl.cli.main", "--nats-url", self.url, *args,
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def succeeded_after(self, moment: float) -> int:
        return sum(1 for start, _, rc, _, _ in self.done if rc == 0 and start > moment)


async def new_leader(cluster: NatsCluster, nc: Client, stream: str, old: str) -> str:
    """The stream's leader once it is not `old`, asked through a surviving server."""
    while True:
        with contextlib.suppress(NatsError, TimeoutError, AssertionError):  # none yet
            leader = await cluster.stream_leader(nc, stream, timeout=0.25)
            if leader != old:
                return leader
        await asyncio.sleep(0.05)


async def writable(nc: Client, bucket: str) -> None:
    """Until a write to `bucket` through `nc` is stored (by the new leader)."""
    kv = await nc.jetstream(timeout=0.25).key_value(bucket)
    while True:
        with contextlib.suppress(NatsError, TimeoutError):
            await kv.put("probe", b"")
            return
        await asyncio.sleep(0.05)


async def test_submits_succeed_while_the_server_leading_the_jobs_stream_is_killed(
    nats_cluster: NatsCluster, admin: Client, tmp_path: Path
) -> None:
    jobs_stream = S.kv_stream(S.jobs_bucket)
    async with RunningRequester(on_cluster(nats_cluster, tmp_path / "r", replicas=3)) as req:
        old = await nats_cluster.stream_leader(admin, jobs_stream)
        victim = nats_cluster.index_of(old)
        survivor = await connect_daemon(
            nats_cluster.settings(only=(victim + 1) % nats_cluster.size), "survivor"
        )
        submitter = Submitter(nats_cluster, tmp_path)
        submitting = asyncio.create_task(submitter.run())
        try:
            await wait_for(lambda: submitter.succeeded_after(0) >= 3, timeout=20,
                           what="submits to flow")  # fmt: skip
            killed = time.monotonic()
            nats_cluster.kill(victim)
            leader = await asyncio.wait_for(
                new_leader(nats_cluster, survivor, jobs_stream, old), 30
            )
            elected = time.monotonic() - killed
            # Submits started after the election go through at once again.
            await wait_for(lambda: submitter.succeeded_after(killed + elected) >= 3, timeout=30,
                           what="submits after the election")  # fmt: skip
        finally:
            submitter.stop.set()
            await submitting
            await survivor.close()
        failed = [(rc, err) for _, _, rc, _, err in submitter.done if rc != 0]
        assert not failed, failed
        ids = {out for _, _, _, out, _ in submitter.done}
        assert len(ids) == len(submitter.done)  # one job per submit
        await wait_for(lambda: all(req.jobs and req.jobs.get(i) for i in ids), timeout=10,
                       what="every submitted job in the requester's store")  # fmt: skip
        during = [end - start for start, end, *_ in submitter.done if end > killed]
        print(
            f"\n{jobs_stream}: leader {old} killed, {leader} took writes after {elected:.2f}s; "
            f"{len(submitter.done)} submits, all succeeded; the slowest waited "
            f"{max(during):.2f}s; {sum(d > 1 for d in during)} waited over 1s; hivectl sent "
            f"{sum('sending it again' in err for *_, err in submitter.done)} of them again"
        )
        await nats_cluster.restart(victim)
        assert await replicas(admin) == dict.fromkeys(HIVE_STREAMS, 3)


async def test_an_agents_updates_survive_the_exec_stream_leader_killed(
    nats_cluster: NatsCluster, admin: Client
) -> None:
    """The agent retries a publish until JetStream stores it; a retry after a reply
    lost to the election is stored once (Nats-Msg-Id)."""
    await ensure_job_streams(Store(admin, timeout=2, deadline=4, replicas=3), S)
    seqs = iter(range(1, 1000))
    publisher = Publisher(S, "node-1", key=lambda: bytes(32), next_seq=lambda: next(seqs))
    publisher.nc = await connect_daemon(nats_cluster.settings("compute"), "agent")
    try:
        old = await nats_cluster.stream_leader(admin, S.exec_stream)
        nats_cluster.kill(nats_cluster.index_of(old))
        sent = await asyncio.gather(
            *(publisher.update(f"e-{i:016x}", JOB, ExecState.RUNNING, None, "") for i in range(20))
        )
        assert all(sent) and publisher.lost == 0
        info = await admin.jetstream().stream_info(S.exec_stream)
        assert info.state.messages == 20
    finally:
        await publisher.nc.close()


async def test_hivectl_asks_again_while_the_log_stream_elects_a_leader(
    nats_cluster: NatsCluster, admin: Client, tmp_path: Path
) -> None:
    """`job logs`, and a `job submit` that waits for its output, look at the log stream
    first: killed with the server leading it, it answers nothing for seconds."""
    async with RunningRequester(on_cluster(nats_cluster, tmp_path / "r", replicas=3)):
        operator = Submitter(nats_cluster, tmp_path)
        rc, job_id, err = await operator.hivectl(
            "job", "submit", "--id-only", "--engine", "process", "--", "true"
        )  # no agent: it waits, QUEUED, with no output yet
        assert rc == 0, err
        old = await nats_cluster.stream_leader(admin, S.logs_stream)
        victim = nats_cluster.index_of(old)
        survivor = await connect_daemon(
            nats_cluster.settings(only=(victim + 1) % nats_cluster.size), "survivor"
        )
        try:
            nats_cluster.kill(victim)
            # The requester answers again (through another server) before the stream
            # has elected its new leader.
            await wait_for(lambda: answers(survivor, job_id.strip()), what="the requester")
            rc, out, err = await operator.hivectl("job", "logs", job_id.strip())
        finally:
            await survivor.close()
    assert (rc, out) == (0, ""), err
    assert f"JetStream did not answer about {S.logs_stream}" in err  # and asked again


async def answers(nc: Client, job_id: str) -> bool:
    """The requester answers `job get` through `nc` (after reconnecting, say)."""
    try:
        await request(nc, S.api("job", "get"), JobGetRequest(id=job_id), JobGetReply, 1)
    except BusError:
        return False
    return True
