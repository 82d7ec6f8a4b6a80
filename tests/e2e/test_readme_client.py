"""The README's Python client example, run word for word as a script against a
requester and two process agents, found through the environment as a user's would be."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster
from tests.support import readme

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]
SECTION = "Scripting with the Python client"


def test_the_python_client_example_as_written(cluster: Cluster, tmp_path: Path) -> None:
    (example,) = readme.code(SECTION, "python")
    assert "submit_many" in example and "wait" in example
    cluster.up("node-1", "node-2")
    script = tmp_path / "example.py"
    script.write_text(example)
    env = cluster.env | {
        "HIVE_NATS__URL": cluster.url,
        "HIVE_NATS__CREDENTIALS_FILE": str(cluster.operator),
    }
    ran = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "1000 of 1000 COMPLETED\n"
