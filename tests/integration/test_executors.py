"""The executions manager and both executors, on a real nats-server (and Docker engine).

The manager is driven as the requester drives it: sealed offers and cancels on
`hive.compute.<node>.*`; what it reports is read back from HIVE_EXEC, HIVE_LOGS and the
results object store, which the fixture creates as the requester does.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from hivectl.core import auth, codec
from hivectl.core.config import NodeAgentConfig
from hivectl.core.jobs import (
    EXEC_TERMINAL,
    LOG_EOF_HEADER,
    LOG_STREAM_HEADER,
    Cancel,
    ExecState,
    ExecUpdate,
    JobSpec,
    Offer,
    OfferReply,
    Withdraw,
    new_exec_id,
    new_job_id,
)
from hivectl.core.models import ErrorReply, Message, OkReply, Resources
from hivectl.core.subjects import Subjects
from nodeagent.capacity import Ledger
from nodeagent.executions import Executions
from nodeagent.journal import write_snapshot

if TYPE_CHECKING:
    from tests.support.dockerd import PrivateDockerd

NODE = "node-1"
KEY = bytes(range(32))
SUBJECTS = Subjects()
GIB = 1024**3
FULL = Resources(cpu=4.0, memory=8 * GIB, disk=100 * GIB, gpu=0)


async def create_streams(nc: Client) -> None:
    """What the requester creates at its start."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="HIVE_EXEC", subjects=["hive.node.*.exec"]))
    await js.add_stream(StreamConfig(name="HIVE_LOGS", subjects=["hive.logs.>"]))
    await js.create_object_store("hive_results")


