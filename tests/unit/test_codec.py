"""The codec is the gate between the network and the daemons: every message kind
round-trips, and every kind of bad input is refused with a code and a reason."""

from __future__ import annotations

import importlib
import math
import pkgutil
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hivectl.core
import hivectl.core.api  # registers the operator API messages
from hivectl.core import codec
from hivectl.core.api import (
    NodeApproveRequest,
    NodeCordonRequest,
    NodeDeleteRequest,
    NodeDrainRequest,
    NodeGetReply,
    NodeGetRequest,
    NodeLabelReply,
    NodeLabelRequest,
    NodeListReply,
    NodeListRequest,
    NodePruneReply,
    NodePruneRequest,
    NodeRejectRequest,
    NodeUncordonRequest,
    NodeView,
    PruneCandidate,
)
from hivectl.core.auth import Identity
from hivectl.core.codec import CodecError, Limits
from hivectl.core.joboutput import (
    EventListReply,
    EventListRequest,
    JobLogsReply,
    JobLogsRequest,
    JobResultReply,
    JobResultRequest,
    LogChunk,
    encode_data,
)
from hivectl.core.jobs import (
    Cancel,
    Engine,
    ExecState,
    ExecUpdate,
    Execution,
    Job,
    JobEvent,
    JobExecutionsReply,
    JobExecutionsRequest,
    JobGetReply,
    JobGetRequest,
    JobListReply,
    JobListRequest,
    JobSpec,
    JobState,
    JobStopRequest,
    JobSubmitReply,
    JobSubmitRequest,
    Measured,
    Offer,
    OfferReply,
    ResourceRequest,
    Withdraw,
)
from hivectl.core.models import (
    MESSAGES,
    PROTOCOL_VERSION,
    Approval,
    Drain,
    ErrorReply,
    GpuInfo,
    Health,
    Heartbeat,
    InfoReply,
    InfoUpdate,
    Leave,
    Message,
    NodeEvent,
    NodeInfo,
    NodeRecord,
    NodeResources,
    NodeType,
    OkReply,
    RegisterReply,
    RegisterRequest,
    Resources,
    ResourceUpdate,
)
from hivectl.core.quotas import Quota, QuotaGetRequest, QuotaReply, QuotaSetRequest
from hivectl.core.tokens import (
    TokenCreateReply,
    TokenCreateRequest,
    TokenEvent,
    TokenInfo,
    TokenListReply,
    TokenListRequest,
    TokenRevokeRequest,
)
from hivectl.core.usage import (
    Fault,
    UsageBy,
    UsageRecord,
    UsageReportReply,
    UsageReportRequest,
    UsageRow,
)
from hivectl.core.users import (
    Role,
    UserAddReply,
    UserAddRequest,
    UserEvent,
    UserListReply,
    UserListRequest,
    UserRecord,
    UserRemoveRequest,
)

# Every module of hivectl.core, so kinds registered anywhere in it are in MESSAGES.
for _module in pkgutil.iter_modules(hivectl.core.__path__):
    importlib.import_module(f"hivectl.core.{_module.name}")

NODE_KEY = Identity.generate().public_key
REQUESTER_KEY = Identity.generate().public_key
T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
GIB = 1024**3


def _info() -> NodeInfo:
    return NodeInfo(
        hostname="gpu-worker-07.lab.example.org",
        arch="amd64",
        os="linux",
        version="0.1.0",
        labels={"zone": "eu-west-1a", "gpu": "a100", "example.com/team": "ml-infra"},
        executors=["docker", "process"],
        total=Resources(cpu=64.0, memory=512 * GIB, disk=4000 * GIB, gpu=8),
        allocatable=Resources(cpu=62.5, memory=500 * GIB, disk=3800 * GIB, gpu=8),
        gpus=[
            GpuInfo(index=i, model="NVIDIA A100-SXM4-80GB", memory=80 * GIB, uuid=f"GPU-{i:08x}")
            for i in range(2)
        ],
        benchmark_score=1234.5,
    )


