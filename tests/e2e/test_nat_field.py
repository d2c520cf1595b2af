"""NAT traversal as users meet it (issue 20), at small scale: the campaign of
bench/bench_nat.py with a few pairs of whole nodes (all-in-one) per lab. The full grid (up to
150 ms per side, 10 % loss, 16 punches in flight, many trials) is the bench's; its figures
are in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import statistics

import pytest

from bench import bench_nat as bn
from shared.testing.prereq import missing, require_command, require_root
from tom import lab as tl

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture(autouse=True)
def prerequisites() -> None:
    require_root("create network namespaces for the NAT lab")
    for command, package in (("ip", "iproute2"), ("iptables", "iptables"),
                             ("nft", "nftables"), ("conntrack", "conntrack")):
        require_command(command, f"build the lab's NAT kinds (apt-get install {package})")
    if (reason := tl.available()) is not None:
        missing(f"the NAT lab cannot run here: {reason}")


def cells(scenario: str, delay_ms: float, loss: float, inflight: int, trials: int,
          jitter_ms: float = 0.0) -> bn.Cell:
    args = argparse.Namespace(trials=trials, jitter_ms=jitter_ms, losses=[loss],
                              inflight=[inflight])
    out: list[bn.Cell] = []
    bn.run_scenario(scenario, delay_ms, args, out)
    assert len(out) == 1
    return out[0]


def test_cone_kinds_punch_under_delay_jitter_loss_and_concurrency() -> None:
    """Six pairs mixing full cone, address- and port-restricted NATs punch at once through
    one relay, with 60 ms (+ up to 10 ms) each way per side: with 5 % loss at every NAT, all
    direct; without loss, at the median the asker holds an authenticated direct connection
    within 1.5 RTT + 100 ms of the introduction (the hole opens half an RTT in, the handshake
    with the server's proof takes one more). (Times under loss are the bench's, over 100
    trials: with six, a handshake packet lost in half of them moves the median by the
    QUIC probe timeout.)"""
    lossy = cells("cone", 60, 0.05, 6, 6, jitter_ms=10)
    assert lossy.direct == 1.0, [t.reason for t in lossy.trials if not t.ok]
    cell = cells("cone", 60, 0.0, 6, 6, jitter_ms=10)
    assert cell.direct == 1.0, [t.reason for t in cell.trials if not t.ok]
    rtt = 2 * 60 + 10
    opened = statistics.median(t.opened_ms for t in cell.trials)
    authenticated = statistics.median(t.elapsed_ms for t in cell.trials)
    print(f"cone, 60 ms + 10 jitter, 6 in flight: open {opened:.0f} ms, authenticated "
          f"{authenticated:.0f} ms (median; 1.5 RTT + 100 = {1.5 * rtt + 100:.0f})")
    assert 0 <= opened <= authenticated <= 1.5 * rtt + 100, (opened, authenticated)


def test_sequential_symmetric_nats_are_punched_by_port_prediction() -> None:
    """Sequential symmetric <-> full cone, address- and port-restricted (the last needs the
    prediction: the others let the new port in by themselves)."""
    cell = cells("sequential", 20, 0.0, 3, 3)
    assert cell.direct == 1.0, [(t.kinds, t.reason) for t in cell.trials if not t.ok]
    assert ("sequential", "port-restricted") in [t.kinds for t in cell.trials]


def test_random_symmetric_against_port_restricted_punches_by_birthday_probing() -> None:
    """The pairing only birthday probing opens: two pairs at once, each within 5 s of
    its introduction (the issue asks for half of them)."""
    cell = cells("sym-port", 0, 0.0, 2, 2)
    ok = [t for t in cell.trials if t.ok]
    assert len(ok) >= 1, [t.reason for t in cell.trials]
    assert all(t.elapsed_ms <= 5000 for t in ok), [t.elapsed_ms for t in ok]


def test_a_rebinding_nat_keeps_the_conversation_with_nothing_lost() -> None:
    talk = bn.converse(hairpin=False, seconds=12)
    assert talk.direct_before
    assert not talk.lost, talk.line("rebinding")
    assert talk.direct_again_s is not None, talk.line("rebinding")


def test_two_nodes_behind_one_nat_talk_directly_with_nothing_lost() -> None:
    talk = bn.converse(hairpin=True, seconds=4)
    assert talk.direct_before and talk.direct_again_s is not None, talk.line("hairpin")
    assert not talk.lost, talk.line("hairpin")
