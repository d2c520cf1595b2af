"""The QUIC endpoint, sans-I/O: two or three endpoints joined by an in-memory network."""

from __future__ import annotations

import os
from collections.abc import Callable

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.crypto.core import Identity
from services.transport import signalling
from services.transport.admission import Limits
from services.transport.endpoint import (
    CONTROL,
    FRAME_COST,
    INTRO_BURST,
    INTRO_IN_BURST,
    MAX_CANDIDATES,
    MAX_INTRODUCED,
    PROBE_MAGIC,
    PUNCH_PROBES,
    SPRAY_PORTS,
    SPRAY_PROBES,
    TOKEN_BYTES,
    Addr,
    AddressObserved,
    Backpressure,
    DialFailed,
    Endpoint,
    Event,
    FrameTooLarge,
    PathUpdated,
    PeerAuthenticated,
    PeerClosed,
    PunchEnded,
    Received,
    SendError,
    channel_binding,
    transport_public,
)
from services.transport.events import CloseSockets, OpenSockets
from services.transport.quic import APP_ACK_DELAY_S
from services.transport.signalling import BIRTHDAY_PROBES, BIRTHDAY_SOCKETS

NOW_S = 1_800_000_000


def endpoint(seed: bytes, key: Ed25519PrivateKey | None = None, binding_key: bytes | None = None,
             not_after: int = NOW_S + 3600, **kw: float) -> Endpoint:
    key = key or Ed25519PrivateKey.generate()
    ident = Identity(seed, os.urandom)
    binding = ident.bind_transport(binding_key or transport_public(key), not_after, NOW_S - 10)
    kw.setdefault("limits", UNLIMITED)  # type: ignore[arg-type]
    return Endpoint(key, binding.encode(), lambda: NOW_S, **kw)


UNLIMITED = Limits(stranger_envelopes_per_s=1e9, stranger_bytes_per_s=1e15)
"""Strangers' rates out of the way of tests about other things (tests of the rate pass
their own limits)."""


class Net:
    """Moves datagrams between endpoints by address; ``drop`` can filter them."""

    def __init__(self, **eps: Endpoint) -> None:
        self.addr = {name: (f"10.0.0.{i + 1}", 4433) for i, name in enumerate(eps)}
        self.eps = {self.addr[n]: ep for n, ep in eps.items()}
        self.events: dict[str, list[Event]] = {n: [] for n in eps}
        self.name = {a: n for n, a in self.addr.items()}
        self.now = 100.0
        self.drop: Callable[[bytes, Addr, Addr], bool] = lambda d, src, dst: False

    def run(self, rounds: int = 50, until: Callable[[], bool] | None = None,
            timers: bool = True) -> None:
        for _ in range(rounds):
            moved = False
            for src, ep in list(self.eps.items()):
                for data, dst in ep.datagrams():
                    moved = True
                    hop = self.route(src, dst)
                    if hop is not None and not self.drop(data, hop[0], hop[1]):
                        self.eps[hop[1]].receive(data, hop[0], self.now)
                self.events[self.name[src]] += ep.events()
            if until and until():
                return
            if not moved:
                due = [t for ep in self.eps.values() if (t := ep.next_timer()) is not None]
                if not due or not timers:
                    return
                # at least 0.1 ms: a timer due now (an ACK held by the pacer) needs time
                self.now = max(self.now + 1e-4, min(due))
                for ep in self.eps.values():
                    ep.handle_timer(self.now)

    def route(self, src: Addr, dst: Addr) -> tuple[Addr, Addr] | None:
        """(source address the receiver sees, receiver) of a datagram, or None: lost."""
        return (src, dst) if dst in self.eps else None

    def of(self, name: str, kind: type) -> list[Event]:
        return [e for e in self.events[name] if isinstance(e, kind)]


A_SEED, B_SEED, C_SEED = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
A_ID, B_ID, C_ID = (Identity(s, os.urandom).node_id for s in (A_SEED, B_SEED, C_SEED))


def connected(**kw: float) -> Net:
    net = Net(a=endpoint(A_SEED, **kw), b=endpoint(B_SEED, **kw))
    net.eps[net.addr["a"]].dial(B_ID, net.addr["b"], net.now)
    net.run(until=lambda: bool(net.of("a", PeerAuthenticated) and net.of("b", PeerAuthenticated)))
    return net


def test_both_sides_learn_who_the_other_is() -> None:
    net = connected()
    assert net.of("a", PeerAuthenticated) == [PeerAuthenticated(B_ID, net.addr["b"], True)]
    assert net.of("b", PeerAuthenticated) == [PeerAuthenticated(A_ID, net.addr["a"], False)]


def test_channel_binding_matches_on_both_sides() -> None:
    """Guards the aioquic internals the authentication relies on."""
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    assert channel_binding(a.peers[B_ID].quic) == channel_binding(b.peers[A_ID].quic)


def test_envelopes_both_ways_none_lost_or_duplicated() -> None:
    """B never dials A: it answers over the connection A opened."""
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    for i in range(500):
        a.send(B_ID, b"a%d" % i, net.now)
        b.send(A_ID, b"b%d" % i, net.now)
        if i % 50 == 0:
            net.run(5)
    net.run(200, until=lambda: len(net.of("a", Received)) == len(net.of("b", Received)) == 500)
    assert [e.data for e in net.of("b", Received)] == [b"a%d" % i for i in range(500)]
    assert [e.data for e in net.of("a", Received)] == [b"b%d" % i for i in range(500)]
    assert {e.node_id for e in net.of("b", Received)} == {A_ID}
    assert b.counters["dials"] == 0


@pytest.mark.parametrize("case", ["wrong_key", "expired", "wrong_node"])
def test_a_peer_that_cannot_prove_its_node_id_is_refused(case: str) -> None:
    if case == "wrong_key":  # a binding for another transport key
        b = endpoint(B_SEED, binding_key=b"\x09" * 32)
    elif case == "expired":
        b = endpoint(B_SEED, not_after=NOW_S - 1)
    else:
        b = endpoint(C_SEED)  # A dials expecting B, reaches C
    net = Net(a=endpoint(A_SEED), b=b)
    net.eps[net.addr["a"]].dial(B_ID, net.addr["b"], net.now)
    net.run(200)
    a = net.eps[net.addr["a"]]
    assert not net.of("a", PeerAuthenticated) and not a.peers
    assert a.counters["auth_failures"] == 1
    assert net.of("a", PeerClosed) and net.of("a", PeerClosed)[0].node_id is None
    with pytest.raises(SendError):
        a.send(B_ID, b"x", net.now)


