"""`hivectl job …` against a real nats-server, a canned requester and real JetStream.

`CannedJobRequester` answers `hive.api.job.*` from canned `Job` models, like
test_cli_nodes.py's CannedRequester. A job may have a timeline: the n-th `job get`
answers with its n-th version (the last one sticks) after publishing that step's log
chunks into the real HIVE_LOGS stream, so a waiting or following hivectl sees the job
move and its output arrive in a fixed order, with no sleeps.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from typer.testing import CliRunner, Result

from hivectl.cli.jobview import job_row, status_text
from hivectl.cli.main import mount
from hivectl.core import codec
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import (
    LOG_EOF_HEADER,
    LOG_STREAM_HEADER,
    Engine,
    ExecState,
    Execution,
    Job,
    JobGetReply,
    JobGetRequest,
    JobListReply,
    JobListRequest,
    JobSpec,
    JobState,
    JobStopRequest,
    JobSubmitReply,
    JobSubmitRequest,
    JobType,
)
from hivectl.core.models import ErrorReply, Message, OkReply

app = mount()  # every noun, as `hivectl --help` sees them
NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """Ages print relative to the wall clock: take NOW when each test starts, not at
    import, or a test running minutes into the suite sees "4m ago" for "3m ago"."""
    global NOW
    NOW = datetime.now(UTC)


JOB = "j-00000000000000aa"
EXEC = "e-00000000000000e1"
RETRY = "e-00000000000000e2"
Chunk = tuple[str, bytes]  # ("stdout" | "stderr" | "eof", data)


@dataclass
class Step:
    job: Job
    logs: list[tuple[str, Chunk]] = field(default_factory=list)  # (exec id, chunk)


# -- the canned requester ------------------------------------------------------------


class CannedJobRequester:
    """Answers `hive.api.job.*` like the requester would; creates the HIVE_LOGS stream."""

    def __init__(
        self,
        url: str,
        timelines: list[list[Step]],
        pages: int = 1,
        errors: dict[str, ErrorReply] | None = None,
        logs_stream: bool = True,
        unanswered_submits: int = 0,
        unstored_submits: int = 0,
    ) -> None:
        self.url = url
        self.unanswered_submits = unanswered_submits  # the first N submits get no reply
        self.unstored_submits = unstored_submits  # the next N: "store unavailable"
        self.timelines = {steps[0].job.job_id: steps for steps in timelines}
        self.pages = pages
        self.errors = errors or {}
        self.logs_stream = logs_stream
        self.requests: list[Message] = []
        self.gets: dict[str, int] = {}
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="canned-jobs", daemon=True)

    def __enter__(self) -> CannedJobRequester:
        self._thread.start()
        if not self._ready.wait(timeout=10) or self._failure is not None:
            raise RuntimeError("canned job requester did not start") from self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.nc = await nats.connect(self.url)
        if self.logs_stream:
            await self.nc.jetstream().add_stream(
                StreamConfig(name="HIVE_LOGS", subjects=["hive.logs.>"])
            )
        await self.nc.subscribe("hive.api.job.*", cb=self._on_request)
        await self.nc.flush()
        self._ready.set()
        await self._stop.wait()
        await self.nc.close()

    async def _on_request(self, msg: Msg) -> None:
        request: Message = codec.decode(msg.data)
        self.requests.append(request)
        if isinstance(request, JobSubmitRequest) and self.unanswered_submits > 0:
            self.unanswered_submits -= 1  # as if the reply were lost on the way back
            return
        if isinstance(request, JobSubmitRequest) and self.unstored_submits > 0:
            self.unstored_submits -= 1  # as while a NATS cluster elects a stream leader
            unavailable = ErrorReply(code="store_unavailable", reason="the store did not answer")
            await msg.respond(codec.encode(unavailable))
            return
        reply = await self.answer(request)
        await msg.respond(codec.encode(reply))

    async def answer(self, request: Message) -> Message:
        if request.kind in self.errors:
            return self.errors[request.kind]
        if isinstance(request, JobSubmitRequest):
            return JobSubmitReply(job_id=next(iter(self.timelines)))
        if isinstance(request, JobListRequest):
            return self.list_page(request.after)
        if isinstance(request, JobGetRequest):
            found = [i for i in self.timelines if i.startswith(request.id)]
            if len(found) != 1:
                return ErrorReply(code="not_found", reason=f"no job matches {request.id!r}")
            return JobGetReply(job=await self.step(found[0]))
        assert isinstance(request, JobStopRequest)
        return OkReply(id=request.id)

    async def step(self, job_id: str) -> Job:
        """The next version of the job, once that step's logs are stored."""
        index = self.gets.get(job_id, 0)
        self.gets[job_id] = index + 1
        steps = self.timelines[job_id]
        if index < len(steps):
            for exec_id, chunk in steps[index].logs:
                await publish_chunk(self.nc, job_id, exec_id, chunk)
        return steps[min(index, len(steps) - 1)].job

    def list_page(self, after: str) -> JobListReply:
        jobs = [steps[-1].job for steps in self.timelines.values()]
        size = -(-len(jobs) // self.pages)
        start = 0 if not after else [j.job_id for j in jobs].index(after) + 1
        page = jobs[start : start + size]
        more = start + size < len(jobs)
        return JobListReply(jobs=page, next=page[-1].job_id if more else "")

    def sent(self, kind: type[Message]) -> list[Message]:
        return [r for r in self.requests if isinstance(r, kind)]

    def submitted(self) -> JobSpec:
        (request,) = self.sent(JobSubmitRequest)
        assert isinstance(request, JobSubmitRequest) and request.job_id  # chosen by hivectl
        assert isinstance(request, JobSubmitRequest)
        return request.spec


async def publish_chunk(nc: Client, job_id: str, exec_id: str, chunk: Chunk) -> None:
    kind, data = chunk
    headers = {LOG_EOF_HEADER: data.decode()} if kind == "eof" else {LOG_STREAM_HEADER: kind}
    await nc.jetstream().publish(
        f"hive.logs.{job_id}.{exec_id}", b"" if kind == "eof" else data, headers=headers
    )


# -- data ----------------------------------------------------------------------------


def execution(exec_id: str = EXEC, **changes: object) -> Execution:
    base = Execution(
        exec_id=exec_id,
        job_id=JOB,
        node_id="node-a",
        state=ExecState.COMPLETED,
        exit_code=0,
        created_at=NOW - timedelta(minutes=5),
        started_at=NOW - timedelta(minutes=4),
        ended_at=NOW - timedelta(minutes=3),
    )
    return base.model_copy(update=changes)


def job(
    state: JobState = JobState.COMPLETED, executions: list[Execution] | None = None, **kw: object
) -> Job:
    spec = JobSpec(name="hello", image="ubuntu", command=["echo", "hello world"])
    base = Job(
        job_id=JOB,
        spec=spec,
        state=state,
        executions=[execution()] if executions is None else executions,
        created_at=NOW - timedelta(minutes=10),
    )
    return base.model_copy(update=kw)


def running_then(final: Job, logs: list[tuple[str, Chunk]]) -> list[Step]:
    """PENDING, RUNNING, then `final` with its logs stored."""
    running = job(JobState.RUNNING, [execution(state=ExecState.RUNNING, exit_code=None)])
    return [Step(job(JobState.PENDING, [])), Step(running), Step(final, logs)]


HELLO_LOGS: list[tuple[str, Chunk]] = [
    (EXEC, ("stdout", b"hello ")),
    (EXEC, ("stderr", b"a warning\n")),
    (EXEC, ("stdout", b"world\n")),
    (EXEC, ("eof", b"0")),
]


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "hivectl.toml"
    empty.write_text("")
    monkeypatch.setenv("HIVE_CONFIG", str(empty))
    for name in ("HIVE_NATS__URL", "HIVE_TIMEOUT", "HIVE_OUTPUT", "HIVE_NATS__PREFIX"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def requester(nats_server: EmbeddedNats) -> Iterator[CannedJobRequester]:
    with CannedJobRequester(nats_server.url, [[Step(job(), HELLO_LOGS)]]) as canned:
        yield canned


def hivectl(url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["--nats-url", url, *args])


def table(text: str) -> list[list[str]]:
    return [re.split(r" {3,}", line.strip()) for line in text.splitlines() if line.strip()]


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# -- submit: building the spec -------------------------------------------------------


def test_submit_docker_flags_build_the_spec(requester: CannedJobRequester) -> None:
    result = hivectl(
        requester.url,
        "job", "submit", "--id-only", "--name", "web",
        "--cpu", "500m", "--memory", "512MiB", "--disk", "2GB", "--gpu", "1",
        "-e", "MODE=fast", "-e", "EMPTY=", "-l", "zone=eu-1", "-l", "tier in (a,b)",
        "--count", "3", "--timeout", "30s", "--queue-timeout", "5m", "--retries", "2",
        "--network", "bridge", "--output", "/outputs",
        "ubuntu", "--", "sh", "-c", "echo hi",
    )  # fmt: skip
    assert (result.exit_code, result.stdout) == (0, f"{JOB}\n"), result.stderr
    spec = requester.submitted()
    assert spec.engine is Engine.DOCKER and spec.type is JobType.BATCH
    assert (spec.name, spec.image, spec.command) == ("web", "ubuntu", ["sh", "-c", "echo hi"])
    assert (spec.resources.cpu, spec.resources.memory) == (0.5, 512 * 1024**2)
    assert (spec.resources.disk, spec.resources.gpu) == (2 * 10**9, 1)
    assert spec.env == {"MODE": "fast", "EMPTY": ""}
    assert spec.constraints == ["zone=eu-1", "tier in (a,b)"]
    assert (spec.count, spec.timeout, spec.queue_timeout, spec.retries) == (3, 30.0, 300.0, 2)
    assert (spec.network, spec.outputs) == ("bridge", ["/outputs"])
    assert requester.sent(JobGetRequest) == []  # --id-only does not wait


def test_submit_process_engine_takes_every_word_as_the_command(
    requester: CannedJobRequester,
) -> None:
    result = hivectl(
        requester.url, "job", "submit", "--id-only", "--engine", "process", "--target", "all",
        "--", "uname", "-a",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    spec = requester.submitted()
    assert (spec.engine, spec.type) == (Engine.PROCESS, JobType.OPS)
    assert (spec.image, spec.command) == ("", ["uname", "-a"])


SPEC_DOC = {
    "name": "from-file",
    "image": "alpine",
    "command": ["cat", "/etc/os-release"],
    "env": {"A": "1", "B": "2"},
    "resources": {"cpu": "250m", "memory": "1Gi"},
    "constraints": ["zone=eu-2"],
    "timeout": "1m",
    "priority": 20,
}


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_submit_from_a_file_with_flag_overrides(
    requester: CannedJobRequester, tmp_path: Path, suffix: str
) -> None:
    import tomli_w

    dumps: dict[str, Callable[[Any], str]] = {
        ".yaml": yaml.safe_dump,
        ".json": json.dumps,
        ".toml": tomli_w.dumps,
    }
    dump = dumps[suffix]
    spec_file = tmp_path / f"job{suffix}"
    spec_file.write_text(dump(SPEC_DOC))
    result = hivectl(
        requester.url, "job", "submit", "--id-only", "-f", str(spec_file),
        "--memory", "2GiB", "-e", "B=3", "--count", "2", "--priority", "80",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    spec = requester.submitted()
    assert spec.priority == 80  # the flag over the file's 20
    assert (spec.name, spec.image, spec.command) == ("from-file", "alpine", SPEC_DOC["command"])
    assert spec.env == {"A": "1", "B": "3"}  # merged key by key
    assert (spec.resources.cpu, spec.resources.memory) == (0.25, 2 * 1024**3)
    assert (spec.constraints, spec.timeout, spec.count) == (["zone=eu-2"], 60.0, 2)


def test_submit_accepts_a_described_job_as_its_spec(
    requester: CannedJobRequester, tmp_path: Path
) -> None:
    described = hivectl(requester.url, "job", "describe", JOB, "-o", "yaml")
    spec_file = tmp_path / "again.yml"
    spec_file.write_text(described.stdout)
    result = hivectl(requester.url, "job", "submit", "--id-only", "-f", str(spec_file))
    assert result.exit_code == 0, result.stderr
    assert requester.submitted() == job().spec


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu", "5x", "ubuntu"], "resources.cpu: '5x' is not a CPU amount (like 0.5 or 500m)"),
        (["--memory", "lots", "ubuntu"], "resources.memory: 'lots' is not a size"),
        (["--timeout", "soon", "ubuntu"], "timeout: 'soon' is not a duration"),
        (["-e", "NOEQUALS", "ubuntu"], "env: 'NOEQUALS' is not KEY=VALUE"),
        (["-e", "1BAD=x", "ubuntu"], "env.1BAD"),
        (["-l", "zone in (a", "ubuntu"], "constraints:"),
        (["--count", "0", "ubuntu"], "count: Input should be greater than or equal to 1"),
        (["--cpu", "1"], "a docker job needs an image"),
        (["--engine", "process"], "a process job needs a command"),
    ],
)
def test_invalid_spec_is_one_line_and_sends_nothing(
    requester: CannedJobRequester, args: list[str], message: str
) -> None:
    line = one_line_error(hivectl(requester.url, "job", "submit", *args), code=2)
    assert line.startswith("Error: invalid job spec: ")
    assert message in line
    assert requester.requests == []


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", '{"image": "x",\n "cpu" 1}', ":2: not valid JSON: Expecting ':' delimiter"),
        ("bad.toml", 'image = "x"\ncpu = \n', ":2: not valid TOML: Invalid value"),
        ("bad.yaml", "image: x\n  cpu: : 1\n", ":2: not valid YAML: mapping values are not"),
    ],
)
def test_unreadable_spec_file_names_the_line(
    requester: CannedJobRequester, tmp_path: Path, name: str, text: str, message: str
) -> None:
    bad = tmp_path / name
    bad.write_text(text)
    line = one_line_error(hivectl(requester.url, "job", "submit", "-f", str(bad)), code=2)
    assert line.startswith(f"Error: {bad}{message}")
    assert requester.requests == []


