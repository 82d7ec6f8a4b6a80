"""Users on the requester: the users bucket, kept in memory by its KV watch, and the
`hive.api.user.{add,list,remove}` verbs, which only admins may call.

The bucket holds each user's name, role and public key; the secret half never leaves
the credential file hivectl writes. A removal reaches every requester's memory through
its watch, so the removed user's next request is refused wherever it lands.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from hivectl.core import codec
from hivectl.core.credentials import read_credentials_file
from hivectl.core.models import Message, OkReply
from hivectl.core.users import (
    ADMIN_USER,
    MAX_USERS_LISTED,
    Role,
    UserAddReply,
    UserAddRequest,
    UserEvent,
    UserListReply,
    UserListRequest,
    UserRecord,
    UserRemoveRequest,
)
from requester.kvview import KvView
from requester.routing import ApiRouter, Refusal, current_actor
from requester.store import Store

log = logging.getLogger("hive.requester.users")
UserSink = Callable[[UserEvent], Awaitable[None]]


class UserError(Refusal):
    """A user request the requester refuses."""


class Users(ApiRouter):
    noun = "user"

    def __init__(
        self,
        bucket: str,
        *,
        requester_key: str,
        nats_credentials: Callable[[], Path | None],
        on_event: UserSink,
        limits: codec.Limits,
    ) -> None:
        super().__init__()
        self._on_event = on_event
        self._requester_key = requester_key
        self._nats_credentials = nats_credentials
        self._limits = limits
        self._view: KvView[UserRecord] = KvView(bucket, UserRecord, noun="user", error=UserError)
        self.handlers.update(add=self.add, list=self.list_users, remove=self.remove)
        self.roles.update(add=Role.ADMIN, list=Role.ADMIN, remove=Role.ADMIN)

    async def start(self, js: Store) -> None:
        await self._view.start(js)

    async def close(self) -> None:
        await self._view.close()

    def get(self, name: str) -> UserRecord | None:
        return self._view.get(name)

    def __len__(self) -> int:
        return len(self._view)

    # -- API verbs ------------------------------------------------------------------------
    async def add(self, data: bytes) -> Message:
        request = codec.decode(data, UserAddRequest, self._limits)
        if request.name == ADMIN_USER:
            raise UserError(
                "invalid", f"{ADMIN_USER!r} is the built-in admin (the operator credential)"
            )
        nats_user, nats_password = self._role_credentials() if request.with_nats else ("", "")
        record = UserRecord(
            name=request.name,
            role=request.role,
            public_key=request.public_key,
            created_by=current_actor(),
        )
        if not await self._view.create(record.name, record):
            raise UserError("exists", f"user {record.name} exists: remove it first")
        await self._on_event(UserEvent(name=record.name, event="added", new=record.role))
        return UserAddReply(
            user=record,
            requester_key=self._requester_key,
            nats_user=nats_user,
            nats_password=nats_password,
        )

    def _role_credentials(self) -> tuple[str, str]:
        """The NATS `user` role credentials every user's file carries."""
        path = self._nats_credentials()
        if path is None:
            raise UserError(
                "invalid",
                "this requester holds no NATS credentials for the user role (it runs without "
                "its embedded server, and user_credentials_file is not set): give hivectl user "
                "add --nats-credentials <the user role's credentials file>",
            )
        try:
            return read_credentials_file(path)
        except ValueError as exc:
            raise UserError("invalid", str(exc)) from None

    async def list_users(self, data: bytes) -> Message:
        codec.decode(data, UserListRequest, self._limits)
        records = [r for key in self._view.sorted_keys() if (r := self._view.get(key))]
        return UserListReply(
            users=records[:MAX_USERS_LISTED], more=max(0, len(records) - MAX_USERS_LISTED)
        )

    async def remove(self, data: bytes) -> Message:
        request = codec.decode(data, UserRemoveRequest, self._limits)
        record = self._view.get(request.name)
        if record is None:
            raise UserError("not_found", f"user {request.name!r} not found")
        await self._view.purge(request.name)
        await self._on_event(
            UserEvent(name=record.name, event="removed", old=record.role, reason=request.reason)
        )
        return OkReply(id=request.name)
