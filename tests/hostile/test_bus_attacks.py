"""Attacks on the bus over tcp (the docker-compose endpoints), against five real services.

Before CURVE, a process that could reach the ports read received messages from
``router.events``, had crypto sign ACKs, far-future chats and transport bindings for its own
key, sent as the node and shut services down. Now a client without the node's keys gets no
answer and no event, each refusal is counted, and even admitted keys get only what their
role allows (docs/security.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from shared import endpoints
from shared.bus import BusClient
from shared.buskeys import BusKeys
from shared.wire import BusTimeout, RemoteError, decode
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm
from shared.wire.messages.sys import Heartbeat, Ping, PingReply, Shutdown, Status, StatusReply
from tests.e2e.test_compose import ENDPOINTS_FILE, localize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0
REFUSED_WAIT_S = 1.0
"""How long an attacker's request waits for an answer that must never come."""


@dataclass
class TcpNode:
    data: Path
    eps: endpoints.Endpoints
    keys: BusKeys
    procs: dict[str, subprocess.Popen[bytes]]

    def owner(self, timeout_s: float = READY_TIMEOUT_S) -> BusClient:
        return BusClient(self.eps, src="owner", timeout_s=timeout_s, keys=self.keys)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.data.parent.glob("*.log")))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcpNode]:
    tmp = tmp_path_factory.mktemp("tcpnode")
    data = tmp / "data"
    init = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), "init"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert init.returncode == 0, init.stderr
    zmq.auth.create_certificates(data / "bus" / "apps", "friend")  # a listed app
    eps = localize(endpoints.load(ENDPOINTS_FILE))
    tcp_file = tmp / "endpoints.tcp.toml"
    eps.write(tcp_file)
    env = {**os.environ, "TOM_BUS__HEARTBEAT_S": "0.2", "TOM_TRANSPORT__HOST": "127.0.0.1",
           "TOM_TRANSPORT__PORT": "0"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    n = TcpNode(data, eps, BusKeys(data / "bus"), procs)
    try:
        for role in endpoints.ROLES:
            with open(tmp / f"{role}.log", "wb") as log:
                procs[role] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{role}", "--data", str(data),
                     "--endpoints", str(tcp_file)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        with n.owner() as c:  # readiness: each service's own answer (queued until it binds)
            sent = {role: c.send(role, Ping()) for role in endpoints.ROLES}
            for role, msg_id in sent.items():
                try:
                    assert isinstance(c.recv(role, msg_id).body, PingReply)
                except BusTimeout as e:
                    pytest.fail(f"{role}: {e}\n{n.logs()}")
        yield n
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def refused(client: BusClient, role: str, body: cm.Message, *blobs: bytes) -> None:
    """The request gets no answer at all: the connection never got past CURVE."""
    with pytest.raises(BusTimeout):
        client.call(role, body, blobs, timeout_s=REFUSED_WAIT_S)


def counters(node: TcpNode, role: str) -> dict[str, int]:
    with node.owner() as c:
        reply = c.request(role, Status())
    assert isinstance(reply, StatusReply)
    return reply.counters


def test_a_client_without_the_nodes_keys_gets_nothing(node: TcpNode) -> None:
    before = {role: counters(node, role).get("bus_auth_refused", 0)
              for role in endpoints.ROLES}
    stranger = BusKeys(node.data.parent / "stranger")
    BusKeys.create(stranger.directory)  # made-up key pairs; it knows the servers' keys
    plain = BusClient(node.eps, src="attacker", timeout_s=REFUSED_WAIT_S)
    curve = BusClient(node.eps, src="attacker", timeout_s=REFUSED_WAIT_S,
                      keys=_StrangerKeys(stranger.directory, node.keys.directory))
    try:
        for client in (plain, curve):
            for role in endpoints.ROLES:
                refused(client, role, Ping())
            refused(client, "router", rm.Inbox(after=0, limit=10))
            refused(client, "router", rm.Send(to=b"\x01" * 32), b"as the node")
            refused(client, "crypto", cm.Seal(to=b"\x01" * 32, envelope_type="Chat"), b"x")
            refused(client, "crypto", cm.BindTransport(transport_key=b"k" * 32,
                                                      not_after_s=int(time.time()) + 3600))
            refused(client, "transport", Shutdown())
    finally:
        plain.close()
        curve.close()
    for role in endpoints.ROLES:  # counted, and every service still serves its node
        assert counters(node, role).get("bus_auth_refused", 0) > before[role], role
    with node.owner() as c:
        for role in endpoints.ROLES:
            assert isinstance(c.request(role, Ping()), PingReply)


class _StrangerKeys(BusKeys):
    """The attacker's own key pair, with the servers' public keys (which are no secret)."""

    def __init__(self, own: Path, servers: Path) -> None:
        super().__init__(own)
        self.servers = BusKeys(servers)

    def public(self, name: str) -> bytes:
        return self.servers.public(name)


def test_events_reach_only_keyed_subscribers(node: TcpNode) -> None:
    """``router.events`` carries the plaintext of received messages."""
    ctx = zmq.Context()
    keyed, plain = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        for sock in (keyed, plain):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        node.keys.dial(keyed, "owner", "router")
        keyed.connect(node.eps["router"].events)
        plain.connect(node.eps["router"].events)
        beats = 0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while beats < 3 and time.monotonic() < deadline:
            if keyed.poll(200):
                if isinstance(decode(keyed.recv_multipart()[1:]).body, Heartbeat):
                    beats += 1
        assert beats == 3, "the owner's subscriber got no heartbeats"
        assert not plain.poll(0), "an unauthenticated subscriber received an event"
    finally:
        keyed.close(0)
        plain.close(0)
        ctx.term()


def test_an_app_key_reaches_the_router_and_nothing_else(node: TcpNode) -> None:
    app = BusClient(node.eps, src="friend", timeout_s=5, keys=node.keys, key_name="friend")
    try:
        assert isinstance(app.request("router", Ping()), PingReply)
        assert isinstance(app.request("router", rm.Inbox(after=0, limit=1)), rm.InboxReply)
        with pytest.raises(RemoteError) as info:
            app.request("router", Shutdown())
        assert info.value.name == "forbidden"
        refused(app, "crypto", cm.NodeId())
        refused(app, "transport", Ping())
    finally:
        app.close()
    with node.owner() as c:
        assert isinstance(c.request("router", Ping()), PingReply)


def test_crypto_signs_by_caller(node: TcpNode) -> None:
    """The owner's key (the `tom` command) gets the node id, not signatures or bindings;
    those are for the node's own services, and bindings for its transport alone."""
    before = counters(node, "crypto").get("refused_caller", 0)
    with node.owner(timeout_s=5) as c:
        assert isinstance(c.request("crypto", cm.NodeId()), cm.NodeIdReply)
        for body, blobs in ((cm.Seal(to=b"\x01" * 32, envelope_type="Chat"), (b"x",)),
                            (cm.Open(), (b"x",)),
                            (cm.BindTransport(transport_key=b"k" * 32,
                                              not_after_s=int(time.time()) + 3600), ())):
            with pytest.raises(RemoteError) as info:
                c.call("crypto", body, blobs)
            assert info.value.name == "forbidden", body
    # the router (a service key) may seal, but not bind a transport key
    router = BusClient(node.eps, src="router", timeout_s=5, keys=node.keys, key_name="router")
    try:
        reply = router.call("crypto", cm.Seal(to=b"\x01" * 32, envelope_type="PeerAnnounce",
                                              encrypt=False), (b"x",))
        assert isinstance(reply.body, cm.SealReply)
        with pytest.raises(RemoteError) as info:
            router.request("crypto", cm.BindTransport(transport_key=b"k" * 32,
                                                      not_after_s=int(time.time()) + 3600))
        assert info.value.name == "forbidden"
    finally:
        router.close()
    assert counters(node, "crypto")["refused_caller"] >= before + 4
    with node.owner() as c:  # the real transport still got its binding
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            info_reply = c.request("transport", tm.Info())
            assert isinstance(info_reply, tm.InfoReply)
            if info_reply.ready or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling the transport's own state, not a readiness guess
        assert info_reply.ready, node.logs()
