"""Users end to end: the real requester and agents, hivectl run with each user's
credential file. One stack for the module: users are added once, and each test makes
its own jobs."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hivectl.core import codec
from hivectl.core.auth import Identity
from hivectl.core.credentials import read_credentials_file
from hivectl.core.jobs import JobListReply, JobListRequest
from hivectl.core.models import ErrorReply
from hivectl.core.signing import read_user_credential, sign_request
from hivectl.core.subjects import Subjects
from tests.e2e.conftest import Cluster, poll

pytestmark = pytest.mark.e2e


class Stack:
    """A requester, an approved agent and a pending one; users by name -> credential file."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.creds: dict[str, Path] = {}

    def add(self, name: str, role: str) -> Path:
        path = self.cluster.base / f"{name}.creds.toml"
        out = self.cluster.hivectl("user", "add", name, "--role", role, "--output", str(path))
        assert out.stdout.strip() == str(path)
        self.creds[name] = path
        return path

    def run(self, user: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """hivectl as `user` (its credential file, nothing else)."""
        c = self.cluster
        result = subprocess.run(
            [sys.executable, "-m", "hivectl.cli.main", "--nats-url", c.url, *args],
            env=c.env | {"HIVE_NATS__CREDENTIALS_FILE": str(self.creds[user])},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{user}: hivectl {' '.join(args)} failed: {result.stderr}")
        return result

    def refused(self, user: str, *args: str) -> str:
        """The one-line error of a command `user` may not run."""
        result = self.run(user, *args, check=False)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stdout == ""
        return result.stderr.strip().removeprefix("Error: ")

    def submit(self, user: str, *command: str, flags: tuple[str, ...] = ()) -> str:
        return self.run(user, "job", "submit", "--id-only", "--engine", "process", *flags,
                        "--", *command).stdout.strip()  # fmt: skip

    def listed(self, user: str, *args: str) -> list[str]:
        return [j["job_id"] for j in json.loads(self.run(user, "job", "list", "-o", "json",
                                                         *args).stdout)]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cluster = Cluster(tmp_path_factory.mktemp("users"))
    try:
        cluster.start_requester()
        cluster.start_agent("node-1")
        cluster.start_agent("node-2")
        poll(lambda: len(cluster.states()) == 3, what="two agents")
        cluster.hivectl("node", "approve", "node-1")
        poll(lambda: cluster.states()["node-1"] == ("APPROVED", "HEALTHY"), what="node-1")
        s = Stack(cluster)
        for name, role in (("alice", "submitter"), ("bob", "submitter"), ("vera", "viewer"),
                           ("olga", "operator")):  # fmt: skip
            s.add(name, role)
        yield s
    finally:
        cluster.stop()


def test_the_credential_file_is_written_once_and_private(stack: Stack) -> None:
    path = stack.creds["alice"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user = read_user_credential(path)
    assert user is not None and user.user == "alice"
    assert read_credentials_file(path)[0] == "user"  # the NATS role every user shares
    again = stack.cluster.hivectl("user", "add", "zed", "--output", str(path), check=False)
    assert again.returncode == 2 and "exists" in again.stderr
    listed = json.loads(stack.cluster.hivectl("user", "list", "-o", "json").stdout)
    assert {(u["name"], u["role"]) for u in listed} >= {("alice", "submitter"), ("vera", "viewer")}
    assert "zed" not in {u["name"] for u in listed}  # the refused add changed nothing
    assert all("seed" not in json.dumps(u) for u in listed)
    # Only admins manage users: an operator may not.
    assert stack.refused(
        "olga", "user", "add", "mallory", "--output", str(path.with_name("m"))
    ) == ("olga is an operator: user add needs the admin role")
    assert not path.with_name("m").exists()


def test_a_submitter_runs_its_own_jobs_and_nobody_else_s(stack: Stack, tmp_path: Path) -> None:
    c = stack.cluster
    script = "echo alice-was-here; mkdir out; echo 1 > out/x"
    mine = stack.submit("alice", "sh", "-c", script, flags=("--output", "out"))
    theirs = stack.submit("bob", "sleep", "60")
    assert c.wait_job(mine, "COMPLETED")["owner"] == "alice"
    assert c.job(theirs)["owner"] == "bob"

    assert stack.listed("alice") == [mine]
    assert stack.refused("alice", "job", "list", "--all").startswith(
        "alice is a submitter: listing everyone's jobs needs the viewer or operator role"
    )
    for verb in (("describe",), ("executions",), ("stop",), ("logs",), ("results", "-d", "r")):
        assert stack.refused("alice", "job", verb[0], theirs, *verb[1:]) == (
            f"job {theirs} belongs to bob"
        ), verb
    # A prefix matches the caller's own jobs only: bob's ids are neither found nor listed.
    assert stack.refused("alice", "job", "describe", theirs[:-1]) == (
        f"job {theirs[:-1]!r} not found"
    )
    common = stack.run("alice", "job", "describe", "j-", check=False)
    assert mine in common.stdout + common.stderr and theirs not in common.stdout + common.stderr
    assert stack.refused("alice", "node", "approve", "node-2") == (
        "alice is a submitter: node approve needs the operator role"
    )
    assert c.states()["node-2"][0] == "PENDING"
    assert stack.run("alice", "job", "logs", mine).stdout == "alice-was-here\n"
    stack.run("alice", "job", "results", mine, "-d", str(tmp_path))
    assert [p.read_text() for p in tmp_path.rglob("x")] == ["1\n"]
    table = stack.run("alice", "job", "list").stdout.splitlines()
    assert table[0].split()[:7] == ["ID", "NAME", "TYPE", "ENGINE", "STATE", "EXECUTIONS", "OWNER"]
    assert table[1].split()[-3] == "alice"  # then CREATED, "5s ago"

    # A viewer reads everyone's jobs but submits nothing; an operator stops anyone's.
    assert {mine, theirs} <= set(stack.listed("vera", "--all"))
    assert stack.run("vera", "job", "logs", mine).stdout == "alice-was-here\n"
    assert stack.refused("vera", "job", "submit", "--engine", "process", "--", "true") == (
        "vera is a viewer: job submit needs the submitter role"
    )
    assert (
        stack.refused("vera", "job", "stop", theirs)
        == "vera is a viewer: job stop needs the submitter role"
    )
    stack.run("olga", "job", "stop", theirs, "-m", "olga says so")
    assert c.wait_job(theirs, "STOPPED")["reason"] == "olga says so"

    # Events name the user who acted.
    events = json.loads(c.hivectl("events", "--job", mine, "-o", "json").stdout)
    assert {e["actor"] for e in events if e.get("new") == "PENDING"} == {"alice"}
    stopped = json.loads(c.hivectl("events", "--job", theirs, "-o", "json").stdout)
    assert [e["actor"] for e in stopped if e.get("new") == "STOPPED"] == ["olga"]


def test_a_user_waits_for_a_file_of_jobs_without_events(stack: Stack) -> None:
    jobs = stack.cluster.base / "three.json"
    jobs.write_text(json.dumps([{"engine": "process", "command": ["true"]}] * 3))
    done = stack.run("alice", "job", "submit", "-f", str(jobs))  # waits, polling
    ids = done.stdout.split()
    assert len(ids) == 3
    assert {stack.cluster.job(i)["state"] for i in ids} == {"COMPLETED"}


def test_users_read_events_through_the_requester(stack: Stack) -> None:
    mine = stack.submit("alice", "true")
    theirs = stack.submit("bob", "true")
    for job_id in (mine, theirs):
        stack.cluster.wait_job(job_id, "COMPLETED")

    def events(user: str, *args: str) -> list[dict[str, Any]]:
        return list(json.loads(stack.run(user, "events", "-o", "json", *args).stdout))

    seen = events("alice", "--job", mine[:8])
    assert [e["new"] for e in seen][:1] == ["PENDING"] and seen[0]["actor"] == "alice"
    assert {e["job_id"] for e in seen} == {mine}
    everything = events("vera")  # a viewer reads every event, as the operator does
    assert {mine, theirs} <= {e.get("job_id") for e in everything}
    assert any(e.get("node_id") == "node-1" for e in everything)
    assert stack.refused("alice", "events").startswith(
        "alice is a submitter: it reads the events of its own jobs only"
    )
    assert stack.refused("alice", "events", "--job", theirs) == f"job {theirs} belongs to bob"
    described = stack.run("alice", "node", "describe", "node-1").stdout  # without its events
    assert "node-1" in described
    table = stack.run("vera", "events", "--job", mine).stdout.splitlines()
    assert table[0].split() == ["TIME", "OBJECT", "EVENT", "CHANGE", "ACTOR", "REASON"]


def test_the_operator_credential_is_still_the_admin(stack: Stack) -> None:
    c = stack.cluster
    alices = stack.submit("alice", "true")

    def listed(*args: str) -> set[str]:
        return {
            j["job_id"] for j in json.loads(c.hivectl("job", "list", "-o", "json", *args).stdout)
        }

    assert alices not in listed() and alices in listed("--all")
    c.hivectl("job", "describe", alices)
    c.hivectl("node", "approve", "node-2", actor="root@console")
    assert c.states()["node-2"][0] == "APPROVED"
    events = json.loads(c.hivectl("events", "--node", "node-2", "-o", "json").stdout)
    assert [e["actor"] for e in events if e.get("new") == "APPROVED"] == ["root@console"]


def test_removing_a_user_revokes_its_credential_at_once(stack: Stack) -> None:
    stack.add("carl", "submitter")
    assert stack.listed("carl") == []
    stack.cluster.hivectl("user", "remove", "carl", "-m", "left the team", actor="root@console")
    assert stack.refused("carl", "job", "list") == "no user 'carl' (removed, or never added)"
    assert "carl" not in stack.cluster.hivectl("user", "list").stdout
    # Both are events, naming who did it (an admin user's name, or the operator's).
    listed = json.loads(stack.cluster.hivectl("events", "-o", "json").stdout)
    carl = [(e["event"], e["old"], e["new"], e["actor"], e["reason"]) for e in listed
            if e["kind"] == "user_event" and e["name"] == "carl"]  # fmt: skip
    assert carl == [("added", "", "submitter", carl[0][3], ""),
                    ("removed", "submitter", "", "root@console", "left the team")]  # fmt: skip
    table = stack.cluster.hivectl("events").stdout
    assert any("user/carl" in line and "removed" in line for line in table.splitlines())


def test_a_log_of_megabytes_comes_whole_through_the_requester(stack: Stack) -> None:
    line = "line-$i-of-a-long-log-written-by-alice"
    script = f"i=0; while [ $i -lt 100000 ]; do echo {line}; i=$((i+1)); done"
    job_id = stack.submit("alice", "sh", "-c", script)
    stack.cluster.wait_job(job_id, "COMPLETED", timeout=60)
    direct = stack.cluster.hivectl("job", "logs", job_id).stdout  # the operator: JetStream
    through = stack.run("alice", "job", "logs", job_id).stdout  # alice: the requester's API
    assert len(direct) > 4_000_000  # over four max_payloads: many pages
    assert through == direct
    # --follow of a job still running: everything, then it ends with the job.
    slow = stack.submit("alice", "sh", "-c", "for i in 1 2 3; do echo tick-$i; sleep 0.5; done")
    followed = stack.run("alice", "job", "logs", "--follow", slow)
    assert followed.stdout == "tick-1\ntick-2\ntick-3\n"


# -- the wire: forged, replayed and unsigned requests ------------------------------------


def test_requests_under_another_name_or_replayed_are_refused(stack: Stack) -> None:
    asyncio.run(_forge(stack))


async def _forge(stack: Stack) -> None:
    alice = read_user_credential(stack.creds["alice"])
    assert alice is not None
    user, password = read_credentials_file(stack.creds["alice"])
    subject = Subjects().uapi("job", "list")
    payload = codec.encode(JobListRequest())
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        errors.put_nowait(str(exc))

    nc = await nats.connect(stack.cluster.url, user=user, password=password, error_cb=on_error)
    try:

        async def ask(headers: dict[str, str] | None) -> bytes:
            return bytes((await nc.request(subject, payload, timeout=5, headers=headers)).data)

        def refusal(data: bytes) -> str:
            reply = codec.decode(data, ErrorReply)
            assert isinstance(reply, ErrorReply) and reply.code == "unauthenticated"
            return reply.reason

        # alice's own request: the reply is sealed, and opens with her key alone.
        signed = sign_request(alice.identity, "alice", subject, payload)
        sealed = await ask(signed)
        with pytest.raises(codec.CodecError):
            codec.decode(sealed, (JobListReply, ErrorReply))
        assert isinstance(codec.decode(alice.open(sealed), JobListReply), JobListReply)
        # The same request again: a replay.
        assert refusal(await ask(signed)) == "replayed request: its nonce was used already"
        # Another key saying it is alice.
        forged = sign_request(Identity.generate(), "alice", subject, payload)
        assert refusal(await ask(forged)) == "the signature is not alice's"
        # alice's key, but another payload than she signed (the request of someone else).
        other = sign_request(alice.identity, "alice", subject, b"\x80")
        assert refusal(await ask(other)) == "the signature is not alice's"
        # Signed two minutes ago.
        stale = sign_request(alice.identity, "alice", subject, payload, now=time.time() - 120)
        assert refusal(await ask(stale)).startswith("the request's time is +12")
        # Not signed at all.
        assert refusal(await ask(None)).startswith("a request on uapi must be signed")
        # The user role cannot reach the operator API, JetStream or the events at all.
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await nc.request(Subjects().api("job", "list"), payload, timeout=2)
        await nc.publish("_INBOX.someone-else", b"a forged reply")
        await nc.subscribe(Subjects().all_events)
        await nc.flush()
        async with asyncio.timeout(10):
            violations = {await errors.get() for _ in range(3)}
        assert violations == {
            'nats: permissions violation for publish to "hive.api.job.list"',
            'nats: permissions violation for publish to "_inbox.someone-else"',
            'nats: permissions violation for subscription to "hive.events.>"',
        }
    finally:
        await nc.close()
