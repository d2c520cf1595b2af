"""docs/client.md works as written: each of its examples runs, in order, as a program of its
own against two whole nodes (`tom node up`), on the node its first line names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_router import RealNode, until

pytestmark = pytest.mark.slow
DOC = Path(__file__).parents[2] / "docs" / "client.md"
BLOCK = re.compile(r"```python\n(# runs on: (alice|bob)\n.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """(node, program) of each example, in document order."""
    return [(m.group(2), m.group(1)) for m in BLOCK.finditer(DOC.read_text())]


def test_the_document_has_examples_for_every_part() -> None:
    found = examples()
    assert len(found) == DOC.read_text().count("```python") >= 6
    programs = "\n".join(p for _n, p in found)
    for call in ("c.send(", "c.events(", "c.read(", "c.outbox(", "c.group_send(",
                 "c.group_join("):
        assert call in programs, call


def test_every_example_of_the_client_guide_runs() -> None:
    alice, bob = RealNode("alice"), RealNode("bob")
    try:
        alice.introduce(bob)
        until("alice and bob connected", lambda: any(
            p.node_id == bob.id and p.connected for p in alice.client.peers()), 30)
        nodes = {"alice": (alice, bob), "bob": (bob, alice)}
        for i, (name, program) in enumerate(examples()):
            me, other = nodes[name]
            env = dict(os.environ, TOM_HOME=str(me.data), PEER=other.id.hex(),
                       PYTHONPATH=str(DOC.parents[1]))
            r = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 0, f"example {i + 1} ({name}) failed:\n{program}\n" \
                                      f"{r.stdout}{r.stderr}"
    finally:
        alice.stop()
        bob.stop()
