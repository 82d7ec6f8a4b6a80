"""pytest plugin: a private Docker engine and a busybox image, once per session.

Registered from tests/conftest.py (``pytest_plugins``).  Policy, as the design
asks: under ``CI=true`` an engine that cannot start fails the tests, because a
CI run that silently skipped every Docker test would pass while proving
nothing; on a developer machine without Docker the tests are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from .dockerd import DockerUnavailable, PrivateDockerd


def running_in_ci() -> bool:
    """True where CI=true (GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def docker_unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    message = f"private Docker engine unavailable: {reason}"
    if running_in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[PrivateDockerd]:
    """A started PrivateDockerd, shared by the session and stopped at its end.

    pytest caches a session fixture's skip/failure, so a missing engine is
    probed once, not once per test.
    """
    engine = PrivateDockerd()
    try:
        engine.start()
    except DockerUnavailable as exc:
        docker_unavailable(exc.reason)
    try:
        yield engine
    finally:
        # Raises DockerCleanupError (a teardown error) if anything leaked.
        engine.stop()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: PrivateDockerd) -> str:
    """Tag of a local busybox-only image (sh, echo, cat, sleep, ... in /bin)."""
    try:
        return docker_engine.import_busybox()
    except DockerUnavailable as exc:  # e.g. no statically linked busybox
        docker_unavailable(exc.reason)
