"""The control plane on a NATS cluster: three nats-servers (replicas 3), two requesters
and four agents, as the README's several-requester deployment runs them.

300 process jobs, each writing one line when it runs: with no fault every job completes
exactly once; then 300 more while the leading requester is killed (-9) and, once the
other has taken over, the nats-server leading the jobs bucket too; then the killed
requester back, following (and placing jobs submitted to it), and 150 more while it is
killed again. Every job still ends exactly once, no submit fails, the takeover takes
under 10 s, and no node is ever seen UNHEALTHY or UNKNOWN (its agent is up all along).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from hivectl.core import codec
from hivectl.core.bus import BusError, RemoteError, connect_daemon, request
from hivectl.core.jobs import (
    JOB_TERMINAL,
    JobGetReply,
    JobGetRequest,
    JobSpec,
    JobSubmitReply,
    JobSubmitRequest,
    new_job_id,
)
from hivectl.core.models import Health, NodeEvent
from hivectl.core.subjects import Subjects
from requester.leadership import KEY, LeaseRecord
from tests.support.natscluster import NatsCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
S = Subjects()
JOBS = 300
FOLLOWER_JOBS = 150  # the third batch, while the follower is killed
AGENTS = 4
IN_FLIGHT = 16
TAKEOVER_LIMIT = 10.0
REQUESTER_ENV = {
    "HIVE_JETSTREAM__REPLICAS": "3",
    "HIVE_AUTO_APPROVE": "true",
    "HIVE_UNHEALTHY_AFTER": "10s",
    "HIVE_DISCONNECTED_AFTER": "20s",
}
AGENT_ENV = {
    "HIVE_HEARTBEAT_INTERVAL": "1s",
    "HIVE_RESOURCE_UPDATE_INTERVAL": "2s",
    "HIVE_INFO_UPDATE_INTERVAL": "2s",
    "HIVE_EXECUTORS__PROCESS__ENABLED": "true",
    "HIVE_EXECUTORS__DOCKER__ENABLED": "false",
}


class Processes:
    """The requesters and agents, each a real process logging to a file."""

    def __init__(self, cluster: NatsCluster, base: Path) -> None:
        self.cluster, self.base = cluster, base
        empty = base / "empty.toml"
        empty.write_text("")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
        self.env |= {"HIVE_CONFIG": str(empty), "HIVE_LOG__FORMAT": "json"}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], role: str, extra: dict[str, str]) -> None:
        creds = {"HIVE_NATS__CREDENTIALS_FILE": str(self.cluster.credentials[role].path)}
        with (self.base / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", *args, "--nats-url", self.cluster.url],
                env=self.env | creds | extra,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def requester(self, name: str) -> None:
        args = ["requester", "run", "--no-embedded", "--data-dir", str(self.base / name)]
        self.start(name, args, "requester", REQUESTER_ENV | {"HIVE_NAME": name})

    def agent(self, name: str) -> None:
        args = ["nodeagent", "run", "--name", name, "--state-dir", str(self.base / name)]
        self.start(name, args, "compute", AGENT_ENV)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n.startswith("req")):  # agents first
            self.procs[name].send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Watch:
    """Every node health event, as an operator's `hivectl events` would see them."""

    def __init__(self) -> None:
        self.bad: list[NodeEvent] = []

    async def on_event(self, msg: Msg) -> None:
        event = codec.decode(msg.data, NodeEvent)
        agent = event.node_id.startswith("node-")
        down = event.new in (Health.UNHEALTHY, Health.UNKNOWN) and event.old != event.new
        if event.event == "health" and agent and down:
            self.bad.append(event)


