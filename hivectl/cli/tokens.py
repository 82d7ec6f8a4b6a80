"""`hivectl node token …`: enrollment tokens, so new nodes join APPROVED on their own.

hivectl makes each token's secret itself and sends the requester only its hash (see
hivectl/core/tokens.py): the token is printed here, once, and can never be read back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

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
from hivectl.cli.output import NONE, age, join_labels, write_out
from hivectl.core.api import TOKEN_CREATE, TOKEN_LIST, TOKEN_REVOKE
from hivectl.core.config import parse_duration
from hivectl.core.models import OkReply

if TYPE_CHECKING:  # the models are imported by the commands that use them: `node list`
    from hivectl.core.tokens import TokenInfo  # need not build them

app = noun_app(
    "Enrollment tokens: an agent started with a valid one (`hive-nodeagent run --token`) "
    "joins APPROVED, with the token's labels, without an operator approving it.\n\n"
    "Only a hash of each token is kept: a token is shown once, when it is created."
)

COLUMNS = ["ID", "CREATED", "EXPIRES", "USES LEFT", "STATE", "LABELS", "NOTE"]
WIDE_COLUMNS = ["ID", "CREATED", "CREATED BY", "EXPIRES", "USES LEFT", "STATE"]
WIDE_COLUMNS += ["REVOKED BY", "LABELS", "NOTE"]


@app.command("create")
def create(
    ctx: typer.Context,
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help="How long it is valid: 30m, 24h, 7d; 0: until revoked.",
        ),
    ] = "24h",
    uses: Annotated[
        int,
        typer.Option(
            "--uses",
            metavar="N",
            min=0,
            help="How many nodes it may approve; 0: any number until it expires.",
        ),
    ] = 1,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="A label every node it approves gets (as an operator label); repeat for more.",
        ),
    ] = None,
    message: Annotated[
        str, typer.Option("--message", "-m", metavar="NOTE", help="What it is for.")
    ] = "",
) -> None:
    """Create a token and print it (once: only its hash is kept).

    **Examples**

    ```
    hivectl node token create                          # one node, within 24h
    hivectl node token create --uses 100 --ttl 2h -l pool=batch -m "rack 7"
    hive-nodeagent run --token "$(hivectl node token create)" ...
    ```
    """
    from hivectl.core.tokens import TokenCreateReply, TokenCreateRequest, new_token

    try:
        seconds = float(parse_duration(ttl))
    except ValueError as exc:
        fail(f"invalid --ttl: {exc}", EXIT_USAGE)
    token_id, token, hashed = new_token()
    labels = _labels(label or [])
    request = make(
        TokenCreateRequest,
        token_id=token_id,
        hash=hashed,
        ttl=seconds,
        uses=uses,
        labels=labels,
        note=message,
    )
    created = call(ctx, "node", TOKEN_CREATE, request, TokenCreateReply).token
    write_out(token)
    info(
        f"Token {created.token_id}: {_uses(created)}, {_expiry(created, datetime.now(UTC))}. "
        "Keep it now: it cannot be shown again."
    )


def _labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"invalid label {item!r}: expected KEY=VALUE", EXIT_USAGE)
        labels[key.strip()] = value.strip()
    return labels


@app.command("list")
def list_tokens(
    ctx: typer.Context, output: OutputOption = None, no_headers: NoHeadersOption = False
) -> None:
    """List tokens, newest first (never their secrets).

    STATE is active, expired, used up or revoked; only an active token approves nodes.
    """
    from hivectl.core.tokens import TokenListReply, TokenListRequest

    fmt = output_format(ctx, output)
    reply = call(ctx, "node", TOKEN_LIST, TokenListRequest(), TokenListReply)
    LISTING.show(reply.tokens, fmt, no_headers=no_headers)
    if reply.more:
        info(f"({reply.more} older tokens not shown)")


def token_row(token: TokenInfo, wide: bool, now: datetime) -> list[str]:
    created = age(token.created_at, now)
    left = token.uses_left()
    uses = "unlimited" if left is None else f"{left}/{token.uses}"
    state = token.state(now)
    expires = _until(token.expires_at, now)
    labels, note = join_labels(token.labels), token.note or NONE
    if not wide:
        return [token.token_id, created, expires, uses, state, labels, note]
    return [token.token_id, created, token.created_by or NONE, expires, uses, state,
            token.revoked_by or NONE, labels, note]  # fmt: skip


LISTING = Listing("tokens", COLUMNS, WIDE_COLUMNS, token_row)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[
        str, typer.Argument(metavar="ID", help="Token id, or a unique prefix of one.")
    ],
    message: Annotated[
        str, typer.Option("--message", "-m", metavar="REASON", help="Why (kept in its event).")
    ] = "",
) -> None:
    """Revoke a token: it approves no more nodes (those it approved stay approved).

    **Example**

    ```
    hivectl node token revoke t-3f9a2b1c4d5e -m "leaked in a ticket"
    ```
    """
    from hivectl.core.tokens import TokenRevokeRequest

    request = make(TokenRevokeRequest, id=token_id, reason=message)
    call(ctx, "node", TOKEN_REVOKE, request, OkReply)
    print_ok()


def _uses(token: TokenInfo) -> str:
    if token.uses == 0:
        return "any number of nodes"
    return "1 node" if token.uses == 1 else f"{token.uses} nodes"


def _expiry(token: TokenInfo, now: datetime) -> str:
    if token.expires_at is None:
        return "valid until revoked"
    return f"valid until {token.expires_at:%Y-%m-%d %H:%M:%S} UTC ({_until(token.expires_at, now)})"


def _until(when: datetime | None, now: datetime) -> str:
    """`in 5h`, `3m ago` (past), or `never`."""
    if when is None:
        return "never"
    if when <= now:
        return age(when, now)
    return "in " + age(now, when).removesuffix(" ago")