def _resources() -> NodeResources:
    return NodeResources(
        total=Resources(cpu=16.0, memory=64 * GIB, disk=500 * GIB, gpu=1),
        allocatable=Resources(cpu=15.0, memory=60 * GIB, disk=450 * GIB, gpu=1),
        available=Resources(cpu=7.25, memory=31 * GIB, disk=300 * GIB, gpu=0),
    )


def _view() -> NodeView:
    return NodeView(
        node_id="gpu-worker-07",
        type=NodeType.COMPUTE,
        approval=Approval.APPROVED,
        health=Health.HEALTHY,
        public_key=NODE_KEY,
        info=_info(),
        resources=_resources(),
        last_heartbeat=T0 + timedelta(seconds=42),
        registered_at=T0,
        updated_at=T0 + timedelta(minutes=5),
        cordoned=True,
        cordon_reason="kernel update",
        drain=Drain(
            started_at=T0 + timedelta(minutes=4),
            deadline=T0 + timedelta(minutes=14),
            reason="kernel update",
            remaining=2,
            moved=1,
        ),
    )


JOB_ID = "j-5f0c2a9e41b7d388"
EXEC_ID = "e-0a1b2c3d4e5f6071"


def _spec() -> JobSpec:
    return JobSpec(
        name="train-resnet",
        engine=Engine.DOCKER,
        image="pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
        command=["python", "train.py", "--epochs", "3"],
        env={"PYTHONUNBUFFERED": "1"},
        resources=ResourceRequest(cpu=0.5, memory=512 * 1024**2, gpu=1),
        constraints=["zone in (eu-west-1a,eu-west-1b)", "gpu"],
        timeout=1800.0,
        retries=2,
        outputs=["/outputs"],
    )


def _job() -> Job:
    execution = Execution(
        exec_id=EXEC_ID,
        job_id=JOB_ID,
        node_id="gpu-worker-07",
        state=ExecState.RUNNING,
        created_at=T0,
        updated_at=T0,
        started_at=T0,
    )
    return Job(
        job_id=JOB_ID,
        spec=_spec(),
        state=JobState.RUNNING,
        executions=[execution],
        created_at=T0,
        updated_at=T0,
    )


# One valid, realistic instance per message kind.
def _token() -> TokenInfo:
    return TokenInfo(
        token_id="t-3f9a2b1c4d5e",
        created_at=T0,
        created_by="alice@laptop",
        expires_at=T0 + timedelta(days=1),
        uses=100,
        used=42,
        labels={"pool": "batch"},
        note="rack 7",
    )


