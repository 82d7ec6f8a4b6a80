"""Jobs in Docker containers: limits always set, no privileges, no host paths.

Every container gets CPU and memory limits (the spec's, else the node's
`executors.docker.default_cpu` / `default_memory`), network "none" unless the spec asks
for "bridge" ("host" is refused), GPUs only as device requests when the spec asks for
them, and the labels `hive.node`, `hive.job`, `hive.exec` by which a restarted agent
finds its containers again.

The docker SDK blocks, so short calls go through `asyncio.to_thread`. The two calls
that last as long as the job (the attached output stream, then `wait`) run in one
dedicated thread per container instead: in the default pool they would starve every
other `to_thread` user once a handful of jobs ran; so does the stats stream from which
the final update's CPU time comes (dockerstats.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import logging
import posixpath
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
import requests.exceptions
from docker.types import DeviceRequest

from hivectl.core.config import DockerExecutorSettings
from hivectl.core.jobs import ExecState, JobSpec
from hivectl.core.subjects import CONTAINER_LABEL_EXEC, CONTAINER_LABEL_JOB, CONTAINER_LABEL_NODE
from nodeagent.executors import ChunkReader, ExecutorError, JobRun, Outcome, TarBuilder, watch
from nodeagent.executors.dockerstats import StatsSampler

log = logging.getLogger("hive.nodeagent")

API_TIMEOUT = 120
LOG_POST_TIMEOUT = 60.0
LABEL_NODE, LABEL_JOB, LABEL_EXEC = CONTAINER_LABEL_NODE, CONTAINER_LABEL_JOB, CONTAINER_LABEL_EXEC
_DOCKER_ERRORS = (docker.errors.DockerException, OSError)
PROBE_TIMEOUT = 2  # seconds a ping of the engine may take before it counts as down
_PROBE_API = "1.24"  # given only so that making the client asks the engine nothing
_DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"


class DockerExecutor:
    engine = "docker"

    def __init__(self, settings: DockerExecutorSettings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self._client: Any = None

    def refusal(self, spec: JobSpec) -> str | None:
        if spec.network == "host" and not self.settings.allow_host_network:
            return "host networking is not allowed on this node"
        return None

    async def client(self) -> Any:
        if self._client is None:
            try:
                self._client = await asyncio.to_thread(self._connect)
            except _DOCKER_ERRORS as exc:
                raise ExecutorError(f"docker engine unavailable: {_short(exc)}") from None
        return self._client

    def _connect(self) -> Any:
        if self.settings.host:
            return docker.DockerClient(base_url=self.settings.host, timeout=API_TIMEOUT)
        return docker.from_env(timeout=API_TIMEOUT)

    async def run(self, job: JobRun) -> Outcome:
        await job.state(ExecState.STARTING)
        client = await self.client()
        await asyncio.to_thread(_ensure_image, client, job.spec.image)
        try:
            container = await asyncio.to_thread(client.containers.create, **self.create_args(job))
        except _DOCKER_ERRORS as exc:
            raise ExecutorError(f"cannot create the container: {_short(exc)}") from None
        job.set_handle(container.id)
        try:
            if job.cancel.is_set():
                return Outcome(exit_code=None, cancelled=True)
            outcome = await self._follow(client, job, container, start=True)
            if job.spec.outputs:
                outcome.results, outcome.notice = await self._collect(container, job)
            return outcome
        finally:
            await asyncio.to_thread(_remove, container)

    async def adopt(self, job: JobRun, container_id: str) -> Outcome:
        """Follow a container an earlier run of the agent started, to its end."""
        client = await self.client()
        try:
            container = await asyncio.to_thread(client.containers.get, container_id)
        except _DOCKER_ERRORS:
            raise ExecutorError("its container was lost while the agent was down") from None
        try:
            if container.status in ("created", "running", "restarting", "paused"):
                ran_for = _ran_for(container.attrs["State"].get("StartedAt", ""))
                outcome = await self._follow(client, job, container, start=False, ran_for=ran_for)
            else:
                outcome = Outcome(exit_code=int(container.attrs["State"]["ExitCode"]))
            if job.spec.outputs:
                outcome.results, outcome.notice = await self._collect(container, job)
            return outcome
        finally:
            await asyncio.to_thread(_remove, container)

    async def containers(self) -> dict[str, str]:
        """This node's Hive containers, exec id -> container id."""
        client = await self.client()
        found = await asyncio.to_thread(
            client.containers.list, all=True, filters={"label": f"{LABEL_NODE}={self.node_id}"}
        )
        return {c.labels.get(LABEL_EXEC, ""): c.id for c in found if c.labels.get(LABEL_EXEC)}

    async def remove(self, container_id: str) -> None:
        client = await self.client()
        with contextlib.suppress(*_DOCKER_ERRORS):
            container = await asyncio.to_thread(client.containers.get, container_id)
            await asyncio.to_thread(_remove, container)

    async def _collect(self, container: Any, job: JobRun) -> tuple[Path, str]:
        """The job's outputs archived to its results file; (that file, what a cap cut)."""
        tar = TarBuilder(job.results_file, job.max_output_bytes)
        await asyncio.to_thread(_archive, tar, container, job.spec)
        return tar.path, tar.note()

    def create_args(self, job: JobRun) -> dict[str, Any]:
        spec = job.spec
        cpu = spec.resources.cpu or self.settings.default_cpu
        memory = spec.resources.memory or self.settings.default_memory
        gpus = [DeviceRequest(count=spec.resources.gpu, capabilities=[["gpu"]])]
        return {
            "image": spec.image,
            "command": list(spec.command) or None,
            # Ours last, so a spec cannot set them: a batch's copies tell themselves apart.
            "environment": {
                **spec.env,
                "HIVE_NODE_ID": self.node_id,
                "HIVE_JOB_ID": job.job_id,
                "HIVE_EXEC_ID": job.exec_id,
            },
            "working_dir": spec.workdir or None,
            "network_mode": spec.network,
            "nano_cpus": int(cpu * 1e9),
            "mem_limit": memory,
            "memswap_limit": memory,  # no swap beyond the limit
            "device_requests": gpus if spec.resources.gpu else None,
            "privileged": False,
            "labels": {LABEL_NODE: self.node_id, LABEL_JOB: job.job_id, LABEL_EXEC: job.exec_id},
        }

    async def _follow(
        self, client: Any, job: JobRun, container: Any, *, start: bool, ran_for: float = 0.0
    ) -> Outcome:
        """Attach, start when asked, stream output, wait: the exit code or a kill."""
        try:
            stream = await asyncio.to_thread(
                client.api.attach, container.id, stream=True, logs=start, demux=True
            )
            if start:
                await asyncio.to_thread(container.start)
        except _DOCKER_ERRORS as exc:
            raise ExecutorError(f"cannot start the container: {_short(exc)}") from None
        await job.state(ExecState.RUNNING)
        sampler = StatsSampler(client, container.id, f"hive-stats-{job.exec_id}")
        sampler.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        threading.Thread(
            target=_stream_then_wait,
            args=(loop, stream, container, job, done),
            name=f"hive-docker-{job.exec_id}",
            daemon=True,
        ).start()
        outcome = await watch(
            done, job, lambda: asyncio.to_thread(_kill, container), ran_for=ran_for
        )
        outcome.measured = sampler.finish()
        return outcome