def test_a_dial_that_reaches_a_different_node_fails_at_once_saying_which() -> None:
    """The refusal names the node that proved itself there, and comes when the proofs are
    checked, not after the closing period."""
    net = Net(a=endpoint(A_SEED), b=endpoint(C_SEED))  # B's address, C's node
    a = net.eps[net.addr["a"]]
    a.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: bool(net.of("a", DialFailed)))
    assert net.of("a", DialFailed) == [DialFailed(
        B_ID, net.addr["b"], f"refused: a different node ({C_ID.hex()[:16]}) answers at "
        "10.0.0.2:4433", transient=False)]
    assert not net.of("a", PeerClosed) and B_ID not in a.dialling()
    net.run(200)
    assert len(net.of("a", DialFailed)) == 1  # once, though the connection ends later


def test_a_dial_that_reaches_a_node_already_connected_keeps_that_node_connected() -> None:
    """A dials B's id at C's address while connected to C: C takes the new connection as
    A's (A proved itself first), so A does too; the dial fails, A and C keep talking."""
    net = Net(a=endpoint(A_SEED), c=endpoint(C_SEED))
    a, c = net.eps[net.addr["a"]], net.eps[net.addr["c"]]
    a.dial(C_ID, net.addr["c"], net.now)
    net.run(until=lambda: C_ID in a.peers and A_ID in c.peers)
    net.now += 3  # (not a simultaneous dial)
    a.dial(B_ID, net.addr["c"], net.now)
    net.run(200, until=lambda: bool(net.of("a", DialFailed)))
    assert net.of("a", DialFailed) == [DialFailed(
        B_ID, net.addr["c"], f"refused: a different node ({C_ID.hex()[:16]}) answers at "
        "10.0.0.2:4433", transient=False)]
    net.run(300)
    a.send(C_ID, b"still there?", net.now)
    c.send(A_ID, b"yes", net.now)
    net.run(200, until=lambda: bool(net.of("c", Received) and net.of("a", Received)))
    assert [e.data for e in net.of("c", Received)] == [b"still there?"]
    assert [e.data for e in net.of("a", Received)] == [b"yes"]
    assert C_ID in a.peers and A_ID in c.peers and a.counters["wrong_node_kept"] == 1
    assert not [e for e in net.of("c", PeerClosed) if e.node_id == A_ID]


def test_an_icmp_unreachable_for_a_dial_fails_it_at_once_if_it_quotes_the_dial() -> None:
    """Nothing at B's address: the kernel's ICMP error quotes A's Initial. A quote of
    another packet (a forger who does not know the connection id) changes nothing."""
    a = endpoint(A_SEED)
    a.dial(B_ID, ("10.0.0.2", 4433), 100.0)
    [(initial, dst)] = a.datagrams()
    assert dst == ("10.0.0.2", 4433)
    forged = bytearray(initial[:64])
    forged[6] ^= 1  # another destination connection id
    a.unreachable(dst, bytes(forged), "nothing listening at 10.0.0.2:4433", 100.01)
    a.unreachable(("10.0.0.3", 4433), initial[:64], "nothing listening", 100.01)
    assert a.counters["icmp_ignored"] == 2 and B_ID in a.dialling() and not a.events()
    a.unreachable(dst, initial[:64], "nothing listening at 10.0.0.2:4433", 100.02)
    assert a.events() == [DialFailed(B_ID, dst, "unreachable: nothing listening at "
                                     "10.0.0.2:4433", transient=False)]
    assert B_ID not in a.dialling() and a.counters["dials_unreachable"] == 1
    assert not a._conns  # nothing kept, no timer left
    a.dial(B_ID, dst, 101.0)  # and it may be dialled again
    assert B_ID in a.dialling()


def test_a_dial_nobody_answers_fails_after_the_authentication_timeout() -> None:
    a = endpoint(A_SEED, auth_timeout_s=3)
    a.dial(B_ID, ("10.0.0.2", 4433), 100.0)
    a.datagrams()
    now = 100.0
    while not (events := a.events()) and now < 110:
        now = max(now + 0.01, a.next_timer() or now)
        a.handle_timer(now)
        a.datagrams()
    assert events[0] == DialFailed(B_ID, ("10.0.0.2", 4433), "unreachable: no answer from "
                                   "10.0.0.2:4433 within 3 s", transient=True)
    assert 103 <= now < 104


def test_garbage_datagrams_are_counted_and_harmless() -> None:
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    rng = __import__("random").Random(7)
    for _ in range(1000):
        b.receive(bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randrange(0, 1300)),
                  ("10.9.9.9", 1), net.now)
    assert b.counters["garbage_datagrams"] + b.counters["unroutable_datagrams"] \
        + b.counters["accepted"] >= 900
    a.send(B_ID, b"still here", net.now)
    net.run(50, until=lambda: bool(net.of("b", Received)))
    assert net.of("b", Received)[-1].data == b"still here"


def three() -> Net:
    """A connected to B; C connected to B too (a bystander that must stay served)."""
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED), c=endpoint(C_SEED))
    for name in "ac":
        net.eps[net.addr[name]].dial(B_ID, net.addr["b"], net.now)
    net.run(until=lambda: len(net.of("b", PeerAuthenticated)) == 2)
    return net


def still_serves_c(net: Net) -> None:
    c = net.eps[net.addr["c"]]
    c.send(B_ID, b"from c", net.now)
    net.run(100, until=lambda: any(e.data == b"from c" for e in net.of("b", Received)))
    assert [e.data for e in net.of("b", Received) if e.node_id == C_ID][-1] == b"from c"


def hostile_write(net: Net, data: bytes, stream: int | None = None, fin: bool = False) -> None:
    """A writes raw bytes on its lane (or another stream), skipping every check."""
    a = net.eps[net.addr["a"]]
    conn = a.peers[B_ID]
    conn.quic.send_stream_data(conn.lane if stream is None else stream, data, fin)
    a._pump(conn, net.now)


def test_oversize_frames_are_refused_on_both_sides() -> None:
    net = connected(max_frame_bytes=4096)
    a = net.eps[net.addr["a"]]
    with pytest.raises(FrameTooLarge):
        a.send(B_ID, b"x" * 4097, net.now)
    a.send(B_ID, b"x" * 4096, net.now)  # the limit itself is fine
    net.run(100, until=lambda: bool(net.of("b", Received)))
    assert len(net.of("b", Received)[0].data) == 4096


@pytest.mark.parametrize("data, counter", [
    ((1 << 31).to_bytes(4, "big") + b"x" * 100, "oversize_frames"),
    ((1024 * 1024 + 1).to_bytes(4, "big"), "oversize_frames"),
    (bytes(4) + b"x", "malformed_frames"),
])
def test_a_bad_frame_length_closes_that_connection_before_the_frame_is_read(
        data: bytes, counter: str) -> None:
    net = three()
    b = net.eps[net.addr["b"]]
    hostile_write(net, data)
    net.run(100, until=lambda: bool(net.of("b", PeerClosed)))
    assert b.counters[counter] == 1 and A_ID not in b.peers
    assert net.of("b", PeerClosed)[0].reason.startswith("frame length")
    assert all(len(c.rx) < 200 for c in b._conns)  # never buffered towards the length
    still_serves_c(net)