SAMPLES: dict[str, Message] = {
    "register": RegisterRequest(
        node_id="gpu-worker-07",
        public_key=NODE_KEY,
        info=_info(),
        token="t-3f9a2b1c4d5e.Y28Gis-Ffc9G_RDyImapEV9qsw3VcLw5_fD74Pjpct8",
    ),
    "register_reply": RegisterReply(
        node_id="gpu-worker-07",
        approval=Approval.PENDING,
        requester_key=REQUESTER_KEY,
        cluster="prod-eu",
        reason="enrollment token t-3f9a2b1c4d5e is used up (2 of 2 uses)",
    ),
    "info": InfoUpdate(node_id="gpu-worker-07", info=_info()),
    "info_reply": InfoReply(known=True, approval=Approval.APPROVED),
    "resources": ResourceUpdate(node_id="gpu-worker-07", seq=912, resources=_resources()),
    "heartbeat": Heartbeat(node_id="gpu-worker-07", seq=123456),
    "leave": Leave(node_id="gpu-worker-07", seq=123457, reason="agent shutting down (SIGTERM)"),
    "error": ErrorReply(code="not_found", reason="no node matches 'gpu-x'"),
    "ok": OkReply(id="gpu-worker-07"),
    "node_event": NodeEvent(
        node_id="gpu-worker-07",
        event="health",
        old="HEALTHY",
        new="UNHEALTHY",
        reason="no heartbeat for 31s",
        at=T0,
        actor="requester:req-1",
    ),
    "node_list": NodeListRequest(
        approval=Approval.PENDING,
        health=Health.HEALTHY,
        selector="zone in (eu-west-1a,eu-west-1b),gpu",
        after="gpu-worker-06",
        limit=50,
    ),
    "node_list_reply": NodeListReply(
        nodes=[
            _view(),
            NodeView(
                node_id="requester",
                type=NodeType.REQUESTER,
                approval=Approval.APPROVED,
                health=Health.HEALTHY,
            ),
        ],
        next="requester",
    ),
    "node_get": NodeGetRequest(id="gpu-w"),
    "node_get_reply": NodeGetReply(node=_view()),
    "node_approve": NodeApproveRequest(id="gpu-worker-07"),
    "node_reject": NodeRejectRequest(id="gpu-worker-07", reason="unknown hardware vendor"),
    "node_delete": NodeDeleteRequest(id="gpu-worker-07", reason="retired"),
    "node_prune": NodePruneRequest(
        unknown_for=86400.0, dry_run=False, ids=["gpu-worker-07"], reason="rack 7 gone"
    ),
    "node_prune_reply": NodePruneReply(
        nodes=[
            PruneCandidate(node_id="gpu-worker-07", approval=Approval.APPROVED, unknown_for=9e4)
        ],
        pruned=True,
        watching_for=3e5,
    ),
    "token_create": TokenCreateRequest(
        token_id="t-3f9a2b1c4d5e",
        hash="0" * 64,
        ttl=86400.0,
        uses=100,
        labels={"pool": "batch"},
        note="rack 7",
    ),
    "token_create_reply": TokenCreateReply(token=_token()),
    "token_list": TokenListRequest(),
    "token_list_reply": TokenListReply(tokens=[_token()], more=0),
    "token_revoke": TokenRevokeRequest(id="t-3f9a", reason="leaked in a ticket"),
    "token_event": TokenEvent(
        token_id="t-3f9a2b1c4d5e",
        event="revoked",
        old="active",
        new="revoked",
        reason="leaked in a ticket",
        at=T0,
        actor="alice@laptop",
    ),
    "node_label": NodeLabelRequest(
        id="gpu-w", labels={"pool": "training"}, remove=["tier"], reason="moved to training"
    ),
    "node_label_reply": NodeLabelReply(
        id="gpu-worker-07",
        operator_labels={"pool": "training"},
        labels={"hive.io/os": "linux", "zone": "eu-west-1a", "pool": "training"},
        not_set=["tier"],
    ),
    "node_cordon": NodeCordonRequest(id="gpu-worker-07", reason="disk errors"),
    "node_uncordon": NodeUncordonRequest(id="gpu-worker-07", reason="disk replaced"),
    "node_drain": NodeDrainRequest(id="gpu-w", deadline=600.0, reason="kernel update"),
    "offer": Offer(
        node_id="gpu-worker-07", exec_id=EXEC_ID, job_id=JOB_ID, attempt=1, spec=_spec()
    ),
    "offer_reply": OfferReply(exec_id=EXEC_ID, accepted=False, reason="needs 2 GPUs, 1 free"),
    "cancel": Cancel(node_id="gpu-worker-07", exec_id=EXEC_ID, reason="job stopped"),
    "withdraw": Withdraw(node_id="gpu-worker-07", exec_id=EXEC_ID, epoch=12),
    "exec_update": ExecUpdate(
        node_id="gpu-worker-07",
        seq=99,
        exec_id=EXEC_ID,
        job_id=JOB_ID,
        state=ExecState.FAILED,
        exit_code=137,
        error="killed after its 30s timeout",
        measured=Measured(cpu_seconds=29.71, peak_memory=3 * 2**30),
    ),
    "job_submit": JobSubmitRequest(spec=_spec()),
    "job_submit_reply": JobSubmitReply(job_id=JOB_ID),
    "job_list": JobListRequest(state=JobState.RUNNING, after=JOB_ID, limit=20, queued=True),
    "quota_set": QuotaSetRequest(user="alice", cpu="8", memory="32GiB", clear=["gpu"]),
    "quota_get": QuotaGetRequest(default=True),
    "quota_reply": QuotaReply(
        user="alice",
        own=Quota(cpu=8),
        default=Quota(cpu=16, queued=1000),
        effective=Quota(cpu=8, queued=1000),
    ),
    "job_list_reply": JobListReply(jobs=[_job()], next=""),
    "job_get": JobGetRequest(id="j-5f"),
    "job_get_reply": JobGetReply(job=_job()),
    "job_executions": JobExecutionsRequest(id="j-5f", state=ExecState.FAILED, after="e-01"),
    "job_executions_reply": JobExecutionsReply(
        job_id=JOB_ID, executions=_job().executions, next="", total=1
    ),
    "job_stop": JobStopRequest(id=JOB_ID, reason="operator asked"),
    "job_event": JobEvent(
        job_id=JOB_ID,
        old="QUEUED",
        new="RUNNING",
        reason="placed on gpu-worker-07",
        at=T0,
        actor="requester:req-1",
    ),
    "job_logs": JobLogsRequest(id="j-5f", exec_id=EXEC_ID, seq=812, offset=4096),
    "job_logs_reply": JobLogsReply(
        exec_id=EXEC_ID,
        chunks=[LogChunk(stream="stderr", data=encode_data(b"warning: \xff disk low\n"))],
        seq=813,
        eof=True,
        dropped=1024,
    ),
    "job_result": JobResultRequest(id=JOB_ID, exec_id=EXEC_ID, seq=40),
    "job_result_reply": JobResultReply(
        exec_id=EXEC_ID,
        size=3,
        digest="SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=",
        data=encode_data(b"tar"),
        seq=41,
        done=True,
    ),
    "event_list": EventListRequest(job=JOB_ID, since=T0, after=41, limit=100),
    "event_list_reply": EventListReply(
        events=[encode_data(codec.encode(JobEvent(job_id=JOB_ID, new="RUNNING", at=T0)))],
        after=42,
        more=True,
    ),
    "user_add": UserAddRequest(name="alice", role=Role.SUBMITTER, public_key=NODE_KEY),
    "user_add_reply": UserAddReply(
        user=UserRecord(name="alice", role=Role.SUBMITTER, public_key=NODE_KEY, created_at=T0),
        requester_key=NODE_KEY,
        nats_user="user",
        nats_password="s3cret",
    ),
    "user_list": UserListRequest(),
    "user_list_reply": UserListReply(
        users=[UserRecord(name="vera", role=Role.VIEWER, public_key=NODE_KEY, created_at=T0)]
    ),
    "user_remove": UserRemoveRequest(name="alice", reason="left the team"),
    "user_event": UserEvent(
        name="alice",
        event="removed",
        old="submitter",
        reason="left the team",
        at=T0,
        actor="root@console",
    ),
    "usage_record": UsageRecord(
        exec_id=EXEC_ID,
        job_id=JOB_ID,
        node_id="gpu-worker-07",
        user="alice",
        state=ExecState.FAILED,
        fault=Fault.NODE,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=30),
        wall_seconds=30.0,
        cpu=2.0,
        memory=4 * 2**30,
        gpu=1,
        measured=Measured(cpu_seconds=29.71),
    ),
    "usage_report": UsageReportRequest(user="alice", node="gpu", since=T0, by=UsageBy.NODE),
    "usage_report_reply": UsageReportReply(
        rows=[
            UsageRow(
                node="gpu-worker-07",
                executions=3,
                completed=2,
                lost=1,
                wall_seconds=90.0,
                cpu_seconds=180.0,
            )
        ],
        since=T0,
        until=T0 + timedelta(hours=2),
    ),
}


