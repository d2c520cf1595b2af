"""IPv6 candidates and IPv4-mapped addresses, with whole nodes in the NAT lab (tom/lab.py):
public hosts with an IPv6 address beside their IPv4 one. A node whose socket is dual-stack
(`[transport] host = "::"`) offers its IPv6 interface address as a candidate and is reached
over IPv6, while IPv4 peers reach the same socket and are known by their plain IPv4
address, never as ``::ffff:a.b.c.d``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from shared.testing.prereq import missing, require_command, require_root
from shared.wire import WireError
from shared.wire.messages import transport as tm
from tom import lab as tl

pytestmark = pytest.mark.slow


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
    if (reason := tl.available()) is not None:
        missing(f"the NAT lab cannot run here: {reason}")
    with tl.Lab(prefix="tds") as lab:
        yield lab


def peers(node: tl.LabNode) -> dict[bytes, tuple[str, int]]:
    reply = node.client.bus.request("transport", tm.Peers())
    return {p.node_id: (p.host, p.port) for p in reply.peers}


def test_a_dual_stack_node_offers_ipv6_and_knows_ipv4_peers_by_their_ipv4_address(
        lab: tl.Lab) -> None:
    """D is dual-stack (host "::") on a host with 100.64.0.x and 2001:db8::x; V6 is
    dual-stack too and dials D over IPv6; V4 (host 0.0.0.0) dials D over IPv4."""
    hd, h6, h4 = lab.public("d", ipv6=True), lab.public("v6", ipv6=True), lab.public("v4")
    # D's system makes IPv6 sockets IPv6-only unless told otherwise (some do): the
    # transport turns that off itself
    hd.run(["sysctl", "-qw", "net.ipv6.bindv6only=1"], check=True)
    dual = {"transport": {"host": "::"}}
    d, v6, v4 = hd.node("d", dual), h6.node("v6", dual), h4.node("v4")
    assert hd.addr6 is not None and h6.addr6 is not None

    info = d.transport_info()
    local = [(a.host, a.port) for a in info.local]
    assert (hd.addr6, 4433) in local and (hd.addr, 4433) in local
    assert not any(h.startswith("fe80") or h == "::1" for h, _ in local)

    v6.client.bus.request("transport", tm.Connect(peer=d.id, host=hd.addr6, port=4433),
                          timeout_s=15)
    v4.client.bus.request("transport", tm.Connect(peer=d.id, host=hd.addr, port=4433),
                          timeout_s=15)
    assert peers(v6)[d.id] == (hd.addr6, 4433)
    until("D to hold both", lambda: {v6.id, v4.id} <= peers(d).keys(), 15)
    seen = peers(d)
    print(f"D sees V6 at {seen[v6.id]}, V4 at {seen[v4.id]}")
    assert seen[v6.id] == (h6.addr6, 4433)
    assert seen[v4.id] == (h4.addr, 4433)  # not ::ffff:100.64.0.x
    # what D tells V4 it sees (V4's reflexive address) is plain IPv4 too
    until("V4 to learn its address from D", lambda: v4.transport_info().reflexive, 15)
    assert [(a.host, a.port) for a in v4.transport_info().reflexive] == [(h4.addr, 4433)]

    # an IPv4 address where nothing listens: the ICMP error, read from the dual-stack
    # socket, fails the dial at once (not after the 10 s authentication timeout)
    started = time.monotonic()
    with pytest.raises(WireError, match="nothing listening"):
        d.client.bus.request("transport", tm.Connect(peer=b"\x07" * 32, host=h4.addr,
                                                      port=4499), timeout_s=15)
    assert time.monotonic() - started < 5
