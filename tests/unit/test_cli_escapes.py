"""Text that others control never reaches the operator's terminal raw.

A job's reason and its executions' errors come from nodes; a node's hostname, version
and GPU model from the node itself; a rejection reason and an error reply from whoever
typed them. Any of them may hold `ESC ] 0 ; … BEL` (retitle the window), `ESC [ 2 J`
(clear the screen) or a bidi override. `job list`, `job describe`, `node list`, `node
describe`, the result line of `job submit` and error lines must show them as `\\x1b`.
The canned requesters of test_cli_jobs.py and test_cli_nodes.py answer with such
records over a real nats-server.
"""

from __future__ import annotations

import re

from hivectl.core.embedded import EmbeddedNats
from hivectl.core.jobs import ExecState, JobState
from hivectl.core.models import Approval, ErrorReply, GpuInfo
from tests.unit.test_cli_jobs import (
    JOB,
    CannedJobRequester,
    Step,
    execution,
    isolated_config,
    job,
)
from tests.unit.test_cli_jobs import (
    hivectl as hivectl_jobs,
)
from tests.unit.test_cli_nodes import CannedRequester, compute_node
from tests.unit.test_cli_nodes import hivectl as hivectl_nodes

__all__ = ["isolated_config"]  # the autouse fixture: no user config leaks in

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]")


def shown(text: str) -> str:
    """`text` as the CLI shows it."""
    return text.encode("unicode_escape").decode()


def assert_no_raw_control(*outputs: str) -> None:
    for output in outputs:
        found = RAW.search(output)
        assert found is None, f"raw {found[0]!r} in {output!r}"


def test_job_views_show_a_hostile_reason_and_error_as_escapes(nats_server: EmbeddedNats) -> None:
    failed = job(
        JobState.FAILED,
        [execution(state=ExecState.FAILED, exit_code=1, error=f"boom{CLEAR}", notice=TITLE)],
        reason=f"bad{TITLE}\u202eevil",
    )
    with CannedJobRequester(nats_server.url, [[Step(failed)]]) as canned:
        wide = hivectl_jobs(canned.url, "job", "list", "-o", "wide")
        described = hivectl_jobs(canned.url, "job", "describe", JOB)
    assert (wide.exit_code, described.exit_code) == (0, 0), (wide.stderr, described.stderr)
    assert_no_raw_control(wide.stdout, described.stdout)
    assert "bad\\x1b]0;pwned\\x07\\u202eevil" in wide.stdout.splitlines()[1]
    assert "Reason:        bad\\x1b]0;pwned\\x07\\u202eevil" in described.stdout
    assert f"boom{shown(CLEAR)}" in described.stdout
    assert f"{execution().exec_id}: {shown(TITLE)}" in described.stdout


def test_the_result_line_of_a_waiting_submit_is_escaped(nats_server: EmbeddedNats) -> None:
    failed = job(JobState.FAILED, [execution(state=ExecState.FAILED)], reason=f"x{CLEAR}")
    with CannedJobRequester(nats_server.url, [[Step(failed)]]) as canned:
        result = hivectl_jobs(canned.url, "job", "submit", "ubuntu", "--", "false")
    assert result.exit_code == 1
    assert result.stderr == f"Job {JOB} FAILED: x\\x1b[2J\n"


def test_an_error_reply_is_one_escaped_line(nats_server: EmbeddedNats) -> None:
    refusal = ErrorReply(code="not_found", reason=f"no job {TITLE}\nforged line")
    with CannedJobRequester(nats_server.url, [[Step(job())]], errors={"job_get": refusal}) as c:
        result = hivectl_jobs(c.url, "job", "describe", JOB)
    assert result.exit_code == 1
    assert result.stderr == "Error: no job \\x1b]0;pwned\\x07 forged line\n"


def test_node_views_show_what_a_node_says_as_escapes(nats_server: EmbeddedNats) -> None:
    honest = compute_node("node-a")
    assert honest.info is not None
    info = honest.info.model_copy(
        update={
            "hostname": f"host{TITLE}",
            "version": f"1.0{CLEAR}",
            "gpus": [GpuInfo(index=0, model="A100\x9b31m", memory=1)],
        }
    )
    node = honest.model_copy(
        update={"info": info, "approval": Approval.REJECTED, "reason": f"no\x00{CLEAR}"}
    )
    with CannedRequester(nats_server.url, [[node]]) as canned:
        wide = hivectl_nodes(canned.url, "node", "list", "-o", "wide")
        described = hivectl_nodes(canned.url, "node", "describe", "node-a")
    assert (wide.exit_code, described.exit_code) == (0, 0), (wide.stderr, described.stderr)
    assert_no_raw_control(wide.stdout, described.stdout)
    assert "1.0\\x1b[2J" in wide.stdout
    for expected in (
        "Hostname:        host\\x1b]0;pwned\\x07",
        "Reason:          no\\x00\\x1b[2J",
        "A100\\x9b31m",
    ):
        assert expected in described.stdout, described.stdout