async def poll(check: object, *, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()  # type: ignore[operator]
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def submit_all(
    nc: Client, runs: Path, count: int, rate: float = 0.0
) -> tuple[list[str], int]:
    """`count` jobs over one connection (`rate` a second, or all at once), each sent
    again with its id until it is stored, as hivectl does; (their ids, how many sends
    it took beyond one each)."""
    script = f'echo "$HIVE_JOB_ID $HIVE_EXEC_ID" >> {runs}'
    spec = JobSpec(engine="process", command=["sh", "-c", script], retries=1)
    ids, resent, gate = [new_job_id() for _ in range(count)], 0, asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int, job_id: str) -> None:
        nonlocal resent
        if rate:
            await asyncio.sleep(i / rate)
        async with gate:
            deadline = time.monotonic() + 60
            while True:
                try:
                    message = JobSubmitRequest(spec=spec, job_id=job_id)
                    await request(nc, S.api("job", "submit"), message, JobSubmitReply, 5)
                    return
                except (BusError, RemoteError):
                    if time.monotonic() > deadline:
                        raise
                    resent += 1
                    await asyncio.sleep(0.5)

    async with asyncio.TaskGroup() as group:
        for i, job_id in enumerate(ids):
            group.create_task(one(i, job_id))
    return ids, resent


async def all_final(nc: Client, ids: list[str]) -> bool:
    for job_id in ids:
        try:
            reply = await request(nc, S.api("job", "get"), JobGetRequest(id=job_id), JobGetReply, 5)
        except (BusError, RemoteError):
            return False
        if reply.job.state not in JOB_TERMINAL:
            return False
    return True


async def leader(nc: Client) -> str:
    """Who holds the lease now ('' while nobody does, or before a requester made it)."""
    with contextlib.suppress(BucketNotFoundError, KeyNotFoundError, NatsError, TimeoutError):
        kv = await nc.jetstream(timeout=2).key_value(S.leases_bucket)
        entry = await kv.get(KEY)  # times out while the bucket's stream elects a leader
        if entry.value:
            return codec.unpack_model(entry.value, LeaseRecord).holder
    return ""


def runs_of(runs: Path, ids: list[str]) -> Counter[str]:
    lines = runs.read_text().split("\n") if runs.exists() else []
    counted = Counter(line.split()[0] for line in lines if line.strip())
    return Counter({job_id: counted[job_id] for job_id in ids})


