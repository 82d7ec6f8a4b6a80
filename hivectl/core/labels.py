"""A node's labels: the ones Hive sets, the node's own, and the operator's, merged.

Three sources, each winning over the one before:

1. automatic labels under the reserved prefix `hive.io/`, derived by the requester from
   what the node reports (`hive.io/os`, `hive.io/arch`, `hive.io/hostname` and, with
   GPUs, `hive.io/gpu-model`; requesters also carry `hive.io/role`, leader or
   follower);
2. the labels in the node's own config (`labels = {...}`, `--label k=v`);
3. the operator's (`hivectl node label`), kept in the node record, which the node can
   neither set nor remove.

Neither a node nor an operator may write a reserved key (`hive.io/...`, or a prefix
ending in `.hive.io/`): what Hive derives is always what the machine says it is.
Scheduling, `node list -l` and the node views all use `merge`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hivectl.core.models import NodeInfo

RESERVED_DOMAIN = "hive.io"
RESERVED_PREFIX = f"{RESERVED_DOMAIN}/"
OS, ARCH, HOSTNAME, GPU_MODEL = (
    f"{RESERVED_PREFIX}{name}" for name in ("os", "arch", "hostname", "gpu-model")
)
MAX_LABELS = 64  # per source, as the models allow

_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
_NOT_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


def is_reserved(key: str) -> bool:
    """A key under `hive.io/` or one of its subdomains (`node.hive.io/`), in any case."""
    prefix, slash, _ = key.partition("/")
    if not slash:
        return False
    prefix = prefix.lower()
    return prefix == RESERVED_DOMAIN or prefix.endswith(f".{RESERVED_DOMAIN}")


def reserved_error(key: str) -> str:
    return (
        f"label {key!r}: the {RESERVED_PREFIX} prefix is reserved for the labels Hive sets "
        "itself (os, arch, hostname, gpu-model)"
    )


def label_value(text: str) -> str:
    """`text` as a valid label value: each run of other characters becomes `-`, at most
    63 characters, starting and ending with a letter or digit ('NVIDIA H100 80GB HBM3'
    -> 'NVIDIA-H100-80GB-HBM3', as Kubernetes' GPU feature discovery writes it)."""
    return _NOT_VALUE.sub("-", text)[:63].strip("-._")


def auto_labels(info: NodeInfo) -> dict[str, str]:
    """The `hive.io/` labels of a node, from its info (those that come out empty are left
    out). A node with GPUs of several models is labelled with its first GPU's."""
    derived = {OS: info.os, ARCH: info.arch, HOSTNAME: info.hostname}
    if info.gpus:
        derived[GPU_MODEL] = min(info.gpus, key=lambda gpu: gpu.index).model
    labels = {}
    for key, text in derived.items():
        value = label_value(text)
        if value:
            labels[key] = value
    return labels


def split_reserved(labels: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(the labels without reserved keys, the reserved keys that were in them)."""
    dropped = [key for key in labels if is_reserved(key)]
    if not dropped:
        return dict(labels), []
    return {k: v for k, v in labels.items() if not is_reserved(k)}, dropped


def merge(info: NodeInfo, operator: Mapping[str, str]) -> dict[str, str]:
    """The labels a node has: automatic < the node's own < the operator's.

    Reserved keys in the node's own or the operator's are ignored here too, so a record
    written by something that did not strip them still cannot shadow Hive's labels.
    """
    merged = auto_labels(info)
    for source in (info.labels, operator):
        merged.update((k, v) for k, v in source.items() if not is_reserved(k))
    return merged


def without_reserved(labels: Mapping[str, str]) -> dict[str, str]:
    """What the default tables show: everything but the `hive.io/` labels."""
    return {k: v for k, v in labels.items() if not is_reserved(k)}


# -- operator edits --------------------------------------------------------------------


class LabelEditError(ValueError):
    """A label edit that is malformed or not allowed; the message says which and why."""


@dataclass
class LabelEdit:
    """What `hivectl node label` asks: labels to set, and keys to remove."""

    set: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.set or self.remove)


def looks_like_edit(arg: str) -> bool:
    """`k=v` or `k-`: what kubectl takes for a label change rather than a name."""
    return "=" in arg or arg.endswith("-")


def parse_edits(args: Iterable[str]) -> LabelEdit:
    """`k=v` sets k, `k-` removes it, as kubectl label has them."""
    edit = LabelEdit()
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            if not arg.endswith("-") or arg == "-":
                raise LabelEditError(
                    f"invalid label change {arg!r}: use key=value to set a label, key- to "
                    "remove one"
                )
            key = arg[:-1]
        _check_key(key, arg)
        if key in edit.set or key in edit.remove:
            raise LabelEditError(f"label {key!r} is changed twice in one command")
        if not sep:
            edit.remove.append(key)
        elif not _VALUE.match(value):
            raise LabelEditError(
                f"invalid value {value!r} for label {key!r}: up to 63 letters, digits, "
                "'.', '_' and '-'"
            )
        else:
            edit.set[key] = value
    return edit


def check_operator_labels(keys: Sequence[str]) -> None:
    """Raise LabelEditError for the first key an operator may not set or remove."""
    for key in keys:
        _check_key(key, key)


def _check_key(key: str, arg: str) -> None:
    if not _KEY.match(key):
        raise LabelEditError(
            f"invalid label key {key!r} in {arg!r}: up to 63 letters, digits, '.', '_', '/' "
            "and '-', starting and ending with a letter or digit"
        )
    if is_reserved(key):
        raise LabelEditError(reserved_error(key))
