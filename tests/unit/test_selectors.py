"""Label selectors as kubectl writes them."""

from __future__ import annotations

import pytest

from hivectl.core.selectors import Requirement, Selector, SelectorError, parse_selector

LABELS = {"zone": "eu-1", "gpu": "a100", "tier": "batch", "example.com/team": "ml"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zone=eu-1", True),
        ("zone==eu-1", True),
        ("zone=us-1", False),
        ("missing=x", False),
        ("zone!=us-1", True),
        ("zone!=eu-1", False),
        ("missing!=x", True),  # absent counts as "not equal", as in Kubernetes
        ("zone in (eu-1,us-1)", True),
        ("zone in (us-1,ap-1)", False),
        ("missing in (a,b)", False),
        ("zone notin (us-1,ap-1)", True),
        ("zone notin (eu-1)", False),
        ("missing notin (a,b)", True),
        ("gpu", True),
        ("missing", False),
        ("!missing", True),
        ("!gpu", False),
        ("example.com/team=ml", True),
        ("tier=", False),  # empty value: only a label with an empty value matches
    ],
)
def test_each_operator(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


def test_empty_value_matches_an_empty_label() -> None:
    assert parse_selector("tier=").matches({"tier": ""})


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,"])
def test_empty_selector_matches_everything(text: str) -> None:
    selector = parse_selector(text)
    assert not selector
    assert selector.matches({})
    assert selector.matches(LABELS)


def test_requirements_are_anded() -> None:
    assert parse_selector("zone=eu-1,gpu,tier!=service").matches(LABELS)
    assert not parse_selector("zone=eu-1,gpu=h100").matches(LABELS)
    selector = parse_selector("zone in (eu-1,eu-2),!spot,gpu")
    assert len(selector.requirements) == 3
    assert selector


@pytest.mark.parametrize(
    "text",
    [
        "zone=eu-1",
        " zone = eu-1 ",
        "zone\t=\teu-1",
        "  zone==eu-1",
    ],
)
def test_whitespace_around_equality(text: str) -> None:
    assert parse_selector(text).requirements == (Requirement("zone", "=", frozenset({"eu-1"})),)


@pytest.mark.parametrize(
    "text",
    [
        "zone in (eu-1,us-1)",
        "zone in(eu-1,us-1)",
        "zone in ( eu-1 , us-1 )",
        "  zone   in   (eu-1,   us-1)  ",
    ],
)
def test_whitespace_and_commas_in_sets(text: str) -> None:
    (requirement,) = parse_selector(text).requirements
    assert requirement == Requirement("zone", "in", frozenset({"eu-1", "us-1"}))


def test_commas_inside_parentheses_do_not_split() -> None:
    selector = parse_selector("zone in (a,b,c),gpu notin (k80, p100),tier")
    assert selector.requirements == (
        Requirement("zone", "in", frozenset({"a", "b", "c"})),
        Requirement("gpu", "notin", frozenset({"k80", "p100"})),
        Requirement("tier", "exists"),
    )
    assert selector.matches({"zone": "b", "gpu": "a100", "tier": "x"})
    assert not selector.matches({"zone": "b", "gpu": "k80", "tier": "x"})


def test_not_equal_and_absence_parse() -> None:
    assert parse_selector("zone != eu-1").requirements == (
        Requirement("zone", "!=", frozenset({"eu-1"})),
    )
    assert parse_selector("! spot").requirements == (Requirement("spot", "!exists"),)


def test_a_parsed_selector_is_a_value() -> None:
    assert parse_selector("a=1,b") == parse_selector(" a = 1 , b ")
    assert hash(parse_selector("a=1")) == hash(parse_selector("a==1"))
    assert Selector() == parse_selector("")


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("zone in (eu-1", "unbalanced '('"),
        ("zone in eu-1)", "unbalanced ')'"),
        ("zone in ((a))", "zone in ((a))"),
        ("zone in ()", "''"),
        ("zone in (a,,b)", "''"),
        ("zone in (a b)", "'a b'"),
        ("zone in (a,b!)", "'b!'"),
        ("zone=eu 1", "zone=eu 1"),
        ("zone=a=b", "zone=a=b"),
        ("zone>=1", "zone>=1"),
        ("=eu-1", "=eu-1"),
        ("-zone=1", "-zone=1"),
        ("zone-=1", "zone-=1"),
        ("zo ne", "zo ne"),
        ("zone=" + "x" * 64, "zone="),
        ("k" * 64, "k" * 64),
        ("zone in", "zone in"),
        ("zone notin x", "zone notin x"),
        ("!!zone", "!!zone"),
        ("zone=é", "zone=é"),
    ],
)
def test_bad_selectors_are_refused_with_a_message(text: str, quoted: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    message = str(info.value)
    assert quoted in message, message
    assert "\n" not in message


def test_the_error_message_suggests_the_syntax() -> None:
    with pytest.raises(SelectorError, match=r"use k=v, k!=v"):
        parse_selector("gpu>1")


def test_selector_error_is_a_value_error() -> None:
    assert issubclass(SelectorError, ValueError)
