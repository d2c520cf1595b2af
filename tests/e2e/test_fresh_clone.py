"""The README's commands on a fresh clone: `make node` sets up (the runtime only) and starts
everything; `make test` would set up everything, development tools included."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from shared.testing.prereq import require_command

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def dry_run(clone: Path, env: dict[str, str], target: str) -> str:
    """The commands `make TARGET` would run (``make -n``), one a line."""
    r = subprocess.run(["make", "-n", target], cwd=clone, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def in_order(text: str, parts: list[str]) -> bool:
    at = 0
    for part in parts:
        at = text.find(part, at)
        if at < 0:
            return False
    return True


def test_make_node_on_a_fresh_clone() -> None:
    require_command("git", "cloning the repository")
    require_command("make", "running the README's commands")
    work = Path(tempfile.mkdtemp(prefix="tomf-", dir="/tmp"))
    clone, home = work / "c", work / "h"
    env = {**os.environ, "TOM_HOME": str(home)}
    env.pop("VIRTUAL_ENV", None)
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        # `make test` on a fresh clone does the whole set-up, then lints and tests
        plan = dry_run(clone, env, "test")
        assert in_order(plan, [" -m venv .venv", " -e .", " -e '.[dev]'", "ruff check",
                               "pytest"]), plan
        up = subprocess.run(["make", "node"], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "healthy" in up.stdout and "NOT healthy" not in up.stdout, up.stdout
        # the node's environment has no development tools; `make test` would add them only
        venv = clone / ".venv"
        assert [t for t in ("pytest", "ruff", "mypy") if (venv / "bin" / t).exists()] == []
        size = subprocess.run(["du", "-sm", str(venv)], capture_output=True, text=True)
        print(f"runtime venv: {size.stdout.split()[0]} MB")
        plan = dry_run(clone, env, "test")
        assert " -e '.[dev]'" in plan and " -m venv " not in plan, plan
        node_id = (home / "identity.key").stat()
        assert node_id.st_size == 32 and node_id.st_mode & 0o777 == 0o600
        again = subprocess.run(["make", "node"], cwd=clone, env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        subprocess.run([str(clone / ".venv" / "bin" / "tom"), "node", "down"], env=env,
                       capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
