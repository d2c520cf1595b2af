"""Issue 15 in the NAT lab: the hub of a group sits behind a NAT whose link is cut (not
killed) mid-conversation; a successor takes over, nothing any member sent is lost or
doubled, and when the link comes back the old hub follows the new one (no split group)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from shared.testing.prereq import missing, require_command, require_root
from tests.e2e.test_groups import GroupNode, Writer, counts, make_group, order, send
from tests.e2e.test_nat import until
from tom import lab as tl

pytestmark = pytest.mark.slow
GROUPS = {"beat_s": 0.5, "takeover_after_s": 3.0, "claim_wait_s": 1.0, "resend_s": 2.0}


class Member(GroupNode):
    """A lab node driven through the groups API (GroupNode's helpers, not its start-up)."""

    def __init__(self, node: tl.LabNode) -> None:  # started by the lab, not by GroupNode
        self.node, self.name, self.id = node, node.name, node.id
        self.data, self.client = node.data, node.client


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[dict[str, Member], dict[str, tl.Nat], str]]:
    require_root("create network namespaces for the NAT lab")
    require_command("ip", "create network namespaces (apt-get install iproute2)")
    require_command("iptables", "build NAT routers in the lab (apt-get install iptables)")
    if (reason := tl.available()) is not None:
        missing(f"the NAT lab cannot run here: {reason}")
    with tl.Lab(prefix="tg") as lab:
        r = lab.public("relay")
        relay = r.node("relay", {"groups": GROUPS})
        nats = {k: lab.nat(f"nat{k}", "cone") for k in "hbcd"}
        nodes = {k: Member(lab.home(k, nat).node(k, {"groups": GROUPS}))
                 for k, nat in nats.items()}
        for n in nodes.values():
            n.client.add_peer(relay.id, r.addr, 4433)
        until("every node knows every other", lambda: all(
            {p.node_id for p in n.client.peers()} >= {m.id for m in nodes.values() if m is not n}
            for n in nodes.values()), 60)
        yield nodes, nats, r.addr


def test_the_hubs_link_cut_mid_conversation_a_successor_takes_over_and_the_hub_follows(
        world: tuple[dict[str, Member], dict[str, tl.Nat], str]) -> None:
    nodes, nats, relay_addr = world
    h, b, c, d = (nodes[k] for k in "hbcd")
    members = [h, b, c, d]
    gid = make_group(h, [b, c, d], h, "cut")
    writers = {m.name: Writer(m, gid) for m in members}
    for w in writers.values():
        w.start()
    until("traffic from every member", lambda: all(len(w.ids) >= 10
                                                   for w in writers.values()), 60)
    cut = [relay_addr] + [nats[k].public_addr for k in "bcd"]
    for addr in cut:
        nats["h"].block(addr)
    cut_at = time.monotonic()
    try:
        survivors = [b, c, d]
        until("a successor took over", lambda: all(
            s.groups()[gid].hub != h.id for s in survivors), 60)
        took = time.monotonic() - cut_at
        at = {s.name: len(writers[s.name].ids) for s in survivors}
        until("more traffic in the new term", lambda: all(
            len(writers[s.name].ids) >= at[s.name] + 10 for s in survivors), 60)
    finally:
        for addr in cut:
            nats["h"].unblock(addr)
    new_hub = b.groups()[gid].hub
    until("the old hub follows the new one", lambda: h.groups()[gid].hub == new_hub, 90)
    for w in writers.values():
        w.stop.set()
    for w in writers.values():
        w.join(30)
    late = [send(m, gid, f"after the cut {m.name}") for m in members]
    want = {(m.id, i) for m in members for i in writers[m.name].ids} | \
        {(m.id, i) for m, i in zip(members, late, strict=True)}
    until("every member has every accepted message", lambda: all(
        set(counts(m, gid)) >= want for m in members), 180)
    for m in members:
        seen = counts(m, gid)
        assert set(seen) == want, m.name
        assert set(seen.values()) == {1}, f"{m.name} has a message twice"
    orders = {m.name: order(m, gid) for m in members}
    assert all(o == orders["b"] for o in orders.values()), "members disagree on the order"
    assert h.groups()[gid].term == 2
    print(f"\nhub's link cut: successor took over after {took:.1f} s; "
          f"hub's messages while cut: {h.counters().get('log_truncated', 0)} truncations")
