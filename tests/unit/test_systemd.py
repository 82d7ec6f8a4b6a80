"""The systemd units verify cleanly, and sd_notify speaks the notify protocol."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hivectl.core.daemon import sd_notify

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UNITS = ["hive-requester.service", "hive-nodeagent.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_verify_without_complaint(tmp_path: Path) -> None:
    # ExecStart names /usr/local/bin, where pip installs for root; point it at this
    # environment's scripts so that verify checks a binary that exists.
    scripts = str(Path(sys.executable).parent) + "/"
    paths = []
    for unit in UNITS:
        text = (CONFIGS / unit).read_text().replace("/usr/local/bin/", scripts)
        (tmp_path / unit).write_text(text)
        paths.append(str(tmp_path / unit))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.stderr == ""
    assert result.returncode == 0


def test_nodeagent_stop_timeout_exceeds_the_job_grace_period() -> None:
    text = (CONFIGS / "hive-nodeagent.service").read_text()
    assert "KillMode=mixed" in text
    stop = int(text.split("TimeoutStopSec=")[1].split("s")[0])
    assert stop > 10 * 2  # job_grace_period defaults to 10s; leave room to report


def test_sd_notify_sends_a_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1\nSTATUS=serving") is True
        assert server.recv(1024) == b"READY=1\nSTATUS=serving"


def test_sd_notify_outside_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_nats_cluster_example_is_a_valid_server_config() -> None:
    from hivectl.core.embedded import nats_server_binary

    env = {"REQUESTER_PASSWORD": "a", "OPERATOR_PASSWORD": "b", "COMPUTE_PASSWORD": "c",
           "USER_PASSWORD": "d"}  # fmt: skip
    result = subprocess.run(
        [str(nats_server_binary()), "-c", str(CONFIGS / "nats-cluster.conf"), "-t"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout + result.stderr


def test_nats_cluster_example_grants_what_the_embedded_server_grants() -> None:
    from hivectl.core.credentials import permissions, render_config
    from hivectl.core.subjects import Subjects

    # Line breaks and spaces aside, each user's permissions read exactly as the embedded
    # server's (and the test cluster's) generated config has them.
    text = "".join((CONFIGS / "nats-cluster.conf").read_text().split())
    for role, rules in permissions(Subjects()).items():
        assert f"user:{role}," in text
        assert "permissions:" + "".join(render_config(rules).split()) in text, role
