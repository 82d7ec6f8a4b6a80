"""What hivectl says when it cannot talk to the cluster: what failed, where hivectl
looked, and what to check next; one line each, as `common.fail` prints them.

Imported only when something went wrong.
"""

from __future__ import annotations

import os
import tomllib

from hivectl.cli.common import EXIT_ERROR, EXIT_USAGE, GlobalOptions
from hivectl.core.bus import (
    REFUSED,
    TIMED_OUT,
    UNAUTHORIZED,
    BusError,
    CredentialsError,
    NatsUnreachable,
    NoAnswer,
    NoResponder,
)
from hivectl.core.config import ClientConfig, config_path

REQUESTER_STATUS = "`systemctl status hive-requester` on its machine"


def explain(error: BusError, opts: GlobalOptions, cfg: ClientConfig) -> tuple[str, int]:
    """The message and exit status for a failure to reach the requester."""
    url = f"{cfg.nats.url} ({url_source(opts)})"
    if isinstance(error, CredentialsError):
        return f"{error}; set by [nats] credentials_file or HIVE_NATS__CREDENTIALS_FILE", EXIT_USAGE
    if isinstance(error, NatsUnreachable):
        return f"cannot reach NATS at {url}: {unreachable_hint(error.reason, opts)}", EXIT_ERROR
    if isinstance(error, NoResponder):
        return (
            f"no requester is answering on {error.subject} at {url}. Check that "
            f"hive-requester is running and connected to that NATS ({REQUESTER_STATUS}), "
            "or give hivectl the cluster's NATS with --nats-url",
            EXIT_ERROR,
        )
    if isinstance(error, NoAnswer):
        return (
            f"no answer on {error.subject} within {error.timeout:g}s from the requester at "
            f"{url}. It may be overloaded or stuck ({REQUESTER_STATUS}); "
            "--timeout waits longer",
            EXIT_ERROR,
        )
    return str(error), EXIT_ERROR


def unreachable_hint(reason: str, opts: GlobalOptions) -> str:
    if reason == REFUSED:
        return (
            f"{REFUSED}. Is hive-requester (it serves NATS itself) or nats-server running "
            f"there? Check with {REQUESTER_STATUS}; for a NATS elsewhere use --nats-url, "
            f"HIVE_NATS__URL or [nats] url in {_config_file(opts)}"
        )
    if reason == TIMED_OUT:
        return f"{TIMED_OUT}. Check the host and port, and that no firewall is in between"
    if reason == UNAUTHORIZED:
        return (
            f"{UNAUTHORIZED}. Use the operator credentials the requester wrote "
            "(<data_dir>/credentials/operator.toml): [nats] credentials_file in "
            f"{_config_file(opts)}, or HIVE_NATS__CREDENTIALS_FILE"
        )
    return reason


def url_source(opts: GlobalOptions) -> str:
    """Where the NATS URL came from, the highest layer first."""
    if opts.nats_url:
        return "from --nats-url"
    if os.environ.get("HIVE_NATS__URL"):
        return "from HIVE_NATS__URL"
    path = config_path(ClientConfig, opts.config_file)
    try:
        nats = tomllib.loads(path.read_text()).get("nats", {})
    except (OSError, tomllib.TOMLDecodeError):
        return f"the default: no {path}"
    if isinstance(nats, dict) and "url" in nats:
        return f"from {path}"
    return f"the default: {path} sets no [nats] url"


def _config_file(opts: GlobalOptions) -> str:
    return str(config_path(ClientConfig, opts.config_file))
