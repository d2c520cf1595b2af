"""Two real nodes (crypto + transport processes each) talking QUIC on loopback; the test
plays each node's router (tests/contract/router_side.py)."""

from __future__ import annotations

import os
import select
import shutil
import socket as pysocket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.crypto.core import Identity
from services.transport.endpoint import Endpoint, Event, PeerClosed, transport_public
from shared.bus import BusClient
from shared.primitives import SigningKey
from shared.wire import RemoteError
from shared.wire.messages import transport as m
from shared.wire.messages.sys import Status, StatusReply
from tests.contract.harness import IMPLEMENTATIONS, Node, prepare
from tests.contract.router_side import RouterSide

pytestmark = pytest.mark.slow
N = 10_000
WINDOW = 500
NODE_TOML = """\
[bus]
heartbeat_s = 0.5
[transport]
host = "127.0.0.1"
port = 0
"""


def make_node(seed: bytes, toml: str = NODE_TOML) -> tuple[Node, RouterSide]:
    """Crypto and transport processes; the test plays the router (tests/contract)."""
    node = prepare(IMPLEMENTATIONS["services"], seed, toml)
    node.start("crypto", "transport")
    return node, RouterSide(node)


def info(node: Node, timeout_s: float = 20) -> m.InfoReply:
    """The transport's address, once crypto has signed its binding."""
    deadline = time.monotonic() + timeout_s
    with node.client() as c:
        while True:
            reply = c.request("transport", m.Info())
            assert isinstance(reply, m.InfoReply)
            if reply.ready or time.monotonic() > deadline:
                return reply
            time.sleep(0.02)  # polling the transport's own state, not a readiness guess


@pytest.fixture()
def pair() -> Iterator[tuple[Node, Node, bytes, bytes, RouterSide, RouterSide]]:
    seeds = (b"\x0a" * 32, b"\x0b" * 32)
    made: list[tuple[Node, RouterSide]] = []
    try:
        made = [make_node(s) for s in seeds]
        (a, ra), (b, rb) = made
        yield a, b, SigningKey(seeds[0]).public, SigningKey(seeds[1]).public, ra, rb
    finally:
        for n, r in made:
            r.close()
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)


def blast(client: BusClient, peer: bytes, tag: bytes, *sides: RouterSide) -> None:
    """Send N envelopes through the transport, WINDOW at a time, answering deliveries."""
    for start in range(0, N, WINDOW):
        ids = [client.send("transport", m.Send(peer=peer), [tag + b"%06d" % i + b"." * 180],
                           timeout_s=10) for i in range(start, min(start + WINDOW, N))]
        for msg_id in ids:
            client.recv("transport", msg_id, timeout_s=10)
        for side in sides:
            side.pump()