async def stream_messages(nc: Client, stream: str, subject: str) -> list[Any]:
    """Every message stored in `stream` on `subject`, in order."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    found: list[Any] = []
    if not info.state.messages:
        return found
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        if msg.subject == subject:
            found.append(msg)
    return found


async def until(check: Any, timeout: float = 20.0) -> Any:
    """Poll an async `check` until it returns something truthy (deadline, no sleeps as sync)."""
    async with asyncio.timeout(timeout):
        while True:
            if result := await check():
                return result
            await asyncio.sleep(0.05)


class Jobs:
    """Reads what the node reported about its executions."""

    def __init__(self, nc: Client, key: bytes = KEY, node_id: str = NODE) -> None:
        self.nc, self.key, self.node_id = nc, key, node_id

    async def request(self, verb: str, message: Message, key: bytes | None = None) -> Message:
        data = auth.seal(codec.encode(message), key or self.key)
        reply = await self.nc.request(SUBJECTS.compute(self.node_id, verb), data, timeout=5)
        return codec.decode(reply.data)

    async def offer(
        self, spec: JobSpec, exec_id: str | None = None, epoch: int = 0, **kw: Any
    ) -> Any:
        offer = Offer(
            node_id=self.node_id,
            exec_id=exec_id or new_exec_id(),
            job_id=new_job_id(),
            spec=spec,
            epoch=epoch,
        )
        return offer, await self.request("offer", offer, **kw)

    async def withdraw(self, exec_id: str) -> Message:
        return await self.request("withdraw", Withdraw(node_id=self.node_id, exec_id=exec_id))

    async def cancel(self, exec_id: str, reason: str = "stop it", epoch: int = 0) -> Message:
        message = Cancel(node_id=self.node_id, exec_id=exec_id, reason=reason, epoch=epoch)
        return await self.request("cancel", message)

    async def updates(self, exec_id: str) -> list[ExecUpdate]:
        msgs = await stream_messages(self.nc, "HIVE_EXEC", SUBJECTS.node_exec(self.node_id))
        found = []
        for msg in msgs:
            update = codec.decode(auth.open_sealed(msg.data, self.key), ExecUpdate)
            assert msg.headers["Nats-Msg-Id"] == f"{update.exec_id}-{update.state}"
            if update.exec_id == exec_id:
                found.append(update)
        return found

    async def final(self, exec_id: str, timeout: float = 20.0) -> list[ExecUpdate]:
        async def done() -> list[ExecUpdate] | None:
            updates = await self.updates(exec_id)
            return updates if updates and updates[-1].state in EXEC_TERMINAL else None

        result: list[ExecUpdate] = await until(done, timeout)
        return result

    async def logs(self, offer: Offer) -> list[tuple[str, bytes]]:
        """(stream or 'eof:<code>', data) in order."""
        msgs = await stream_messages(
            self.nc, "HIVE_LOGS", SUBJECTS.logs(offer.job_id, offer.exec_id)
        )
        out = []
        for msg in msgs:
            if LOG_EOF_HEADER in (msg.headers or {}):
                out.append((f"eof:{msg.headers[LOG_EOF_HEADER]}", msg.data or b""))
            else:
                out.append((msg.headers[LOG_STREAM_HEADER], msg.data))
        return out

    async def results(self, exec_id: str) -> tarfile.TarFile:
        store = await self.nc.jetstream().object_store("hive_results")
        got = await store.get(exec_id)
        assert got.data is not None
        return tarfile.open(fileobj=io.BytesIO(got.data), mode="r:gz")


def joined(logs: list[tuple[str, bytes]], stream: str) -> bytes:
    return b"".join(data for name, data in logs if name == stream)


def states(updates: list[ExecUpdate]) -> list[ExecState]:
    return [u.state for u in updates]


def agent_config(tmp_path: Path, nats_url: str, **values: Any) -> NodeAgentConfig:
    settings: dict[str, Any] = {
        "name": NODE,
        "state_dir": tmp_path / "state",
        "nats": {"url": nats_url},
        "executors": {"docker": {"enabled": False}, "process": {"enabled": True}},
        "job_grace_period": 0.5,
    }
    return NodeAgentConfig(**(settings | values))


@pytest.fixture
async def manager_factory(nc: Client, tmp_path: Path, nats_server: Any) -> AsyncIterator[Any]:
    await create_streams(nc)
    made: list[Executions] = []
    counter = itertools.count(1)

    async def make(**values: Any) -> Executions:
        cfg = agent_config(tmp_path, nats_server.url, **values)
        ledger = Ledger.load(cfg.state_dir, FULL)
        manager = Executions(cfg, NODE, ledger, lambda: KEY, lambda: next(counter))
        await manager.start(nc)
        await manager.sync(nc, True)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close(0.1)


@pytest.fixture
def jobs(nc: Client) -> Jobs:
    return Jobs(nc)


def process(*command: str, **values: Any) -> JobSpec:
    return JobSpec(engine="process", command=list(command), **values)


# -- process executor ------------------------------------------------------------------


def _orphan(tmp_path: Path, admitted: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """What an agent killed mid-job leaves: a ledger entry and the job's process, in
    its own session (alive: it never writes to the dead agent's pipes), and work dir."""
    exec_id = new_exec_id()
    ledger = Ledger.load(tmp_path / "state", FULL)
    spec = process("sleep", "60")
    ledger.admit(exec_id, Resources(cpu=1.0), job_id=new_job_id(), engine="process",
                 spec=spec.model_dump())  # fmt: skip
    (tmp_path / "work" / exec_id).mkdir(parents=True)
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ledger.set_handle(exec_id, str(job.pid))
    if admitted is not None:  # an entry of long ago: as a compaction would have written it
        ledger.journal.close()
        entry = ledger.held[exec_id].to_json() | {"started": admitted}
        write_snapshot(tmp_path / "state", ledger.journal.generation + 1, [entry])
    return job, exec_id


async def test_a_restarted_agent_kills_the_process_job_it_lost_and_reports_it(
    manager_factory: Any, jobs: Jobs, tmp_path: Path
) -> None:
    job, exec_id = _orphan(tmp_path)
    try:
        manager = await manager_factory(work_dir=tmp_path / "work")
        updates = await jobs.final(exec_id)
        # CANCELLED, not FAILED: nothing was wrong with the work, so it is placed again
        # without using a retry.
        final = (updates[-1].state, updates[-1].error)
        assert final == ("CANCELLED", "the agent restarted while it ran")
        assert await asyncio.to_thread(job.wait, 5) == -9  # SIGKILL to its process group
        assert not (tmp_path / "work" / exec_id).exists()
        assert manager.ledger.available == FULL
    finally:
        job.kill()


def _sleeper(work_dir: Path, exec_id: str) -> subprocess.Popen[bytes]:
    """A process job as the process executor starts them (its own session, our env)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work_dir / exec_id), "HIVE_EXEC_ID": exec_id}
    return subprocess.Popen(["sleep", "60"], start_new_session=True, env=env)


async def test_a_job_no_ledger_holds_is_killed_by_its_environment(
    manager_factory: Any, tmp_path: Path
) -> None:
    """The ledger was lost or damaged: the job's process still says whose it is."""
    exec_id = new_exec_id()
    # Another agent on this machine (the same node name, another work dir) keeps its own.
    job, other = _sleeper(tmp_path / "work", exec_id), _sleeper(tmp_path / "other", exec_id)
    (tmp_path / "work" / exec_id).mkdir(parents=True)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "executions.json").write_text("{not json")
    try:
        await manager_factory(work_dir=tmp_path / "work")
        assert await asyncio.to_thread(job.wait, 5) == -9
        assert not (tmp_path / "work" / exec_id).exists()
        assert other.poll() is None  # not this agent's
    finally:
        for proc in (job, other):
            proc.kill()
            proc.wait()