def raw(**fields: Any) -> bytes:
    """A msgpack map as a peer might send it, bypassing the models."""
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


def heartbeat(**overrides: Any) -> bytes:
    fields: dict[str, Any] = {"v": 1, "kind": "heartbeat", "node_id": "node-1", "seq": 7}
    fields.update(overrides)
    return raw(**fields)


def resources_update(**resource: Any) -> bytes:
    good = {"cpu": 4.0, "memory": 8 * GIB, "disk": 100 * GIB, "gpu": 0}
    bad = {**good, **resource}
    return raw(
        v=1,
        kind="resources",
        node_id="node-1",
        seq=1,
        resources={"total": good, "allocatable": good, "available": bad},
    )


def rejected(data: bytes, code: str, **kwargs: Any) -> CodecError:
    with pytest.raises(CodecError) as info:
        codec.decode(data, **kwargs)
    err = info.value
    assert err.code == code, f"expected {code}, got {err.code}: {err.reason}"
    assert err.code in codec.REJECT_CODES
    assert err.reason and "\n" not in err.reason and len(err.reason) < 300
    assert str(err) == err.reason
    # The reply sent back to a requester carries the same code and reason.
    reply = err.reply()
    assert (reply.code, reply.reason) == (code, err.reason)
    return err


# -- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_every_kind_round_trips(kind: str) -> None:
    if kind not in SAMPLES:
        pytest.fail(f"message kind {kind!r} has no sample in SAMPLES: add a realistic one")
    sample = SAMPLES[kind]
    assert type(sample) is MESSAGES[kind]
    data = codec.encode(sample)
    on_wire = msgpack.unpackb(data, raw=False)
    assert on_wire["kind"] == kind
    assert on_wire["v"] == PROTOCOL_VERSION

    decoded: Message = codec.decode(data)
    assert type(decoded) is type(sample)
    assert decoded == sample
    # Narrowed to its own kind, too.
    assert codec.decode(data, expect=type(sample)) == sample