@pytest.mark.parametrize("case", ["other_uni_stream", "bidi_stream", "ends_inside_a_frame",
                                  "reset_lane"])
def test_a_malformed_stream_closes_that_connection_and_nothing_else(case: str) -> None:
    net = three()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    quic = a.peers[B_ID].quic
    if case == "other_uni_stream":
        hostile_write(net, b"\x00\x00\x00\x01x", quic.get_next_available_stream_id(True))
    elif case == "bidi_stream":
        hostile_write(net, b"hello", quic.get_next_available_stream_id(False))
    elif case == "ends_inside_a_frame":
        hostile_write(net, b"\x00\x00\x00\x09abc", fin=True)
    else:
        quic.reset_stream(a.peers[B_ID].lane, 7)
        a._pump(a.peers[B_ID], net.now)
    net.run(100, until=lambda: bool(net.of("b", PeerClosed)))
    assert b.counters["malformed_streams"] == 1 and A_ID not in b.peers
    still_serves_c(net)


def test_frames_split_anywhere_are_reassembled_in_order() -> None:
    net = connected()
    b = net.eps[net.addr["b"]]
    # any first byte but CONTROL (0xC1, which no msgpack value starts with): control frames
    frames = [bytes([i if i != CONTROL else 0]) * (i * 37 % 3000 + 1) for i in range(200)]
    wire = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    rng = __import__("random").Random(5)
    pos = 0
    while pos < len(wire):  # arbitrary cuts, prefixes split too
        step = rng.choice([1, 2, 3, 5, 700, 4000])
        hostile_write(net, wire[pos:pos + step])
        pos += step
        if rng.random() < 0.3:
            net.run(3)
    net.run(200, until=lambda: len(net.of("b", Received)) == 200)
    assert [e.data for e in net.of("b", Received)] == frames
    assert b.counters["malformed_streams"] == 0


def test_a_consumer_that_stops_accepting_pushes_back_to_the_sender() -> None:
    """B stops parsing: its windows stop growing, A's lane fills, A's send refuses with
    Backpressure; when B resumes, everything arrives once, in order."""
    net = connected(max_frame_bytes=64 * 1024, max_backlog=256 * 1024)
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    b.budget = 0
    sent = 0
    with pytest.raises(Backpressure):
        for sent in range(10_000):  # noqa: B007
            a.send(B_ID, b"%06d" % sent + b"." * 8000, net.now)
            net.run(2, timers=False)
    assert a.counters["send_backpressure"] == 1
    buffered = sum(len(c.rx) for c in b._conns)
    assert buffered <= b.window + 2 * 1500  # a window and packets in flight, no more
    assert not net.of("b", Received)
    b.resume(net.now)
    net.run(500, until=lambda: len(net.of("b", Received)) == sent)
    assert [e.data[:6] for e in net.of("b", Received)] == [b"%06d" % i for i in range(sent)]
    a.send(B_ID, b"later", net.now)  # the lane flows again
    net.run(100, until=lambda: net.of("b", Received)[-1].data == b"later")


def test_a_simultaneous_dial_keeps_one_connection_and_loses_nothing() -> None:
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED))
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    a.dial(B_ID, net.addr["b"], net.now)
    b.dial(A_ID, net.addr["a"], net.now)
    sent = {"a": 0, "b": 0}

    def chatter() -> bool:  # each side sends over whatever connection it has right now
        for name, ep, peer in (("a", a, B_ID), ("b", b, A_ID)):
            if peer in ep.peers and sent[name] < 300:
                ep.send(peer, b"%s%d" % (name.encode(), sent[name]), net.now)
                sent[name] += 1
        return False

    net.run(400, until=chatter)
    net.run(2000, until=lambda: len(a._conns) == len(b._conns) == 1 and all(
        n == 300 for n in sent.values()) and len(net.of("b", Received)) == 300 == len(
        net.of("a", Received)))
    assert sorted(e.data for e in net.of("b", Received)) == sorted(
        b"a%d" % i for i in range(300))
    assert sorted(e.data for e in net.of("a", Received)) == sorted(
        b"b%d" % i for i in range(300))
    assert a.peers[B_ID].quic is next(iter(a._conns)).quic
    assert a.peers[B_ID].dialled != b.peers[A_ID].dialled  # the same connection
    assert a.counters["duplicates"] + a.counters["replaced"] == 1  # one was retired


def test_a_restarted_peer_reconnects_and_replaces_the_stale_connection() -> None:
    net = connected()
    a = net.eps[net.addr["a"]]
    net.eps[net.addr["b"]] = endpoint(B_SEED)  # B restarts: new transport key, same id
    net.eps[net.addr["b"]].dial(A_ID, net.addr["a"], net.now + 5)
    net.now += 5
    net.events = {n: [] for n in net.events}
    net.run(200, until=lambda: bool(net.of("a", PeerAuthenticated)))
    assert net.of("a", PeerAuthenticated)[0].node_id == B_ID
    a.send(B_ID, b"hello again", net.now)
    net.run(100, until=lambda: bool(net.of("b", Received)))
    assert net.of("b", Received)[0].data == b"hello again"
    assert a.counters["replaced"] == 1 and len(a.peers) == 1


def test_unauthenticated_connections_time_out() -> None:
    """A client that completes TLS but never proves anything is closed."""
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED, auth_timeout_s=3))
    a = net.eps[net.addr["a"]]
    a._prove = lambda conn: None  # type: ignore[method-assign]  # a mute client
    a.dial(B_ID, net.addr["b"], net.now)
    net.run(500)
    b = net.eps[net.addr["b"]]
    assert b.counters["auth_timeouts"] == 1 and not b.peers


def test_keep_alive_holds_a_silent_connection_open() -> None:
    net = connected(idle_timeout_s=5.0)
    start = net.now
    net.run(2000, until=lambda: net.now > start + 30)
    assert net.now > start + 30
    assert not net.of("a", PeerClosed) and B_ID in net.eps[net.addr["a"]].peers


def test_a_vanished_peer_is_noticed() -> None:
    net = connected(idle_timeout_s=5.0)
    net.drop = lambda data, src, dst: True
    net.run(2000, until=lambda: bool(net.of("a", PeerClosed)))
    assert net.of("a", PeerClosed)[0].node_id == B_ID
    assert B_ID not in net.eps[net.addr["a"]].peers


