"""What can go wrong talking to a Hive cluster, as one hierarchy under `HiveError`.

hivectl and the Python client (`hive.Client`) raise the same exceptions with the same
one-line texts, so a script can catch `hive.HiveError` (or one kind below it) and print
`str(exc)` as hivectl would:

    HiveError
    ├── BusError              NATS trouble (hivectl.core.bus): unreachable, no requester
    │                         answering, no answer in time, a connection lost
    ├── RemoteError           the requester answered with an error reply (`code`, `reason`)
    │   ├── NotFound          no job (or node) has that id or prefix
    │   └── Ambiguous         a prefix that matches several
    ├── InvalidSpec           a job spec the rules refuse; `field` names where
    ├── InvalidId             a job id that cannot be one
    ├── SubmitUncertain       a submit never answered: it may or may not have been stored
    ├── SubmitError           some jobs of a `submit_many` were not submitted
    └── WaitTimeout           `wait` gave up with jobs not finished
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hivectl.core.jobs import Job


class HiveError(Exception):
    """Anything expected that stops a request to the cluster; `str()` is one line."""


class RemoteError(HiveError, RuntimeError):
    """The requester answered with an error reply."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class NotFound(RemoteError):
    """No job (or node) has the id or prefix asked for."""


class Ambiguous(RemoteError):
    """An id prefix that matches more than one job (or node)."""


def remote_error(code: str, reason: str) -> RemoteError:
    """The RemoteError for an error reply: its own class where the code has one."""
    if code == "invalid" and reason.startswith("spec."):
        where, _, problem = reason.partition(": ")
        return InvalidSpec(where.removeprefix("spec."), problem, text=reason)
    kind = {"not_found": NotFound, "ambiguous": Ambiguous}.get(code, RemoteError)
    return kind(code, reason)


class InvalidSpec(RemoteError, ValueError):
    """A job spec refused by the rules every node applies: checked before it is sent,
    and by the requester, whose refusal keeps its own text. `field` is the dotted path
    (`resources.cpu`, `command.2`), '' for the spec as a whole; `index` the spec's
    place in a `submit_many` list."""

    def __init__(
        self, field: str, problem: str, *, index: int | None = None, text: str = ""
    ) -> None:
        where = f"{field}: " if field else ""
        which = f" (spec {index} of the list)" if index is not None else ""
        super().__init__("invalid", text or f"invalid job spec{which}: {where}{problem}")
        self.field = field
        self.problem = problem
        self.index = index


class SubmitUncertain(HiveError):
    """No submit of `job_id` was answered, but one may have reached the requester:
    the job may exist. Submitting again with the same id never makes a second one."""

    def __init__(self, job_id: str, cause: BaseException) -> None:
        text = str(cause) or type(cause).__name__
        super().__init__(
            f"{text}. Job {job_id} may have been submitted: submitting it again with "
            f"the same job id never makes a second job"
        )
        self.job_id = job_id
        self.cause = cause


class SubmitError(HiveError):
    """Some specs of a `submit_many` were not submitted; `submitted` holds the ids of
    those that were. After the first failure no more are sent.

    `job_ids` holds every id chosen, in the order of the specs: calling `submit_many`
    again with `job_ids=exc.job_ids` submits the missing ones and repeats none.
    `errors` maps each job id whose submit failed to why.
    """

    def __init__(
        self, job_ids: Sequence[str], submitted: Sequence[str], errors: Mapping[str, HiveError]
    ) -> None:
        first = next(iter(errors.values()))
        missing = len(job_ids) - len(submitted)
        super().__init__(f"{missing} of {len(job_ids)} jobs not submitted: {first}")
        self.job_ids = list(job_ids)
        self.submitted = list(submitted)
        self.errors = dict(errors)


class WaitTimeout(HiveError, TimeoutError):
    """`wait` ran out of time. `done` holds the jobs that finished, `pending` the ids
    of those that had not."""

    def __init__(self, timeout: float, done: Mapping[str, Job], pending: Sequence[str]) -> None:
        super().__init__(
            f"{len(pending)} of {len(done) + len(pending)} jobs not finished after {timeout:g}s"
        )
        self.done = dict(done)
        self.pending = list(pending)


class InvalidId(HiveError, ValueError):
    """A job id (or prefix) that cannot be one: refused before anything is sent."""
