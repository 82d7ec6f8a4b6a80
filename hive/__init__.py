"""Hive's Python client, for scripts: submit many jobs over one connection, wait for
them, read them back.

    import hive

    with hive.Client() as client:                      # as hivectl finds the cluster
        ids = client.submit_many(
            [{"engine": "process", "command": ["echo", str(n)]} for n in range(100)]
        )
        jobs = client.wait(ids)                         # {job id: Job}, all finished

`hive.AsyncClient` has the same methods as coroutines (and async iterators), for code
that runs its own event loop. The implementation lives in `hivectl.core` (hivectl
itself uses it); this package names its public parts.
"""

from hivectl import __version__
from hivectl.core.bus import BusError, CredentialsError, NatsUnreachable, NoAnswer, NoResponder
from hivectl.core.client import AsyncClient
from hivectl.core.config import ConfigError
from hivectl.core.errors import (
    Ambiguous,
    HiveError,
    InvalidId,
    InvalidSpec,
    NotFound,
    RemoteError,
    SubmitError,
    SubmitUncertain,
    WaitTimeout,
)
from hivectl.core.jobs import (
    Engine,
    ExecState,
    Execution,
    Job,
    JobSpec,
    JobState,
    JobType,
    ResourceRequest,
)
from hivectl.core.syncclient import Client

Unreachable = NatsUnreachable  # NATS could not be reached at the URL
NoRequester = NoResponder  # NATS answered, but no requester listens on it

__all__ = [
    "Ambiguous",
    "AsyncClient",
    "BusError",
    "Client",
    "ConfigError",
    "CredentialsError",
    "Engine",
    "ExecState",
    "Execution",
    "HiveError",
    "InvalidId",
    "InvalidSpec",
    "Job",
    "JobSpec",
    "JobState",
    "JobType",
    "NatsUnreachable",
    "NoAnswer",
    "NoRequester",
    "NoResponder",
    "NotFound",
    "RemoteError",
    "ResourceRequest",
    "SubmitError",
    "SubmitUncertain",
    "Unreachable",
    "WaitTimeout",
    "__version__",
]
