"""The rendering helpers of `hivectl.cli.output`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from hivectl.cli.output import (
    age,
    counted,
    dump_json,
    dump_yaml,
    human_bytes,
    human_bytes_of,
    human_cpu,
    join_labels,
    plain_lines,
    print_table,
    timestamp,
    visible,
    write_lines,
    write_out,
)
from hivectl.core.models import Resources

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_human_bytes_uses_iec_units() -> None:
    assert human_bytes(0) == "0B"
    assert human_bytes(1023) == "1023B"
    assert human_bytes(1536) == "1.5KiB"
    assert human_bytes(int(12.3 * 1024**3)) == "12.3GiB"
    assert human_bytes(2 * 1024**4) == "2.0TiB"
    assert human_bytes(None) == "-"
    short = [human_bytes(v, short=True) for v in (1023, 1536, int(9.96 * 1024**3), 252 * 1024**3)]
    assert short == ["1023B", "1.5KiB", "10GiB", "252GiB"]


def test_human_bytes_of_writes_a_shared_unit_once() -> None:
    assert human_bytes_of(int(12.3 * 1024**3), 16 * 1024**3) == "12.3/16.0GiB"
    assert human_bytes_of(512 * 1024**2, 2 * 1024**3) == "512.0MiB/2.0GiB"
    assert human_bytes_of(None, 16 * 1024**3) == "-/16.0GiB"
    assert human_bytes_of(100, 1000) == "100/1000B"
    assert human_bytes_of(int(40.2 * 1024**3), 64 * 1024**3, short=True) == "40/64GiB"


def test_human_cpu() -> None:
    assert [human_cpu(v) for v in (8.0, 7.5, 0.25, 1 / 3, None)] == [
        "8",
        "7.5",
        "0.25",
        "0.33",
        "-",
    ]


def test_age_picks_one_unit() -> None:
    cases = {
        timedelta(seconds=3): "3s ago",
        timedelta(seconds=119): "119s ago",
        timedelta(minutes=5): "5m ago",
        timedelta(hours=5): "5h ago",
        timedelta(days=4): "4d ago",
        timedelta(seconds=-10): "0s ago",  # a clock a little ahead of ours
    }
    for delta, expected in cases.items():
        assert age(NOW - delta, NOW) == expected
    assert age(None, NOW) == "-"


def test_timestamp() -> None:
    assert timestamp(NOW - timedelta(seconds=3), NOW) == "2025-01-02 03:04:02 UTC (3s ago)"
    assert timestamp(None, NOW) == "-"


def test_counted_says_1_node_and_2_nodes() -> None:
    assert [counted(n, "node") for n in (0, 1, 2)] == ["0 nodes", "1 node", "2 nodes"]
    assert counted(1, "node agent") == "1 node agent"
    assert counted(3, "match", "matches") == "3 matches"


def test_labels_sorted_and_joined() -> None:
    assert join_labels({"zone": "eu-1", "gpu": "true"}) == "gpu=true,zone=eu-1"
    assert join_labels({}) == "-"


def test_plain_lines_align_without_trailing_spaces() -> None:
    lines = plain_lines([["ID", "STATUS"], ["a-long-id", "HEALTHY"], ["b", "-"]])
    assert lines == ["ID          STATUS", "a-long-id   HEALTHY", "b           -"]
    assert plain_lines([]) == []


def test_json_and_yaml_of_models_match_model_dump() -> None:
    models = [Resources(cpu=1.5, memory=2), Resources()]
    expected = [m.model_dump(mode="json") for m in models]
    assert json.loads(dump_json(models)) == expected
    assert yaml.safe_load(dump_yaml(models)) == expected


def test_visible_shows_control_characters_as_escapes() -> None:
    assert visible("plain text, ünïcödé 😀") == "plain text, ünïcödé 😀"
    assert visible("\x1b]0;pwned\x07\x1b[2J") == "\\x1b]0;pwned\\x07\\x1b[2J"
    assert visible("a\tb\nc\r") == "a\\tb\\nc\\r"
    assert visible("\x00\x7f\x85\x9b") == "\\x00\\x7f\\x85\\x9b"
    # Bidi controls reorder what the terminal shows; surrogates cannot even be encoded.
    assert visible("a\u202eb\u2066\u2028\udcff") == "a\\u202eb\\u2066\\u2028\\udcff"


def test_plain_lines_escape_cells_before_aligning_them() -> None:
    lines = plain_lines([["NAME", "STATE"], ["\x1b[31mred", "RUNNING"], ["b", "-"]])
    assert lines == [
        "NAME          STATE",
        "\\x1b[31mred   RUNNING",
        "b             -",
    ]


def test_tables_lines_and_text_on_stdout_carry_no_raw_control_character(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_table(["NAME"], [["x\x1b[2Jy"]])
    write_lines(["Name:  a\nState: forged", "Env:   \x9b"])
    write_out("first\nsecond \x07")
    assert capsys.readouterr().out == (
        "NAME\nx\\x1b[2Jy\nName:  a\\nState: forged\nEnv:   \\x9b\nfirst\nsecond \\x07\n"
    )


def test_a_rich_table_on_a_terminal_shows_escapes_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    print_table(["NAME"], [["x\x1b[2Jy"]])
    out = capsys.readouterr().out
    assert "x\\x1b[2Jy" in out and "\x1b[2J" not in out
