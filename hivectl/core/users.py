"""Users and their roles: who may do what through the requester's API.

Roles nest by rank: a viewer reads; a submitter also submits, and reads and stops its
own jobs; an operator also manages nodes and everyone's jobs; an admin also manages
users. One exception to the nesting is deliberate: a viewer reads everyone's jobs (it is
the read-only role of a whole cluster), a submitter only its own (it is the role of a
tenant). The operator NATS credential that predates users acts as the built-in admin,
so set-ups made before users existed keep working.

A user is a name, a role and an Ed25519 public key; the key's secret half is made by
hivectl and written only to the user's credential file (see hivectl.core.signing).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field, Strict, StringConstraints

from hivectl.core.models import (
    Message,
    Model,
    PublicKey,
    Reason,
    ShortText,
    register_messages,
    utcnow,
)

ADMIN_USER = "admin"
USER_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
UserName = Annotated[str, StringConstraints(strict=True, pattern=USER_PATTERN)]
MAX_USERS_LISTED = 10_000


class Role(StrEnum):
    VIEWER = "viewer"
    SUBMITTER = "submitter"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what `needed` may (roles nest)."""
        return self.rank >= needed.rank

    @property
    def reads_all_jobs(self) -> bool:
        """Whether it may read other users' jobs (their records, logs and results)."""
        return self is not Role.SUBMITTER

    @property
    def manages_all_jobs(self) -> bool:
        """Whether it may stop other users' jobs."""
        return self.allows(Role.OPERATOR)


_RANKS = {Role.VIEWER: 0, Role.SUBMITTER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def article(role: Role) -> str:
    """`an operator`, `a viewer`: for reasons read by people."""
    return f"{'an' if role.value[0] in 'aeiou' else 'a'} {role.value}"


class UserRecord(Model):
    """A user as the users bucket keeps it (key: the name). Never its secret."""

    name: UserName
    role: Role
    public_key: PublicKey
    created_at: datetime = Field(default_factory=utcnow)
    created_by: ShortText = ""


class UserAddRequest(Message):
    """Add a user. hivectl made the key pair; only the public half is sent."""

    kind: ClassVar[str] = "user_add"
    name: UserName
    role: Role
    public_key: PublicKey
    # Whether the reply should carry the NATS `user` role credentials (hivectl may
    # have them itself: `--nats-credentials`).
    with_nats: Annotated[bool, Strict()] = True


class UserAddReply(Message):
    """The new user, the requesters' public key (to check sealed replies and to derive
    the key that seals them) and the NATS `user` role credentials to put in its file."""

    kind: ClassVar[str] = "user_add_reply"
    user: UserRecord
    requester_key: PublicKey
    nats_user: ShortText = ""
    nats_password: ShortText = ""


class UserListRequest(Message):
    kind: ClassVar[str] = "user_list"


class UserListReply(Message):
    kind: ClassVar[str] = "user_list_reply"
    users: Annotated[list[UserRecord], Field(max_length=MAX_USERS_LISTED)]
    more: Annotated[int, Field(ge=0)] = 0


class UserRemoveRequest(Message):
    kind: ClassVar[str] = "user_remove"
    name: UserName
    reason: Reason = ""


class UserEvent(Message):
    """Published on `hive.events.user.<name>` (and kept in HIVE_EVENTS) when an admin
    adds or removes a user: who, with which role, by whom and why."""

    kind: ClassVar[str] = "user_event"
    name: UserName
    event: Literal["added", "removed"]
    old: ShortText = ""  # the role it had (removed)
    new: ShortText = ""  # the role it got (added)
    reason: Reason = ""
    at: datetime = Field(default_factory=utcnow)
    actor: ShortText = ""


register_messages(
    UserAddRequest, UserAddReply, UserListRequest, UserListReply, UserRemoveRequest, UserEvent
)
