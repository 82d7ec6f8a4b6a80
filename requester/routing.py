"""Serving `hive.api.<noun>.<verb>`: one dispatcher for every noun, so each verb's
handler only decodes, acts and returns; errors, counters and the reply live here."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from hivectl.core import codec
from hivectl.core.models import ErrorReply, Message

log = logging.getLogger("hive.requester.api")

# A handler answers with a message, or with one it already encoded (a list page is
# encoded to check its size; encoding 1,000 nodes a second time would double its cost).
Handler = Callable[[bytes], Awaitable[Message | bytes]]


class Refusal(Exception):
    """A request the requester refuses: `code` for counters, `reason` for the operator."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ApiRouter:
    """Dispatches one noun's requests to `handlers` by verb; every request gets a reply."""

    noun = "api"

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.served = 0
        self.errors = 0

    async def on_request(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        handler = self.handlers.get(verb)
        try:
            if handler is None:
                raise Refusal("unknown_verb", f"no such {self.noun} operation {verb!r}")
            reply: Message | bytes = await handler(msg.data)
        except codec.CodecError as exc:
            reply = exc.reply()
        except Refusal as exc:
            reply = ErrorReply(code=exc.code, reason=exc.reason)
        except Exception:  # never let one request take the daemon down
            log.exception("%s api %s failed", self.noun, verb)
            reply = ErrorReply(code="internal", reason="internal error in the requester")
        self.served += 1
        self.errors += isinstance(reply, ErrorReply)
        if msg.reply:
            await msg.respond(reply if isinstance(reply, bytes) else codec.encode(reply))
