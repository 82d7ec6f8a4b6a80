"""Quotas: kept durably in the `hive_quotas` bucket, mirrored in memory by a KV watch
(so every requester of a cluster sees an operator's change at once), and served as
`hive.api.quota.{set,get}`.

The scheduler asks `effective(owner)` at every placement: a dict lookup, and a merge
with the default quota cached until either changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hivectl.core import codec
from hivectl.core.models import Message
from hivectl.core.quotas import LIMITS, Quota, QuotaGetRequest, QuotaReply, QuotaSetRequest
from hivectl.core.subjects import QUOTA_DEFAULT_KEY
from hivectl.core.users import Role, article
from requester.kvview import KvView
from requester.routing import ApiRouter, Refusal, current_role, current_user
from requester.store import Store

log = logging.getLogger("hive.requester.quotas")
NONE = Quota()


class QuotaError(Refusal):
    """A quota request refused, or a submit over its owner's queued-jobs quota."""


class QuotaBook:
    def __init__(self, bucket: str) -> None:
        self._view: KvView[Quota] = KvView(
            bucket, Quota, noun="quota", error=QuotaError, on_key=self._changed
        )
        self._effective: dict[str, Quota] = {}  # owner -> own over default, until a change

    async def start(self, js: Store) -> None:
        await self._view.start(js)

    async def close(self) -> None:
        await self._view.close()

    def _changed(self, key: str) -> None:
        if key == QUOTA_DEFAULT_KEY:
            self._effective.clear()
        else:
            self._effective.pop(key, None)

    def own(self, user: str) -> Quota:
        return self._view.get(user) or NONE

    @property
    def default(self) -> Quota:
        return self._view.get(QUOTA_DEFAULT_KEY) or NONE

    def effective(self, owner: str) -> Quota:
        """The limits that apply to `owner`: its own, else the default's."""
        quota = self._effective.get(owner)
        if quota is None:
            quota = self._effective[owner] = self.own(owner).over(self.default)
        return quota

    async def change(self, key: str, request: QuotaSetRequest) -> Quota:
        """The quota under `key` with the request's limits set and cleared."""

        def apply(current: Quota) -> Quota | None:
            changed = _applied(current, request)
            return None if changed == current else changed

        if self._view.get(key) is None:
            created = _applied(NONE, request)
            if await self._view.create(key, created):
                return created
        changed = await self._view.change(key, apply)
        if changed is None:  # deleted meanwhile: make it again
            return await self.change(key, request)
        return changed[1]


def _applied(current: Quota, request: QuotaSetRequest) -> Quota:
    update: dict[str, object] = {k: None for k in request.clear}
    update.update({k: v for k in LIMITS if (v := getattr(request, k)) is not None})
    return current.model_copy(update=update)


class QuotaApi(ApiRouter):
    noun = "quota"

    def __init__(
        self, book: QuotaBook, *, limits: codec.Limits, known: Callable[[str], bool] = bool
    ) -> None:
        self._book = book
        self._limits = limits
        self._known = known  # whether a user of that name exists
        super().__init__()
        self.handlers.update({"set": self.set_quota, "get": self.get_quota})
        # Anyone may read its own quota (`get_quota` checks whose); only admins set them.
        self.roles.update(set=Role.ADMIN, get=Role.VIEWER)

    async def set_quota(self, data: bytes) -> Message:
        request = codec.decode(data, QuotaSetRequest, self._limits)
        key = _key(request.user, request.default)
        both = {k for k in LIMITS if getattr(request, k) is not None} & set(request.clear)
        if both:
            raise QuotaError("invalid", f"{', '.join(sorted(both))}: both set and cleared")
        self._check_known(request.user)
        quota = await self._book.change(key, request)
        log.info("quota of %s is now %s", request.user or "every user (default)", _shown(quota))
        return self._reply(request.user)

    async def get_quota(self, data: bytes) -> Message:
        request = codec.decode(data, QuotaGetRequest, self._limits)
        _key(request.user, request.default)
        caller, role = current_user(), current_role()
        if request.user not in ("", caller) and not role.allows(Role.OPERATOR):
            raise Refusal(
                "forbidden", f"{caller} is {article(role)}: it may read its own quota only"
            )
        self._check_known(request.user)
        return self._reply(request.user)

    def _check_known(self, user: str) -> None:
        """A quota names a user who exists: a typo must not set (or show) another's."""
        if user and not self._known(user):
            raise QuotaError("not_found", f"no user {user!r} (hivectl user list shows them)")

    def _reply(self, user: str) -> QuotaReply:
        book = self._book
        if not user:
            default = book.default
            return QuotaReply(user="", own=default, default=default, effective=default)
        return QuotaReply(
            user=user, own=book.own(user), default=book.default, effective=book.effective(user)
        )


def _key(user: str, default: bool) -> str:
    if default == bool(user):
        raise QuotaError("invalid", "name a user, or say --default (not both)")
    return user or QUOTA_DEFAULT_KEY


def _shown(quota: Quota) -> str:
    limits = [f"{k}={v}" for k in LIMITS if (v := getattr(quota, k)) is not None]
    return ", ".join(limits) or "no limits"
