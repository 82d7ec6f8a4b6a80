"""NATS credentials by role for the embedded server: requester, operator, compute, user.

Generated once (random passwords, files mode 0600) and turned into the server's
`authorization` block with subject permissions, so a compute node cannot call the
operator API or approve itself, and anonymous connections are refused. The `user` role
is shared by every Hive user: it may only send signed requests (see
hivectl.core.signing), so which user sent one is proved by its key, not by NATS. Each role's
file is a small TOML document that `[nats] credentials_file` (or
HIVE_NATS__CREDENTIALS_FILE) points at.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hivectl.core.subjects import Subjects

ROLES = ("requester", "operator", "compute", "user")


@dataclass(frozen=True)
class RoleCredentials:
    role: str
    user: str
    password: str
    path: Path


def ensure_credentials(directory: Path) -> dict[str, RoleCredentials]:
    """Each role's credentials, created on first use; existing ones are kept."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {role: _ensure_role(directory, role) for role in ROLES}


def _ensure_role(directory: Path, role: str) -> RoleCredentials:
    path = directory / f"{role}.toml"
    if not path.exists():
        password = secrets.token_urlsafe(32)
        text = (
            f"# Hive NATS credentials for the {role} role. Keep this file private.\n"
            f'[nats]\nuser = "{role}"\npassword = "{password}"\n'
        )
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            os.link(temp, path)  # a concurrent creator wins; we read theirs below
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    user, password = read_credentials_file(path)
    return RoleCredentials(role, user, password, path)


def read_credentials_file(path: Path) -> tuple[str, str]:
    """(user, password) from a credentials file; ValueError with the reason otherwise."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read credentials file {path}: {exc}") from None
    section = data.get("nats", data)
    user, password = section.get("user"), section.get("password")
    if not isinstance(user, str) or not isinstance(password, str):
        raise ValueError(f"credentials file {path} needs [nats] user and password")
    return user, password


def names_a_user(path: Path) -> bool:
    """Whether a credentials file is a Hive user's (it has a `[hive]` section), not a
    role's; ValueError when it cannot be read."""
    try:
        return "hive" in tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read credentials file {path}: {exc}") from None


def permissions(subjects: Subjects) -> dict[str, dict[str, object]]:
    """What each role may publish and subscribe to."""
    p = subjects.prefix
    results = subjects.results_store
    return {
        "requester": {"publish": [">"], "subscribe": [">"]},
        "operator": {
            "publish": {
                # $JS.FC: an ordered consumer (logs, result downloads) answers the server's
                # flow-control requests there; without it delivery stops after one window.
                "allow": [f"{p}.api.>", "$JS.API.>", "$JS.FC.>", "_INBOX.>"],
                "deny": cluster_secrets(subjects),
            },
            "subscribe": ["_INBOX.>", f"{p}.events.>"],
        },
        "compute": {
            # Its own messages (the MAC says which node), logs, result archives, and
            # the JetStream calls an object-store upload makes.
            "publish": [
                f"{p}.node.>",
                f"{p}.logs.>",
                f"$O.{results}.>",
                f"$JS.API.STREAM.INFO.OBJ_{results}",
                f"$JS.API.STREAM.MSG.GET.OBJ_{results}",
                f"$JS.API.DIRECT.GET.OBJ_{results}.>",
                f"$JS.API.STREAM.PURGE.OBJ_{results}",
            ],
            "subscribe": [f"{p}.compute.*.>", "_INBOX.>"],
            "allow_responses": True,
        },
        # Users: signed requests to the requesters and their (sealed) replies; no
        # JetStream, no events, not the operator API. Not publishing to `_INBOX.>`
        # either: a user answers nothing, and could otherwise slip a forged reply to an
        # operator's request (those are not sealed).
        "user": {"publish": [f"{p}.uapi.>"], "subscribe": ["_INBOX.>"]},
    }


def cluster_secrets(subjects: Subjects) -> list[str]:
    """Every JetStream API call that could read, copy or change the cluster bucket
    (the requesters' shared seed), for the operator role, which may use the rest of
    the JetStream API: reading it (direct and stream gets, snapshots), consuming it,
    and copying it into a stream it can read (a new or changed stream that mirrors or
    sources it; hivectl never creates or edits streams)."""
    stream = subjects.kv_stream(subjects.cluster_bucket)
    return [
        "$JS.API.STREAM.CREATE.>",
        "$JS.API.STREAM.UPDATE.>",
        f"$JS.API.STREAM.*.{stream}",
        f"$JS.API.STREAM.MSG.*.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.*.{stream}",
        f"$JS.API.CONSUMER.*.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$KV.{subjects.cluster_bucket}.>",
    ]


def authorization_block(creds: dict[str, RoleCredentials], subjects: Subjects) -> str:
    """The nats-server config text that admits these users, and no one else."""
    rules = permissions(subjects)
    users = []
    for role, cred in creds.items():
        users.append(
            f"    {{ user: {json.dumps(cred.user)}, password: {json.dumps(cred.password)},"
            f" permissions: {render_config(rules[role])} }}"
        )
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


def render_config(value: object) -> str:
    """`value` as nats-server config text (which accepts JSON-like maps and lists)."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {render_config(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return json.dumps(value)