def test_unreadable_initials_keep_no_state() -> None:
    net = connected()
    b = net.eps[net.addr["b"]]
    rng = __import__("random").Random(3)
    for i in range(500):  # long header, Initial type, version 1, random rest: not decryptable
        junk = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([8]) + rng.randbytes(8) \
            + bytes([8]) + rng.randbytes(8) + (b"\x00\x44\xb0" if i % 2 else b"") \
            + rng.randbytes(1200)  # every other one: no token, a plausible length
        b.receive(junk, ("10.9.9.9", 1000 + i), net.now)
    assert b.counters["unreadable_initials"] > 0
    assert b.counters["unreadable_initials"] + b.counters["garbage_datagrams"] \
        + b.counters["invalid_tokens"] == 500  # (random bytes where a Retry token goes)
    assert len(b._conns) == 1
    c = endpoint(C_SEED)
    net.eps[("10.0.0.9", 4433)] = c
    net.name[("10.0.0.9", 4433)] = "c"
    net.events["c"] = []
    c.dial(B_ID, net.addr["b"], net.now)
    net.run(100, until=lambda: bool(net.of("c", PeerAuthenticated)))
    assert net.of("c", PeerAuthenticated)


def test_a_connection_ends_when_the_peer_binding_expires() -> None:
    clock = [NOW_S]
    key_a, key_b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    eps = {}
    for name, seed, key in (("a", A_SEED, key_a), ("b", B_SEED, key_b)):
        binding = Identity(seed, os.urandom).bind_transport(transport_public(key), NOW_S + 60,
                                                            NOW_S)
        eps[name] = Endpoint(key, binding.encode(), lambda: clock[0], idle_timeout_s=6.0)
    net = Net(**eps)
    eps["a"].dial(B_ID, net.addr["b"], net.now)
    net.run(until=lambda: bool(net.of("a", PeerAuthenticated)))
    clock[0] = NOW_S + 61
    net.run(2000, until=lambda: bool(net.of("a", PeerClosed)))
    assert eps["a"].counters["expired"] + eps["b"].counters["expired"] >= 1
    assert B_ID not in eps["a"].peers


@pytest.mark.parametrize("authenticated", [False, True])
def test_sparse_high_offset_frames_cannot_grow_the_receive_buffers(authenticated: bool) -> None:
    """aioquic alone doubles windows from the highest offset seen; a peer sending only the
    last byte of each window made it allocate gigabytes. Windows now follow consumption."""
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED))
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    if not authenticated:
        a._prove = lambda conn: None  # type: ignore[method-assign]
    a.dial(B_ID, net.addr["b"], net.now)
    net.run(50, until=lambda: all(c.quic._handshake_complete
                                  for ep in (a, b) for c in ep._conns) and bool(b._conns)
            and (not authenticated or A_ID in b.peers))
    ca, cb = next(iter(a._conns)).quic, next(iter(b._conns)).quic
    for _ in range(12):  # enough for unbounded windows to reach hundreds of MiB
        for sid in range(2 + 4 * 10, 2 + 4 * 110, 4):  # streams past the proof's
            s = ca._get_or_create_stream_for_send(sid)
            credit = min(s.max_stream_data_remote, ca._remote_max_data
                         - ca._remote_max_data_used + s.sender.highest_offset)
            if credit - 1 > s.sender._buffer_stop:
                ca.send_stream_data(sid, bytes(credit - s.sender._buffer_stop))
                s.sender._pending.subtract(0, credit - 1)  # send only the last byte
        a._pump(next(iter(a._conns)), net.now)
        net.now += 0.01
        net.run(3, timers=False)  # within the authentication deadline
    assert b._conns, "the connection must still be open for the check to mean anything"
    buffered = sum(len(s.receiver._buffer) for s in cb._streams.values())
    assert buffered < 8 * 1024 * 1024
    assert cb._local_max_data.value <= cb.consumed + 4 * 1024 * 1024


def test_a_dead_peer_is_noticed_long_before_the_idle_timeout() -> None:
    net = connected(idle_timeout_s=30.0)
    start = net.now
    net.drop = lambda data, src, dst: True
    net.run(2000, until=lambda: bool(net.of("a", PeerClosed)))
    assert net.of("a", PeerClosed)[0].reason == "the peer stopped answering"
    assert net.now - start < 10
    assert net.eps[net.addr["a"]].counters["dead_peers"] == 1


def add_endpoint(net: Net, name: str, ep: Endpoint, addr: Addr) -> Endpoint:
    net.eps[addr], net.name[addr], net.events[name] = ep, name, []
    return ep


def test_a_new_connection_replaces_one_whose_lane_the_peer_stopped() -> None:
    """Retiring a connection that is already closing (its lane stopped by the peer) must not
    break the authentication of the new one."""
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    ca = a.peers[B_ID]
    ca.quic.stop_stream(3, 0)  # A stops B's lane: B closes that connection as malformed
    a._pump(ca, net.now)
    net.run(10, until=lambda: b.counters["malformed_streams"] == 1)
    a2 = add_endpoint(net, "a2", endpoint(A_SEED), ("10.0.0.7", 4433))
    a2.dial(B_ID, net.addr["b"], net.now)
    net.run(50, until=lambda: B_ID in a2.peers and A_ID in b.peers
            and b.peers[A_ID].lane is not None and not b.peers[A_ID].closing)
    a2.send(B_ID, b"hello", net.now)
    net.run(50, until=lambda: bool(net.of("b", Received)))
    assert [e.data for e in net.of("b", Received)] == [b"hello"]


def test_one_node_id_holds_at_most_one_retired_connection() -> None:
    net = Net(b=endpoint(B_SEED))
    b = net.eps[net.addr["b"]]
    for i in range(20):  # one identity opens connection after connection
        addr = (f"10.1.0.{i + 1}", 4433)
        a = add_endpoint(net, f"x{i}", endpoint(A_SEED), addr)
        a.dial(B_ID, net.addr["b"], net.now)
        net.run(30, until=lambda a=a, addr=addr: B_ID in a.peers  # type: ignore[misc]
                and A_ID in b.peers and b.peers[A_ID].addr == addr, timers=False)
    live = [c for c in b._conns if not c.closing]
    assert len(live) == 2 and sum(c.retired_until is not None for c in live) == 1
    assert b.counters["replaced"] == 19


