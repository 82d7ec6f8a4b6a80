"""`hivectl user …`: the people who use the cluster, each with a role and a key.

`user add` makes the user's key pair here, sends the requester only the public key,
and writes the credential file to hand over: the NATS `user` role's password, the
user's name and secret seed, and the requesters' public key. It is written once, mode
0600, and never overwritten; the requester keeps no secret of the user's.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hivectl.cli import quotas
from hivectl.cli.api import call
from hivectl.cli.common import (
    EXIT_USAGE,
    Listing,
    NoHeadersOption,
    OutputOption,
    fail,
    info,
    make,
    noun_app,
    output_format,
    print_ok,
)
from hivectl.cli.output import age, write_out
from hivectl.core.users import Role

if TYPE_CHECKING:
    from hivectl.core.users import UserRecord

app = noun_app(
    "Users of the cluster and their roles (only an admin manages them): a viewer reads "
    "nodes, jobs and their output; a submitter submits jobs and reads and stops its "
    "own; an operator also manages nodes and everyone's jobs; an admin also manages "
    "users.\n\nThe operator credential acts as the built-in admin."
)

NameArgument = Annotated[
    str, typer.Argument(metavar="NAME", help="The user's name: a-z, 0-9, '-', '_'.")
]
COLUMNS = ["NAME", "ROLE", "CREATED", "CREATED BY", "KEY"]


@app.command("add")
def add(
    ctx: typer.Context,
    name: NameArgument,
    role: Annotated[
        Role, typer.Option("--role", "-r", case_sensitive=False, help="What the user may do.")
    ] = Role.SUBMITTER,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            metavar="PATH",
            help="Where to write the credential file (never overwritten). "
            "Default: ./NAME.creds.toml.",
            show_default=False,
        ),
    ] = None,
    nats_credentials: Annotated[
        Path | None,
        typer.Option(
            "--nats-credentials",
            metavar="PATH",
            help="The NATS `user` role's credentials file, when the requester does not "
            "hold it (a NATS cluster; with the embedded server it does).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Add a user and write its credential file, to hand over privately.

    **Examples**

    ```
    hivectl user add alice --role submitter            # writes ./alice.creds.toml
    hivectl user add bob --role viewer --output /secure/bob.creds.toml
    HIVE_NATS__CREDENTIALS_FILE=alice.creds.toml hivectl job submit ...   # as alice
    ```
    """
    from hivectl.core.auth import Identity
    from hivectl.core.credentials import read_credentials_file
    from hivectl.core.signing import user_credential_text, write_new_file
    from hivectl.core.users import UserAddReply, UserAddRequest

    path = output or Path(f"{name}.creds.toml")
    if path.exists():
        fail(f"{path} exists: remove it, or give another --output", EXIT_USAGE)
    own: tuple[str, str] | None = None
    if nats_credentials is not None:
        try:
            own = read_credentials_file(nats_credentials)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    identity = Identity.generate()
    request = make(UserAddRequest, name=name, role=role, public_key=identity.public_key,
                   with_nats=own is None)  # fmt: skip
    reply = call(ctx, "user", "add", request, UserAddReply)
    nats_user, nats_password = own or (reply.nats_user, reply.nats_password)
    text = user_credential_text(name, identity.seed, reply.requester_key, nats_user, nats_password)
    try:
        write_new_file(path, text)
    except OSError as exc:
        fail(
            f"user {name} was added, but its credential file could not be written ({exc}): "
            f"remove it (hivectl user remove {name}) and add it again"
        )
    write_out(str(path))
    info(f"User {name} ({role}) added; hand {path} over privately: it is the user's key.")


@app.command("list")
def list_users(
    ctx: typer.Context, output: OutputOption = None, no_headers: NoHeadersOption = False
) -> None:
    """List users by name (never their keys' secrets)."""
    from hivectl.core.users import UserListReply, UserListRequest

    fmt = output_format(ctx, output)
    reply = call(ctx, "user", "list", UserListRequest(), UserListReply)
    Listing("users", COLUMNS, COLUMNS, user_row).show(reply.users, fmt, no_headers=no_headers)
    if reply.more:
        info(f"({reply.more} more users not shown)")


def user_row(user: UserRecord, wide: bool, now: datetime) -> list[str]:
    from hivectl.core.auth import fingerprint

    return [user.name, user.role.value, age(user.created_at, now), user.created_by or "-",
            fingerprint(user.public_key)]  # fmt: skip


@app.command("remove")
def remove(
    ctx: typer.Context,
    name: NameArgument,
    message: Annotated[
        str, typer.Option("--message", "-m", metavar="REASON", help="Why (kept in the log).")
    ] = "",
) -> None:
    """Remove a user: its credential stops working at once, on every requester (its
    jobs stay, and keep its name as their owner)."""
    from hivectl.core.models import OkReply
    from hivectl.core.users import UserRemoveRequest

    call(ctx, "user", "remove", make(UserRemoveRequest, name=name, reason=message), OkReply)
    print_ok()


# Quotas have their own module (`hivectl user quota`), registered on this noun.
app.command("quota")(quotas.quota)