def _ran_for(started_at: str) -> float:
    """Seconds since docker's `State.StartedAt` (RFC 3339 with nanoseconds); 0 if unknown
    or never started (docker's zero time, year 1)."""
    match = _STARTED_AT.match(started_at)
    if match is None or match[1].startswith("0001-"):
        return 0.0
    started = datetime.fromisoformat(f"{match[1]}.{(match[2] or '0')[:6]:0<6}+00:00")
    return max(0.0, (datetime.now(UTC) - started).total_seconds())


_STARTED_AT = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")


def _ensure_image(client: Any, image: str) -> None:
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except _DOCKER_ERRORS as exc:
        raise ExecutorError(f"docker engine unavailable: {_short(exc)}") from None
    log.info("pulling image %s", image)
    try:
        client.images.pull(image)
    except _DOCKER_ERRORS as exc:
        raise ExecutorError(f"image {image} not found: {_short(exc)}") from None


def _stream_then_wait(
    loop: asyncio.AbstractEventLoop,
    stream: Iterator[tuple[bytes | None, bytes | None]],
    container: Any,
    job: JobRun,
    done: asyncio.Future[int],
) -> None:
    """In the container's own thread: forward output into the loop, then wait for the end."""
    try:
        for out, err in stream:
            for name, chunk in (("stdout", out), ("stderr", err)):
                if chunk:
                    future: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
                        job.log(name, chunk), loop
                    )
                    future.result(LOG_POST_TIMEOUT)  # back-pressure from a slow log sink
    except Exception as exc:  # a broken stream must not lose the exit code
        log.debug("output stream of %s ended: %s", job.exec_id, exc)
    try:
        code = int(container.wait()["StatusCode"])
    except Exception as exc:
        _settle(loop, done, exc)
        return
    _settle(loop, done, code)


