"""Node labels: Hive's automatic ones, the merge of the three sources, the reserved
prefix, and `hivectl node label`'s edits as kubectl writes them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from hivectl.core.api import NodeLabelRequest
from hivectl.core.auth import Identity
from hivectl.core.config import ConfigError, NodeAgentConfig, load_config
from hivectl.core.jobs import Job, JobSpec, new_job_id
from hivectl.core.labels import (
    LabelEdit,
    LabelEditError,
    auto_labels,
    is_reserved,
    label_value,
    looks_like_edit,
    merge,
    parse_edits,
    split_reserved,
)
from hivectl.core.models import Approval, GpuInfo, NodeEvent, NodeRecord
from requester.jobs import placement
from requester.jobs.ledger import Ledger
from requester.nodes.liveness import Liveness
from tests.support.simnode import sample_info

AUTO = {"hive.io/os": "linux", "hive.io/arch": "x86_64", "hive.io/hostname": "sim"}


def gpu(index: int, model: str) -> GpuInfo:
    return GpuInfo(index=index, model=model, memory=80 * 2**30)


# -- automatic labels ------------------------------------------------------------------


def test_auto_labels_come_from_what_the_node_reports() -> None:
    assert auto_labels(sample_info()) == AUTO


def test_gpu_model_is_the_first_gpus_made_a_label_value() -> None:
    info = sample_info().model_copy(
        update={"gpus": [gpu(1, "Tesla T4"), gpu(0, "NVIDIA H100 80GB HBM3")]}
    )
    assert auto_labels(info)["hive.io/gpu-model"] == "NVIDIA-H100-80GB-HBM3"


def test_values_that_are_not_label_values_are_made_into_one_or_left_out() -> None:
    assert label_value("host_1.example.com") == "host_1.example.com"
    assert label_value(" (weird) name ") == "weird-name"
    assert label_value("a" * 80) == "a" * 63
    assert label_value("ünïcode") == "n-code"
    info = sample_info().model_copy(update={"hostname": "!!!", "os": "Linux 6.1 (Debian)"})
    labels = auto_labels(info)
    assert "hive.io/hostname" not in labels  # nothing of it is a label value
    assert labels["hive.io/os"] == "Linux-6.1-Debian"


# -- the merge ---------------------------------------------------------------------------


def test_operator_beats_node_beats_automatic() -> None:
    info = sample_info({"zone": "a", "pool": "silver"})
    merged = merge(info, {"pool": "gold", "rack": "r1"})
    assert merged == {**AUTO, "zone": "a", "pool": "gold", "rack": "r1"}
    assert merge(info, {}) == {**AUTO, "zone": "a", "pool": "silver"}


def test_reserved_keys_from_the_node_or_the_operator_never_shadow_hives() -> None:
    info = sample_info({"hive.io/os": "windows", "Node.Hive.IO/x": "1", "zone": "a"})
    merged = merge(info, {"hive.io/arch": "riscv", "pool": "gold"})
    assert merged == {**AUTO, "zone": "a", "pool": "gold"}


@pytest.mark.parametrize(
    ("key", "reserved"),
    [
        ("hive.io/os", True),
        ("HIVE.IO/os", True),
        ("gpu.hive.io/model", True),
        ("hive.io", False),
        ("myhive.io/x", False),
        ("hive.iox/y", False),
        ("example.com/hive.io", False),
        ("zone", False),
    ],
)
def test_the_reserved_prefix(key: str, reserved: bool) -> None:
    assert is_reserved(key) is reserved


def test_split_reserved_says_what_it_dropped() -> None:
    assert split_reserved({"zone": "a", "hive.io/os": "x"}) == ({"zone": "a"}, ["hive.io/os"])
    assert split_reserved({"zone": "a"}) == ({"zone": "a"}, [])


# -- the edits of `hivectl node label` -----------------------------------------------------


def test_edits_set_and_remove_as_kubectl_has_them() -> None:
    edit = parse_edits(["pool=gold", "tier-", "empty=", "example.com/rack=r-1"])
    assert edit == LabelEdit(
        set={"pool": "gold", "empty": "", "example.com/rack": "r-1"}, remove=["tier"]
    )
    assert not parse_edits([])
    assert [looks_like_edit(a) for a in ("node-1", "k=v", "k-", "n1")] == [
        False,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["pool"], "invalid label change 'pool': use key=value to set a label, key- to remove"),
        (["-"], "invalid label change '-'"),
        (["=gold"], "invalid label key '' in '=gold'"),
        (["-pool=x"], "invalid label key '-pool'"),
        (["pool=a b"], "invalid value 'a b' for label 'pool'"),
        (["pool=a", "pool=b"], "label 'pool' is changed twice in one command"),
        (["pool=a", "pool-"], "label 'pool' is changed twice in one command"),
        (["hive.io/os=windows"], "label 'hive.io/os': the hive.io/ prefix is reserved"),
        (["hive.io/hostname-"], "label 'hive.io/hostname': the hive.io/ prefix is reserved"),
    ],
)
def test_bad_edits_are_refused_with_the_reason(args: list[str], error: str) -> None:
    with pytest.raises(LabelEditError) as info:
        parse_edits(args)
    assert str(info.value).startswith(error)


def test_the_api_request_refuses_what_the_cli_refuses() -> None:
    with pytest.raises(ValidationError, match=r"the hive\.io/ prefix is reserved"):
        NodeLabelRequest(id="n1", labels={"hive.io/os": "x"})
    with pytest.raises(ValidationError, match=r"the hive\.io/ prefix is reserved"):
        NodeLabelRequest(id="n1", remove=["hive.io/os"])
    with pytest.raises(ValidationError, match="'pool' is both set and removed"):
        NodeLabelRequest(id="n1", labels={"pool": "a"}, remove=["pool"])


# -- the agent's own config ----------------------------------------------------------------


def test_the_agent_refuses_reserved_labels_in_its_config(tmp_path: Path) -> None:
    conf = tmp_path / "nodeagent.toml"
    conf.write_text('labels = { zone = "a", "hive.io/gpu-model" = "fake" }\n')
    with pytest.raises(ConfigError) as info:
        load_config(NodeAgentConfig, conf)
    assert "'hive.io/gpu-model': the hive.io/ prefix is reserved" in str(info.value)
    conf.write_text("")  # and as a flag (`--label hive.io/os=windows`)
    with pytest.raises(ConfigError, match=r"'hive\.io/os': the hive\.io/ prefix is reserved"):
        load_config(NodeAgentConfig, conf, labels={"hive.io/os": "windows"})
    assert load_config(NodeAgentConfig, conf, labels={"zone": "a"}).labels == {"zone": "a"}


# -- scheduling ----------------------------------------------------------------------------


async def _no_events(event: NodeEvent) -> None:
    return None


def test_constraints_match_the_merged_labels() -> None:
    key = Identity.generate().public_key
    node = {
        # (its own labels, the operator's)
        "own-gold": ({"pool": "gold"}, {}),
        "own-gold-operator-silver": ({"pool": "gold"}, {"pool": "silver"}),
        "operator-gold": ({"pool": "silver"}, {"pool": "gold"}),
        "none": ({}, {}),
    }
    records = [
        NodeRecord(
            node_id=node_id,
            public_key=key,
            info=sample_info(own),
            approval=Approval.APPROVED,
            operator_labels=operator,
        )
        for node_id, (own, operator) in node.items()
    ]
    liveness = Liveness(30.0, 60.0, _no_events)
    for record in records:
        liveness.heard(record.node_id, time.monotonic())

    def fitting(*constraints: str) -> list[str]:
        job = Job(job_id=new_job_id(), spec=JobSpec(image="busybox", constraints=list(constraints)))
        found, _ = placement.candidates(job, records, liveness, Ledger())
        return sorted(c.node_id for c in found)

    assert fitting("pool=gold") == ["operator-gold", "own-gold"]
    assert fitting("pool=silver") == ["own-gold-operator-silver"]
    assert fitting("hive.io/os=linux", "!pool") == ["none"]
    assert fitting("hive.io/hostname=sim") == sorted(node)