def test_samples_name_only_registered_kinds() -> None:
    assert set(SAMPLES) <= set(MESSAGES), set(SAMPLES) - set(MESSAGES)


def test_expect_accepts_a_tuple_of_kinds() -> None:
    data = codec.encode(SAMPLES["error"])
    answer = codec.decode(data, expect=(NodeGetReply, ErrorReply))
    assert isinstance(answer, ErrorReply)


def test_missing_version_means_current() -> None:
    fields = msgpack.unpackb(codec.encode(SAMPLES["heartbeat"]))
    del fields["v"]
    assert codec.decode(raw(**fields)) == SAMPLES["heartbeat"]


def test_node_record_round_trips_through_pack_model() -> None:
    record = NodeRecord(
        node_id="gpu-worker-07",
        public_key=NODE_KEY,
        info=_info(),
        approval=Approval.REJECTED,
        reason="decommissioned rack",
        registered_at=T0,
        updated_at=T0 + timedelta(days=3),
    )
    data = codec.pack_model(record)
    assert codec.unpack_model(data, NodeRecord) == record


def test_unpack_model_refuses_bad_records() -> None:
    with pytest.raises(CodecError) as info:
        codec.unpack_model(codec.pack([1, 2]), NodeRecord)
    assert info.value.code == "malformed"
    with pytest.raises(CodecError) as info:
        codec.unpack_model(codec.pack({"node_id": "n1"}), NodeRecord)
    assert info.value.code == "invalid"


@pytest.mark.parametrize("kind", ["heartbeat", "info"])
def test_a_node_cannot_send_its_own_approval(kind: str) -> None:
    fields = msgpack.unpackb(codec.encode(SAMPLES[kind]))
    fields["approval"] = "APPROVED"
    fields["reason"] = "I approve myself"
    if kind == "info":
        fields["info"]["approval"] = "APPROVED"
    decoded: Message = codec.decode(raw(**fields))
    assert decoded == SAMPLES[kind]
    assert "approval" not in decoded.model_dump()
    assert not hasattr(decoded, "approval")
    if isinstance(decoded, InfoUpdate):
        assert "approval" not in decoded.info.model_dump()


# -- size, depth, shape -------------------------------------------------------------


def test_oversized_payload_is_refused() -> None:
    data = heartbeat(padding="x" * codec.DEFAULT_MAX_BYTES)
    err = rejected(data, "too_large")
    assert str(len(data)) in err.reason and str(codec.DEFAULT_MAX_BYTES) in err.reason


def test_size_limit_is_configurable() -> None:
    data = heartbeat(padding="x" * 200)
    rejected(data, "too_large", limits=Limits(max_bytes=100))
    assert codec.decode(data, limits=Limits(max_bytes=len(data))).seq == 7


