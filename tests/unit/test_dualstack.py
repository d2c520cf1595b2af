"""IPv6 candidates and one form per address (issue 20 item 5), sans-I/O: the IPv6
interface addresses a dual-stack socket offers, and IPv4-mapped addresses put in their IPv4
form wherever addresses enter the transport or the router."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.router.gossip import normal_ip
from services.transport.addresses import literal, normal, parse_host
from services.transport.config import advertised
from services.transport.core import TransportCore
from services.transport.shell import interface_addresses6
from services.transport.signalling import _addrs
from shared.core import Fail, Request
from shared.wire.messages import transport as tm

from .test_transport_endpoint import B_SEED, endpoint

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000010 05 40 00 80     eth0
20010db8000000000000000000000011 05 40 00 01     eth0
20010db8000000000000000000000012 05 40 00 20     eth0
20010db8000000000000000000000013 05 40 00 40     eth0
fd00000000000000000000000000abcd 05 40 00 80     eth0
fe80000000000000049a3cfffedb914e 05 40 20 80     eth0
fec00000000000000000000000000001 05 40 40 80     eth0
20010db8000000000000000000000010 06 40 00 80     eth1
garbage line
"""


def test_ipv6_candidates_are_the_global_stable_addresses(tmp_path: Path) -> None:
    path = tmp_path / "if_inet6"
    path.write_text(IF_INET6)
    # not loopback, link-local, site-local (scope 40), temporary (01), deprecated (20) or
    # tentative (40); once each
    assert interface_addresses6(str(path)) == ["2001:db8::10", "fd00::abcd"]
    assert interface_addresses6(str(tmp_path / "absent")) == []


@pytest.mark.parametrize("given", ["::ffff:100.64.0.7", "::FFFF:100.64.0.7",
                                   "0:0:0:0:0:ffff:6440:7", "100.64.0.7"])
def test_an_ipv4_mapped_address_is_its_ipv4_address_wherever_it_enters(given: str) -> None:
    assert normal(given) == "100.64.0.7"
    assert parse_host(given) == ("100.64.0.7", True)
    assert parse_host(f"[{given}]" if ":" in given else given)[0] == "100.64.0.7"
    assert literal(given) == "100.64.0.7"
    assert _addrs([[given, 4433]]) == [("100.64.0.7", 4433)]  # a peer's candidates
    assert advertised(f"[{given}]:4433" if ":" in given else f"{given}:4433") \
        == ("100.64.0.7", 4433)
    assert normal_ip(given) == "100.64.0.7"  # announcements, in the router


def test_ipv6_addresses_keep_one_compressed_lower_case_form() -> None:
    assert normal("2001:DB8:0:0::10") == "2001:db8::10"
    assert parse_host("[2001:DB8::10]") == ("2001:db8::10", True)


def connect(local: str, host: str) -> object:
    core = TransportCore(Ed25519PrivateKey.generate(), lambda: 1e9, (local, 4433))
    core.endpoint, core._next_bind = endpoint(B_SEED), None
    out = core.handle(Request(ctx=None, body=tm.Connect(peer=b"\x01" * 32, host=host,
                                                        port=4433)), 0.0)
    return next((a for a in out if isinstance(a, Fail)), None)


def test_a_dual_stack_socket_dials_both_families_an_ipv4_one_only_ipv4() -> None:
    refused = connect("0.0.0.0", "2001:db8::10")
    assert isinstance(refused, Fail) and "address family" in refused.message
    refused = connect("2001:db8::1", "100.64.0.7")  # a specific IPv6 address: IPv6 only
    assert isinstance(refused, Fail) and "address family" in refused.message
    for host in ("2001:db8::10", "100.64.0.7", "::ffff:100.64.0.7"):
        out = connect("::", host)
        assert not (isinstance(out, Fail) and "address family" in out.message), host


def test_an_announced_ipv4_mapped_address_is_learned_as_ipv4() -> None:
    """A node that announces ::ffff:a.b.c.d (a dual-stack peer's old software, or a
    forger hoping to be two addresses) is known at a.b.c.d: one address, compared as one."""
    import os

    from services.router import gossip as g
    from shared.envelope import Envelope, MessageType

    me, now = b"\x01" * 32, 1_800_000_000_000
    env = Envelope(os.urandom(16), me, me, MessageType.PEER_ANNOUNCE,
                   g.announce_payload("me", [("::ffff:100.64.0.7", 4433),
                                             ("2001:DB8::7", 4433)], []), now)
    assert g.read_announce(env, now).addrs == (("100.64.0.7", 4433), ("2001:db8::7", 4433))
