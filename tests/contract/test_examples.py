"""The implementations under examples/ pass their role's suite, every check of it (none
skipped): each was written from docs/protocol.md and docs/contract.md alone, so this is also
a check that those pages are enough."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "backup": "env TOM_ROLE={role} {python} examples/backup-pyzmq/tom_backup.py "
              "--data {data} --endpoints {endpoints}",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("TOM_CONTRACT_CMD")),
                       reason="checks the examples, not the implementation in TOM_CONTRACT_CMD"),
]


@pytest.mark.parametrize("role", sorted(EXAMPLES))
def test_the_example_passes_its_roles_suite(role: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
         f"tests/contract/test_{role}_contract.py"],
        cwd=ROOT, env={**os.environ, "TOM_CONTRACT_CMD": EXAMPLES[role]},
        capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(r"\d+ passed", out) and "skipped" not in out, out[-3000:]
