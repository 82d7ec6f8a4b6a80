"""`hive.api.usage.report`: totals of the executions that ended in a window, from the
requester's UsageBook (a report costs the window's hours, not the records behind it).

Viewers and above see everyone's usage; a submitter's report is narrowed to its own
(see `_own_only`)."""

from __future__ import annotations

from collections.abc import Callable

from hivectl.core import codec
from hivectl.core.models import Message, utcnow
from hivectl.core.usage import UsageReportReply, UsageReportRequest
from hivectl.core.users import Role
from requester.routing import ApiRouter, Refusal, current_role, current_user
from requester.usage.book import UsageBook

MAX_ROWS = 10_000

Resolve = Callable[[str], str]  # a node id or unique prefix -> the node id


class UsageApi(ApiRouter):
    noun = "usage"

    def __init__(
        self,
        book: UsageBook,
        *,
        resolve_node: Resolve,
        limits: codec.Limits,
    ) -> None:
        super().__init__()
        self._book = book
        self._resolve_node = resolve_node
        self._limits = limits
        self.handlers.update(report=self.report)
        self.roles.update(report=Role.VIEWER)  # a submitter: its own usage (`_own_only`)

    async def report(self, data: bytes) -> Message:
        request = codec.decode(data, UsageReportRequest, self._limits)
        node = self._node(request.node) if request.node else ""
        user = self._own_only(request.user)
        rows, start = self._book.report(since=request.since, user=user, node=node, by=request.by)
        return UsageReportReply(
            rows=rows[:MAX_ROWS], since=start, until=utcnow(), truncated=len(rows) > MAX_ROWS
        )

    def _node(self, prefix: str) -> str:
        """The node a prefix names; a node gone from the registry is still asked about
        by its full id (its usage outlives its record). An ambiguous prefix is refused."""
        try:
            return self._resolve_node(prefix)
        except Refusal as exc:
            if exc.code != "not_found":
                raise
            return prefix

    def _own_only(self, asked: str) -> str:
        """A submitter sees its own usage only: its name, whatever it asked for."""
        caller = current_user()
        if current_role() is not Role.SUBMITTER:
            return asked
        if asked and asked != caller:
            raise Refusal("forbidden", f"{caller} may see its own usage only, not {asked}'s")
        return caller
