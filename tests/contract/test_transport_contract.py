"""Contract of the transport role: its requests and their errors, then what it does with
other nodes (docs/protocol.md §8.6) with its router played by the suite
(tests/contract/router_side.py) and the other node played by a QUIC endpoint in the test
(tests/contract/quic_peer.py): it attributes a connection to a node id only once the node
proved it, and keeps the order of what crosses a connection, both ways.

What needs two whole nodes (back-pressure, restart, malformed lanes) is in
tests/e2e/test_transport.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import zmq

from shared.bus import socket as zsocket
from shared.envelope import MAX_ENVELOPE_BYTES
from shared.primitives import SigningKey
from shared.wire import RemoteError, decode
from shared.wire.messages import transport as m
from shared.wire.messages.sys import Status, StatusReply

from .generic import RoleContract, only_crypto_opened_the_key
from .harness import SEED, Node
from .quic_peer import QuicPeer
from .router_side import RouterSide

ROLE = "transport"
NEEDS = ("crypto",)
NODE = SigningKey(SEED).public
PEER = b"\x42" * 32


def request(node: Node, body: m.Message, *blobs: bytes, timeout_s: float = 20
            ) -> m.Message:
    with node.client(timeout_s=timeout_s) as c:
        if blobs:
            return c.call(ROLE, body, blobs).body
        deadline = time.monotonic() + timeout_s
        while True:  # until crypto has signed the transport's binding
            try:
                return c.request(ROLE, body)
            except RemoteError as e:
                if e.name != "unavailable" or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def refused(node: Node, body: m.Message, *blobs: bytes, timeout_s: float = 20) -> str:
    with pytest.raises(RemoteError) as info:
        request(node, body, *blobs, timeout_s=timeout_s)
    return info.value.name


class TestTransportContract(RoleContract):
    role = ROLE


class TestTransportRole:
    """The transport's requests, and the other nodes it talks to."""

    def test_info_names_the_node_and_its_udp_port(self, node: Node) -> None:
        deadline = time.monotonic() + 20
        while not (reply := request(node, m.Info())).ready:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "crypto never signed the binding"
            time.sleep(0.05)
        assert isinstance(reply, m.InfoReply)
        assert reply.node_id == NODE and 0 < reply.port < 65536

    def test_no_peers_at_first(self, node: Node) -> None:
        assert request(node, m.Peers()) == m.PeersReply(peers=[])

    def test_send_without_a_connection_is_unavailable(self, node: Node) -> None:
        request(node, m.Info())
        assert refused(node, m.Send(peer=PEER), b"x") == "unavailable"

    def test_send_checks_its_blob(self, node: Node) -> None:
        assert refused(node, m.Send(peer=PEER)) == "invalid"
        assert refused(node, m.Send(peer=PEER), b"x" * (MAX_ENVELOPE_BYTES + 1)) == "too_large"

    def test_connect_to_nobody_fails_with_peer_timeout(self, node: Node) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # drops everything
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            start = time.monotonic()
            name = refused(node, m.Connect(peer=PEER, host="127.0.0.1", port=port),
                           timeout_s=30)
        assert name == "peer_timeout" and time.monotonic() - start < 15

    def test_connect_to_ourselves_is_refused(self, node: Node) -> None:
        reply = request(node, m.Info())
        assert isinstance(reply, m.InfoReply)
        name = refused(node, m.Connect(peer=PEER, host="127.0.0.1", port=reply.port),
                       timeout_s=30)
        assert name in ("failed", "peer_timeout")

    # -- other nodes (its router played by the suite) -------------------------------------

    def test_a_peer_that_proves_its_id_is_connected_and_order_is_kept_both_ways(
            self, node: Node, router: RouterSide) -> None:
        """The peer dials with a binding its node signed: ``transport.peer_connected`` names
        it, ``transport.peers`` lists it, each envelope it sends reaches ``router.deliver``
        once, with its id as ``peer``, in the order sent (several to a datagram); what the
        router sends it with ``transport.send`` arrives in order too."""
        port = ready(node).port
        events = Events(node)
        peer = QuicPeer(b"\x71" * 32)
        try:
            peer.ep.dial(NODE, ("127.0.0.1", port), time.monotonic())
            peer.run(lambda: NODE in peer.ep.peers, "the transport authenticates the peer")
            up = wait_pumping(peer, lambda: [b for b in events.of(m.PeerConnected)
                                             if b.peer == peer.id],
                              "transport.peer_connected for the peer")
            assert up[0].dialled is False
            listed = request(node, m.Peers())
            assert isinstance(listed, m.PeersReply)
            assert [p.node_id for p in listed.peers] == [peer.id]
            base = len(router.got)
            sent = [b"in%05d" % i + b"." * 200 for i in range(N_ORDERED)]
            for env in sent:
                peer.ep.send(NODE, env, time.monotonic())
            wait_pumping(peer, lambda: router.pump(10) or len(router.got) >= base + N_ORDERED,
                         "the peer's envelopes reach router.deliver", router=router)
            assert router.got[base:] == [(peer.id, env) for env in sent], \
                "not each envelope once, in the order the peer sent them"
            out = [b"out%05d" % i + b"." * 200 for i in range(N_ORDERED)]
            with node.client(timeout_s=10) as c:
                ids = [c.send(ROLE, m.Send(peer=peer.id), [env]) for env in out]
                for i in ids:
                    while True:  # answered once queued on the connection; the peer reads
                        peer.step(0)
                        if c.sock(ROLE).poll(10):
                            c.recv(ROLE, i)
                            break
            peer.run(lambda: len(peer.received()) >= N_ORDERED, "what the router sent arrives")
            assert peer.received() == out
        finally:
            events.close()
            peer.close()

    @pytest.mark.parametrize("forgery", ["binding-for-another-key", "binding-signed-by-another"])
    def test_a_peer_that_cannot_prove_its_id_is_refused_and_counted(
            self, node: Node, router: RouterSide, forgery: str) -> None:
        port = ready(node).port
        before = counters(node).get("auth_failures", 0)
        peer = QuicPeer(b"\x72" * 32, **(  # type: ignore[arg-type]
            {"binding_key": b"\x09" * 32} if forgery == "binding-for-another-key"
            else {"signed_by": b"\x73" * 32}))
        try:
            peer.ep.dial(NODE, ("127.0.0.1", port), time.monotonic())
            peer.run(peer.closed, "the transport closes the connection")
            assert "authentication failed" in peer.closed()[0].reason, peer.closed()
            assert NODE not in peer.ep.peers
            listed = request(node, m.Peers())
            assert isinstance(listed, m.PeersReply)
            assert peer.id not in [p.node_id for p in listed.peers]
            assert counters(node).get("auth_failures", 0) == before + 1
        finally:
            peer.close()

    def test_connect_is_answered_once_the_node_dialled_has_proven_its_id(
            self, node: Node, router: RouterSide) -> None:
        """``transport.connect`` to the peer's address: answered when it proved it is the
        node asked for; ``failed`` when another node answers there."""
        ready(node)
        peer = QuicPeer(b"\x74" * 32)
        try:
            with node.client(timeout_s=15) as c:
                wrong = c.send(ROLE, m.Connect(peer=PEER, host="127.0.0.1", port=peer.port))
                wait_pumping(peer, lambda: c.sock(ROLE).poll(0), "an answer to the connect")
                with pytest.raises(RemoteError) as info:
                    c.recv(ROLE, wrong)
                assert info.value.name == "failed", info.value
                listed = request(node, m.Peers())
                assert isinstance(listed, m.PeersReply)
                assert peer.id not in [p.node_id for p in listed.peers], \
                    "the transport kept a connection to another node than the one dialled"
                right = c.send(ROLE, m.Connect(peer=peer.id, host="127.0.0.1", port=peer.port))
                wait_pumping(peer, lambda: c.sock(ROLE).poll(0), "an answer to the connect")
                assert isinstance(c.recv(ROLE, right).body, m.ConnectReply)
            listed = request(node, m.Peers())
            assert isinstance(listed, m.PeersReply)
            assert [(p.node_id, p.dialled) for p in listed.peers if p.node_id == peer.id] == \
                [(peer.id, True)]
        finally:
            peer.close()

    def test_only_crypto_opens_the_identity_key(self, node: Node) -> None:
        only_crypto_opened_the_key(node)


