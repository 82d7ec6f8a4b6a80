"""msgpack encoding of Hive's models, with the input limits every receiver relies on.

`decode` is the single gate between the network and a daemon's logic: whatever it
returns is a validated model, and whatever it refuses raises `CodecError` with a
short machine code (for counters) and a reason a person can read (for error replies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from hivectl.core.models import MESSAGES, PROTOCOL_VERSION, ErrorReply, Message

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 16

M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=BaseModel)


class CodecError(ValueError):
    """A payload Hive refuses. `code` is one of the REJECT_CODES."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def reply(self) -> ErrorReply:
        return ErrorReply(code=self.code, reason=self.reason)


REJECT_CODES = ("too_large", "too_deep", "malformed", "unknown_kind", "bad_version", "invalid")


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH


DEFAULT_LIMITS = Limits()


def encode(message: Message) -> bytes:
    """A message as a msgpack map carrying its `v` and `kind`."""
    data = message.model_dump(mode="json")
    data["kind"] = message.kind
    return pack(data)


def pack_model(model: BaseModel) -> bytes:
    """A stored model (a bucket value, not a message) as msgpack."""
    return pack(model.model_dump(mode="json"))


def pack(data: Any) -> bytes:
    return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """msgpack bytes to Python objects, refusing oversized, malformed or deep input."""
    if len(data) > limits.max_bytes:
        raise CodecError("too_large", f"payload is {len(data)} bytes, limit {limits.max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError, StackError and bad UTF-8 all land here.
        raise CodecError("malformed", f"not a msgpack value: {type(exc).__name__}") from None
    check_depth(obj, limits.max_depth)
    return obj


def check_depth(obj: Any, max_depth: int) -> None:
    """Raise when containers nest deeper than `max_depth` (iterative: no recursion limit).

    It walks one level at a time and keeps only containers: a 1,000-node list reply
    holds tens of thousands of scalars, and a (value, depth) pair pushed for each child
    cost more than unpacking the reply did.
    """
    level: list[Any] = [obj] if obj.__class__ in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise CodecError("too_deep", f"nesting deeper than {max_depth} levels")
        inner: list[Any] = []
        keep = inner.append
        for value in level:
            for child in value.values() if value.__class__ is dict else value:
                if child.__class__ in _CONTAINERS:
                    keep(child)
        level = inner


_CONTAINERS = frozenset({dict, list})  # what msgpack unpacks maps and arrays to


def decode(
    data: bytes,
    expect: type[M] | tuple[type[M], ...] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> M:
    """Bytes to a validated message; `expect` narrows which kinds are acceptable here."""
    obj = unpack(data, limits)
    if not isinstance(obj, dict):
        raise CodecError("malformed", "payload is not a map")
    kind = obj.pop("kind", None)
    model = MESSAGES.get(kind) if isinstance(kind, str) else None
    allowed = _allowed(expect)
    if model is None or (allowed is not None and model not in allowed):
        wanted = ", ".join(sorted(m.kind for m in allowed)) if allowed else "a known kind"
        raise CodecError("unknown_kind", f"kind {_show(kind)} is not accepted here ({wanted})")
    version = obj.get("v", PROTOCOL_VERSION)
    bad = not isinstance(version, int) or isinstance(version, bool)
    if bad or not 1 <= version <= PROTOCOL_VERSION:
        raise CodecError("bad_version", f"protocol version {_show(version)} is not supported")
    return validate(model, obj)  # type: ignore[return-value]


def peek(data: bytes, key: str) -> Any:
    """The value of `key` in an encoded map without decoding the rest (None if absent
    or not a map): the others are skipped in C, a few milliseconds for a megabyte."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    try:
        for _ in range(unpacker.read_map_header()):
            if unpacker.unpack() == key:
                return unpacker.unpack()
            unpacker.skip()
    except (ValueError, TypeError, msgpack.UnpackException):
        pass  # not a map, or not msgpack: decode() will say so
    return None


def unpack_model(data: bytes, model: type[B], limits: Limits = DEFAULT_LIMITS) -> B:
    """A stored model from msgpack bytes."""
    obj = unpack(data, limits)
    if not isinstance(obj, dict):
        raise CodecError("malformed", "payload is not a map")
    return validate(model, obj)


def validate(model: type[B], obj: dict[str, Any]) -> B:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise CodecError("invalid", describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem, as `field.path: what is wrong`, plus how many more there are."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _allowed(expect: type[M] | tuple[type[M], ...] | None) -> tuple[type[Message], ...] | None:
    if expect is None:
        return None
    return expect if isinstance(expect, tuple) else (expect,)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
