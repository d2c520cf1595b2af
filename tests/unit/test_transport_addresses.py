"""Hosts entering the transport: checked as text, literal from peers, names off the loop."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.transport.addresses import NameRefused, is_public, literal, parse_host
from services.transport.core import (
    MAX_RESOLVING,
    Resolve,
    Resolved,
    SendDatagram,
    TransportCore,
    Unreachable,
)
from services.transport.endpoint import AddressObserved
from shared.core import Fail, Reply, Request
from shared.wire import ErrorCode
from shared.wire.messages import transport as m

from .test_transport_endpoint import (
    A_ID,
    B_ID,
    B_SEED,
    NOW_S,
    connected,
    endpoint,
    hostile_write,
)

C_ID = b"\xee" * 32


@pytest.mark.parametrize("host,expected", [
    ("10.0.0.1", ("10.0.0.1", True)),
    ("::1", ("::1", True)),
    ("[2001:db8::1]", ("2001:db8::1", True)),
    ("example.org", ("example.org", False)),
    ("example.org.", ("example.org.", False)),
    ("my_host-1", ("my_host-1", False)),
    ("bücher.example", ("bücher.example", False)),
])
def test_literal_addresses_and_well_formed_names_are_told_apart(host, expected) -> None:  # type: ignore[no-untyped-def]
    assert parse_host(host) == expected


@pytest.mark.parametrize("host", [
    "", "a\x00b", "evil.example\x00.org", "a b", "tab\there", "x" * 64 + ".org",
    "a." * 127 + "a", "a..b", ".", "-lead.org", "fe80::1%eth0", "a/b", "a@b", "\x7f",
    "x" * 300, "999.1.1.1", "127.1",
])
def test_malformed_hosts_are_refused_as_text(host: str) -> None:
    with pytest.raises(ValueError):
        parse_host(host)


def test_peers_give_literals_only() -> None:
    assert literal("192.168.1.2") == "192.168.1.2"
    with pytest.raises(NameRefused):
        literal("attacker-controlled.example")
    with pytest.raises(ValueError):
        literal(b"10.0.0.1")
    assert is_public("100.64.0.1") and is_public("8.8.8.8") and not is_public("10.1.2.3")


def test_a_host_name_in_a_peer_s_address_report_is_refused_and_counted() -> None:
    net = connected()
    b = net.eps[net.addr["b"]]
    for host in ("blackhole.example", "a\x00b"):  # (2 of the 3 reports a window allows)
        body = b"\xc1" + msgpack.packb(["addr", [host, 5], [["never.resolved", 6]]])
        hostile_write(net, len(body).to_bytes(4, "big") + body)
    net.run(50)
    assert b.counters["names_refused"] == 1 and b.counters["malformed_control"] == 1
    assert len(net.of("b", AddressObserved)) == 1 and A_ID in b.peers  # the genuine one


def core() -> TransportCore:
    c = TransportCore(Ed25519PrivateKey.generate(), lambda: NOW_S, ("10.0.0.2", 4433))
    c.endpoint, c._next_bind = endpoint(B_SEED), None
    return c


def connect(c: TransportCore, host: str, ctx: object = "ctx", peer: bytes = A_ID) -> list:  # type: ignore[type-arg]
    return c.handle(Request(ctx, m.Connect(peer=peer, host=host, port=4433)),
                    1.0)


@pytest.mark.parametrize("host", ["a\x00b", "x" * 64 + ".example", "::1"])
def test_a_bad_host_is_answered_invalid_and_counted_not_raised(host: str) -> None:
    c = core()
    (fail,) = connect(c, host)
    assert isinstance(fail, Fail) and fail.code == ErrorCode.INVALID
    assert c.stats["invalid_hosts"] == 1 and not c.endpoint._conns  # type: ignore[union-attr]


def test_a_host_name_is_resolved_by_the_shell_then_dialled() -> None:
    c = core()
    (resolve,) = connect(c, "peer.example")
    assert isinstance(resolve, Resolve) and resolve.host == "peer.example"
    assert connect(c, "peer.example", "ctx2") == []  # joins the resolution in progress
    assert c.queues()["resolving"] == 1
    c.handle(Resolved(resolve.token, ("10.0.0.9", 4433)), 1.5)
    assert A_ID in c.endpoint.dialling()  # type: ignore[union-attr]
    assert c.queues()["resolving"] == 0


def test_a_name_that_does_not_resolve_fails_the_connects_waiting_on_it() -> None:
    c = core()
    (resolve,) = connect(c, "nowhere.example")
    actions = c.handle(Resolved(resolve.token, None, "no answer", timed_out=True), 6.0)
    assert actions == [Fail("ctx", ErrorCode.PEER_TIMEOUT,
                            "dns: cannot resolve nowhere.example: no answer")]
    assert c.stats["resolve_failures"] == 1 and not c._connects


def test_a_name_that_does_not_exist_fails_failed_not_peer_timeout() -> None:
    """The router takes ``failed`` with ``dns:`` as final for that address (issue 17)."""
    c = core()
    (resolve,) = connect(c, "no-such-host.invalid")
    actions = c.handle(Resolved(resolve.token, None, "no such host"), 1.1)
    assert actions == [Fail("ctx", ErrorCode.FAILED,
                            "dns: cannot resolve no-such-host.invalid: no such host")]


def test_an_icmp_error_fails_the_connect_at_once_with_its_reason() -> None:
    c = core()
    [initial] = [a for a in connect(c, "10.0.0.9") if isinstance(a, SendDatagram)]
    out = c.handle(Unreachable(("10.0.0.9", 4433), initial.data[:64],
                               "nothing listening at 10.0.0.9:4433"), 1.1)
    assert [a for a in out if isinstance(a, Fail)] == [Fail(
        "ctx", ErrorCode.FAILED, "unreachable: nothing listening at 10.0.0.9:4433")]
    assert not c._connects


def test_names_being_resolved_at_once_are_bounded() -> None:
    c = core()
    for i in range(MAX_RESOLVING):
        assert isinstance(connect(c, f"n{i}.example", peer=bytes([i]) * 32)[0], Resolve)
    (fail,) = connect(c, "one-more.example", peer=C_ID)
    assert isinstance(fail, Fail) and fail.code == ErrorCode.OVERLOADED
    assert c.stats["resolves_refused"] == 1 and C_ID not in c._connects


def test_an_unrelated_closed_connection_does_not_fail_a_connect_being_resolved() -> None:
    c = core()
    connect(c, "peer.example")
    assert c._fail_connects("some other connection ended") == []
    assert A_ID in c._connects


def test_a_connect_to_a_connected_peer_is_answered_at_once() -> None:
    net = connected()
    c = core()
    c.endpoint = net.eps[net.addr["b"]]
    (reply,) = connect(c, "whatever.example")
    assert isinstance(reply, Reply) and B_ID in net.eps[net.addr["a"]].peers