def test_connections_beyond_the_limit_are_refused() -> None:
    net = Net(b=endpoint(B_SEED, max_connections=2), a=endpoint(A_SEED), c=endpoint(C_SEED))
    b = net.eps[net.addr["b"]]
    net.eps[net.addr["a"]].dial(B_ID, net.addr["b"], net.now)
    net.eps[net.addr["c"]].dial(B_ID, net.addr["b"], net.now)
    net.run(50, until=lambda: len(b.peers) == 2)
    d = add_endpoint(net, "d", endpoint(b"\x04" * 32), ("10.0.0.9", 4433))
    d.dial(B_ID, net.addr["b"], net.now)
    net.run(50, until=lambda: b.counters["refused_connections"] == 1 and not d.peers)
    assert len(b.peers) == 2 and not d.peers
    # D knew B after one round trip; B's refusal reaches it as the connection's end
    assert [(e.node_id, e.reason) for e in net.of("d", PeerClosed)] == [
        (B_ID, "too many connections")]


def test_tiny_frames_are_charged_a_minimum_cost() -> None:
    """A budget of 100 frame costs takes 100 one-byte envelopes, not 25,600; the rest wait
    (unparsed, within the window) until the owner resumes."""
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    b.budget = 100 * FRAME_COST
    for i in range(1000):
        a.send(B_ID, bytes([i % CONTROL]), net.now)
    net.run(100)
    assert len(net.of("b", Received)) == 100
    b.resume(net.now)
    net.run(100, until=lambda: len(net.of("b", Received)) == 1000)
    assert [e.data for e in net.of("b", Received)] == [bytes([i % CONTROL]) for i in range(1000)]


def test_a_retired_connection_hands_over_everything_even_while_paused() -> None:
    """Both dial at once while A's owner is paused: what B sent on the connection that loses
    still reaches A (retired connections are drained regardless of the budget)."""
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED))
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    a.budget = 0
    a.dial(B_ID, net.addr["b"], net.now)
    b.dial(A_ID, net.addr["a"], net.now)
    sent: list[bytes] = []

    def chatter() -> bool:
        if A_ID in b.peers and len(sent) < 20:
            sent.append(b"env%d" % len(sent))
            b.send(A_ID, sent[-1], net.now)
        return False

    net.run(400, until=chatter)
    net.run(5000, until=lambda: len(a._conns) == len(b._conns) == 1)
    a.resume(net.now)
    net.run(200)
    assert sorted(e.data for e in net.of("a", Received)) == sorted(sent)
    assert len(sent) == 20


# -- hole punching ---------------------------------------------------------------------------


class Nat:
    """A home router: port mapping per inside address (cone) or per destination too
    (symmetric); inbound only from a remote the mapping has sent to (conntrack)."""

    def __init__(self, ip: str, symmetric: bool = False, step: int = 7,
                 random_ports: bool = False) -> None:
        self.ip, self.symmetric, self.step = ip, symmetric, step
        self.random = __import__("random").Random(20) if random_ports else None
        self.ports: dict[tuple[Addr, Addr | None], int] = {}
        self.open: dict[tuple[int, Addr], Addr] = {}

    def outbound(self, inside: Addr, dst: Addr) -> Addr:
        key = (inside, dst if self.symmetric else None)
        if key not in self.ports and self.random is not None:
            self.ports[key] = self.random.randrange(1024, 65536)
        port = self.ports.setdefault(key, 40000 + len(self.ports) * self.step)
        self.open[(port, dst)] = inside
        return self.ip, port


class NatNet(Net):
    """B public; A and C each behind their own NAT (``nats`` names them)."""

    def __init__(self, nats: dict[str, Nat], **eps: Endpoint) -> None:
        super().__init__(**eps)
        self.nats = {self.addr[n]: nat for n, nat in nats.items()}
        self.public = {nat.ip: nat for nat in nats.values()}

    def route(self, src: Addr, dst: Addr) -> tuple[Addr, Addr] | None:
        if src in self.nats:
            src = self.nats[src].outbound(src, dst)
        nat = self.public.get(dst[0])
        if nat is not None:
            inside = nat.open.get((dst[1], src))
            return None if inside is None else (src, inside)
        return (src, dst) if dst in self.eps else None


def behind_nats(a_symmetric: bool = False, c_symmetric: bool = False,
                a_nat: Nat | None = None) -> NatNet:
    net = NatNet({"a": a_nat or Nat("100.64.0.1", a_symmetric),
                  "c": Nat("100.64.0.3", c_symmetric)},
                 a=endpoint(A_SEED), b=endpoint(B_SEED), c=endpoint(C_SEED))
    for name in "ac":
        net.eps[net.addr[name]].dial(B_ID, net.addr["b"], net.now)
    net.run(until=lambda: len(net.of("b", PeerAuthenticated)) == 2)
    return net


def punch(net: Net) -> tuple[Endpoint, Endpoint]:
    a, c = net.eps[net.addr["a"]], net.eps[net.addr["c"]]
    a.punch(C_ID, B_ID, net.now)
    net.run(2000, until=lambda: bool(net.of("a", PunchEnded) and net.of("c", PunchEnded)))
    return a, c


def test_peers_behind_cone_nats_get_a_direct_path_from_an_introduction() -> None:
    net = behind_nats()
    a, c = punch(net)
    ended_a, ended_c = net.of("a", PunchEnded)[0], net.of("c", PunchEnded)[0]
    assert ended_a.ok and ended_a.initiator and ended_c.ok and not ended_c.initiator
    assert ended_a.addr == ("100.64.0.3", 40000)  # C's NAT mapping: the punched path
    assert ended_a.elapsed_s < 1.0
    assert C_ID in a.peers and A_ID in c.peers
    a.send(C_ID, b"direct", net.now)
    net.run(100, until=lambda: bool(net.of("c", Received)))
    assert [e.data for e in net.of("c", Received)] == [b"direct"]
    # each learnt its public address from B, inside the authenticated connection
    assert AddressObserved(B_ID, ("100.64.0.1", 40000)) in net.of("a", AddressObserved)


def test_symmetric_nats_fail_the_punch_with_a_reason_and_no_connection() -> None:
    net = behind_nats(a_symmetric=True, c_symmetric=True)
    a, c = punch(net)
    ended = net.of("a", PunchEnded)[0]
    assert not ended.ok and "symmetric" in ended.reason
    assert C_ID not in a.peers and A_ID not in c.peers
    assert a.counters["punches_failed"] == 1 and c.counters["probes_sent"] > 10


def sprayed(net: NatNet, frm: str) -> list[Addr]:
    """Where ``frm`` sent probes that were not to a candidate: records them from now on."""
    ep = net.eps[net.addr[frm]]
    out: list[Addr] = []
    original = ep._spray

    def spy(p: object, now: float) -> None:
        before = len(ep._out)
        original(p, now)  # type: ignore[arg-type]
        out.extend(addr for _, addr in ep._out[before:])

    ep._spray = spy  # type: ignore[method-assign]
    return out


