"""Two real nodes (crypto + transport processes each) talking QUIC on loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import zmq

from shared.bus import BusClient, socket
from shared.primitives import SigningKey
from shared.wire import RemoteError, decode
from shared.wire.messages import transport as m
from shared.wire.messages.sys import Status, StatusReply
from tests.contract.harness import IMPLEMENTATIONS, Node, prepare

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


def make_node(seed: bytes, toml: str = NODE_TOML) -> Node:
    node = prepare(IMPLEMENTATIONS["services"], seed, toml)
    node.start("crypto", "transport")
    return node


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
def pair() -> Iterator[tuple[Node, Node, bytes, bytes]]:
    seeds = (b"\x0a" * 32, b"\x0b" * 32)
    nodes: list[Node] = []
    try:
        nodes = [make_node(s) for s in seeds]
        yield nodes[0], nodes[1], SigningKey(seeds[0]).public, SigningKey(seeds[1]).public
    finally:
        for n in nodes:
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)


def subscriber(node: Node) -> zmq.Socket:
    """A SUB to the node's transport events, connected for sure (it has seen a heartbeat)."""
    sub = socket(zmq.Context.instance(), zmq.SUB, hwm=100_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(node.endpoints["transport"].events)
    while True:
        assert sub.poll(5000), "no event from the transport"
        if sub.recv_multipart()[0] == b"sys.heartbeat":
            return sub


def drain_delivered(sub: zmq.Socket, into: list[bytes], wait_ms: int = 0) -> None:
    while sub.poll(wait_ms):
        frames = sub.recv_multipart()
        if frames[0] == b"transport.delivered":
            into.append(decode(frames[1:]).blobs[0])
        wait_ms = 0


def blast(client: BusClient, peer: bytes, tag: bytes, sub: zmq.Socket,
          got: list[bytes]) -> None:
    """Send N envelopes through the transport, WINDOW at a time, collecting deliveries."""
    for start in range(0, N, WINDOW):
        ids = [client.send("transport", m.Send(peer=peer), [tag + b"%06d" % i + b"." * 180],
                           timeout_s=10) for i in range(start, min(start + WINDOW, N))]
        for msg_id in ids:
            client.recv("transport", msg_id, timeout_s=10)
        drain_delivered(sub, got)


def test_ten_thousand_envelopes_each_way_over_one_connection(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, a_id, b_id = pair
    ia, ib = info(a), info(b)
    assert ia.ready and ib.ready and (ia.node_id, ib.node_id) == (a_id, b_id)
    sub_a, sub_b = subscriber(a), subscriber(b)
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    with a.client(timeout_s=10) as ca, b.client(timeout_s=10) as cb:
        ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
        blast(ca, b_id, b"A>B", sub_b, got_b)
        # B was never told A's address: it answers over the connection A opened
        blast(cb, a_id, b"B>A", sub_a, got_a)
        for sub, got in ((sub_b, got_b), (sub_a, got_a)):
            deadline = time.monotonic() + 120
            while len(got) < N and time.monotonic() < deadline:
                drain_delivered(sub, got, wait_ms=200)
        assert sorted(got_b) == [b"A>B%06d" % i + b"." * 180 for i in range(N)]
        assert sorted(got_a) == [b"B>A%06d" % i + b"." * 180 for i in range(N)]
        peers_a = ca.request("transport", m.Peers())
        peers_b = cb.request("transport", m.Peers())
    assert isinstance(peers_a, m.PeersReply) and isinstance(peers_b, m.PeersReply)
    assert [(p.node_id, p.dialled) for p in peers_a.peers] == [(b_id, True)]
    assert [(p.node_id, p.dialled) for p in peers_b.peers] == [(a_id, False)]
    assert peers_a.peers[0].rtt_ms > 0
    out = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(a.data), "peers"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and b_id.hex() in out.stdout and "direct" in out.stdout


def test_the_wrong_node_at_an_address_is_refused(pair) -> None:  # type: ignore[no-untyped-def]
    a, b, a_id, b_id = pair
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
    import socket as pysocket

    a, b, a_id, b_id = pair
    ib = info(b)
    sub_b = subscriber(b)
    got: list[bytes] = []
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
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            drain_delivered(sub_b, got, wait_ms=200)
        status = cb.request("transport", Status())
    assert got == [b"after the storm"]
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
    nodes: list[Node] = []
    try:
        a = make_node(seeds[0], short_idle)
        nodes.append(a)
        b = make_node(seeds[1], short_idle.replace("port = 0", f"port = {port_b}"))
        nodes.append(b)
        b_id = SigningKey(seeds[1]).public
        ib = info(b)
        assert ib.port == port_b
        with a.client(timeout_s=10) as ca:
            ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
            b.procs["transport"].kill()
            b.procs["transport"].wait()
            b.start("transport")
            assert info(b).ready
            sub_b = subscriber(b)
            got: list[bytes] = []
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:  # until A has reconnected by itself
                peers = ca.request("transport", m.Peers())
                assert isinstance(peers, m.PeersReply)
                if peers.peers:
                    try:
                        ca.call("transport", m.Send(peer=b_id), [b"resumed"])
                    except RemoteError:
                        continue  # the old connection was just replaced
                    drain_delivered(sub_b, got, wait_ms=500)
                    if got:
                        break
                else:
                    drain_delivered(sub_b, got, wait_ms=200)
            assert got and got[-1] == b"resumed"
    finally:
        for n in nodes:
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)
