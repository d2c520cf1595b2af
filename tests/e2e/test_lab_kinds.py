"""The lab's NAT kinds (tom/lab.py, issue 20): each filters and maps as its name says, with
real namespaces, iptables/nft NAT and UDP sockets (a few seconds in all).

One lab: public hosts p1 (reflectors on two ports) and p2 (one), and a NAT of each new kind
with its home; a hairpin NAT with two homes. Each test uses its own local ports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shared.testing.prereq import require_command, require_root
from tom.lab import (
    HOME_ADDRS,
    REBIND_BASE,
    REBIND_LOCAL_PORT,
    SEQUENTIAL_BASE,
    Host,
    Lab,
    Nat,
    received,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]
PORTS = (3478, 3479)


@dataclass
class World:
    p1: Host
    p2: Host
    p3: Host
    """Never contacted by any home."""
    nats: dict[str, Nat]

    def home(self, kind: str) -> Host:
        home = self.nats[kind].home
        assert home is not None
        return home

    def reflectors(self) -> list[str]:
        return [f"{self.p1.addr}:{PORTS[0]}", f"{self.p1.addr}:{PORTS[1]}",
                f"{self.p2.addr}:{PORTS[0]}"]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_root("create network namespaces for the NAT lab")
    for command, package in (("ip", "iproute2"), ("iptables", "iptables"),
                             ("nft", "nftables"), ("conntrack", "conntrack")):
        require_command(command, f"build the lab's NAT kinds (apt-get install {package})")
    with Lab(prefix="tk") as lab:
        p1, p2, p3 = lab.public("p1"), lab.public("p2"), lab.public("p3")
        p1.reflect(*PORTS)
        p2.reflect(PORTS[0])
        nats = {kind: lab.nat(kind[:8], kind) for kind in
                ("full-cone", "address-restricted", "port-restricted", "sequential",
                 "rebinding")}
        nats["hairpin"] = lab.nat("hairpin", "cone")
        for kind, nat in nats.items():
            lab.home(f"h-{kind[:8]}", nat)
        lab.home("h-hairpin2", nats["hairpin"])
        yield World(p1, p2, p3, nats)


@pytest.mark.parametrize("kind", ["full-cone", "address-restricted", "port-restricted",
                                  "rebinding"])
def test_cone_kinds_map_every_destination_to_one_port(world: World, kind: str) -> None:
    nat = world.nats[kind]
    local = REBIND_LOCAL_PORT if kind == "rebinding" else 42000
    port = REBIND_BASE if kind == "rebinding" else 42000
    seen = world.home(kind).observe(local, world.reflectors())
    assert seen == [f"{nat.public_addr}:{port}"] * 3


@pytest.mark.parametrize(("kind", "from_p1_other_port", "from_p3"), [
    ("full-cone", True, True),
    ("address-restricted", True, False),
    ("port-restricted", False, False),
])
def test_filtering(world: World, kind: str, from_p1_other_port: bool, from_p3: bool) -> None:
    """The home opens mappings toward p1:3478 and p1:42199 only; then p1 (from another
    port) and p3 (never contacted) send to it: a full cone lets both in, an
    address-restricted one only p1's, a port-restricted one neither. A marker from p1:42199
    (always let in), sent after them over the same path, shows that they had their chance."""
    nat, home = world.nats[kind], world.home(kind)
    sink = home.sink(42001, hello=[world.reflectors()[0], f"{world.p1.addr}:42199"])
    world.p1.send(42101, f"{nat.public_addr}:42001", 3)
    world.p3.send(42102, f"{nat.public_addr}:42001", 3)
    world.p1.send(42199, f"{nat.public_addr}:42001", 1)
    expect = 1 + 3 * from_p1_other_port + 3 * from_p3 + 1  # 1: the reflector's answer
    assert wait_until(lambda: received(sink) >= expect, 5.0)
    assert received(sink, stop=True) == expect


def test_sequential_nat_gives_the_next_port_to_each_new_destination(world: World) -> None:
    nat = world.nats["sequential"]
    seen = world.home("sequential").observe(42002, world.reflectors())
    assert None not in seen
    assert {str(s).rsplit(":", 1)[0] for s in seen} == {nat.public_addr}
    ports = [int(str(s).rsplit(":", 1)[1]) for s in seen]
    assert ports[0] >= SEQUENTIAL_BASE
    assert ports == [ports[0], ports[0] + 1, ports[0] + 2], ports  # nothing else was sent


def test_rebinding_nat_moves_the_home_to_a_new_port(world: World) -> None:
    nat, home = world.nats["rebinding"], world.home("rebinding")
    to = world.reflectors()[:1]
    assert home.observe(REBIND_LOCAL_PORT, to) == [f"{nat.public_addr}:{REBIND_BASE}"]
    new_port = nat.rebind()
    assert new_port != REBIND_BASE
    assert home.observe(REBIND_LOCAL_PORT, to) == [f"{nat.public_addr}:{new_port}"]
    assert home.observe(42003, to) == [f"{nat.public_addr}:42003"]  # other ports keep theirs


def test_hairpin_homes_share_one_nat_and_reach_each_other_privately(world: World) -> None:
    nat = world.nats["hairpin"]
    first, second = nat.homes
    assert (first.addr, second.addr) == HOME_ADDRS
    assert second.observe(42004, world.reflectors()[:1]) == [f"{nat.public_addr}:42004"]
    sink = second.sink(42005)
    first.send(42005, f"{second.addr}:42005", 3)
    assert wait_until(lambda: received(sink) >= 3, 5.0)
    assert received(sink, stop=True) == 3