@pytest.mark.parametrize("step", [1, 7])
def test_a_sequential_symmetric_nat_is_punched_by_port_prediction(step: int) -> None:
    """A's NAT gives each new destination the next port (+1, or +7 as some do): C probes
    the ports above where the relay saw A, and one of them is A's mapping toward C."""
    net = behind_nats(a_nat=Nat("100.64.0.1", symmetric=True, step=step))
    to_a = sprayed(net, "c")
    a, c = punch(net)
    ended_a, ended_c = net.of("a", PunchEnded)[0], net.of("c", PunchEnded)[0]
    assert ended_a.ok and ended_c.ok, (ended_a, ended_c)
    assert ended_c.addr == ("100.64.0.1", 40000 + step)  # A's second mapping: toward C
    assert 0 < c.counters["spray_probes"] <= SPRAY_PROBES
    assert to_a and {h for h, _ in to_a} == {"100.64.0.1"}  # the IP the relay vouched for
    assert all(40000 < port <= 40000 + SPRAY_PORTS for _, port in to_a)
    assert ended_a.elapsed_s < 2.0 and 0 <= (ended_a.opened_s or -1) <= ended_a.elapsed_s


def test_port_prediction_against_random_ports_is_bounded_and_fails_cleanly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(Birthday probing off: this is about the probes and prediction alone.)"""
    monkeypatch.setattr(signalling, "BIRTHDAY_PROBES", 0)
    net = behind_nats(a_nat=Nat("100.64.0.1", symmetric=True, random_ports=True))
    a = net.eps[net.addr["a"]]
    # A tells R three private addresses of its own (nowhere here): C probes 4 candidates
    a.local_candidates[:] = [("10.0.9.1", 4433), ("10.0.9.2", 4433), ("10.0.9.3", 4433)]
    a._tell_address(a.peers[B_ID])
    net.run(100)
    to_a = sprayed(net, "c")
    a, c = punch(net)
    assert not net.of("a", PunchEnded)[0].ok and not net.of("c", PunchEnded)[0].ok
    assert C_ID not in a.peers and A_ID not in c.peers
    assert c.counters["spray_probes"] == len(to_a) <= SPRAY_PROBES + SPRAY_PORTS - 1
    assert {h for h, _ in to_a} == {"100.64.0.1"}
    # never heard: the candidate probes stop at their budget (+ the last round)
    assert PUNCH_PROBES // 2 < c.counters["probes_sent"] <= PUNCH_PROBES + MAX_CANDIDATES - 1


def test_port_prediction_is_rate_limited_over_all_punches() -> None:
    """With the node-wide allowance spent, a round of prediction is refused and counted."""
    net = behind_nats(a_nat=Nat("100.64.0.1", symmetric=True, step=1))
    c = net.eps[net.addr["c"]]
    c._spray_tokens, c._spray_time = 0.0, net.now + 100  # spent, and no refill for 100 s
    punch(net)
    assert c.counters["spray_probes"] == 0 and c.counters["spray_refused"] >= SPRAY_PORTS


def test_birthday_probing_is_aimed_at_the_vouched_address_bounded_and_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Against random ports, after prediction: both halves of birthday probing (sockets
    toward the relay's observation of the peer, random ports of its IP), within bounds,
    closed at the end; a second punch meanwhile gets no sockets. (The random ports are
    seeded, and miss A's mapping: the sockets' half is the shell's, not simulated here.)"""
    monkeypatch.setattr(signalling.secrets, "randbelow", __import__("random").Random(7).randrange)
    net = behind_nats(a_nat=Nat("100.64.0.1", symmetric=True, random_ports=True))
    c = net.eps[net.addr["c"]]
    random_ports: list[Addr] = []
    original = c._birthday

    def spy(p: object, now: float) -> None:
        before = len(c._out)
        original(p, now)  # type: ignore[arg-type]
        random_ports.extend(addr for _, addr in c._out[before:])

    c._birthday = spy  # type: ignore[method-assign]
    other = b"\xee" * 32  # a second punch of C's, introduced by the same relay, at once
    c._introduced(c.peers[B_ID], other, b"o" * TOKEN_BYTES, [("100.64.9.9", 5000)], net.now)
    punch(net)
    actions = c.socket_actions()
    opened = [x for x in actions if isinstance(x, OpenSockets)]
    assert len(opened) == 1 and opened[0].count == BIRTHDAY_SOCKETS  # one birthday at once
    assert c.counters["birthdays_refused"] == 1
    assert opened[0].dest[0] in ("100.64.0.1", "100.64.9.9")  # a relay's observation
    assert [x for x in actions if isinstance(x, CloseSockets)]  # closed when it ended
    assert 0 < c.counters["birthday_probes"] == len(random_ports) <= 2 * BIRTHDAY_PROBES
    assert {h for h, _ in random_ports} <= {"100.64.0.1", "100.64.9.9"}
    assert len({p for _, p in random_ports}) > BIRTHDAY_PROBES // 2  # random, not a range


def test_probing_stops_once_the_peer_is_heard() -> None:
    """The first rounds go at 0, 20 and 50 ms; a side that heard the peer sends no more
    probes of its own (it still answers)."""
    net = behind_nats()
    a, c = net.eps[net.addr["a"]], net.eps[net.addr["c"]]
    # nothing from A reaches C directly: C never hears A, A hears C
    net.drop = lambda d, src, dst: src[0] == "100.64.0.1" and dst == net.addr["c"]
    a.punch(C_ID, B_ID, net.now)
    net.run(2000, until=lambda: A_ID in c._punches and c._punches[A_ID].round >= 3)
    start = c._punches[A_ID].introduced
    assert start is not None and net.now - start < 0.06  # three rounds within 50 ms
    net.run(2000, until=lambda: a._punches[C_ID].heard is not None)
    sent = a.counters["probes_sent"]
    net.run(2000, until=lambda: net.now > start + 1.0)
    assert a.counters["probes_sent"] == sent  # A heard C: its own rounds stopped
    assert c._punches[A_ID].round > 3 + 5  # C did not hear A: it goes on


@pytest.mark.parametrize(("relay_rtt", "intro_s", "punch_s"), [
    (0.001, 3.0, 5.0),   # a LAN: the floors
    (0.3, 3.0, 7.2),     # 4 x 0.3 < 3 s; 12 x 0.6 s
    (1.0, 4.0, 15.0),    # 12 x 2 s capped at MAX_PUNCH_S
])
def test_a_punch_s_times_follow_the_relay_s_rtt_within_bounds(
        relay_rtt: float, intro_s: float, punch_s: float) -> None:
    net = behind_nats()
    a = net.eps[net.addr["a"]]
    a.peers[B_ID].quic._loss._rtt_smoothed = relay_rtt
    a.punch(C_ID, B_ID, net.now)
    p = a._punches[C_ID]
    assert p.deadline - p.started == pytest.approx(intro_s)
    net.run(200, until=lambda: p.introduced is not None)
    assert p.introduced is not None
    assert p.deadline - p.introduced == pytest.approx(punch_s)


