"""Checks that were unguarded (a one-line mutation removing each left the suite green):
each test here fails without its check."""

from __future__ import annotations

import msgpack

from services.transport.endpoint import (
    ADDR_BURST,
    PROBE_MAGIC,
    TOKEN_BYTES,
    AddressObserved,
    Endpoint,
    PeerAuthenticated,
    PeerClosed,
    PunchEnded,
    channel_binding,
)

from .test_transport_endpoint import (
    A_ID,
    A_SEED,
    B_ID,
    B_SEED,
    C_ID,
    C_SEED,
    Net,
    add_endpoint,
    connected,
    control,
    endpoint,
    three,
)

FAKE = b"\xff" * 32  # a node id above C's: C is the side that dials


def test_a_proof_copied_from_another_connection_does_not_pass_as_that_node() -> None:
    """M gets A to dial it and keeps A's proof; it then presents A's binding and proof on its
    own connection to B. The proof signs this connection's channel binding, so B refuses."""
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED))
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    m = add_endpoint(net, "m", endpoint(C_SEED), ("10.0.0.66", 4433))
    stolen: list[bytes] = []
    real = m._authenticate

    def keep(conn, data, now):  # type: ignore[no-untyped-def]
        stolen.append(data)
        real(conn, data, now)

    m._authenticate = keep  # type: ignore[method-assign]
    a.dial(C_ID, ("10.0.0.66", 4433), net.now)
    net.run(200, until=lambda: C_ID in a.peers)
    assert stolen and C_ID in a.peers

    m2 = add_endpoint(net, "m2", endpoint(C_SEED), ("10.0.0.67", 4433))

    def replay(conn) -> None:  # type: ignore[no-untyped-def]
        conn.lane = conn.quic.get_next_available_stream_id(is_unidirectional=True)
        conn.quic.send_stream_data(conn.lane, len(stolen[0]).to_bytes(4, "big") + stolen[0])

    m2._prove = replay  # type: ignore[method-assign]
    m2.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: bool(net.of("m2", PeerClosed)) or A_ID in b.peers)
    assert A_ID not in b.peers and b.counters["auth_failures"] == 1
    assert not net.of("b", PeerAuthenticated)


def test_each_connection_has_its_own_channel_binding() -> None:
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED), c=endpoint(C_SEED))
    a = net.eps[net.addr["a"]]
    a.dial(B_ID, net.addr["b"], net.now)
    a.dial(C_ID, net.addr["c"], net.now)
    net.run(200, until=lambda: B_ID in a.peers and C_ID in a.peers)
    assert channel_binding(a.peers[B_ID].quic) != channel_binding(a.peers[C_ID].quic)


def test_a_node_never_connects_to_itself() -> None:
    """Told to dial its own address with its own node id (gossip can say anything)."""
    net = Net(a=endpoint(A_SEED))
    a = net.eps[net.addr["a"]]
    a.dial(A_ID, net.addr["a"], net.now)
    net.run(300, until=lambda: len(net.of("a", PeerClosed)) >= 2)
    assert A_ID not in a.peers and not net.of("a", PeerAuthenticated)
    assert a.counters["auth_failures"] >= 1
    assert any("ourselves" in e.reason for e in net.of("a", PeerClosed))


def introduced(net: Net, token: bytes = b"k" * TOKEN_BYTES, asked: bool = True) -> Endpoint:
    """B introduces FAKE to C, at 10.9.9.9:1000 (``asked``: C asked B for it)."""
    c = net.eps[net.addr["c"]]
    control(net, "b", C_ID, ["intro", FAKE, token, [["10.9.9.9", 1000]]])
    assert c._punches[FAKE].introduced is not None
    c._punches[FAKE].initiator = asked  # (as if C's intro? had crossed B's intro)
    return c


def test_a_probe_without_the_punch_token_is_ignored() -> None:
    net = three()
    c = introduced(net)
    c.receive(PROBE_MAGIC + b"x" * TOKEN_BYTES + FAKE, ("10.9.9.9", 1000), net.now)
    assert c.counters["stray_probes"] == 1 and not c.counters["punch_dials"]
    assert FAKE not in c.dialling()
    c.receive(PROBE_MAGIC + b"k" * TOKEN_BYTES + FAKE, ("10.9.9.9", 1000), net.now)
    assert c.counters["punch_dials"] == 1 and FAKE in c.dialling()  # with it: dialled


