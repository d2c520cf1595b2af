"""Contract of the transport role on one node: its requests and their errors.

What needs two nodes (envelopes both ways, refusal of a wrong peer, back-pressure, restart)
is in tests/e2e/test_transport.py, which also plays the router's half of the contract.
"""

from __future__ import annotations

import socket
import time

import pytest

from shared.envelope import MAX_ENVELOPE_BYTES
from shared.primitives import SigningKey
from shared.wire import RemoteError
from shared.wire.messages import transport as m

from .generic import RoleContract
from .harness import SEED, Node

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