async def test_a_pid_that_names_a_newer_process_is_left_alone(
    manager_factory: Any, jobs: Jobs, tmp_path: Path
) -> None:
    """After a reboot the pid may belong to something else: started long after the job
    was admitted, it is not the job."""
    job, exec_id = _orphan(tmp_path, admitted="2020-01-01T00:00:00+00:00")
    try:
        await manager_factory(work_dir=tmp_path / "work")
        assert (await jobs.final(exec_id))[-1].state == "CANCELLED"
        assert job.poll() is None  # still running
    finally:
        job.kill()
        job.wait()


async def test_a_restarted_agent_reports_what_ended_before_its_report_got_out(
    manager_factory: Any, jobs: Jobs, tmp_path: Path
) -> None:
    """The agent recorded the outcome, then died before publishing it."""
    exec_id, job_id = new_exec_id(), new_job_id()
    ledger = Ledger.load(tmp_path / "state", FULL)
    ledger.admit(exec_id, Resources(cpu=1.0), job_id=job_id, engine="process",
                 spec=process("true").model_dump())  # fmt: skip
    ledger.finish(exec_id, "COMPLETED", 0, "")
    manager = await manager_factory()
    updates = await jobs.final(exec_id)
    assert [(u.state, u.exit_code) for u in updates] == [("COMPLETED", 0)]
    await until(_without(manager, exec_id))
    assert Ledger.load(tmp_path / "state", FULL).held == {}


def _without(manager: Executions, exec_id: str) -> Any:
    async def released() -> bool:
        return exec_id not in manager.ledger

    return released


async def test_process_job_completes_with_logs(manager_factory: Any, jobs: Jobs) -> None:
    manager = await manager_factory()
    offer, reply = await jobs.offer(process("sh", "-c", "echo out; echo err >&2; pwd"))
    assert reply == OfferReply(exec_id=offer.exec_id, accepted=True)
    updates = await jobs.final(offer.exec_id)
    assert states(updates) == ["ACCEPTED", "STARTING", "RUNNING", "COMPLETED"]
    assert updates[-1].exit_code == 0 and updates[-1].error == ""
    seqs = [u.seq for u in updates]
    assert seqs == sorted(seqs)
    logs = await jobs.logs(offer)
    work = manager.cfg.resolved_work_dir / offer.exec_id
    assert joined(logs, "stdout") == f"out\n{work}\n".encode()
    assert joined(logs, "stderr") == b"err\n"
    assert logs[-1] == ("eof:0", b"")
    assert not work.exists()  # the work dir is removed
    assert manager.ledger.available == FULL


async def test_a_process_jobs_final_update_says_what_it_used(
    manager_factory: Any, jobs: Jobs
) -> None:
    """A job that keeps a core busy for about a second (in a child it waits for, as a
    shell script's commands are) reports about a second of CPU; one that sleeps, none."""
    await manager_factory()
    busy = (
        "python3 -c 'import time; t = time.process_time()\nwhile time.process_time() - t < 1: pass'"
    )
    offer, _ = await jobs.offer(process("sh", "-c", busy))
    sleeper, _ = await jobs.offer(process("sleep", "1"))
    used = (await jobs.final(offer.exec_id))[-1]
    idle = (await jobs.final(sleeper.exec_id))[-1]
    assert used.state == "COMPLETED" and used.measured is not None
    assert used.measured.cpu_seconds is not None and 0.95 <= used.measured.cpu_seconds < 1.5
    assert used.measured.peak_memory and used.measured.peak_memory > 1 << 20
    assert idle.measured is not None and idle.measured.cpu_seconds is not None
    assert idle.measured.cpu_seconds < 0.2


