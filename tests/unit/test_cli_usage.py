"""`hivectl usage`: what it asks the requester, and bad input refused before anything is
sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from hivectl.cli.main import mount
from hivectl.cli.usage import duration, parse_since

app = mount()


def test_since_takes_a_duration_back_from_now_or_a_utc_date() -> None:
    week = datetime.now(UTC) - timedelta(days=7)
    assert abs((parse_since("7d") - week).total_seconds()) < 5
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T08:30") == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)


def test_bad_options_are_one_line_errors_and_nothing_is_sent() -> None:
    # Nothing listens at this URL: an error from the options comes before any connection.
    url = "nats://127.0.0.1:9"
    for args, said in (
        (["--since", "last tuesday"], "invalid --since 'last tuesday'"),
        (["--by", "queue"], "invalid --by 'queue': expected user, node or user,node"),
    ):
        result = CliRunner().invoke(app, ["--nats-url", url, "usage", *args])
        assert result.exit_code == 2, result.stderr
        assert result.stdout == "" and said in result.stderr.strip().splitlines()[-1]


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (42.04, 750.0, 12_600.0)] == ["42.0s", "12.5m", "3.50h"]
