"""`hivectl user quota`: how much each user may run at once and keep waiting.

Limits: running CPU, memory and GPUs (what the user's executions request, summed
over those placed and not yet ended), and queued jobs (its jobs waiting to start).
Work over a running limit waits QUEUED, its reason naming the quota, and runs when
the user's earlier work ends; a submit over the queued-jobs limit is refused. The
default quota (`--default`) applies to every user for each limit its own leaves unset.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hivectl.cli.api import call
from hivectl.cli.common import EXIT_USAGE, OutputOption, fail, make, output_format
from hivectl.cli.output import NONE, human_bytes, print_data, print_table
from hivectl.core.quotas import LIMITS, Limit, Quota, QuotaGetRequest, QuotaReply, QuotaSetRequest

NO_LIMIT = "no limit"


def quota(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="The user (or --default for every user).")
    ] = None,
    default: Annotated[
        bool, typer.Option("--default", help="The default quota, for every user.")
    ] = False,
    cpu: Annotated[
        str | None, typer.Option("--cpu", metavar="CPUS", help="Running CPUs: 8, 2.5, 500m.")
    ] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", metavar="SIZE", help="Running memory: 32GiB.")
    ] = None,
    gpu: Annotated[int | None, typer.Option("--gpu", metavar="N", help="Running GPUs.")] = None,
    queued: Annotated[
        int | None, typer.Option("--queued", metavar="N", help="Jobs waiting to start.")
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            metavar="LIMIT",
            help="Remove a limit: cpu, memory, gpu, queued or all (repeat for more).",
        ),
    ] = None,
    output: OutputOption = None,
) -> None:
    """Show a user's quota, or set (and clear) its limits; then show it.

    Without limits, show it: the user's own limits, the default's, and what applies.
    Limits not named are kept. A limit the user's quota leaves unset is the
    default's; one neither sets is no limit.

    **Examples**

    ```
    hivectl user quota alice --cpu 8 --memory 32GiB --gpu 1 --queued 1000
    hivectl user quota --default --cpu 16 --queued 500
    hivectl user quota alice --clear gpu
    hivectl user quota alice
    ```
    """
    fmt = output_format(ctx, output)
    if default == (name is not None):
        fail("name a user, or give --default (not both)", EXIT_USAGE)
    user = name or ""
    cleared = _cleared(clear or [])
    if cpu is None and memory is None and gpu is None and queued is None and not cleared:
        reply = call(ctx, "quota", "get", make(QuotaGetRequest, user=user, default=default),
                     QuotaReply)  # fmt: skip
    else:
        request = make(
            QuotaSetRequest,
            user=user,
            default=default,
            cpu=cpu,
            memory=memory,
            gpu=gpu,
            queued=queued,
            clear=cleared,
        )
        reply = call(ctx, "quota", "set", request, QuotaReply)
    if fmt.is_data:
        print_data([reply], fmt)
        return
    _show(reply)


def _cleared(names: list[str]) -> list[Limit]:
    cleared: list[Limit] = []
    for name in names:
        word = name.strip().lower()
        if word == "all":
            return list(LIMITS)
        if word not in LIMITS:
            fail(f"invalid --clear {name!r}: use cpu, memory, gpu, queued or all", EXIT_USAGE)
        cleared.append(next(limit for limit in LIMITS if limit == word))
    return cleared


def _show(reply: QuotaReply) -> None:
    if not reply.user:
        rows = [[limit, _shown(reply.default, limit)] for limit in LIMITS]
        print_table(["LIMIT", "DEFAULT (EVERY USER)"], rows, no_headers=False)
        return
    rows = [
        [
            limit,
            _shown(reply.own, limit, unset=NONE),
            _shown(reply.default, limit, unset=NONE),
            _shown(reply.effective, limit),
        ]
        for limit in LIMITS
    ]
    print_table(["LIMIT", reply.user.upper(), "DEFAULT", "APPLIES"], rows, no_headers=False)


def _shown(quota: Quota, limit: Limit, *, unset: str = NO_LIMIT) -> str:
    value = getattr(quota, limit)
    if value is None:
        return unset
    if limit == "memory":
        return human_bytes(int(value))
    return f"{value:g}"