def test_a_relay_that_does_not_know_the_peer_says_so() -> None:
    net = connected()
    a = net.eps[net.addr["a"]]
    a.punch(C_ID, B_ID, net.now)
    net.run(200, until=lambda: bool(net.of("a", PunchEnded)))
    ended = net.of("a", PunchEnded)[0]
    assert not ended.ok and "not connected to that node" in ended.reason
    with pytest.raises(SendError):
        a.punch(C_ID, C_ID, net.now)  # not connected to that relay


def test_introductions_are_rate_limited_per_peer() -> None:
    net = three()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    for _ in range(INTRO_BURST + 5):
        a._punches.clear()  # a hostile peer asking again and again
        a.punch(C_ID, B_ID, net.now)
    net.run(20)
    assert b.counters["introductions"] == INTRO_BURST
    assert b.counters["intros_refused"] == 5


def test_stray_garbage_and_own_probes_are_ignored() -> None:
    net = three()
    a = net.eps[net.addr["a"]]
    a.receive(b"\x00garbage", ("10.9.9.9", 1), net.now)
    a.receive(PROBE_MAGIC + b"t" * TOKEN_BYTES + C_ID, ("10.9.9.9", 1), net.now)
    a.receive(PROBE_MAGIC + b"t" * TOKEN_BYTES + A_ID, ("10.9.9.9", 1), net.now)
    assert a.counters["garbage_datagrams"] == 1 and a.counters["stray_probes"] == 1
    assert not a.datagrams() and C_ID not in a.dialling()


def test_hostile_control_frames_are_counted_not_fatal() -> None:
    net = connected()
    b = net.eps[net.addr["b"]]
    for body in (b"\xc1\xff\xff", b"\xc1" + __import__("msgpack").packb(["what", 1]),
                 b"\xc1" + __import__("msgpack").packb(["addr", ["999.1.1.1", 5], []])):
        hostile_write(net, len(body).to_bytes(4, "big") + body)
    net.run(50)
    assert b.counters["malformed_control"] == 2 and b.counters["unknown_control"] == 1
    assert A_ID in b.peers
    with pytest.raises(SendError):
        net.eps[net.addr["a"]].send(B_ID, b"\xc1 posing as control", net.now)


def test_both_sides_asking_at_once_still_punch_through() -> None:
    net = behind_nats()
    a, c = net.eps[net.addr["a"]], net.eps[net.addr["c"]]
    a.punch(C_ID, B_ID, net.now)
    c.punch(A_ID, B_ID, net.now)
    net.run(2000, until=lambda: bool(net.of("a", PunchEnded) and net.of("c", PunchEnded)))
    assert net.of("a", PunchEnded)[0].ok and net.of("c", PunchEnded)[0].ok
    assert C_ID in a.peers and A_ID in c.peers
    assert a.counters["punch_dials"] + c.counters["punch_dials"] == 1


def test_a_silent_path_is_reported_stalled_then_dropped_or_revived() -> None:
    net = connected()
    a = net.eps[net.addr["a"]]
    start = net.now
    net.drop = lambda d, src, dst: True  # the path breaks
    net.run(5000, until=lambda: any(e.stalled for e in net.of("a", PathUpdated)))
    stalled_after = net.now - start
    assert 1.0 <= stalled_after <= 2.5, stalled_after
    net.drop = lambda d, src, dst: False  # ... and heals before the third keep-alive
    net.run(5000, until=lambda: not net.of("a", PathUpdated)[-1].stalled)
    assert B_ID in a.peers and not net.of("a", PeerClosed)
    net.drop = lambda d, src, dst: True  # breaks for good: dropped within 5 s
    broken = net.now
    net.run(20000, until=lambda: bool(net.of("a", PeerClosed)))
    assert net.now - broken <= 5.5 and B_ID not in a.peers


def test_an_introduction_replaces_a_stale_connection_to_a_restarted_peer() -> None:
    """C still holds a connection to A's previous transport (its goodbye was lost) when the
    restarted A asks R to introduce them: C takes part anyway, and the new path wins."""
    net = behind_nats()
    punch(net)
    c = net.eps[net.addr["c"]]
    stale = c.peers[A_ID]
    a2 = endpoint(A_SEED)  # A restarted: new transport key, new port, nothing about C
    net.eps[net.addr["a"]] = a2
    net.nats[net.addr["a"]].ports.clear()  # a fresh mapping in A's NAT
    net.events["a"] = []
    a2.dial(B_ID, net.addr["b"], net.now)
    net.run(until=lambda: B_ID in a2.peers)
    a2.punch(C_ID, B_ID, net.now)
    net.run(2000, until=lambda: bool(net.of("a", PunchEnded)))
    assert net.of("a", PunchEnded)[0].ok
    assert c.peers[A_ID] is not stale and C_ID in a2.peers


