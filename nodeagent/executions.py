"""The node's executions: one task per execution, its reports, and what a restart left.

Offers and cancels reach them through `nodeagent.offers`, which admits an execution
(locking its resources in the capacity ledger) and calls `launch`. Each execution then
publishes ACCEPTED, STARTING, RUNNING and one of COMPLETED / FAILED / CANCELLED to
HIVE_EXEC, its output to HIVE_LOGS (ending with an EOF marker) and its outputs to the
results store; the lock is released before the final update, so the requester can place
the next job at once.

On close the agent stops taking offers, gives running executions `job_grace_period`
to finish, then kills them and reports them CANCELLED ("agent shutting down"). On
start it finishes what an earlier run left in the ledger: Docker containers are
followed to their end; process jobs, which do not outlive the agent, are reported lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from hivectl.core.config import NodeAgentConfig
from hivectl.core.jobs import Engine, ExecState, JobSpec, Measured
from hivectl.core.subjects import Subjects
from nodeagent.capacity import Held, Ledger
from nodeagent.executors import (
    Executor,
    ExecutorError,
    JobRun,
    Outcome,
    failure_text,
    human_size,
)
from nodeagent.executors.docker import DockerExecutor
from nodeagent.executors.process import ProcessExecutor
from nodeagent.offers import Offers, exec_fields
from nodeagent.publish import LogBatcher, Publisher

log = logging.getLogger("hive.nodeagent")

SHUTDOWN_PUBLISH = 10.0  # after the kill, how long final updates may take on close
REMEMBER_FINISHED = 10_000  # exec ids kept so a repeated offer is not run twice
NEVER_RAN = -1  # the EOF marker's exit code for a job that never started


@dataclass
class Run:
    job: JobRun
    logs: LogBatcher
    task: asyncio.Task[None] | None = None
    cancel_reason: str = ""
    started: float = field(default_factory=time.monotonic)  # when this agent took it on


class Executions:
    """The running executions and their reports; `offers` admits new ones."""

    def __init__(
        self,
        cfg: NodeAgentConfig,
        node_id: str,
        ledger: Ledger,
        key: Callable[[], bytes | None],
        next_seq: Callable[[], int],
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.ledger = ledger
        self.subjects = Subjects(cfg.nats.prefix)
        self.publisher = Publisher(self.subjects, node_id, key, next_seq)
        self.executors: dict[str, Executor] = {}
        if cfg.executors.docker.enabled:
            self.executors["docker"] = DockerExecutor(cfg.executors.docker, node_id)
        if cfg.executors.process.enabled:
            self.executors["process"] = ProcessExecutor(cfg.resolved_work_dir, node_id)
        # Enabled executors that cannot run jobs now, with why (the agent's latest info).
        self.unavailable: dict[str, str] = {}
        self.runs: dict[str, Run] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()
        self.ended: Counter[str] = Counter()  # finished executions by final state
        self.offers = Offers(self.subjects, node_id, key, ledger, self)
        self._reports: set[asyncio.Task[None]] = set()  # reports left from before a restart
        self._run_id = secrets.token_hex(4)  # tells this run's log chunk ids from the last's

    @property
    def results_dir(self) -> Path:
        """Where output archives wait on disk until they are uploaded."""
        return self.cfg.resolved_work_dir / ".results"

    @property
    def taking_offers(self) -> bool:
        return self.offers.taking

    @property
    def accepted(self) -> int:
        """Offers accepted since the agent started."""
        return self.offers.accepted

    @property
    def rejected(self) -> int:
        """Offers refused since the agent started."""
        return self.offers.rejected

    # -- lifecycle -------------------------------------------------------------------
    async def start(self, nc: Client) -> None:
        """Connect the publisher and finish what an earlier run of the agent left behind."""
        self.publisher.nc = nc
        await self._recover()

    async def sync(self, nc: Client, active: bool) -> None:
        """Take offers while the node is joined and active; stop when it is not."""
        await self.offers.sync(nc, active)

    async def close(self, grace: float) -> None:
        """Stop taking offers; let executions finish within `grace`, then kill them."""
        await self.offers.close()
        pending = {run.task for run in self.runs.values() if run.task is not None}
        pending |= self._reports
        if pending:
            log.info("waiting up to %gs for %d executions", grace, len(pending))
            _, pending = await asyncio.wait(pending, timeout=grace)
        for run in list(self.runs.values()):
            self.cancel(run.job.exec_id, "agent shutting down")
        if pending:
            _, pending = await asyncio.wait(pending, timeout=SHUTDOWN_PUBLISH)
        self.publisher.gave_up.set()  # NATS gone: stop retrying, let the tasks end
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.ledger.close()

    def cancel(self, exec_id: str, reason: str, *, at_once: bool = False) -> bool:
        """Stop one execution; `at_once`: no grace between SIGTERM and SIGKILL."""
        run = self.runs.get(exec_id)
        if run is None:
            return False
        if at_once:
            run.job.kill_grace = 0.0
        if not run.job.cancel.is_set():
            run.cancel_reason = reason
            run.job.cancel.set()
        return True

    def held(self) -> list[str]:
        """The executions this node holds: running, or ended with the report still to go."""
        return list(self.ledger.held)

    def stop_stale(self, exec_ids: list[str]) -> None:
        """The requester has these active elsewhere or not at all: stop any still running."""
        for exec_id in exec_ids:
            if self.cancel(exec_id, "the requester has no active record of it on this node"):
                log.warning(
                    "stopping execution %s: the requester wrote it off or placed it elsewhere",
                    exec_id,
                    extra=exec_fields(self.node_id, None, exec_id),
                )

    def fence(self, reason: str, before: float) -> int:
        """Stop at once every execution taken on before monotonic time `before` (the
        node was cut off since then); how many."""
        running = [
            exec_id
            for exec_id, run in self.runs.items()
            if run.started < before and not run.job.cancel.is_set()
        ]
        for exec_id in running:
            self.cancel(exec_id, reason, at_once=True)
        return len(running)

    # -- what admission uses (nodeagent.offers.Work) ----------------------------------
    def known(self, exec_id: str) -> bool:
        """Running here, or finished lately: an offer for it is a repeat."""
        return exec_id in self.runs or exec_id in self.finished

    def executor(self, engine: str) -> Executor | str:
        """The executor that runs `engine` jobs here, or why none can now."""
        executor = self.executors.get(engine)
        if executor is None:
            return f"{engine} executor is disabled on this node"
        if executor.engine in self.unavailable:
            return f"{executor.engine} executor unavailable: {self.unavailable[executor.engine]}"
        return executor

    def job_of(self, exec_id: str) -> str | None:
        """The job of an execution running here."""
        run = self.runs.get(exec_id)
        return run.job.job_id if run is not None else None

    # -- executions ----------------------------------------------------------------------
    def launch(
        self, executor: Executor, exec_id: str, job_id: str, spec: JobSpec, handle: str | None
    ) -> None:
        """One task for an execution the ledger holds: it starts the job, or with a
        `handle` (a container that outlived the agent) follows it to its end."""

        async def state(value: ExecState) -> None:
            await self.publisher.update(exec_id, job_id, value, None, "")

        chunks = itertools.count()

        async def publish_log(stream: str, data: bytes) -> None:
            # This run of the agent in the id: one that re-attaches to a container
            # numbers its chunks from 0 again, and they are new.
            chunk_id = f"{exec_id}-{self._run_id}-{next(chunks)}"
            await self.publisher.log(job_id, exec_id, stream, data, chunk_id)

        logs = LogBatcher(publish_log, self.cfg.max_log_bytes)
        job = JobRun(
            exec_id, job_id, spec, state, logs.write, lambda h: self.ledger.set_handle(exec_id, h)
        )
        job.results_file = self.results_dir / f"{exec_id}.tar.gz"
        job.max_output_bytes = self.cfg.max_output_bytes
        run = Run(job, logs)
        self.runs[exec_id] = run
        run.task = asyncio.create_task(self._execute(executor, run, handle), name=exec_id)

    async def _execute(self, executor: Executor, run: Run, handle: str | None) -> None:
        job = run.job
        try:
            if handle is None:
                await job.state(ExecState.ACCEPTED)
                outcome = await executor.run(job)
            else:
                assert isinstance(executor, DockerExecutor)
                outcome = await executor.adopt(job, handle)
        except ExecutorError as exc:
            outcome = Outcome(exit_code=None, error=str(exc), cancelled=job.cancel.is_set())
        except Exception as exc:
            log.exception(
                "execution %s failed",
                job.exec_id,
                extra=exec_fields(self.node_id, job.job_id, job.exec_id),
            )
            outcome = Outcome(exit_code=None, error=f"internal error: {exc}")
        await self._finish(run, outcome)

    async def _finish(self, run: Run, outcome: Outcome) -> None:
        job, publisher = run.job, self.publisher
        if outcome.cancelled:
            state, error = ExecState.CANCELLED, run.cancel_reason
        elif outcome.exit_code == 0 and not outcome.error:
            state, error = ExecState.COMPLETED, ""
        else:
            state, error = ExecState.FAILED, failure_text(outcome)
        # Written down first: from here on a crash loses no outcome (see `_recover`).
        self.ledger.finish(job.exec_id, state.value, outcome.exit_code, error)
        await run.logs.close()
        code = NEVER_RAN if outcome.exit_code is None else outcome.exit_code
        await publisher.eof(job.job_id, job.exec_id, code, run.logs.dropped)
        if outcome.results is not None:
            await publisher.results(job.exec_id, outcome.results)
            outcome.results.unlink(missing_ok=True)
        notice = "; ".join(filter(None, [_log_notice(run.logs), outcome.notice]))
        if notice:
            log.warning("execution %s: %s", job.exec_id, notice)
        self._forget(job.exec_id)
        self.ended[state.value] += 1
        log.info(
            "execution %s %s %s",
            job.exec_id,
            state,
            error,
            extra=exec_fields(self.node_id, job.job_id, job.exec_id),
        )
        await self._report(
            job.exec_id, job.job_id, state, outcome.exit_code, error, notice, outcome.measured
        )

    async def _report(
        self,
        exec_id: str,
        job_id: str,
        state: ExecState,
        exit_code: int | None,
        error: str,
        notice: str = "",
        measured: Measured | None = None,
    ) -> None:
        """Publish an execution's final update; only then is its ledger entry dropped."""
        if await self.publisher.update(
            exec_id, job_id, state, exit_code, error, notice, measured=measured
        ):
            self.ledger.release(exec_id)

    def _forget(self, exec_id: str) -> None:
        self.runs.pop(exec_id, None)
        self.finished[exec_id] = None
        while len(self.finished) > REMEMBER_FINISHED:
            self.finished.popitem(last=False)

    # -- after a restart -----------------------------------------------------------------
    async def _recover(self) -> None:
        await asyncio.to_thread(_prune_archives, self.results_dir, set(self.ledger.held))
        process = self.executors.get("process")
        if isinstance(process, ProcessExecutor):
            await process.kill_orphans(set(self.ledger.held))
        docker = self.executors.get("docker")
        containers: dict[str, str] = {}
        # An engine known to be down was reported already; asking it again only fails.
        if isinstance(docker, DockerExecutor) and "docker" not in self.unavailable:
            try:
                containers = await docker.containers()
            except ExecutorError as exc:
                log.warning("cannot look for this node's containers: %s", exc)
        for held in list(self.ledger.held.values()):
            container = containers.pop(held.exec_id, None)
            if held.final is not None:  # it ended; the report did not get out
                self._background(self._report_again(held))
            elif held.engine == "docker" and docker is not None and container is not None:
                log.info(
                    "re-attaching to execution %s",
                    held.exec_id,
                    extra=exec_fields(self.node_id, held.job_id, held.exec_id),
                )
                self.launch(docker, held.exec_id, held.job_id, _spec(held), handle=container)
            else:
                self._background(self._lost(held))
        if isinstance(docker, DockerExecutor):
            for exec_id, container in containers.items():
                log.info("removing container %s of unknown execution %s", container, exec_id)
                await docker.remove(container)

    def _background(self, report: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(report)
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _lost(self, held: Held) -> None:
        process = self.executors.get("process")
        if held.engine == "process" and isinstance(process, ProcessExecutor):
            await process.clean_up_after_crash(held.exec_id, held.handle, held.started)
        # Nothing was wrong with the work: the agent went away under it. CANCELLED (as
        # when the agent stops it on shutdown), so it is placed again without a retry.
        error = "the agent restarted while it ran"
        self.ledger.finish(held.exec_id, ExecState.CANCELLED.value, None, error)
        self._forget(held.exec_id)
        await self.publisher.eof(held.job_id, held.exec_id, NEVER_RAN)
        self.ended[ExecState.CANCELLED.value] += 1
        log.info(
            "execution %s %s %s",
            held.exec_id,
            ExecState.CANCELLED,
            error,
            extra=exec_fields(self.node_id, held.job_id, held.exec_id),
        )
        await self._report(held.exec_id, held.job_id, ExecState.CANCELLED, None, error)

    async def _report_again(self, held: Held) -> None:
        """An execution that ended before the agent stopped, its report not yet out."""
        final = held.final or {}
        try:
            state = ExecState(str(final.get("state")))
        except ValueError:
            state = ExecState.FAILED
        code = final.get("exit_code")
        exit_code = code if isinstance(code, int) else None
        error = str(final.get("error") or "")
        self._forget(held.exec_id)
        log.info(
            "reporting execution %s %s again: the agent stopped before it got out",
            held.exec_id,
            state,
            extra=exec_fields(self.node_id, held.job_id, held.exec_id),
        )
        archive = self.results_dir / f"{held.exec_id}.tar.gz"
        if archive.is_file() and await self.publisher.results(held.exec_id, archive):
            archive.unlink(missing_ok=True)  # its upload was cut short: a whole one now
        await self._report(held.exec_id, held.job_id, state, exit_code, error)


def _spec(held: Held) -> JobSpec:
    try:
        return JobSpec.model_validate(held.spec)
    except ValueError:
        return JobSpec(engine=Engine.DOCKER, image="unknown")


def _log_notice(logs: LogBatcher) -> str:
    if not logs.dropped:
        return ""
    return (
        f"log cut at the node's max_log_bytes ({human_size(logs.limit)}): "
        f"{human_size(logs.dropped)} left out"
    )


def _prune_archives(directory: Path, held: set[str]) -> None:
    """Remove output archives of executions the ledger no longer holds (already sent)."""
    for archive in directory.glob("*.tar.gz") if directory.is_dir() else ():
        if archive.name.removesuffix(".tar.gz") not in held:
            archive.unlink(missing_ok=True)