def _settle(loop: asyncio.AbstractEventLoop, done: asyncio.Future[int], value: Any) -> None:
    def apply() -> None:
        if done.done():
            return
        if isinstance(value, BaseException):
            done.set_exception(ExecutorError(f"lost track of the container: {_short(value)}"))
        else:
            done.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop is already closed
        loop.call_soon_threadsafe(apply)


def _kill(container: Any) -> None:
    with contextlib.suppress(*_DOCKER_ERRORS):  # 409: it ended meanwhile
        container.kill()


def _remove(container: Any) -> None:
    with contextlib.suppress(*_DOCKER_ERRORS):
        container.remove(force=True)


def _archive(tar: TarBuilder, container: Any, spec: JobSpec) -> None:
    """The spec's output paths, streamed out of the container into one tar.gz."""
    for path in spec.outputs:
        where = posixpath.join(spec.workdir or "/", path)
        try:
            bits, _ = container.get_archive(where)
            tar.add_tar(io.BufferedReader(ChunkReader(bits)))
        except docker.errors.NotFound:
            log.info("output %s of the job does not exist; not archived", where)
        except _DOCKER_ERRORS as exc:
            log.warning("cannot copy output %s: %s", where, _short(exc))
    tar.finish()


def engine_problem(settings: DockerExecutorSettings) -> str | None:
    """Why the Docker engine cannot run jobs now, or None when it answers a ping.

    Cheap enough for every info update: one request on a client made for it, with a
    short timeout, so a hung engine costs PROBE_TIMEOUT and no more.
    """
    params: dict[str, Any] = docker.utils.kwargs_from_env()
    if settings.host:
        params["base_url"] = settings.host
    where = str(params.get("base_url") or _DEFAULT_ENDPOINT)
    try:
        client = docker.APIClient(version=_PROBE_API, timeout=PROBE_TIMEOUT, **params)
    except _DOCKER_ERRORS as exc:  # a malformed host, unreadable TLS files
        return f"cannot use {where}: {_short(exc)}"
    try:
        # The unversioned path: every engine answers it, whatever API versions it serves.
        status = client.get(f"{client.base_url}/_ping", timeout=PROBE_TIMEOUT).status_code
    except (*_DOCKER_ERRORS, requests.exceptions.RequestException) as exc:
        return f"cannot reach {where}: {_root_cause(exc)}"
    finally:
        client.close()
    return None if status == 200 else f"{where} answered a ping with HTTP {status}"


def _root_cause(exc: BaseException) -> str:
    """The innermost OS error under the layers requests and urllib3 wrap around it."""
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {PROBE_TIMEOUT}s"
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if id(item) in seen or not isinstance(item, BaseException):
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        todo += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return _short(exc)


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:300]