def test_deep_nesting_is_refused() -> None:
    nested: Any = []
    for _ in range(100):
        nested = [nested]
    err = rejected(heartbeat(extra=nested), "too_deep")
    assert str(codec.DEFAULT_MAX_DEPTH) in err.reason


def test_nesting_at_the_limit_is_accepted() -> None:
    nested: Any = "leaf"
    for _ in range(codec.DEFAULT_MAX_DEPTH - 1):  # the map itself is level 1
        nested = [nested]
    assert codec.decode(heartbeat(extra=nested)).seq == 7
    rejected(heartbeat(extra=[nested]), "too_deep")


def test_deep_maps_are_refused_too() -> None:
    nested: Any = {}
    for _ in range(40):
        nested = {"a": nested}
    rejected(heartbeat(extra=nested), "too_deep")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(b"\xde\xad\xbe\xef\x00\xff\x13\x37", id="random-bytes"),
        pytest.param(codec.encode(Heartbeat(node_id="node-1", seq=1))[:-3], id="truncated"),
        pytest.param(codec.encode(Heartbeat(node_id="node-1", seq=1)) + b"\x01", id="extra-data"),
        pytest.param(b"\x81\xa4kind\xa3\xff\xfe\xfd", id="bad-utf8"),
        pytest.param(msgpack.packb({1: "int key"}), id="int-map-key"),
        pytest.param(msgpack.packb([1, 2, 3]), id="list"),
        pytest.param(msgpack.packb("heartbeat"), id="string"),
        pytest.param(msgpack.packb(42), id="int"),
        pytest.param(msgpack.packb(None), id="nil"),
        pytest.param(msgpack.packb(b"\x00\x01", use_bin_type=True), id="bytes"),
    ],
)
def test_malformed_input_is_refused(data: bytes) -> None:
    rejected(data, "malformed")


@pytest.mark.parametrize(
    "kind", [pytest.param("no_such_kind", id="unknown"), None, 5, ["heartbeat"], ""]
)
def test_unknown_kind_is_refused(kind: Any) -> None:
    fields: dict[str, Any] = {"v": 1, "node_id": "node-1", "seq": 1}
    if kind is not None:
        fields["kind"] = kind
    err = rejected(raw(**fields), "unknown_kind")
    assert "kind" in err.reason


def test_a_kind_not_expected_here_is_refused() -> None:
    data = codec.encode(SAMPLES["heartbeat"])
    err = rejected(data, "unknown_kind", expect=RegisterRequest)
    assert "'heartbeat'" in err.reason and "register" in err.reason
    rejected(data, "unknown_kind", expect=(ResourceUpdate, Leave))


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, 99, 2**40, "1", 1.0, True, None])
def test_other_protocol_versions_are_refused(version: Any) -> None:
    err = rejected(heartbeat(v=version), "bad_version")
    assert "version" in err.reason


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"seq": "7"}, "seq", id="string-for-int"),
        pytest.param({"seq": 7.0}, "seq", id="float-for-int"),
        pytest.param({"seq": True}, "seq", id="bool-for-int"),
        pytest.param({"seq": None}, "seq", id="nil-for-int"),
        pytest.param({"seq": -1}, "seq", id="negative-seq"),
        pytest.param({"seq": 2**63}, "seq", id="huge-seq"),
        pytest.param({"node_id": ["node-1"]}, "node_id", id="list-for-string"),
        pytest.param({"node_id": b"node-1"}, "node_id", id="bytes-for-string"),
        pytest.param({"node_id": 17}, "node_id", id="int-for-string"),
        pytest.param({"node_id": {"id": "x"}}, "node_id", id="map-for-string"),
    ],
)
def test_wrong_types_are_refused(overrides: dict[str, Any], field: str) -> None:
    err = rejected(heartbeat(**overrides), "invalid")
    assert err.reason.startswith(f"{field}:"), err.reason


def test_missing_fields_are_refused() -> None:
    err = rejected(raw(v=1, kind="heartbeat", node_id="node-1"), "invalid")
    assert err.reason.startswith("seq:") and "required" in err.reason.lower()


