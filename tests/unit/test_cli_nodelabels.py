"""`hivectl node label` and the target chooser against a canned requester: what is
refused before anything is sent, and what one request carries."""

from __future__ import annotations

import pytest

from hivectl.core.api import NodeLabelReply, NodeLabelRequest
from hivectl.core.embedded import EmbeddedNats
from hivectl.core.models import Message
from tests.unit.test_cli_nodes import CannedRequester, hivectl, isolated_config, one_line_error

__all__ = ["isolated_config"]  # the autouse fixture, re-used


def labelled(request: Message) -> Message:
    assert isinstance(request, NodeLabelRequest)
    labels = {"zone": "eu-1", **request.labels}
    return NodeLabelReply(
        id="node-a",
        operator_labels=request.labels,
        labels=labels,
        not_set=request.remove,
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["node-a"], "no label changes given: KEY=VALUE sets a label, KEY- removes one"),
        (["node-a", "hive.io/os=x"], "label 'hive.io/os': the hive.io/ prefix is reserved"),
        (["node-a", "a=1", "a-"], "label 'a' is changed twice in one command"),
        (["node-a", "a=b c"], "invalid value 'b c' for label 'a'"),
        (["a=b"], "say which nodes to label: give node ids, -l SELECTOR, or both"),
        (["Node_A", "a=b"], "invalid node id 'Node_A'"),
        (["-l", "zone in (a", "a=b"], "invalid selector: unbalanced '('"),
    ],
)
def test_bad_label_commands_are_refused_before_anything_is_sent(
    nats_server: EmbeddedNats, args: list[str], error: str
) -> None:
    with CannedRequester(nats_server.url, handler=labelled) as canned:
        line = one_line_error(hivectl(canned.url, "node", "label", *args), code=2)
        assert canned.requests == []
    assert line.startswith(f"Error: {error}")


def test_one_node_is_one_request_with_the_changes(nats_server: EmbeddedNats) -> None:
    with CannedRequester(nats_server.url, handler=labelled) as canned:
        result = hivectl(
            canned.url, "node", "label", "node-a", "pool=gpu", "zone-", "--overwrite", "-m", "why"
        )
        assert canned.requests == [
            NodeLabelRequest(
                id="node-a", labels={"pool": "gpu"}, remove=["zone"], overwrite=True, reason="why"
            )
        ]
    assert (result.exit_code, result.stdout) == (0, "Ok\n"), result.stderr
    assert result.stderr == (
        "no operator label 'zone' to remove (zone=eu-1 is the node's own: change it in its "
        "config)\n"
    )