def test_a_peer_that_asks_again_gets_a_new_punch_to_where_it_is_now() -> None:
    """FAKE restarted (new port) before its proof reached C, and asks again: C's side of the
    old punch (hole heard open, probing over) must not swallow the new introduction, or C
    would never probe FAKE's new address (and its NAT would stay shut to it)."""
    net = three()
    c = introduced(net, asked=False)
    c.receive(PROBE_MAGIC + b"k" * TOKEN_BYTES + FAKE, ("10.9.9.9", 1000), net.now)
    assert c._punches[FAKE].heard is not None
    c.datagrams()
    left = c._punches[FAKE].probes_left
    control(net, "b", C_ID, ["intro", FAKE, b"k" * TOKEN_BYTES, [["10.9.9.9", 1001]]])
    assert c.counters.get("punches_renewed", 0) == 0  # the same request: merged
    control(net, "b", C_ID, ["intro", FAKE, b"m" * TOKEN_BYTES, [["10.9.9.9", 2000]]])
    p = c._punches[FAKE]
    assert c.counters["punches_renewed"] == 1
    assert p.heard is None and p.candidates == [("10.9.9.9", 2000)] and p.tokens == {b"m" * 16}
    assert p.probes_left == left - 1  # the budget carried over (one probe sent since)
    assert c.counters["probes_sent"] >= 2  # probed the new address at once


def test_a_node_that_did_not_ask_for_a_punch_answers_probes_but_never_dials() -> None:
    """An introduction nobody asked for (a hostile relay's) cannot make a node dial."""
    net = three()
    c = introduced(net, asked=False)
    c.datagrams()  # (its own first round)
    for _ in range(2):
        c.receive(PROBE_MAGIC + b"k" * TOKEN_BYTES + FAKE, ("10.9.9.9", 1000), net.now)
    assert c.counters["probes_received"] == 2 and not c.counters["punch_dials"]
    assert FAKE not in c.dialling()
    answers = [d for d, addr in c.datagrams() if addr == ("10.9.9.9", 1000)
               and d.startswith(PROBE_MAGIC)]
    assert len(answers) == 1  # once per probe interval


def test_only_the_punch_s_relay_adds_to_it_or_ends_it() -> None:
    net = three()
    a, c = net.eps[net.addr["a"]], net.eps[net.addr["c"]]
    a.dial(C_ID, net.addr["c"], net.now)
    net.run(200, until=lambda: C_ID in a.peers and A_ID in c.peers)
    introduced(net)
    control(net, "a", C_ID, ["intro", FAKE, b"k" * TOKEN_BYTES, [["10.7.7.7", 7]]])
    assert c._punches[FAKE].candidates == [("10.9.9.9", 1000)]
    assert c.counters["stray_intros"] == 1
    # C asks B to introduce it to D; A, which is not that relay, says it cannot
    d_id = b"\xdd" * 32
    c.punch(d_id, B_ID, net.now)
    token = c._punches[d_id].token  # (probes carry it in clear)
    control(net, "a", C_ID, ["nointro", d_id, token, "made up"])
    assert d_id in c._punches and not [e for e in net.of("c", PunchEnded) if e.peer == d_id]


def test_address_reports_are_taken_a_few_per_window() -> None:
    net = connected()
    b = net.eps[net.addr["b"]]
    for port in range(10):  # A reports B at a new address again and again
        body = b"\xc1" + msgpack.packb(["addr", ["10.66.0.1", 5000 + port], []])
        conn = net.eps[net.addr["a"]].peers[B_ID]
        conn.quic.send_stream_data(conn.lane, len(body).to_bytes(4, "big") + body)
        net.eps[net.addr["a"]]._pump(conn, net.now)
    net.run(50)
    assert len(net.of("b", AddressObserved)) == ADDR_BURST  # one at authentication
    assert b.counters["control_ignored"] == 10 - (ADDR_BURST - 1)