@pytest.mark.parametrize(
    "resource",
    [
        {"cpu": -0.5},
        {"cpu": math.nan},
        {"cpu": math.inf},
        {"cpu": -math.inf},
        {"cpu": "4"},
        {"memory": -1},
        {"memory": 1.5},
        {"disk": -(2**40)},
        {"gpu": -1},
        {"gpu": math.nan},
    ],
    ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()),
)
def test_bad_resources_are_refused(resource: dict[str, Any]) -> None:
    err = rejected(resources_update(**resource), "invalid")
    (name,) = resource
    assert err.reason.startswith(f"resources.available.{name}:"), err.reason


def test_an_integer_cpu_count_is_accepted() -> None:
    # A peer written in another language may send a whole number of cores as an int.
    decoded: Message = codec.decode(resources_update(cpu=4))
    assert isinstance(decoded, ResourceUpdate)
    assert decoded.resources.available.cpu == 4.0


@pytest.mark.parametrize(
    "node_id",
    [
        "a.b",
        "*",
        ">",
        "A",
        "Node-1",
        "-x",
        "_x",
        "",
        "a" * 64,
        "a\x00b",
        "a\n",
        "a b",
        "nodé",
        "x" * 10_000,
    ],
    ids=lambda s: repr(s) if len(s) < 20 else f"{len(s)}-chars",
)
def test_invalid_ids_are_refused(node_id: str) -> None:
    err = rejected(heartbeat(node_id=node_id), "invalid")
    assert err.reason.startswith("node_id:"), err.reason
    assert len(err.reason) < 300  # the 10 kB input is not echoed back


@pytest.mark.parametrize("node_id", ["a", "0", "node-1", "gpu_worker-07", "a" * 63])
def test_valid_ids_are_accepted(node_id: str) -> None:
    assert codec.decode(heartbeat(node_id=node_id)).node_id == node_id


def test_invalid_id_in_an_api_request_is_refused() -> None:
    err = rejected(raw(v=1, kind="node_get", id="hive.api.>"), "invalid")
    assert err.reason.startswith("id:")


def test_reason_counts_further_problems() -> None:
    err = rejected(raw(v=1, kind="heartbeat", node_id="A", seq="x"), "invalid")
    assert "(and 1 more)" in err.reason


# -- fuzzing ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80)
    | st.binary(max_size=80)
    | st.sampled_from(["", "heartbeat", "node-1", "APPROVED", "2025-01-01T00:00:00Z", "1e400"])
)
_objects = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.text(max_size=12) | st.integers(0, 5), children, max_size=6)
    ),
    max_leaves=16,
)


def _field_names() -> list[str]:
    names = {"v", "kind", "approval", "cpu", "memory", "gpu", "total", "available"}
    for model in MESSAGES.values():
        names.update(model.model_fields)
    return sorted(names)


# Maps that look like messages: a real kind, real field names, random values.
_message_like = st.builds(
    lambda kind, fields, version: {**fields, "kind": kind, "v": version},
    st.sampled_from(sorted(MESSAGES)),
    st.dictionaries(st.sampled_from(_field_names()), _objects, max_size=6),
    st.sampled_from([1, 1, 1, 0, 2, -1, "1", None]),
)


def _only_codec_errors(data: bytes) -> None:
    try:
        result: Message = codec.decode(data)
    except CodecError as err:
        assert err.code in codec.REJECT_CODES
        assert isinstance(err.reason, str) and err.reason
    else:
        assert isinstance(result, Message)
        assert MESSAGES[result.kind] is type(result)


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_decode(data: bytes) -> None:
    _only_codec_errors(data)


@FUZZ
@given(_objects)
def test_random_msgpack_values_never_crash_decode(obj: Any) -> None:
    _only_codec_errors(msgpack.packb(obj, use_bin_type=True))


@FUZZ
@given(_message_like)
def test_random_message_like_maps_never_crash_decode(obj: dict[str, Any]) -> None:
    _only_codec_errors(msgpack.packb(obj, use_bin_type=True))


@FUZZ
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_corrupted_real_messages_never_crash_decode(kind: str, data: st.DataObject) -> None:
    encoded = bytearray(codec.encode(SAMPLES[kind]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _only_codec_errors(bytes(encoded[:cut]))