def test_a_node_takes_many_introductions_from_one_relay_but_not_unlimited() -> None:
    net = three()
    a, c = net.eps[net.addr["a"]], net.eps[net.addr["c"]]
    relay = c.peers[B_ID]
    for i in range(INTRO_IN_BURST + 3):
        c._introduced(relay, bytes([i % 256, i // 256]) * 16, b"t" * TOKEN_BYTES,
                      [("10.9.9.9", 1000 + i)], net.now)
    assert len(c._punches) == MAX_INTRODUCED  # at once from one relay; the rest refused
    assert c.counters["punches_refused"] == INTRO_IN_BURST - MAX_INTRODUCED
    assert c.counters["intros_ignored"] == 3
    assert a.counters["intros_ignored"] == 0


def control(net: Net, frm: str, to_id: bytes, msg: list[object]) -> None:
    """``frm`` sends a control frame to ``to_id`` (a hostile peer: no checks)."""
    ep = net.eps[net.addr[frm]]
    conn = ep.peers[to_id]
    lane = next(e for e in net.eps.values() if e.node_id == to_id).peers[ep.node_id]
    parsed = lane.parsed
    body = bytes([CONTROL]) + msgpack.packb(msg, use_bin_type=True)
    conn.quic.send_stream_data(conn.lane, len(body).to_bytes(4, "big") + body)
    ep._pump(conn, net.now)
    net.run(100, until=lambda: lane.parsed > parsed)


def test_a_hostile_relay_cannot_make_a_node_dial_or_probe_without_bound() -> None:
    """A relay may only pass on the address it saw the peer at (first) and private
    addresses; a punch probes at most PUNCH_PROBES times and dials at most PUNCH_DIALS
    addresses, each at a candidate's address."""
    net = three()
    c = net.eps[net.addr["c"]]
    fake, tok = b"\xff" * 32, b"k" * TOKEN_BYTES
    for i in range(50):  # introductions piling up candidates for one punch
        control(net, "b", C_ID, ["intro", fake, tok, [[f"100.64.{i}.1", 1000]] + [
            [f"10.9.{i}.{j}", 1000 + j] for j in range(2)]])
    cands = c._punches[fake].candidates
    assert len(cands) == 8 and [a for a in cands if not a[0].startswith("10.")] == [
        ("100.64.0.1", 1000), ("100.64.1.1", 1000)]  # PUBLIC_CANDIDATES
    refused = c.counters["intro_candidates_refused"]
    control(net, "b", C_ID, ["intro", b"\xfd" * 32, tok, [["10.1.1.1", 1], ["8.8.8.8", 2],
                                                          ["100.64.9.9", 3]]])
    assert c._punches[b"\xfd" * 32].candidates == [("10.1.1.1", 1)]
    assert c.counters["intro_candidates_refused"] == refused + 2
    c._punches[fake].initiator = True  # (as if C had asked: only the asking side dials)
    before = len(c._conns)
    for port in range(1, 500):  # forged probes from many source ports
        c.receive(PROBE_MAGIC + tok + fake, ("100.64.0.1", port), net.now)
        c.receive(PROBE_MAGIC + tok + fake, ("198.51.100.7", port), net.now)  # elsewhere
    assert len(c._conns) - before == 2 and c.counters["punch_dials"] == 2
    assert all(conn.addr[0] == "100.64.0.1" for conn in c._conns if conn.expect == fake)
    assert c.counters["stray_probes"] == 499
    sent = c.counters["probes_sent"]
    net.run(5000, until=lambda: fake not in c._punches and b"\xfd" * 32 not in c._punches)
    # two punches (FAKE's, 8 candidates; 0xfd's, 1): each stops once its budget is spent
    assert c.counters["probes_sent"] <= 2 * PUNCH_PROBES + 7, c.counters["probes_sent"]
    assert c.counters["probes_sent"] > sent
    # port prediction aims only at ports above the relay's observation, within its bound
    assert c.counters["spray_probes"] <= 2 * SPRAY_PROBES  # (none here: probes were heard)
    # loopback, multicast and the like are never probed; short node ids are refused
    control(net, "b", C_ID, ["intro", b"\xfe" * 32, tok, [["127.0.0.1", 1], ["224.0.0.1", 2],
                                                          ["0.0.0.0", 3]]])
    assert c._punches[b"\xfe" * 32].candidates == []
    control(net, "b", C_ID, ["intro", b"short", tok, []])
    assert b"short" not in c._punches and c.counters["malformed_control"] == 1


def test_control_frames_on_a_retired_connection_are_ignored() -> None:
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    old = a.peers[B_ID]
    a.dial(B_ID, net.addr["b"], net.now)  # a newer connection retires the old one
    a.peers.pop(B_ID)
    a.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: a.peers.get(B_ID) not in (None, old))
    body = bytes([CONTROL]) + msgpack.packb(["intro?", C_ID, b"t" * TOKEN_BYTES])
    old.quic.send_stream_data(old.lane, len(body).to_bytes(4, "big") + body)
    a._pump(old, net.now)
    net.run(100)
    assert b.counters["control_ignored"] >= 1 and b.counters["intros_unknown"] == 0


def test_the_dialler_knows_the_peer_after_one_round_trip() -> None:
    """The server proves itself in its first flight; the client proves itself with its
    Finished, so the server knows it half a round trip later (flights moved by hand)."""
    net = Net(a=endpoint(A_SEED), b=endpoint(B_SEED))
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    a.dial(B_ID, net.addr["b"], net.now)

    def flight(src: Endpoint, dst: Endpoint, src_addr: Addr) -> None:
        for data, _ in src.datagrams():
            dst.receive(data, src_addr, net.now)

    flight(a, b, net.addr["a"])  # the client's Initial
    assert not any(isinstance(e, PeerAuthenticated) for e in b.events())
    flight(b, a, net.addr["b"])  # the server's flight, with its proof
    assert [e for e in a.events() if isinstance(e, PeerAuthenticated)] == [
        PeerAuthenticated(B_ID, net.addr["b"], True)]
    flight(a, b, net.addr["a"])  # the client's Finished, with its proof
    assert [e for e in b.events() if isinstance(e, PeerAuthenticated)] == [
        PeerAuthenticated(A_ID, net.addr["a"], False)]


def test_an_envelope_is_acknowledged_by_the_answer_not_by_a_packet_of_its_own() -> None:
    """Request/response costs one datagram each way: the QUIC ACK for an envelope rides on
    the envelope going back (a lone one waits at most APP_ACK_DELAY_S; two waiting are
    acknowledged at once)."""
    net = connected()
    a, b = net.eps[net.addr["a"]], net.eps[net.addr["b"]]
    net.run(until=lambda: not a.datagrams() and not b.datagrams())  # handshake's tail
    (conn,) = a._conns

    def send(src: Endpoint, to: bytes, data: bytes) -> None:
        net.now += 0.001  # past the pacer's next send time
        src.send(to, data, net.now)

    def move(src: Endpoint, dst: Endpoint, src_addr: Addr) -> int:
        out = src.datagrams()
        for data, _ in out:
            dst.receive(data, src_addr, net.now)
        return len(out)

    send(a, B_ID, b"hello")
    assert move(a, b, net.addr["a"]) == 1
    assert b.datagrams() == []  # no packet just to acknowledge it
    send(b, A_ID, b"its answer")
    assert move(b, a, net.addr["b"]) == 1
    assert conn.quic._loss.bytes_in_flight == 0  # the answer carried the ACK

    # nothing to carry it: acknowledged on its own, within the delay
    send(a, B_ID, b"alone")
    assert move(a, b, net.addr["a"]) == 1
    assert b.next_timer() is not None and b.next_timer() <= net.now + APP_ACK_DELAY_S
    net.now += APP_ACK_DELAY_S
    b.handle_timer(net.now)
    assert move(b, a, net.addr["b"]) == 1
    assert conn.quic._loss.bytes_in_flight == 0

    # two waiting: acknowledged at once (the sender's window keeps growing)
    for data in (b"one", b"two"):
        send(a, B_ID, data)
        assert move(a, b, net.addr["a"]) == 1
    assert move(b, a, net.addr["b"]) == 1
    assert conn.quic._loss.bytes_in_flight == 0
    assert [e.data for e in b.events() if isinstance(e, Received)] == [
        b"hello", b"alone", b"one", b"two"]
