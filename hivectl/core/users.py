"""Users and their roles: who may do what through the requester's API.

Roles nest: a viewer reads; a submitter also submits, and reads and stops its own
jobs; an operator also manages nodes and everyone's jobs; an admin also manages users.
The operator NATS credential that predates users acts as the built-in admin, so
set-ups made before users existed keep working.
"""

from __future__ import annotations

from enum import StrEnum

ADMIN_USER = "admin"


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


_RANKS = {Role.VIEWER: 0, Role.SUBMITTER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