def test_ten_thousand_envelopes_each_way_over_one_connection(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, a_id, b_id, ra, rb = pair
    ia, ib = info(a), info(b)
    assert ia.ready and ib.ready and (ia.node_id, ib.node_id) == (a_id, b_id)
    with a.client(timeout_s=10) as ca, b.client(timeout_s=10) as cb:
        ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
        blast(ca, b_id, b"A>B", rb)
        # B was never told A's address: it answers over the connection A opened
        blast(cb, a_id, b"B>A", ra, rb)
        rb.wait_for(N, 120)
        ra.wait_for(N, 120)
        # one ordered lane per direction: everything once, in the order sent
        assert rb.envelopes() == [b"A>B%06d" % i + b"." * 180 for i in range(N)]
        assert ra.envelopes() == [b"B>A%06d" % i + b"." * 180 for i in range(N)]
        assert {p for p, _ in rb.got} == {a_id} and {p for p, _ in ra.got} == {b_id}
        peers_a = ca.request("transport", m.Peers())
        peers_b = cb.request("transport", m.Peers())
        status = cb.request("transport", Status())
    assert isinstance(peers_a, m.PeersReply) and isinstance(peers_b, m.PeersReply)
    assert [(p.node_id, p.dialled) for p in peers_a.peers] == [(b_id, True)]
    assert [(p.node_id, p.dialled) for p in peers_b.peers] == [(a_id, False)]
    assert peers_a.peers[0].rtt_ms > 0
    assert isinstance(status, StatusReply) and status.counters["delivered"] == N
    out = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(a.data), "peers"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and b_id.hex() in out.stdout and "direct" in out.stdout


def test_a_stalled_router_pushes_back_to_the_sending_peer(pair) -> None:  # type: ignore[no-untyped-def]
    """B's router stops answering: B's transport queues (bounded), stops reading A, A's
    sends fail with `overloaded`; once B's router answers, every envelope accepted by A's
    transport arrives once, in order."""
    a, b, a_id, b_id, ra, rb = pair
    ib = info(b)
    accepted: list[bytes] = []
    with a.client(timeout_s=10) as ca, b.client(timeout_s=10) as cb:
        ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
        paused = False
        deadline = time.monotonic() + 120
        while not paused and time.monotonic() < deadline:
            envelope = b"%06d" % len(accepted) + b"." * 16_000
            try:
                ca.call("transport", m.Send(peer=b_id), [envelope])
                accepted.append(envelope)
                continue
            except RemoteError as e:
                assert e.name == "overloaded", e
            # A's lane is full: either B's window is closed or A's packets are still
            # in flight; B's status tells which (the retry is the client's back-off)
            status = cb.request("transport", Status())
            assert isinstance(status, StatusReply)
            paused = status.counters.get("paused_reading", 0) >= 1
            time.sleep(0.05)
        assert paused, "B never stopped reading"
        assert status.queues["deliver_queue_cost"] <= 9 * 1024 * 1024
        # bounded: at most B's window and A's backlog limit more, then refused again
        with pytest.raises(RemoteError, match="overloaded"):
            for _ in range(1000):
                envelope = b"%06d" % len(accepted) + b"." * 16_000
                ca.call("transport", m.Send(peer=b_id), [envelope])
                accepted.append(envelope)
        rb.wait_for(len(accepted), 120)
    assert rb.envelopes() == accepted


def test_the_wrong_node_at_an_address_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, a_id, b_id, _, _ = pair
    ib = info(b)
    with a.client(timeout_s=15) as ca:
        with pytest.raises(RemoteError) as err:
            ca.request("transport", m.Connect(peer=a_id[::-1], host=ib.host, port=ib.port))
        assert err.value.name in ("failed", "peer_timeout")
        with pytest.raises(RemoteError) as err2:
            ca.call("transport", m.Send(peer=b_id), [b"x"])
        assert err2.value.name == "unavailable"


def test_garbage_datagrams_leave_the_node_serving_its_peers(pair) -> None:  # type: ignore[no-untyped-def]
    import random

    a, b, a_id, b_id, _, rb = pair
    ib = info(b)
    rng = random.Random(11)
    with a.client(timeout_s=10) as ca, b.client(timeout_s=10) as cb:
        ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
        with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as s:
            for i in range(5000):  # random bytes, short packets, Initial-shaped junk
                junk = rng.randbytes(rng.randrange(1, 1400))
                if i % 3 == 0:
                    junk = bytes([0xC0]) + (1).to_bytes(4, "big") + junk
                s.sendto(junk, (ib.host, ib.port))
        ca.call("transport", m.Send(peer=b_id), [b"after the storm"])
        rb.wait_for(1, 10)
        status = cb.request("transport", Status())
    assert rb.envelopes() == [b"after the storm"]
    assert isinstance(status, StatusReply)
    c = status.counters
    assert c.get("garbage_datagrams", 0) + c.get("unreadable_initials", 0) \
        + c.get("unroutable_datagrams", 0) > 1000, c


def test_a_restarted_transport_is_reconnected_and_traffic_resumes() -> None:
    """B's transport is killed and restarted on the same port: A notices the loss (short idle
    timeout here), re-dials B's last address by itself, and envelopes flow again."""
    import socket as pysocket

    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port_b = probe.getsockname()[1]
    short_idle = NODE_TOML + "idle_timeout_s = 3.0\n"
    seeds = (b"\x0c" * 32, b"\x0d" * 32)
    made: list[tuple[Node, RouterSide]] = []
    try:
        made.append(make_node(seeds[0], short_idle))
        made.append(make_node(seeds[1], short_idle.replace("port = 0", f"port = {port_b}")))
        (a, _), (b, rb) = made
        b_id = SigningKey(seeds[1]).public
        ib = info(b)
        assert ib.port == port_b
        with a.client(timeout_s=10) as ca:
            ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
            b.procs["transport"].kill()
            b.procs["transport"].wait()
            b.start("transport")
            assert info(b).ready
            deadline = time.monotonic() + 40
            while not rb.got and time.monotonic() < deadline:  # until A reconnected by itself
                peers = ca.request("transport", m.Peers())
                assert isinstance(peers, m.PeersReply)
                if peers.peers:
                    try:
                        ca.call("transport", m.Send(peer=b_id), [b"resumed"])
                    except RemoteError:
                        continue  # the old connection was just replaced
                rb.pump(300)
            assert rb.envelopes()[-1:] == [b"resumed"]
    finally:
        for n, r in made:
            r.close()
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)