@pytest.fixture
async def hive(nats_cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(nats_cluster, tmp_path)
    for name in ("req-a", "req-b"):
        procs.requester(name)
    for i in range(1, AGENTS + 1):
        procs.agent(f"node-{i}")
    try:
        yield procs
    finally:
        procs.stop()


async def test_two_requesters_run_every_job_exactly_once_through_faults(
    hive: Processes, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    admin = await connect_daemon(nats_cluster.settings("requester"), "test-admin")
    operator = await connect_daemon(nats_cluster.settings("operator"), "test-operator")
    watch = Watch()
    await operator.subscribe(S.node_events(), cb=watch.on_event)
    runs = tmp_path / "runs.txt"
    try:
        await poll(lambda: leader(admin), timeout=60, what="a leader")
        await poll(lambda: healthy_agents(operator), timeout=60, what="four HEALTHY agents")
        # `node list` shows both requesters, whichever answers, and which one leads.
        both = {"req-a", "req-b"}
        listed = await poll(lambda: requesters_listed(operator, both), timeout=10, what="both")
        assert sorted(role for _, role in listed.values()) == ["follower", "leader"]

        # No fault: every job once.
        calm, resent = await submit_all(operator, runs, JOBS)
        await poll(lambda: all_final(operator, calm), timeout=90, what="the first 300 jobs")
        assert await states(operator, calm) == {"COMPLETED": JOBS}
        assert set(runs_of(runs, calm).values()) == {1}, "a job ran twice or not at all"
        # The follower placed some of those submitted to it (requester/jobs/assist.py).
        by_follower = await placed_by_followers(operator, calm)
        assert by_follower > 0

        # Faults mid-load: the leader requester, then the server leading the jobs.
        first = await leader(admin)
        # Spread over ~25s, so submits meet both faults.
        submitting = asyncio.create_task(submit_all(operator, runs, JOBS, rate=12))
        await poll(lambda: runs_started(runs, 10), timeout=30, what="the second batch to run")
        hive.kill(first)
        killed = time.monotonic()
        second = await poll(lambda: other_leader(admin, first), timeout=30, what="a takeover")
        took_over = time.monotonic() - killed
        # The killed one is listed as gone (no longer HEALTHY), the other as leading.
        gone = await poll(lambda: requester_gone(operator, first, second), timeout=30, what="")
        assert gone[second] == (Health.HEALTHY, "leader"), gone
        stream = S.kv_stream(S.jobs_bucket)
        victim = await nats_cluster.stream_leader(admin, stream)
        nats_cluster.kill(nats_cluster.index_of(victim))
        stormy, resent = await submitting  # every submit got through in the end
        await poll(lambda: all_final(operator, stormy), timeout=120, what="the second 300")
        assert await states(operator, stormy) == {"COMPLETED": JOBS}
        assert set(runs_of(runs, stormy).values()) == {1}, "a job ran twice or not at all"
        print(f"\n{by_follower} of the first {JOBS} placed by the follower; leader {first} "
              f"killed; {second} led after {took_over:.1f}s; server {victim} (leading "
              f"{stream}) killed; {resent} submits sent again")  # fmt: skip
        assert took_over < TAKEOVER_LIMIT

        # The killed requester back, following; then killed mid-load in its turn: the
        # jobs it took to place go to the leader, and still each runs once.
        hive.requester(first)
        await poll(lambda: requesters_listed(operator, both), timeout=30, what="both again")
        submitting = asyncio.create_task(submit_all(operator, runs, FOLLOWER_JOBS, rate=20))
        await poll(lambda: runs_started(runs, JOBS + 50), timeout=30, what="the third batch")
        hive.kill(first)
        last, resent = await submitting
        await poll(lambda: all_final(operator, last), timeout=90, what="the third batch")
        assert await states(operator, last) == {"COMPLETED": FOLLOWER_JOBS}
        assert set(runs_of(runs, last).values()) == {1}, "a job ran twice or not at all"
        took = await placed_by_followers(operator, last, first)
        print(f"follower {first} killed mid-load, having taken {took} of the last "
              f"{FOLLOWER_JOBS}; {resent} submits sent again")  # fmt: skip
        assert not watch.bad, watch.bad
    finally:
        await admin.close()
        await operator.close()


async def healthy_agents(nc: Client) -> bool:
    from hivectl.core.api import NodeListReply, NodeListRequest

    try:
        reply = await request(nc, S.api("node", "list"), NodeListRequest(), NodeListReply, 5)
    except (BusError, RemoteError):
        return False
    up = [n for n in reply.nodes if n.node_id.startswith("node-") and n.health is Health.HEALTHY]
    return len(up) == AGENTS


async def requesters_listed(nc: Client, names: set[str]) -> dict[str, tuple[Health, str]]:
    """{name: (health, role)} of the requesters `node list` shows, once it shows `names`
    HEALTHY."""
    from hivectl.core.api import NodeListReply, NodeListRequest
    from hivectl.core.models import NodeType

    try:
        reply = await request(nc, S.api("node", "list"), NodeListRequest(), NodeListReply, 5)
    except (BusError, RemoteError):
        return {}
    seen = {
        n.node_id: (n.health, n.labels.get("hive.io/role", ""))
        for n in reply.nodes
        if n.type is NodeType.REQUESTER
    }
    healthy = {name for name, (health, _) in seen.items() if health is Health.HEALTHY}
    return seen if names <= healthy else {}


async def requester_gone(nc: Client, dead: str, alive: str) -> dict[str, tuple[Health, str]]:
    seen = await requesters_listed(nc, {alive})
    return seen if dead in seen and seen[dead][0] is not Health.HEALTHY else {}


async def other_leader(nc: Client, old: str) -> str:
    now = await leader(nc)
    return now if now and now != old else ""


async def runs_started(runs: Path, more_than: int) -> bool:
    text = await asyncio.to_thread(lambda: runs.read_text() if runs.exists() else "")
    return text.count("\n") > JOBS + more_than


async def placed_by_followers(nc: Client, ids: list[str], name: str = "") -> int:
    """How many of the jobs a follower took to place (`name`: that one)."""
    placed = 0
    for job_id in ids:
        reply = await request(nc, S.api("job", "get"), JobGetRequest(id=job_id), JobGetReply, 5)
        placed += reply.job.placer == name if name else bool(reply.job.placer)
    return placed


async def states(nc: Client, ids: list[str]) -> dict[str, int]:
    counted: Counter[str] = Counter()
    for job_id in ids:
        reply = await request(nc, S.api("job", "get"), JobGetRequest(id=job_id), JobGetReply, 5)
        counted[reply.job.state.value] += 1
    return dict(counted)
