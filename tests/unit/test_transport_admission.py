"""Admission: Retry tokens and per-address limits for half-open connections, and the
authenticated-connection cap that keeps room for the node's own dials and known peers."""

from __future__ import annotations

import os
from dataclasses import replace

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from services.crypto.core import Identity
from services.transport.endpoint import (
    ALPN,
    CONTROL,
    Endpoint,
    PeerAuthenticated,
    PeerClosed,
    Received,
)

from .test_transport_endpoint import (
    A_ID,
    A_SEED,
    B_ID,
    B_SEED,
    UNLIMITED,
    Net,
    add_endpoint,
    endpoint,
)


def client_hello(now: float) -> bytes:
    """The first datagram of a fresh QUIC client: a padded Initial with a ClientHello."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True,
                                                          alpn_protocols=[ALPN]))
    quic.connect(("10.0.0.2", 4433), now)
    return quic.datagrams_to_send(now)[0][0]


def half_open(ep: Endpoint) -> int:
    return sum(1 for c in ep._conns if c.node_id is None and not c.dialled and not c.closing)


def live(ep: Endpoint) -> set[bytes]:
    return {n for n, c in ep.peers.items() if not c.closing}


def seed(n: int) -> bytes:
    return bytes([0x40 + n]) * 32


def node_id(n: int) -> bytes:
    return Identity(seed(n), os.urandom).node_id


def victim(**limits: float) -> tuple[Net, Endpoint]:
    net = Net(b=endpoint(B_SEED, limits=replace(UNLIMITED, **limits)))  # type: ignore[arg-type]
    return net, net.eps[net.addr["b"]]


def joins(net: Net, name: str, ep: Endpoint, addr: tuple[str, int], to: Endpoint,
          rounds: int = 200, timers: bool = True) -> bool:
    add_endpoint(net, name, ep, addr)
    ep.dial(to.node_id, net.addr["b"], net.now)
    def both() -> bool:  # the dialler knows the peer half a round trip before it is known
        return to.node_id in ep.peers and ep.node_id in to.peers \
            and to.peers[ep.node_id].addr == addr

    net.run(rounds, until=lambda: both() or bool(net.of(name, PeerClosed)), timers=timers)
    return both()


def mute(ep: Endpoint) -> Endpoint:
    """A client that completes the handshake but never proves its node id."""
    ep._prove = lambda conn: None  # type: ignore[method-assign]
    return ep


# -- half-open connections ------------------------------------------------------------------


def test_a_spoofed_client_hello_flood_keeps_no_state_beyond_the_retry_threshold() -> None:
    """Unanswered ClientHellos from as many addresses as the attacker likes: state for
    `retry_above` of them, a stateless Retry for the rest; a real peer still connects."""
    net, b = victim(retry_above=8, max_half_open=16)
    for i in range(300):
        b.receive(client_hello(net.now), (f"10.7.{i // 250}.{i % 250 + 1}", 5000), net.now)
    assert half_open(b) == 8
    assert b.counters["retries_sent"] == 292 and not b.counters["refused_half_open"]
    assert sum(len(d) for d, _ in b.datagrams()) > 0
    a = endpoint(A_SEED)
    assert joins(net, "a", a, ("10.0.0.50", 4433), b)
    assert A_ID in b.peers


def test_a_peer_connects_through_a_retry() -> None:
    net, b = victim(retry_above=0)  # every Initial must answer a Retry first
    a = endpoint(A_SEED)
    assert joins(net, "a", a, ("10.0.0.50", 4433), b)
    assert b.counters["retries_sent"] == 1 and A_ID in b.peers


def test_a_forged_or_replayed_retry_token_is_refused() -> None:
    net, b = victim(retry_above=0)
    a = endpoint(A_SEED)
    add_endpoint(net, "a", a, ("10.0.0.50", 4433))
    a.dial(B_ID, net.addr["b"], net.now)
    initial = a.datagrams()[0][0]
    b.receive(initial, ("10.0.0.50", 4433), net.now)
    (retry, _), = b.datagrams()
    a.receive(retry, net.addr["b"], net.now)
    with_token = a.datagrams()[0][0]
    b.receive(with_token, ("10.0.0.66", 4433), net.now)  # from another address
    assert b.counters["invalid_tokens"] == 1 and half_open(b) == 0
    b.receive(with_token, ("10.0.0.50", 4433), net.now + 31)  # too late
    assert b.counters["invalid_tokens"] == 2 and half_open(b) == 0


def test_half_open_connections_are_capped() -> None:
    """Peers that answer the Retry (their addresses are real) but never prove a node id:
    at most `max_half_open` of them hold state."""
    net, b = victim(retry_above=0, max_half_open=4)
    for i in range(7):
        joins(net, f"m{i}", mute(endpoint(seed(i))), (f"10.8.0.{i + 1}", 4433), b, 30, False)
    assert half_open(b) == 4 == b.half_open
    assert b.counters["refused_half_open"] >= 3
    net.run(5000, until=lambda: not b._conns)  # they time out: every count returns to 0
    assert b.half_open == 0 and not b._half_open.by_ip and not b._half_open.proven_by_ip
    assert b.counters["auth_timeouts"] == 4


def test_one_address_holds_few_half_open_connections() -> None:
    net, b = victim(retry_above=0, half_open_per_address=2)
    for i in range(5):  # one address, many ports
        joins(net, f"m{i}", mute(endpoint(seed(i))), ("10.8.0.1", 5000 + i), b, 30, False)
    assert half_open(b) == 2
    assert b.counters["refused_half_open_per_address"] >= 3
    assert joins(net, "a", endpoint(A_SEED), ("10.0.0.50", 4433), b)


def test_spoofed_initials_from_a_peer_s_address_do_not_lock_it_out() -> None:
    """Without a token, a source address over its share only gets Retries; the real peer
    at that address answers them and connects."""
    net, b = victim(retry_above=32, half_open_per_address=2)
    for port in range(10):
        b.receive(client_hello(net.now), ("10.0.0.50", 6000 + port), net.now)
    assert half_open(b) == 2 and b.counters["retries_sent"] == 8
    assert joins(net, "a", endpoint(A_SEED), ("10.0.0.50", 4433), b)
    assert b.half_open == 2  # A's is authenticated, no longer half-open


# -- authenticated connections --------------------------------------------------------------


def strangers(net: Net, b: Endpoint, n: int, first: int = 0) -> list[Endpoint]:
    eps = []
    for i in range(first, first + n):
        ep = endpoint(seed(i))
        joins(net, f"s{i}", ep, (f"10.9.0.{i + 1}", 4433), b)
        eps.append(ep)
        net.now += 1
    return eps


def test_strangers_cannot_take_the_reserved_slots() -> None:
    net, b = victim(max_connections=4, reserved_connections=2)
    strangers(net, b, 3)
    assert len(live(b)) == 2
    assert b.counters["refused_strangers"] == 1 and b.counters["refused_connections"] == 1


def test_a_known_peer_and_the_node_s_own_dial_get_in_when_strangers_fill_the_cap() -> None:
    net, b = victim(max_connections=3, reserved_connections=0)
    s = strangers(net, b, 3)
    s[0].send(B_ID, b"useful", net.now)  # the oldest stranger delivered something
    net.run(50)
    b.valued(s[0].node_id, net.now)
    b.want(A_ID)  # the router asked for A
    assert joins(net, "a", endpoint(A_SEED), ("10.0.0.50", 4433), b)
    assert A_ID in b.peers and b.counters["evicted_strangers"] == 1
    assert s[2].node_id not in live(b)  # the newest without traffic went
    d = add_endpoint(net, "d", endpoint(seed(9)), ("10.0.0.60", 4433))
    b.dial(d.node_id, ("10.0.0.60", 4433), net.now)  # B's own dial
    net.run(200, until=lambda: d.node_id in b.peers)
    assert d.node_id in b.peers and b.counters["evicted_strangers"] == 2
    assert s[0].node_id in live(b)  # the one that delivered stays
    assert not b.counters["refused_connections"]


def test_a_new_stranger_replaces_an_idle_one_only_after_the_grace_period() -> None:
    net, b = victim(max_connections=2, reserved_connections=0, stranger_grace_s=30)
    s = strangers(net, b, 2)
    assert not joins(net, "x", endpoint(seed(5)), ("10.9.1.1", 4433), b)
    assert b.counters["refused_strangers"] == 1
    net.run(20000, until=lambda: net.now > 140)  # (keep-alives answered meanwhile)
    assert joins(net, "y", endpoint(seed(6)), ("10.9.1.2", 4433), b)
    assert b.counters["evicted_strangers"] == 1
    assert s[0].node_id not in live(b) and s[1].node_id in live(b)  # the oldest went


def test_a_peer_holding_a_slot_may_replace_its_connection_at_the_cap() -> None:
    net, b = victim(max_connections=2, reserved_connections=0)
    strangers(net, b, 2)
    again = endpoint(seed(0))  # the first stranger restarted
    assert joins(net, "again", again, ("10.9.0.1", 4444), b)
    assert b.counters["replaced"] == 1 and not b.counters["refused_connections"]
    assert net.of("again", PeerAuthenticated)


def test_a_punch_dial_toward_an_introduced_node_is_a_stranger_s() -> None:
    """A relay introduces a node that B then dials (the punch): that connection does not
    take a reserved slot, or forged introductions would buy them."""
    from .test_transport_endpoint import C_SEED, control

    net = Net(b=endpoint(B_SEED, limits=replace(UNLIMITED, max_connections=3,
                                                       reserved_connections=2)),
              r=endpoint(C_SEED))
    b, r = net.eps[net.addr["b"]], net.eps[net.addr["r"]]
    r.dial(B_ID, net.addr["b"], net.now)  # the relay: a stranger, the one stranger slot
    net.run(200, until=lambda: r.node_id in b.peers)
    x = add_endpoint(net, "x", endpoint(seed(1)), ("10.9.9.9", 1000))  # the "introduced"
    token = b"k" * 16
    control(net, "r", B_ID, ["intro", x.node_id, token, [["10.9.9.9", 1000]]])
    b._punches[x.node_id].initiator = True  # (as if B had asked: the asking side dials)
    x._punches[B_ID] = type(b._punches[x.node_id])(  # x answers as the other side would
        B_ID, token, False, r.node_id, net.now, net.now + 5, introduced=net.now,
        candidates=[net.addr["b"]], tokens={token}, probes_left=64)
    net.run(500, until=lambda: b.counters["refused_connections"] > 0 or x.node_id in live(b))
    assert b.counters["punch_dials"] == 1
    assert x.node_id not in live(b) and b.counters["refused_strangers"] == 1


# -- strangers' rate (ratelimit.py) ------------------------------------------------------

def rated(envelopes_per_s: float = 100, bytes_per_s: float = 10**9) -> Net:
    limits = replace(UNLIMITED, stranger_envelopes_per_s=envelopes_per_s,
                     stranger_bytes_per_s=bytes_per_s)
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED, limits=limits))
    net.eps[net.addr["a"]].dial(B_ID, net.addr["b"], net.now)
    net.run(until=lambda: bool(net.of("a", PeerAuthenticated)
                               and net.of("b", PeerAuthenticated)))
    return net


def test_a_stranger_s_envelopes_are_taken_at_its_rate_and_none_is_lost() -> None:
    """A, which B never asked for, sends 1,000 envelopes at once: B takes a burst of 2 s
    (200 at 100/s), then 100 a second, in order, every one in the end."""
    net = rated(envelopes_per_s=100)
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    start = net.now
    for i in range(1000):
        a.send(B_ID, bytes([i % CONTROL]) * 100, net.now)
    net.run(2000, until=lambda: len(net.of("b", Received)) >= 300)
    assert b.counters["throttled_strangers"] >= 1
    assert 0.9 <= net.now - start <= 1.2  # 200 at once, then 100 in the next second
    net.run(20_000, until=lambda: len(net.of("b", Received)) == 1000)
    assert [e.data for e in net.of("b", Received)] == [  # type: ignore[attr-defined]
        bytes([i % CONTROL]) * 100 for i in range(1000)]
    assert 7.9 <= net.now - start <= 8.5


def test_a_throttled_lane_is_read_again_at_the_node_s_own_timer() -> None:
    """A node wakes only at its own ``next_timer`` (the simulated network wakes every
    endpoint at anyone's). Once a stranger's lane is throttled, what it sent waits here,
    buffered: its next turn (every 10 ms at 100 envelopes/s) must be one of this node's
    deadlines, or the envelopes wait for unrelated ones (retransmission timers backing off to
    tenths of seconds, the next keep-alive) and arrive in late bursts."""
    net = rated(envelopes_per_s=100)
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    for i in range(1000):
        a.send(B_ID, bytes([i % CONTROL]) * 100, net.now)
    net.run(2000, until=lambda: b.counters["throttled_strangers"] >= 1)
    start = net.now
    net.run(5000, until=lambda: net.now - start >= 0.3)  # A fills B's window meanwhile
    got, last, gaps = len(net.of("b", Received)), net.now, []
    end = net.now + 0.5  # A is silent from here on; B alone, on its own timer
    while (due := b.next_timer()) is not None and due <= end:
        net.now = max(net.now + 1e-4, due)
        b.handle_timer(net.now)
        b.datagrams()  # its acknowledgements and window updates: lost
        events = b.events()
        net.events["b"] += events
        if any(isinstance(e, Received) for e in events):
            gaps.append(net.now - last)
            last = net.now
    assert len(net.of("b", Received)) - got >= 40  # 100 a second
    assert max(gaps) <= 0.03


def test_a_stranger_s_bytes_are_taken_at_its_rate() -> None:
    """At 1 MB/s in bursts of 2 s, 40 envelopes of 100 kB (4 MB) take about 2 s, not one
    round trip."""
    net = rated(envelopes_per_s=10**6, bytes_per_s=10**6)
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    start = net.now
    for _ in range(40):
        while a.backlog(B_ID) > 1_000_000:
            net.run(5)
        a.send(B_ID, b"z" * 100_000, net.now)
    net.run(50_000, until=lambda: len(net.of("b", Received)) == 40)
    assert len(net.of("b", Received)) == 40
    assert 1.8 <= net.now - start <= 2.5
    assert b.counters["throttled_strangers"] >= 1


def test_the_nodes_the_owner_asked_for_are_not_rated() -> None:
    net = rated(envelopes_per_s=100)
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    b.want(A_ID)
    start = net.now
    for i in range(1000):
        a.send(B_ID, bytes([i % CONTROL]), net.now)
    net.run(2000, until=lambda: len(net.of("b", Received)) == 1000)
    assert len(net.of("b", Received)) == 1000 and net.now - start < 0.5
    assert b.counters["throttled_strangers"] == 0