class Rogue:
    """A hand-driven endpoint on a real UDP socket in the test process: it can present a
    binding for another key, or write anything on its lane once authenticated."""

    def __init__(self, seed: bytes, binding_key: bytes | None = None) -> None:
        key = Ed25519PrivateKey.generate()
        now = int(time.time())
        binding = Identity(seed, os.urandom).bind_transport(
            binding_key or transport_public(key), now + 3600, now - 10)
        self.ep = Endpoint(key, binding.encode(), time.time)
        self.sock = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.events: list[Event] = []

    def run(self, until: Callable[[], bool], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not until() and time.monotonic() < deadline:
            for data, addr in self.ep.datagrams():
                self.sock.sendto(data, addr)
            self.events += self.ep.events()
            timer = self.ep.next_timer()
            wait = 0.05 if timer is None else max(0.0, min(0.05, timer - time.monotonic()))
            if select.select([self.sock], [], [], wait)[0]:
                data, addr = self.sock.recvfrom(65536)
                self.ep.receive(data, addr, time.monotonic())
            self.ep.handle_timer(time.monotonic())

    def close(self) -> None:
        self.sock.close()


def status_of(node: Node) -> dict[str, int]:
    with node.client() as c:
        status = c.request("transport", Status())
    assert isinstance(status, StatusReply)
    return status.counters


def test_a_peer_with_a_binding_for_another_key_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, a_id, b_id, _, rb = pair
    ib = info(b)
    rogue = Rogue(b"\x0e" * 32, binding_key=b"\x09" * 32)  # signed binding, wrong TLS key
    try:
        rogue.ep.dial(b_id, (ib.host, ib.port), time.monotonic())
        rogue.run(lambda: any(isinstance(e, PeerClosed) for e in rogue.events))
        closed = [e for e in rogue.events if isinstance(e, PeerClosed)]
        assert closed and "authentication failed" in closed[0].reason, rogue.events
        assert not rogue.ep.peers
        assert status_of(b).get("auth_failures", 0) == 1
    finally:
        rogue.close()


@pytest.mark.parametrize("lane", [
    (1 << 31).to_bytes(4, "big") + b"x" * 64,      # oversize length
    bytes(4),                                       # zero length
    b"\xa7" + os.urandom(4095),                     # random bytes (a length over 1 MiB)
])
def test_malformed_streams_end_that_connection_and_others_keep_going(pair, lane) -> None:  # type: ignore[no-untyped-def]
    a, b, a_id, b_id, _, rb = pair
    ib = info(b)
    rogue = Rogue(b"\x0e" * 32)
    try:
        with a.client(timeout_s=10) as ca:
            ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
            rogue.ep.dial(b_id, (ib.host, ib.port), time.monotonic())
            rogue.run(lambda: b_id in rogue.ep.peers)
            conn = rogue.ep.peers[b_id]
            assert conn.lane is not None
            conn.quic.send_stream_data(conn.lane, lane)  # past every check of send()
            rogue.ep._pump(conn, time.monotonic())
            rogue.run(lambda: any(isinstance(e, PeerClosed) for e in rogue.events))
            assert [e for e in rogue.events if isinstance(e, PeerClosed)], "not disconnected"
            ca.call("transport", m.Send(peer=b_id), [b"A is still served"])
            rb.wait_for(1, 10)
        assert rb.envelopes() == [b"A is still served"]
        counters = status_of(b)
        assert counters.get("oversize_frames", 0) + counters.get("malformed_frames", 0) == 1
    finally:
        rogue.close()