N_ORDERED = 300


@pytest.fixture(scope="module")
def router(node: Node) -> Iterator[RouterSide]:
    if node.all_in_one:
        pytest.skip("the suite plays the router, so the transport must run alone (a command "
                    "template with {role})")
    side = RouterSide(node)
    try:
        yield side
    finally:
        side.close()


def ready(node: Node) -> m.InfoReply:
    deadline = time.monotonic() + 20
    while not (reply := request(node, m.Info())).ready:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "crypto never signed the binding"
        time.sleep(0.05)
    assert isinstance(reply, m.InfoReply)
    return reply


def counters(node: Node) -> dict[str, int]:
    with node.client() as c:
        reply = c.request(ROLE, Status())
    assert isinstance(reply, StatusReply)
    return dict(reply.counters)


def wait_pumping(peer: QuicPeer, check: object, what: str, timeout_s: float = 15,
                 router: RouterSide | None = None) -> object:
    """Drive the peer (and answer the router's calls) until ``check()`` is true."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout_s:g} s: {what}")
        peer.step(0.01)
        if router is not None:
            router.pump()
    return value


class Events:
    """The transport's events, from a subscription known to be live (a heartbeat came)."""

    def __init__(self, node: Node) -> None:
        self.sock = zsocket(zmq.Context.instance(), zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(node.endpoints[ROLE].events)
        self.got: list[object] = []
        deadline = time.monotonic() + 10
        while not any(b.msg_type == "sys.heartbeat" for b in self.of(object)):
            assert time.monotonic() < deadline, "no sys.heartbeat from the transport"
            self.sock.poll(50)

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        while self.sock.poll(0):
            self.got.append(decode(self.sock.recv_multipart()[1:]).body)
        return [b for b in self.got if isinstance(b, kind)]

    def close(self) -> None:
        self.sock.close(0)
