"""Issue 14's chaos suite, small: three nodes, random SIGKILL rounds (one service, several of
one node, the same service on two nodes, a whole node), seeded so that a failure replays
with ``python -m bench.chaos --rounds 8 --seed 14``. ``make chaos`` runs the long soak."""

from __future__ import annotations

import pytest

from bench.chaos import HEAL_S, run

pytestmark = pytest.mark.slow


def test_random_kill_rounds_lose_and_duplicate_nothing() -> None:
    rounds, problems = run(8, seed=14)
    bad = [f"round {r.number} ({r.kills}): {r.error}" for r in rounds if not r.ok]
    assert not bad, f"rounds that did not converge within {HEAL_S:g} s: {bad}"
    assert not problems
    kinds = {s == "node" for r in rounds for _, s in r.kills}
    assert kinds == {True, False}, "the seed must include a whole node and single services"
