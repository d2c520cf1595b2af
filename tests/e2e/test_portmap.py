"""Port mapping with whole nodes in the NAT lab (tom/lab.py): a home router that runs a
mapping daemon (Debian's miniupnpd: PCP and NAT-PMP) forwards a public port to the node at
its transport's request, and a node behind another symmetric NAT, which no punch gets
through, reaches it directly there.

miniupnpd maps nothing while the router's WAN address is in a reserved range, the lab's
usual 100.64/10 included, so this lab's public side is ``SUBNET``, a range it takes for
public; the lab's bridge has no way out, so nothing reaches that range's real holders."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from shared.testing.prereq import missing, require_command, require_root
from shared.wire.messages import transport as tm
from shared.wire.messages.sys import Status
from tom import lab as tl

pytestmark = pytest.mark.slow
SUBNET = "198.20.0"


def until(what: str, check: Callable[[], object], timeout_s: float = 30) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)  # polling the nodes' own state
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def lab() -> Iterator[tl.Lab]:
    require_root("create network namespaces for the NAT lab")
    require_command("ip", "create network namespaces (apt-get install iproute2)")
    require_command("iptables", "build NAT routers in the lab (apt-get install iptables)")
    require_command("iptables-legacy", "hook the mapping daemon's chains into the lab's "
                    "router (apt-get install iptables)")
    require_command("miniupnpd", "run a port-mapping daemon (PCP, NAT-PMP) on a lab router "
                    "(apt-get install miniupnpd-iptables)")
    if (reason := tl.available()) is not None:
        missing(f"the NAT lab cannot run here: {reason}")
    with tl.Lab(prefix="tpm", subnet=SUBNET) as lab:
        yield lab


def counters(node: tl.LabNode) -> dict[str, int]:
    reply = node.client.bus.request("transport", Status(), timeout_s=5)
    return dict(reply.counters)


def mapped(node: tl.LabNode) -> list[tuple[str, int]]:
    return [(a.host, a.port) for a in node.transport_info().mapped]


def test_a_node_behind_a_symmetric_nat_is_reached_directly_through_its_mapped_port(
        lab: tl.Lab) -> None:
    """S and T are behind symmetric NATs (no punch ever works between them); S's router
    runs miniupnpd. S's transport maps its port 4433 (PCP), offers the router's public
    address first, the router announces it, and a message from T to S opens a direct
    connection from T to that mapped port. When S stops, the mapping is deleted."""
    r = lab.public("relay")
    nat_s, nat_t = lab.nat("nats", "symmetric"), lab.nat("natt", "symmetric")
    home_s, home_t = lab.home("s", nat_s), lab.home("t", nat_t)
    nat_s.map_ports()
    relay = r.node("relay")
    s, t = home_s.node("s"), home_t.node("t")
    public = (nat_s.public_addr, 4433)

    until("S's port to be mapped", lambda: mapped(s) == [public], 20)
    assert nat_s.mappings() == ["udp 4433"]
    assert counters(s)["portmap_mapped"] == 1
    assert s.transport_info().local[0].host == nat_s.public_addr  # first candidate
    assert f"forwarded by its router at {public[0]}:4433" in s.tom("peers").stdout

    for n in (s, t):
        n.client.add_peer(relay.id, r.addr, 4433)
    # S's announcement names the mapped port first (not the port S's symmetric NAT gives
    # its packets to R, which no stranger gets through): T's router dials it
    until("S's announcement to name its mapped port first at T", lambda: any(
        p.node_id == s.id and (p.host, p.port) == public for p in t.client.peers()), 30)
    seen_by_r = until("R to see S", lambda: s.transport_info().reflexive, 30)
    assert (seen_by_r[0].host, seen_by_r[0].port) != public
    msg = t.client.send(s.id, b"through the mapped port")

    def direct() -> bool:
        return any(p.node_id == s.id and (p.host, p.port) == public
                   for p in t.client.bus.request("transport", tm.Peers()).peers)
    until("T to hold a direct connection to S's mapped port", direct, 30)
    until("the message to be delivered", lambda: t.client.outbox([msg])[0].status in (
        "delivered", "read"), 30)
    peer_s = next(p for p in t.client.peers() if p.node_id == s.id)
    print(f"T -> S: path {peer_s.path} at {public[0]}:{public[1]}; S's transport: "
          f"{ {k: v for k, v in counters(s).items() if k.startswith('portmap')} }")
    assert peer_s.path == "direct"

    # T's router has no daemon: T maps nothing and says so in its counters
    until("T to give up asking its router", lambda: counters(t).get("portmap_timeouts", 0)
          + counters(t).get("portmap_unreachable", 0) > 0, 20)
    assert mapped(t) == []

    s.close()
    until("S's mapping to be deleted when it stops", lambda: nat_s.mappings() == [], 15)
