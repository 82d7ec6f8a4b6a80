"""Who sent a request: the gate every API router asks before it serves one.

A request on `<prefix>.api.>` comes over the operator NATS credential (only it may
publish there) and acts as the built-in admin, named in the audit by its Hive-Actor
header, as before users existed. A signed request (Hive-User and the rest; see
hivectl.core.signing), on `uapi` or on `api`, acts as the user whose key signed it,
once the signature, the clock and the nonce check out; its reply is sealed for that
user. Anything else on `uapi` is refused `unauthenticated`, and nothing happens.

Users are looked up in memory (the users bucket's KV watch keeps it current on every
requester), so `user remove` revokes a credential on its next request. Nonces are
remembered for the clock window, a deque in the order they came: forgetting the
expired ones costs what they cost to remember, however many users there are.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import NoReturn

import nacl.signing
from nats.aio.msg import Msg

from hivectl.core.auth import AuthError, Identity
from hivectl.core.signing import (
    CLOCK_SKEW,
    USER_HEADER,
    box_key,
    read_claim,
    verify_claim,
    verify_key,
)
from hivectl.core.subjects import Subjects
from hivectl.core.users import ADMIN_USER, Role, UserRecord
from requester.routing import Caller, Refusal, requested_by

log = logging.getLogger("hive.requester.gate")
# Keys kept per user key: its decoded verify key and the derived reply key (deriving
# them again for each request would cost more than checking the signature).
MAX_KEYS = 10_000
LOG_EVERY = 60.0  # a refusal is logged once a minute per user named (a flood is counted)


class UserGate:
    def __init__(
        self,
        subjects: Subjects,
        identity: Identity,
        users: Callable[[str], UserRecord | None],
        *,
        clock: Callable[[], float] = time.time,
        skew: float = CLOCK_SKEW,
    ) -> None:
        self._subjects = subjects
        self._identity = identity
        self._users = users
        self._clock = clock
        self._skew = skew
        self._seen: set[tuple[str, str]] = set()
        self._expiry: collections.deque[tuple[float, tuple[str, str]]] = collections.deque()
        self._keys: dict[str, tuple[nacl.signing.VerifyKey, bytes]] = {}  # by public key
        self.refused = 0
        self._logged: dict[str, float] = {}  # user named -> when a refusal was last logged

    def identify(self, msg: Msg) -> Caller:
        headers = msg.headers or {}
        named = str(headers.get(USER_HEADER, ""))[:64]
        if not named:
            if self._subjects.is_uapi(msg.subject):
                self._refuse(named, "a request on uapi must be signed (Hive-User, Hive-Signature)")
            return Caller(ADMIN_USER, Role.ADMIN, requested_by(msg))
        try:
            claim = read_claim(headers)
        except AuthError as exc:
            self._refuse(named, str(exc))
        user = self._users(claim.user)
        if user is None:
            self._refuse(named, f"no user {claim.user!r} (removed, or never added)")
        try:
            verifier, box = self._key(user.public_key)
            verify_claim(claim, verifier, msg.subject, msg.data)
        except AuthError as exc:
            self._refuse(named, str(exc))
        now = self._clock()
        if abs(now - claim.stamp) > self._skew:
            self._refuse(
                named,
                f"the request's time is {now - claim.stamp:+.0f}s off the requester's clock "
                f"(at most {self._skew:g}s allowed: check the clocks)",
            )
        self._remember(now, (claim.user, claim.nonce))
        return Caller(user.name, user.role, user.name, box)

    def _remember(self, now: float, key: tuple[str, str]) -> None:
        """Refuse a nonce seen within the window; keep this one until it leaves it."""
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            self._seen.discard(expiry.popleft()[1])
        if key in self._seen:
            self._refuse(key[0], "replayed request: its nonce was used already")
        self._seen.add(key)
        # A request may be stamped up to `skew` ahead: keep its nonce until its time is
        # `skew` behind, after which the clock check refuses it anyway.
        expiry.append((now + 2 * self._skew, key))

    def _key(self, public_key: str) -> tuple[nacl.signing.VerifyKey, bytes]:
        keys = self._keys.get(public_key)
        if keys is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            keys = verify_key(public_key), box_key(self._identity, public_key)
            self._keys[public_key] = keys
        return keys

    def _refuse(self, named: str, why: str) -> NoReturn:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged.get(named, -LOG_EVERY) >= LOG_EVERY:
            if len(self._logged) >= MAX_KEYS:
                self._logged.clear()
            self._logged[named] = now
            log.warning("refused a request as %r: %s", named or "(unsigned)", why)
        raise Refusal("unauthenticated", why)
