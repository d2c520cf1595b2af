"""Prerequisites of a test: skip on a developer's machine, fail in CI.

A test that needs a tool (``docker-compose``, ``ip``) or root calls one of these first. When
the prerequisite is missing the test is skipped with a message saying what to install, except
under CI (the environment variable ``CI`` is ``true``, as GitHub Actions and GitLab CI set it),
where a missing prerequisite means the runner is misconfigured and the test fails instead of
passing silently as a skip.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(message: str) -> NoReturn:
    """Skip the calling test with ``message``, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing prerequisite is a failure in CI)",
                    pytrace=False)
    pytest.skip(message)


def require_command(name: str, why: str) -> str:
    """The path of command ``name`` on PATH; skip (fail in CI) if it is not installed.

    :param why: completes "it is needed to ...": what for, and how to get it, e.g.
        ``"validate docker-compose.yml (apt-get install docker-compose)"``.
    """
    path = shutil.which(name)
    if path is None:
        missing(f"`{name}` is not on PATH; it is needed to {why}")
    return path


def require_root(why: str) -> None:
    """Skip (fail in CI) unless the test runs as root.

    :param why: completes "root is needed to ...", e.g. ``"create network namespaces"``.
    """
    if os.geteuid() != 0:
        missing(f"not running as root; root is needed to {why}")