async def test_process_env_is_cleaned(
    manager_factory: Any, jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    await manager_factory()
    spec = process("sh", "-c", "env", env={"GREETING": "hi"})
    offer, _ = await jobs.offer(spec)
    await jobs.final(offer.exec_id)
    env = dict(
        line.split("=", 1)
        for line in joined(await jobs.logs(offer), "stdout").decode().split("\n")
        if line
    )
    assert "SECRET_TOKEN" not in env
    assert env["GREETING"] == "hi" and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8" and env["HOME"].endswith(offer.exec_id)


async def test_process_limits_are_set_before_the_job_starts(
    manager_factory: Any, jobs: Jobs
) -> None:
    await manager_factory()
    spec = process("sh", "-c", "ulimit -n; ulimit -c; ulimit -v", resources={"memory": "64MiB"})
    offer, _ = await jobs.offer(spec)
    await jobs.final(offer.exec_id)
    assert joined(await jobs.logs(offer), "stdout") == b"1024\n0\n65536\n"


@pytest.mark.parametrize(
    ("command", "why"),
    [("no-such-program", "No such file or directory"),
     ("./missing.sh", "No such file or directory"),
     ("/etc/passwd", "Permission denied")],
)  # fmt: skip
async def test_a_process_that_cannot_start_fails_saying_why(
    manager_factory: Any, jobs: Jobs, command: str, why: str
) -> None:
    await manager_factory()
    offer, _ = await jobs.offer(process(command))
    updates = await jobs.final(offer.exec_id)
    assert updates[-1].state is ExecState.FAILED
    assert updates[-1].error == f"cannot start {command!r}: {why}"


async def test_process_timeout_kills_the_process_group(manager_factory: Any, jobs: Jobs) -> None:
    await manager_factory()
    script = "sleep 30 & echo $!; wait"
    offer, _ = await jobs.offer(process("sh", "-c", script, timeout=1.0))
    updates = await jobs.final(offer.exec_id)
    assert states(updates)[-1] == "FAILED"
    assert updates[-1].error == "killed after its 1s timeout"
    child = int(joined(await jobs.logs(offer), "stdout").split()[0])
    assert not _alive(child)  # the background sleep went with its group


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


async def test_process_outputs_are_archived(manager_factory: Any, jobs: Jobs) -> None:
    await manager_factory()
    spec = process("sh", "-c", "mkdir out && echo 42 > out/result.txt", outputs=["out"])
    offer, _ = await jobs.offer(spec)
    assert states(await jobs.final(offer.exec_id))[-1] == "COMPLETED"
    with await jobs.results(offer.exec_id) as tar:
        member = tar.extractfile("out/result.txt")
        assert member is not None and member.read() == b"42\n"


async def test_disabled_process_executor_rejects(manager_factory: Any, jobs: Jobs) -> None:
    manager = await manager_factory(executors={"docker": {"enabled": False}})
    offer, reply = await jobs.offer(process("true"))
    assert reply == OfferReply(
        exec_id=offer.exec_id, accepted=False, reason="process executor is disabled on this node"
    )
    assert manager.runs == {} and offer.exec_id not in manager.ledger


async def test_a_spec_the_nodes_rules_refuse_is_refused_for_good(
    manager_factory: Any, jobs: Jobs
) -> None:
    """A requester with older rules than its nodes may offer what no node will run: the
    node says so for good (the requester then fails the job), and no capacity moves."""
    manager = await manager_factory()
    lax = process("true").model_copy(update={"outputs": ["out", "/etc"]})  # not validated
    offer = Offer.model_construct(
        node_id=NODE, exec_id=new_exec_id(), job_id=new_job_id(), attempt=0, spec=lax, v=1
    )
    reply = await jobs.request("offer", offer)
    assert reply == OfferReply(
        exec_id=offer.exec_id,
        accepted=False,
        permanent=True,
        reason="invalid job spec: outputs.1: '/etc' must be a relative path inside the "
        "job's work dir, like 'out'",
    )
    assert manager.runs == {} and offer.exec_id not in manager.ledger
    # No room is not for good: another node, or this one later, may run it.
    _, full = await jobs.offer(process("true", resources={"cpu": 1000}))
    assert isinstance(full, OfferReply) and not full.accepted and not full.permanent


async def test_cancel_kills_and_reports_cancelled(manager_factory: Any, jobs: Jobs) -> None:
    manager = await manager_factory()
    offer, _ = await jobs.offer(process("sleep", "30"))
    await until(lambda: _has_state(jobs, offer.exec_id, "RUNNING"))
    assert await jobs.cancel(offer.exec_id) == OkReply(id=offer.exec_id)
    updates = await jobs.final(offer.exec_id)
    assert updates[-1].state == "CANCELLED" and updates[-1].error == "stop it"
    assert manager.ledger.available == FULL
    reply = await jobs.cancel(new_exec_id())  # unknown: still OK
    assert not isinstance(reply, ErrorReply)


async def _has_state(jobs: Jobs, exec_id: str, state: str) -> bool:
    return state in states(await jobs.updates(exec_id))


async def test_chatty_job_is_batched(manager_factory: Any, jobs: Jobs) -> None:
    await manager_factory()
    offer, _ = await jobs.offer(
        process("sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done")
    )
    await jobs.final(offer.exec_id)
    logs = await jobs.logs(offer)
    assert joined(logs, "stdout").count(b"\n") == 2000
    assert len(logs) < 100


# -- docker executor -------------------------------------------------------------------


@pytest.fixture
def docker_client(docker_engine: PrivateDockerd) -> Any:
    client = docker_engine.client()
    yield client
    client.close()


@pytest.fixture
async def docker_manager(
    manager_factory: Any, docker_engine: PrivateDockerd, busybox_image: str
) -> Executions:
    manager: Executions = await manager_factory(
        executors={"docker": {"enabled": True, "host": docker_engine.base_url}}
    )
    return manager


def docker_spec(image: str, *command: str, **values: Any) -> JobSpec:
    return JobSpec(engine="docker", image=image, command=list(command), **values)


def _hive_containers(client: Any) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"hive.node={NODE}"}))


