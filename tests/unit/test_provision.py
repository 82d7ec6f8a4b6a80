"""How a starting requester reconciles a stream that exists with what it would create."""

from __future__ import annotations

from nats.js.api import StreamConfig

from requester.provision import reconcile

DAY = 86400.0


def existing(**fields: object) -> StreamConfig:
    base: dict[str, object] = {
        "name": "HIVE_LOGS",
        "subjects": ["hive.logs.>"],
        "num_replicas": 1,
        "max_age": 7 * DAY,
        "max_bytes": -1,
        "max_msgs": -1,
        "duplicate_window": 120.0,
    }
    return StreamConfig(**(base | fields))  # type: ignore[arg-type]


def wanted(**fields: object) -> StreamConfig:
    base: dict[str, object] = {"name": "HIVE_LOGS", "subjects": ["hive.logs.>"], "num_replicas": 1}
    return StreamConfig(**(base | {"max_age": 7 * DAY} | fields))  # type: ignore[arg-type]


def test_the_same_config_changes_nothing() -> None:
    assert reconcile(existing(), wanted()) == (None, [])


def test_replicas_are_raised_to_the_setting_and_never_lowered() -> None:
    raised, kept = reconcile(existing(), wanted(num_replicas=3))
    assert raised is not None and raised.num_replicas == 3 and kept == []
    unchanged, kept = reconcile(existing(num_replicas=3), wanted(num_replicas=1))
    assert unchanged is None
    assert kept == ["replicas 3 (setting: 1)"]


def test_an_operators_longer_retention_or_byte_cap_is_kept() -> None:
    """The bug this replaces: an existing stream was updated to Hive's whole config,
    so an operator's 30-day retention went back to 7 days (and replicas back to 1)."""
    config, kept = reconcile(existing(max_age=30 * DAY, max_bytes=10**9), wanted())
    assert config is None
    assert kept == ["max_age 30d (Hive's: 7d)"]  # Hive sets no byte cap: none to compare
    config, kept = reconcile(existing(max_age=0), wanted())
    assert config is None and kept == ["max_age unlimited (Hive's: 7d)"]


def test_shorter_retention_and_missing_subjects_are_brought_up_to_hives() -> None:
    old = existing(max_age=DAY, subjects=["hive.logs.>", "extra.>"], duplicate_window=60.0)
    new = wanted(subjects=["hive.logs.>", "hive.more.>"], duplicate_window=120.0)
    config, kept = reconcile(old, new)
    assert config is not None and kept == []
    assert config.max_age == 7 * DAY
    assert config.subjects == ["hive.logs.>", "extra.>", "hive.more.>"]  # the extra one stays
    assert config.duplicate_window == 120.0


def test_a_bucket_hive_sets_no_retention_for_keeps_its_own() -> None:
    bucket = existing(name="KV_hive_jobs", max_age=3 * DAY, num_replicas=1)
    config, kept = reconcile(bucket, StreamConfig(name="KV_hive_jobs", num_replicas=3))
    assert config is not None and config.num_replicas == 3 and config.max_age == 3 * DAY
    assert kept == []
