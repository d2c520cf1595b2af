"""The README's node command on a fresh clone: `make node` sets up and starts everything."""

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


def test_make_node_on_a_fresh_clone() -> None:
    require_command("git", "cloning the repository")
    require_command("make", "running the README's commands")
    work = Path(tempfile.mkdtemp(prefix="tomf-", dir="/tmp"))
    clone, home = work / "c", work / "h"
    env = {**os.environ, "TOM_HOME": str(home)}
    env.pop("VIRTUAL_ENV", None)
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        up = subprocess.run(["make", "node"], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "healthy" in up.stdout and "NOT healthy" not in up.stdout, up.stdout
        node_id = (home / "identity.key").stat()
        assert node_id.st_size == 32 and node_id.st_mode & 0o777 == 0o600
        again = subprocess.run(["make", "node"], cwd=clone, env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        subprocess.run([str(clone / ".venv" / "bin" / "tom"), "node", "down"], env=env,
                       capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