@pytest.mark.docker
async def test_docker_job_output_and_exit_code(
    docker_manager: Executions, jobs: Jobs, busybox_image: str, docker_client: Any
) -> None:
    script = "echo hello $HIVE_EXEC_ID; echo oops >&2; exit 3"
    spec = docker_spec(busybox_image, "sh", "-c", script, env={"HIVE_EXEC_ID": "mine"})
    offer, reply = await jobs.offer(spec)
    assert isinstance(reply, OfferReply) and reply.accepted
    updates = await jobs.final(offer.exec_id)
    assert states(updates) == ["ACCEPTED", "STARTING", "RUNNING", "FAILED"]
    assert updates[-1].exit_code == 3 and updates[-1].error == "exit code 3"
    logs = await jobs.logs(offer)
    # A batch's copies tell themselves apart by their execution id, which no spec sets.
    assert joined(logs, "stdout") == f"hello {offer.exec_id}\n".encode()
    assert joined(logs, "stderr") == b"oops\n"
    assert logs[-1] == ("eof:3", b"")
    assert _hive_containers(docker_client) == []
    assert docker_manager.ledger.available == FULL


@pytest.mark.docker
async def test_a_docker_jobs_final_update_says_what_cpu_it_used(
    docker_manager: Executions, jobs: Jobs, busybox_image: str
) -> None:
    """A container that keeps its one core busy for 3 s reports CPU time up to that (the
    engine's stats are sampled about every second: a lower bound, and a loaded machine
    gives it less than the core); a sleeper, next to none."""
    script = "yes > /dev/null & sleep 3; kill $!"
    offer, _ = await jobs.offer(
        docker_spec(busybox_image, "sh", "-c", script, resources={"cpu": 1})
    )
    sleeper, _ = await jobs.offer(docker_spec(busybox_image, "sleep", "2"))
    used = (await jobs.final(offer.exec_id, timeout=30))[-1]
    idle = (await jobs.final(sleeper.exec_id, timeout=30))[-1]
    assert used.state == "COMPLETED" and used.measured is not None, used
    assert used.measured.cpu_seconds is not None and 0.3 <= used.measured.cpu_seconds <= 3.5
    assert idle.measured is not None and idle.measured.cpu_seconds is not None
    assert idle.measured.cpu_seconds < 0.3


@pytest.mark.docker
async def test_docker_timeout_kills_and_removes(
    docker_manager: Executions, jobs: Jobs, busybox_image: str, docker_client: Any
) -> None:
    offer, _ = await jobs.offer(docker_spec(busybox_image, "sleep", "30", timeout=1.0))
    updates = await jobs.final(offer.exec_id)
    assert updates[-1].state == "FAILED"
    assert updates[-1].error == "killed after its 1s timeout"
    assert _hive_containers(docker_client) == []