JOB_YAML = """\
name: nightly
engine: process
command: [sh, -c, "echo hi"]
env:
  MODE: fast
resources:
  cpu: 2x
outputs:
  - out
  - /etc/passwd
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("command:", "comand:"), ":3: unknown field 'comand' (did you mean 'command'?)"),
        (("  cpu: 2x", "  cpus: 2"), ":7: unknown field 'resources.cpus' (did you mean "
         "'resources.cpu'?)"),
        (("name:", "colour: red\nname:"), ":1: unknown field 'colour' (known fields: name,"),
        (("", ""), ":7: resources.cpu: '2x' is not a CPU amount (like 0.5 or 500m)"),
        (("cpu: 2x", "cpu: 2"), ":10: outputs.1: '/etc/passwd' must be a relative path inside "
         "the job's work dir, like 'out'"),
        (("MODE: fast", "1MODE: fast"), ":5: env.1MODE.[key]: String should match pattern"),
    ],
)  # fmt: skip
def test_a_spec_file_error_names_the_field_and_its_line(
    requester: CannedJobRequester, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(JOB_YAML.replace(*change))
    line = one_line_error(hivectl(requester.url, "job", "submit", "-f", str(spec_file)), code=2)
    assert line.startswith(f"Error: {spec_file}{message}"), line
    assert requester.requests == []


def test_a_field_in_a_described_job_names_its_line_and_json_names_the_field(
    requester: CannedJobRequester, tmp_path: Path
) -> None:
    described = tmp_path / "again.yaml"
    record = job().model_dump(mode="json")
    record["spec"]["resources"]["gpu"] = -1
    described.write_text(yaml.safe_dump(record, sort_keys=False))
    gpu_line = described.read_text().splitlines().index("    gpu: -1") + 1
    line = one_line_error(hivectl(requester.url, "job", "submit", "-f", str(described)), code=2)
    assert line.startswith(f"Error: {described}:{gpu_line}: resources.gpu: Input should be")
    as_json = tmp_path / "job.json"
    as_json.write_text(json.dumps({"image": "x", "resources": {"cpu": "2x"}, "comand": []}))
    line = one_line_error(hivectl(requester.url, "job", "submit", "-f", str(as_json)), code=2)
    assert line == f"Error: {as_json}: unknown field 'comand' (did you mean 'command'?)"
    as_json.write_text(json.dumps({"image": "x", "resources": {"cpu": "2x"}}))
    line = one_line_error(hivectl(requester.url, "job", "submit", "-f", str(as_json)), code=2)
    assert line.startswith(f"Error: {as_json}: resources.cpu: '2x' is not a CPU amount")
    assert requester.requests == []


def test_a_bad_flag_over_a_spec_file_is_not_blamed_on_the_file(
    requester: CannedJobRequester, tmp_path: Path
) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(JOB_YAML.replace("cpu: 2x", "cpu: 2"))
    args = ["job", "submit", "-f", str(spec_file), "--output", "out", "--cpu", "lots"]
    line = one_line_error(hivectl(requester.url, *args), code=2)
    assert line.startswith("Error: invalid job spec: resources.cpu: 'lots' is not a CPU")
    assert requester.requests == []


def test_impossible_paths_are_refused_before_anything_is_sent(
    requester: CannedJobRequester,
) -> None:
    """What a node refuses for every node (here: a process job's paths) is refused at
    submit, by the same JobSpec rule the requester and the nodes apply."""
    cases = {
        ("--output", "/etc"): "outputs.0: '/etc' must be a relative path inside",
        ("--output", "a/../../b"): "outputs.0: 'a/../../b' must be a relative path",
        ("--gpu", "1"): "resources.gpu: the process executor does not hand out GPUs",
    }
    for args, message in cases.items():
        submit = ["job", "submit", "--engine", "process", *args, "--", "true"]
        line = one_line_error(hivectl(requester.url, *submit), code=2)
        assert line.startswith(f"Error: invalid job spec: {message}"), line
    assert requester.requests == []


def test_no_wait_prints_the_id_and_a_hint(requester: CannedJobRequester) -> None:
    result = hivectl(requester.url, "job", "submit", "--no-wait", "ubuntu", "--", "true")
    assert (result.exit_code, result.stdout) == (0, f"{JOB}\n"), result.stderr
    assert f"hivectl job logs --follow {JOB}" in result.stderr


# -- submit: safe to retry -----------------------------------------------------------


def test_submit_names_the_job_it_creates_and_id_chooses_it(
    requester: CannedJobRequester,
) -> None:
    for _ in range(2):
        assert hivectl(requester.url, "job", "submit", "--id-only", "ubuntu").exit_code == 0
    chosen = "j-0123456789abcdef"
    given = hivectl(requester.url, "job", "submit", "--id-only", "--id", chosen, "ubuntu")
    assert given.exit_code == 0, given.stderr
    ids = [r.job_id for r in requester.sent(JobSubmitRequest) if isinstance(r, JobSubmitRequest)]
    assert len(set(ids[:2])) == 2 and all(i and i.startswith("j-") for i in ids)
    assert ids[2] == chosen
    # The requester's answer is the id: an older one ignores ours and picks its own.
    assert given.stdout == f"{JOB}\n"
    line = one_line_error(hivectl(requester.url, "job", "submit", "--id", "job-1", "ubuntu"))
    assert line.startswith("Error: invalid job id 'job-1': use 'j-' and 16 hex digits, like j-")
    assert len(requester.sent(JobSubmitRequest)) == 3


def test_a_submit_whose_reply_is_lost_is_sent_again_with_the_same_id(
    nats_server: EmbeddedNats,
) -> None:
    with CannedJobRequester(
        nats_server.url, [running_then(job(), HELLO_LOGS)], unanswered_submits=1
    ) as canned:
        result = hivectl(canned.url, "--timeout", "0.5s", "job", "submit", "ubuntu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello world\n"
    sent = canned.sent(JobSubmitRequest)
    assert len(sent) == 2 and sent[0] == sent[1]  # the same job id and spec, twice
    assert "No reply to the submit (no answer on hive.api.job.submit within 0.5s); " in (
        result.stderr
    )


def test_a_submit_the_store_could_not_take_yet_is_sent_again_with_the_same_id(
    nats_server: EmbeddedNats,
) -> None:
    with CannedJobRequester(
        nats_server.url, [[Step(job())]], unanswered_submits=1, unstored_submits=2
    ) as canned:
        result = hivectl(canned.url, "--timeout", "0.5s", "job", "submit", "--id-only", "x")
    assert (result.exit_code, result.stdout) == (0, f"{JOB}\n"), result.stderr
    sent = canned.sent(JobSubmitRequest)
    assert len(sent) == 4 and all(r == sent[0] for r in sent)  # one job id, four sends
    assert result.stderr.count("The submit was not stored yet (the store did not answer)") == 2


def test_a_submit_that_never_gets_a_reply_says_how_to_retry_safely(
    nats_server: EmbeddedNats,
) -> None:
    with CannedJobRequester(nats_server.url, [[Step(job())]], unanswered_submits=9) as canned:
        result = hivectl(canned.url, "--timeout", "0.2s", "job", "submit", "--id-only", "x")
    sent = canned.sent(JobSubmitRequest)
    assert len(sent) == 4 and len({r.job_id for r in sent if isinstance(r, JobSubmitRequest)}) == 1
    job_id = sent[0].job_id  # type: ignore[attr-defined]
    last = result.stderr.strip().splitlines()[-1]
    assert result.exit_code == 1 and result.stdout == ""
    assert last == (
        f"Error: no answer on hive.api.job.submit within 0.2s. Job {job_id} may have been "
        f"submitted: see `hivectl job describe {job_id}`; submitting again with "
        f"`--id {job_id}` never makes a second job"
    )


def test_a_submit_nobody_answers_is_tried_again_then_one_plain_line(
    nats_server: EmbeddedNats,
) -> None:
    """No requester listens at all (one restarting, say): sent a few times over about
    a second and a half, then the usual error, without a hint that it went through."""
    result = hivectl(nats_server.url, "job", "submit", "--id-only", "ubuntu")
    assert result.stderr.count("No reply to the submit (no requester is answering") == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: no requester is answering on hive.api.job.submit"
    )
    assert (result.exit_code, result.stdout) == (1, "")


def test_a_refused_submit_is_not_sent_again(nats_server: EmbeddedNats) -> None:
    errors = {"job_submit": ErrorReply(code="exists", reason="job j-1 exists with another spec")}
    with CannedJobRequester(nats_server.url, [[Step(job())]], errors=errors) as canned:
        line = one_line_error(hivectl(canned.url, "job", "submit", "--id-only", "ubuntu"))
    assert line == "Error: job j-1 exists with another spec"
    assert len(canned.sent(JobSubmitRequest)) == 1


def test_the_waiting_line_says_why_a_job_waits() -> None:
    queued = job(JobState.QUEUED, [], reason="no node has the docker executor enabled")
    assert status_text(queued) == f"{JOB}: QUEUED: no node has the docker executor enabled"
    assert status_text(job(JobState.PENDING, [])) == f"{JOB}: PENDING"
    assert status_text(job(JobState.FAILED, reason="queue timeout")) == f"{JOB}: FAILED"


# -- submit: waiting -----------------------------------------------------------------


def test_submit_waits_then_prints_output_and_result(nats_server: EmbeddedNats) -> None:
    with CannedJobRequester(nats_server.url, [running_then(job(), HELLO_LOGS)]) as canned:
        result = hivectl(canned.url, "job", "submit", "ubuntu", "--", "echo", "hello world")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello world\n"
    assert result.stderr == f"a warning\nJob {JOB} COMPLETED\n"
    assert canned.gets[JOB] == 3  # PENDING, RUNNING, COMPLETED


def test_submit_failed_job_exits_1_with_the_reason(nats_server: EmbeddedNats) -> None:
    failed = job(
        JobState.FAILED,
        [execution(state=ExecState.FAILED, exit_code=3, error="exit code 3")],
        reason="execution failed: exit code 3",
    )
    logs = [(EXEC, ("stderr", b"boom\n")), (EXEC, ("eof", b"3"))]
    with CannedJobRequester(nats_server.url, [running_then(failed, logs)]) as canned:
        result = hivectl(canned.url, "job", "submit", "ubuntu", "--", "false")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"boom\nJob {JOB} FAILED: execution failed: exit code 3\n"


def test_submit_follow_streams_while_it_runs(nats_server: EmbeddedNats) -> None:
    running = job(JobState.RUNNING, [execution(state=ExecState.RUNNING, exit_code=None)])
    steps = [
        Step(running, [(EXEC, ("stdout", b"one\n"))]),
        Step(running, [(EXEC, ("stdout", b"two\n"))]),
        Step(running),
        Step(job(), [(EXEC, ("stdout", b"three\n")), (EXEC, ("eof", b"0"))]),
    ]
    with CannedJobRequester(nats_server.url, [steps]) as canned:
        result = hivectl(canned.url, "job", "submit", "--follow", "ubuntu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "one\ntwo\nthree\n"
    assert result.stderr == f"Job {JOB} COMPLETED\n"


def test_submit_without_a_log_stream_sends_nothing(nats_server: EmbeddedNats) -> None:
    with CannedJobRequester(nats_server.url, [[Step(job())]], logs_stream=False) as canned:
        line = one_line_error(hivectl(canned.url, "job", "submit", "ubuntu"))
    assert line == "Error: there is no log stream HIVE_LOGS (is the requester running?)"
    assert canned.requests == []


def test_submit_refused_by_the_requester(nats_server: EmbeddedNats) -> None:
    errors = {"job_submit": ErrorReply(code="invalid", reason="no node has engine process")}
    with CannedJobRequester(nats_server.url, [[Step(job())]], errors=errors) as canned:
        result = hivectl(canned.url, "job", "submit", "--engine", "process", "--", "ls")
    assert one_line_error(result) == "Error: no node has engine process"


# -- list, describe, stop ------------------------------------------------------------


def other_job(job_id: str, minutes_ago: int, **kw: object) -> Job:
    spec = JobSpec(engine=Engine.PROCESS, type=JobType.OPS, command=["df", "-h"])
    executions = [
        execution(f"e-{i:016x}", job_id=job_id, node_id=f"node-{i}", state=state)
        for i, state in enumerate([ExecState.COMPLETED, ExecState.COMPLETED, ExecState.RUNNING])
    ]
    base = Job(
        job_id=job_id,
        spec=spec,
        state=JobState.RUNNING,
        executions=executions,
        created_at=NOW - timedelta(minutes=minutes_ago),
    )
    return base.model_copy(update=kw)


@pytest.fixture
def many(nats_server: EmbeddedNats) -> Iterator[CannedJobRequester]:
    queued = other_job(
        "j-00000000000000cc",
        30,
        state=JobState.QUEUED,
        executions=[],
        reason="no node has the process executor enabled",
    )
    jobs = [job(), other_job("j-00000000000000bb", 3), queued]
    with CannedJobRequester(nats_server.url, [[Step(j)] for j in jobs], pages=2) as canned:
        yield canned


def test_list_table_newest_first_over_every_page(many: CannedJobRequester) -> None:
    result = hivectl(many.url, "job", "list")
    assert result.exit_code == 0, result.stderr
    rows = table(result.stdout)
    assert rows[0] == ["ID", "NAME", "TYPE", "ENGINE", "STATE", "EXECUTIONS", "OWNER", "CREATED"]
    assert rows[1] == [
        "j-00000000000000bb", "-", "ops", "process", "RUNNING",
        "1/3 RUNNING, 2/3 COMPLETED", "admin", "3m ago",
    ]  # fmt: skip
    assert rows[2][0] == JOB and rows[2][4:] == ["COMPLETED", "1/1 COMPLETED", "admin", "10m ago"]
    assert rows[3][0] == "j-00000000000000cc"
    afters = [r.after for r in many.sent(JobListRequest) if isinstance(r, JobListRequest)]
    assert afters == ["", "j-00000000000000bb"]


def test_list_wide_json_and_filter(many: CannedJobRequester) -> None:
    wide = table(hivectl(many.url, "job", "list", "-o", "wide", "--no-headers").stdout)
    assert wide[0][-4:] == ["-", "df -h", "node-0,node-1,node-2", "-"]
    assert wide[1][-4:] == ["ubuntu", "echo 'hello world'", "node-a", "-"]
    assert wide[2][-1] == "no node has the process executor enabled"  # why it waits
    as_json = json.loads(hivectl(many.url, "job", "list", "-o", "json").stdout)
    assert as_json[1] == many.timelines[JOB][-1].job.model_dump(mode="json")
    hivectl(many.url, "job", "list", "--filter-state", "running")
    assert isinstance(many.requests[-1], JobListRequest)
    assert many.requests[-1].state is JobState.RUNNING


def test_describe_shows_spec_state_and_executions(nats_server: EmbeddedNats) -> None:
    failed = job(
        JobState.FAILED,
        [execution(state=ExecState.FAILED, exit_code=3, error="exit code 3")],
        reason="execution failed",
        spec=JobSpec(image="ubuntu", resources={"cpu": "500m", "memory": "512MiB"}, retries=1),
    )
    with CannedJobRequester(nats_server.url, [[Step(failed)]]) as canned:
        result = hivectl(canned.url, "job", "describe", "j-00")
        as_json = hivectl(canned.url, "job", "describe", "j-00", "-o", "json")
    assert result.exit_code == 0, result.stderr
    for expected in (
        f"ID:            {JOB}",
        "State:         FAILED",
        "Reason:        execution failed",
        "Engine:        docker",
        "Image:         ubuntu",
        "Resources:     cpu=0.5, memory=512.0MiB",
        "Queue timeout: 300s",
        "Retries:       1",
    ):
        assert expected in result.stdout, f"{expected!r} not in:\n{result.stdout}"
    executions = table(result.stdout.split("Executions:")[1])
    assert executions[0] == [
        "EXEC",
        "NODE",
        "ATTEMPT",
        "STATE",
        "EXIT",
        "STARTED",
        "ENDED",
        "ERROR",
    ]
    assert executions[1] == [EXEC, "node-a", "0", "FAILED", "3", "4m ago", "3m ago", "exit code 3"]
    assert json.loads(as_json.stdout) == failed.model_dump(mode="json")
    assert canned.sent(JobGetRequest)[0] == JobGetRequest(id="j-00")


def test_describe_unknown_job(requester: CannedJobRequester) -> None:
    line = one_line_error(hivectl(requester.url, "job", "describe", "j-ff"))
    assert line == "Error: no job matches 'j-ff'"


def test_stop_prints_ok(requester: CannedJobRequester) -> None:
    result = hivectl(requester.url, "job", "stop", "j-00", "-m", "wrong input")
    assert (result.exit_code, result.stdout) == (0, "Ok\n"), result.stderr
    assert requester.requests == [JobStopRequest(id="j-00", reason="wrong input")]


# -- logs ----------------------------------------------------------------------------


def test_logs_replay_separates_stdout_and_stderr(requester: CannedJobRequester) -> None:
    hivectl(requester.url, "job", "describe", JOB)  # the first get stores the logs
    result = hivectl(requester.url, "job", "logs", "j-0")
    assert result.exit_code == 0, result.stderr
    assert (result.stdout, result.stderr) == ("hello world\n", "a warning\n")


def test_logs_of_a_retried_job(nats_server: EmbeddedNats) -> None:
    lost = execution(state=ExecState.LOST, exit_code=None, error="node lost")
    retry = execution(RETRY, node_id="node-b", attempt=1, created_at=NOW - timedelta(minutes=2))
    logs = [(EXEC, ("stdout", b"first try\n")), (RETRY, ("stdout", b"second try\n"))]
    logs.append((RETRY, ("eof", b"0")))
    with CannedJobRequester(nats_server.url, [[Step(job(executions=[lost, retry]), logs)]]) as c:
        latest = hivectl(c.url, "job", "logs", JOB)
        every = hivectl(c.url, "job", "logs", JOB, "--all")
        first = hivectl(c.url, "job", "logs", JOB, "--exec", EXEC)
        both = hivectl(c.url, "job", "logs", JOB, "--exec", "e-00")
        nope = hivectl(c.url, "job", "logs", JOB, "--exec", "e-9")
    assert latest.stdout == "second try\n", latest.stderr
    assert every.stdout == "first try\nsecond try\n"
    assert every.stderr == f"==> {EXEC} on node-a <==\n==> {RETRY} on node-b <==\n"
    assert first.stdout == "first try\n"
    assert one_line_error(both) == f"Error: 2 executions of {JOB} match 'e-00'"
    assert one_line_error(nope) == f"Error: no execution of {JOB} matches 'e-9'"


def test_logs_follow_tails_until_the_end(nats_server: EmbeddedNats) -> None:
    running = job(JobState.RUNNING, [execution(state=ExecState.RUNNING, exit_code=None)])
    steps = [
        Step(running, [(EXEC, ("stderr", b"starting\n"))]),
        Step(running, [(EXEC, ("stdout", b"1\n"))]),
        Step(running),
        Step(running, [(EXEC, ("stdout", b"2\n")), (EXEC, ("eof", b"0"))]),
        Step(job()),
    ]
    with CannedJobRequester(nats_server.url, [steps]) as canned:
        result = hivectl(canned.url, "job", "logs", "--follow", JOB)
    assert result.exit_code == 0, result.stderr
    assert (result.stdout, result.stderr) == ("1\n2\n", "starting\n")


def test_logs_of_a_job_that_never_ran(nats_server: EmbeddedNats) -> None:
    queued = job(JobState.FAILED, [], reason="no node fits")
    with CannedJobRequester(nats_server.url, [[Step(queued)]]) as canned:
        result = hivectl(canned.url, "job", "logs", JOB)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")


# -- results -------------------------------------------------------------------------


def archive(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar.gz of (name, file data or None, link target or '') members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def store_results(url: str, objects: dict[str, bytes]) -> None:
    async def put() -> None:
        nc = await nats.connect(url)
        store = await nc.jetstream().create_object_store("hive_results")
        for name, data in objects.items():
            await store.put(name, data)
        await nc.close()

    asyncio.run(put())


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_results_extract_into_dir_per_execution(
    requester: CannedJobRequester, tmp_path: Path
) -> None:
    store_results(requester.url, {EXEC: archive([("out/result.txt", b"42\n", "")])})
    dest = tmp_path / "results"
    result = hivectl(requester.url, "job", "results", "j-0", "-d", str(dest))
    assert result.exit_code == 0, result.stderr
    written = dest / EXEC / "out" / "result.txt"
    assert written.read_bytes() == b"42\n"
    assert result.stdout == f"{written}\n"
    assert f"Wrote 1 file under {dest}" in result.stderr


def test_results_never_write_outside_dir(requester: CannedJobRequester, tmp_path: Path) -> None:
    evil = archive(
        [
            ("../evil", b"escaped\n", ""),
            ("/abs", b"absolute\n", ""),
            ("passwd", None, "/etc/passwd"),
            ("up", None, "../../outside"),
            ("ok.txt", b"fine\n", ""),
        ]
    )
    store_results(requester.url, {EXEC: evil})
    work = tmp_path / "work"
    dest = work / "results"
    work.mkdir()
    result = hivectl(requester.url, "job", "results", JOB, "-d", str(dest))
    assert result.exit_code == 0, result.stderr
    assert files_under(work) == {"results", f"results/{EXEC}"} | {
        f"results/{EXEC}/{name}" for name in ("abs", "ok.txt")
    }
    assert (dest / EXEC / "abs").read_bytes() == b"absolute\n"  # made relative to DIR
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    for name in ("../evil", "passwd", "up"):
        assert f"Skipped {EXEC}: {name}: " in result.stderr
    assert set(result.stdout.split()) == {str(dest / EXEC / "abs"), str(dest / EXEC / "ok.txt")}
    assert f"Wrote 2 files under {dest}" in result.stderr


def test_results_when_there_are_none(requester: CannedJobRequester, tmp_path: Path) -> None:
    no_store = hivectl(requester.url, "job", "results", JOB, "-d", str(tmp_path))
    assert one_line_error(no_store).startswith("Error: there is no results store hive_results")
    store_results(requester.url, {"e-00000000000000ff": archive([("x", b"", "")])})
    none_kept = hivectl(requester.url, "job", "results", JOB, "-d", str(tmp_path))
    assert one_line_error(none_kept) == (
        f"Error: no results for {JOB}: no execution stored an output archive"
    )


def test_a_listed_job_shows_its_counts_and_nodes_without_its_executions() -> None:
    """`job list` replies carry each job's executions as counts and node names only."""
    listed = job(
        JobState.RUNNING,
        [],
        counts={ExecState.COMPLETED: 1990, ExecState.RUNNING: 10},
        nodes=["node-1", "node-2"],
    )
    row = job_row(listed, True, NOW)
    assert "10/2000 RUNNING, 1990/2000 COMPLETED" in row  # lifecycle order
    assert "node-1,node-2" in row