@pytest.mark.docker
async def test_docker_limits_labels_and_network(
    docker_manager: Executions, jobs: Jobs, busybox_image: str, docker_client: Any
) -> None:
    spec = docker_spec(busybox_image, "sleep", "30", resources={"cpu": "500m", "memory": "64MiB"})
    offer, _ = await jobs.offer(spec)
    await until(lambda: _has_state(jobs, offer.exec_id, "RUNNING"))
    [container] = _hive_containers(docker_client)
    host = container.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 * 1024 * 1024
    assert host["NetworkMode"] == "none" and host["Privileged"] is False
    assert not host.get("Binds") and not container.attrs.get("Mounts")
    assert container.labels["hive.exec"] == offer.exec_id
    assert container.labels["hive.job"] == offer.job_id
    await jobs.cancel(offer.exec_id)
    assert (await jobs.final(offer.exec_id))[-1].state == "CANCELLED"
    assert _hive_containers(docker_client) == []


@pytest.mark.docker
async def test_docker_default_limits_and_host_network_refused(
    docker_manager: Executions, jobs: Jobs, busybox_image: str
) -> None:
    _offer, reply = await jobs.offer(docker_spec(busybox_image, "true", network="host"))
    assert isinstance(reply, OfferReply) and not reply.accepted
    assert "host networking" in reply.reason
    args = docker_manager.executors["docker"].create_args(  # type: ignore[attr-defined]
        type("J", (), {"spec": docker_spec(busybox_image, "true"), "job_id": "j", "exec_id": "e"})
    )
    assert args["nano_cpus"] == 1_000_000_000 and args["mem_limit"] == 512 * 1024 * 1024


@pytest.mark.docker
async def test_docker_outputs_are_archived(
    docker_manager: Executions, jobs: Jobs, busybox_image: str
) -> None:
    script = "mkdir -p /outputs && echo 42 > /outputs/result.txt"
    spec = docker_spec(busybox_image, "sh", "-c", script, outputs=["/outputs/result.txt"])
    offer, _ = await jobs.offer(spec)
    assert states(await jobs.final(offer.exec_id))[-1] == "COMPLETED"
    with await jobs.results(offer.exec_id) as tar:
        member = tar.extractfile("result.txt")
        assert member is not None and member.read() == b"42\n"


@pytest.mark.docker
async def test_docker_outputs_over_the_cap_are_left_out_and_said(
    manager_factory: Any, docker_engine: PrivateDockerd, jobs: Jobs, busybox_image: str
) -> None:
    await manager_factory(
        executors={"docker": {"enabled": True, "host": docker_engine.base_url}},
        max_output_bytes=3 * 1024 * 1024,
    )
    # 2 MiB files from `yes` (busybox has no dd): the second one would cross 3 MiB.
    script = "mkdir /o && yes | head -c 2097152 > /o/a && yes | head -c 2097152 > /o/b"
    spec = docker_spec(busybox_image, "sh", "-c", script, outputs=["/o"])
    offer, _ = await jobs.offer(spec)
    final = (await jobs.final(offer.exec_id, timeout=60))[-1]
    assert final.state == "COMPLETED"
    assert final.notice == (
        "outputs cut at the node's max_output_bytes (3 MiB): 1 file(s), 2 MiB, left out"
    )
    with await jobs.results(offer.exec_id) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
    assert [m.size for m in files] == [2097152]


@pytest.mark.docker
async def test_docker_missing_image_fails_in_setup(docker_manager: Executions, jobs: Jobs) -> None:
    offer, _ = await jobs.offer(docker_spec("hive-nope:missing", "true"))
    updates = await jobs.final(offer.exec_id, timeout=60)
    assert states(updates) == ["ACCEPTED", "STARTING", "FAILED"]
    assert updates[-1].error.startswith("image hive-nope:missing not found")
    assert updates[-1].exit_code is None
    assert docker_manager.ledger.available == FULL


def _left_running(docker_client: Any, tmp_path: Path, spec: JobSpec) -> str:
    """What an agent killed mid-job leaves: its ledger entry and the running container."""
    exec_id, job_id = new_exec_id(), new_job_id()
    ledger = Ledger.load(tmp_path / "state", FULL)
    ledger.admit(
        exec_id, Resources(cpu=1.0), job_id=job_id, engine="docker", spec=spec.model_dump()
    )
    labels = {"hive.node": NODE, "hive.job": job_id, "hive.exec": exec_id}
    container = docker_client.containers.run(
        spec.image, spec.command, labels=labels, network_mode="none", detach=True
    )
    ledger.set_handle(exec_id, container.id)
    return exec_id


@pytest.mark.docker
async def test_restarted_agent_reattaches_and_removes_orphans(
    manager_factory: Any,
    jobs: Jobs,
    busybox_image: str,
    docker_client: Any,
    docker_engine: PrivateDockerd,
    tmp_path: Path,
) -> None:
    """What an agent that died mid-job left: a ledger entry and its container; and an orphan."""
    spec = docker_spec(busybox_image, "sh", "-c", "echo late; sleep 1; exit 4")
    exec_id = _left_running(docker_client, tmp_path, spec)
    labels = {"hive.node": NODE, "hive.job": new_job_id(), "hive.exec": new_exec_id()}
    orphan = docker_client.containers.create(busybox_image, ["true"], labels=labels)
    manager = await manager_factory(
        executors={"docker": {"enabled": True, "host": docker_engine.base_url}}
    )
    updates = await jobs.final(exec_id)
    assert updates[-1].state == "FAILED" and updates[-1].exit_code == 4
    assert _hive_containers(docker_client) == []
    assert manager.ledger.available == FULL
    assert orphan.id not in [c.id for c in docker_client.containers.list(all=True)]


@pytest.mark.docker
async def test_a_reattached_containers_timeout_counts_from_its_start(
    manager_factory: Any,
    jobs: Jobs,
    busybox_image: str,
    docker_client: Any,
    docker_engine: PrivateDockerd,
    tmp_path: Path,
) -> None:
    """An agent back after 2.5 s down owes a 3 s job half a second, not 3 s more."""
    spec = docker_spec(busybox_image, "sleep", "30", timeout=3.0)
    exec_id = _left_running(docker_client, tmp_path, spec)
    await asyncio.sleep(2.5)  # the scenario, not a wait for an event: the agent is down
    back = time.monotonic()
    await manager_factory(executors={"docker": {"enabled": True, "host": docker_engine.base_url}})
    updates = await jobs.final(exec_id)
    assert updates[-1].error == "killed after its 3s timeout"
    assert time.monotonic() - back < 2.0  # unfixed, it would be 3 s and more


async def test_offers_and_cancels_from_an_older_leader_are_refused(
    manager_factory: Any, jobs: Jobs
) -> None:
    """A requester that lost the lead and has not noticed yet offers with its old epoch."""
    manager: Executions = await manager_factory()
    offer, reply = await jobs.offer(process("sleep", "30"), epoch=7)
    assert isinstance(reply, OfferReply) and reply.accepted
    _stale, refused = await jobs.offer(process("true"), epoch=5)
    assert isinstance(refused, ErrorReply) and refused.code == "stale_epoch"
    ignored = await jobs.cancel(offer.exec_id, epoch=5)
    assert isinstance(ignored, ErrorReply) and ignored.code == "stale_epoch"
    assert offer.exec_id in manager.runs  # still running: the stale cancel did nothing
    assert isinstance(await jobs.cancel(offer.exec_id, epoch=7), OkReply)
    assert (await jobs.final(offer.exec_id))[-1].state == "CANCELLED"


async def test_a_withdrawn_offer_is_never_taken_and_a_taken_one_says_so(
    manager_factory: Any, jobs: Jobs
) -> None:
    """The requester lost an offer's answer: the node's word decides where the work goes."""
    manager: Executions = await manager_factory()
    offer, reply = await jobs.offer(process("sleep", "30"))
    assert isinstance(reply, OfferReply) and reply.accepted
    taken = await jobs.withdraw(offer.exec_id)
    assert isinstance(taken, OfferReply) and taken.accepted  # it runs here: keep it
    assert offer.exec_id in manager.runs

    never = new_exec_id()
    gone = await jobs.withdraw(never)
    assert isinstance(gone, OfferReply) and not gone.accepted
    _late, refused = await jobs.offer(process("true"), exec_id=never)  # still on its way
    assert isinstance(refused, OfferReply) and not refused.accepted
    assert refused.reason == "the requester withdrew this offer"
    assert never not in manager.runs
