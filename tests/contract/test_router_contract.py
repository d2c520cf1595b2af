"""Contract of the router role: the generic bus contract, then what the router does with
envelopes (docs/protocol.md §8.7), with its transport played by the suite
(tests/contract/transport_side.py) and the real crypto of the node (the suite's fixed
identity).

Other nodes are played with envelopes sealed and signed by their own test identities and
handed to the router with ``router.deliver``, as the transport does; what the router sends
them is what it gives the fake transport (``transport.send``). A check that something did
*not* happen is closed by a later envelope whose effect is awaited.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import msgpack
import pytest
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.crypto.core import Identity
from shared import envelope as e
from shared.bus import socket
from shared.primitives import SigningKey
from shared.wire import RemoteError, decode
from shared.wire.messages import Message
from shared.wire.messages import router as rm
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.router import NodeInfo, NodeInfoReply
from shared.wire.messages.sys import Heartbeat, Status, StatusReply

from .generic import RoleContract, only_crypto_opened_the_key
from .harness import SEED, Node, prepare
from .transport_side import Sent, TransportSide

ROLE = "router"
NEEDS = ("crypto",)
NODE = SigningKey(SEED).public
WAIT_S = 10.0
MAX_PAYLOAD = 200 * 1024

T = TypeVar("T")


class TestRouterContract(RoleContract):
    role = ROLE

    def test_node_info_names_the_node(self, node: Node) -> None:
        expected = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
        with node.client() as c:
            if node.running:  # its identity is not the suite's: the one its crypto holds
                id_reply = c.request("crypto", NodeId())
                assert isinstance(id_reply, NodeIdReply)
                expected = id_reply.node_id
            reply = c.request(ROLE, NodeInfo())
        assert isinstance(reply, NodeInfoReply) and reply.node_id == expected


# -- the other nodes -------------------------------------------------------------------------

class Other:
    """Another node, played by the test: its identity."""

    def __init__(self, seed_byte: int) -> None:
        self.identity = Identity(bytes([seed_byte]) * 32, os.urandom)
        self.id = self.identity.node_id

    def seal(self, to: bytes, text: bytes = b"hello", kind: str = e.MessageType.CHAT,
             via: tuple[bytes, ...] = (), encrypt: bool = True) -> e.Envelope:
        return self.identity.seal(to, kind, text, now_ms(), via=via, encrypt=encrypt)

    def chat(self, text: bytes = b"hello", to: bytes = NODE,
             via: tuple[bytes, ...] = ()) -> bytes:
        return self.seal(to, text, via=via).encode()

    def ack(self, of: bytes, ack_type: str = e.AckType.RECIPIENT_RECEIVED,
            to: bytes = NODE) -> bytes:
        payload = e.AckPayload(of, ack_type).encode()
        return self.seal(to, payload, e.MessageType.ACK, encrypt=False).encode()

    def announce(self, neighbours: list[bytes]) -> bytes:
        """This node's signed announcement (protocol.md §8.7, Discovery)."""
        payload = msgpack.packb([f"node-{self.id.hex()[:6]}", [], neighbours],
                                use_bin_type=True)
        return self.seal(self.id, payload, e.MessageType.PEER_ANNOUNCE, encrypt=False).encode()

    def gossip(self, announcements: list[bytes], to: bytes = NODE) -> bytes:
        payload = msgpack.packb(announcements, use_bin_type=True)
        return self.identity.seal(to, e.MessageType.PEER_ANNOUNCE, payload, now_ms(),
                                  ttl=0, encrypt=False).encode()


P, R, D, S, X, M = (Other(b) for b in (0x61, 0x62, 0x63, 0x64, 0x65, 0x66))
"""P: a directly connected peer; R a relay to D, which this node reaches only through R;
S a sender and X another peer, both connected, for relaying; M an impostor."""


def now_ms() -> int:
    return int(time.time() * 1000)


def forged(raw: bytes, by: Other = M) -> bytes:
    """The same envelope (same ``from``) signed by another key."""
    env = e.decode(raw)
    return env.with_signature(by.identity._key.sign(env.signing_bytes())).encode()


def wait_for(check: Callable[[], T], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout_s:g} s: {what}")
        time.sleep(0.02)


# -- the node under test ---------------------------------------------------------------------

class Events:
    """The router's events, from a subscription known to be live (a heartbeat came)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.got: list[tuple[Message, tuple[bytes, ...]]] = []
        self.sock = self._subscribe()

    def _subscribe(self) -> zmq.Socket:
        sock = socket(zmq.Context.instance(), zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.node.endpoints[ROLE].events)
        self.sock = sock
        start = len(self.got)
        wait_for(lambda: self.pump(50) or any(isinstance(b, Heartbeat)
                                              for b, _ in self.got[start:]),
                 "a sys.heartbeat from the router")
        return sock

    def reconnect(self) -> None:
        """After a restart of the router (ZeroMQ may take seconds to reconnect by itself)."""
        self.sock.close(0)
        self._subscribe()

    def pump(self, wait_ms: int = 0) -> None:
        while self.sock.poll(wait_ms):
            wait_ms = 0
            msg = decode(self.sock.recv_multipart()[1:])
            self.got.append((msg.body, msg.blobs))

    def of(self, kind: type[T]) -> list[tuple[T, tuple[bytes, ...]]]:
        self.pump()
        return [(b, blobs) for b, blobs in self.got if isinstance(b, kind)]

    def close(self) -> None:
        self.sock.close(0)


class Bench:
    """The router under test with its real crypto, its fake transport and a client."""

    def __init__(self, node: Node, side: TransportSide) -> None:
        self.node = node
        self.side = side
        self.events: Events | None = None

    def start_router(self) -> None:
        before = len(self.side.subscriptions)
        self.node.start(ROLE)
        wait_for(lambda: any(s.startswith(b"\x01transport.")
                             for s in self.side.subscriptions[before:]),
                 "the router subscribes to the transport's events")
        reply, _ = self.call(NodeInfo())  # it knows who it is: it asked crypto
        assert isinstance(reply, NodeInfoReply) and reply.node_id == NODE
        for peer in list(self.side.connected):
            self.wait_connected(peer)

    def kill_and_restart(self) -> None:
        """kill -9: nothing is flushed, nothing is closed; then start it again."""
        p = self.node.proc(ROLE)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        self.start_router()
        if self.events is not None:
            self.events.reconnect()

    def call(self, body: Message, *blobs: bytes) -> tuple[Message, tuple[bytes, ...]]:
        with self.node.client(timeout_s=WAIT_S) as c:
            msg = c.call(ROLE, body, blobs)
        return msg.body, msg.blobs

    def error(self, body: Message, *blobs: bytes) -> RemoteError:
        with pytest.raises(RemoteError) as info:
            self.call(body, *blobs)
        return info.value

    def counters(self) -> dict[str, int]:
        reply, _ = self.call(Status())
        assert isinstance(reply, StatusReply)
        return dict(reply.counters)

    def peers(self) -> dict[bytes, rm.PeerEntry]:
        reply, _ = self.call(rm.Peers())
        assert isinstance(reply, rm.PeersReply)
        return {p.node_id: p for p in reply.peers}

    def wait_connected(self, peer: bytes) -> None:
        wait_for(lambda: (p := self.peers().get(peer)) is not None and p.connected,
                 f"the router sees {peer.hex()[:8]} connected")

    def connect(self, *others: Other) -> None:
        for o in others:
            self.side.connect(o.id)
        for o in others:
            self.wait_connected(o.id)

    def inbox(self) -> dict[bytes, rm.Stored]:
        reply, _ = self.call(rm.Inbox(after=0, limit=1000))
        assert isinstance(reply, rm.InboxReply)
        return {m.id: m for m in reply.messages}

    def outbox(self, msg_id: bytes) -> rm.MessageState | None:
        reply, _ = self.call(rm.Outbox(ids=[msg_id]))
        assert isinstance(reply, rm.OutboxReply)
        return reply.messages[0] if reply.messages else None

    def send(self, to: bytes, text: bytes = b"hi") -> bytes:
        reply, _ = self.call(rm.Send(to=to), text)
        assert isinstance(reply, rm.SendReply)
        return reply.id

    def sent(self, msg_id: bytes, count: int = 1, what: str = "",
             timeout_s: float = WAIT_S) -> list[Sent]:
        """Wait until envelope ``msg_id`` was given to the transport ``count`` times."""
        return wait_for(lambda: (got := self.side.envelopes(msg_id=msg_id))[count - 1:]
                        and got, what or f"the router sends {msg_id.hex()[:8]}", timeout_s)


@pytest.fixture(scope="module")
def bench(template: str) -> Iterator[Bench]:
    if "{role}" not in template:
        pytest.skip("the suite plays the transport, so the router must run alone (a command "
                    "template with {role}); its crypto runs from the same template")
    node = prepare(template)
    side = TransportSide(node, NODE)
    b = Bench(node, side)
    try:
        node.start("crypto")
        node.watch_key()
        b.start_router()
        b.events = Events(node)
        yield b
        assert not side.errors, side.errors
    finally:
        if b.events is not None:
            b.events.close()
        node.stop()
        side.close()
        shutil.rmtree(node.data, ignore_errors=True)


def verified_ack(s: Sent, of: bytes, to: bytes) -> None:
    ack = s.env
    ack.verify()
    assert (ack.sender, ack.to, ack.msg_type) == (NODE, to, e.MessageType.ACK)
    assert e.AckPayload.decode(ack.payload).original_id == of


# -- the checks ------------------------------------------------------------------------------

class TestRouterRole:
    """What the router does with envelopes, seen from its transport and the other nodes."""

    # delivery to this node

    def test_a_chat_is_stored_before_deliver_is_answered_kill_9_after_the_reply_keeps_it(
            self, bench: Bench) -> None:
        """The inbox is written before ``router.deliver`` is answered (the transport
        forgets the envelope then): killed right after the reply, the router has it when it
        comes back. The app hears of it (``router.message``), the sender gets the delivery
        ACK, signed by this node, through the transport."""
        bench.connect(P)
        raw = P.chat(b"kept across kill -9")
        msg_id = e.decode(raw).id
        assert isinstance(bench.side.deliver(P.id, raw), rm.DeliverReply)
        bench.kill_and_restart()
        stored = bench.inbox().get(msg_id)
        assert stored is not None, "a chat the router answered for is not in its inbox"
        assert (stored.sender, stored.payload, stored.encrypted) == (
            P.id, b"kept across kill -9", True)
        ack = wait_for(lambda: bench.side.acks(msg_id), "the delivery ACK goes to the sender")
        assert ack[0].peer == P.id
        verified_ack(ack[0], msg_id, P.id)

    def test_a_new_chat_is_published_once_and_a_duplicate_is_acknowledged_again(
            self, bench: Bench) -> None:
        """A copy of a delivered chat (its sender's ACK was lost) is acknowledged again,
        not stored or shown again."""
        assert bench.events is not None
        bench.connect(P)
        raw = P.chat(b"twice")
        msg_id = e.decode(raw).id
        bench.side.deliver(P.id, raw)
        wait_for(lambda: bench.side.acks(msg_id), "the first delivery ACK")
        shown = wait_for(lambda: [b for b, _ in bench.events.of(rm.MessageReceived)
                                  if b.id == msg_id], "router.message for the new chat")
        assert shown[0].sender == P.id and shown[0].verified
        before = bench.counters().get("duplicates", 0)
        bench.side.deliver(P.id, raw)
        acks = wait_for(lambda: (a := bench.side.acks(msg_id))[1:] and a,
                        "the duplicate is acknowledged again")
        assert [a.peer for a in acks] == [P.id, P.id]
        assert bench.counters().get("duplicates", 0) == before + 1
        assert len([m for m in bench.inbox().values() if m.id == msg_id]) == 1
        bench.events.pump(200)
        assert len([b for b, _ in bench.events.of(rm.MessageReceived) if b.id == msg_id]) == 1

    def test_forged_unsigned_and_tampered_envelopes_are_refused_counted_never_stored(
            self, bench: Bench) -> None:
        """Each is answered (rejections are counted, not returned), never stored, shown or
        acknowledged, and neither is a forged copy of a chat already delivered."""
        bench.connect(P)
        genuine = P.chat(b"the real one")
        bench.side.deliver(P.id, genuine)
        wait_for(lambda: bench.side.acks(e.decode(genuine).id), "the genuine chat's ACK")
        env = e.decode(P.chat(b"x"))
        bad = {
            "forged": forged(env.encode()),
            "unsigned": replace(env, signature=b"").encode(),
            "tampered": replace(env, timestamp_ms=env.timestamp_ms + 1).encode(),
            "forged_copy": forged(genuine),
        }
        before = bench.counters()
        for raw in bad.values():
            assert isinstance(bench.side.deliver(P.id, raw), rm.DeliverReply)
        closing = P.chat(b"after the forgeries")  # handled after them: its ACK closes
        bench.side.deliver(P.id, closing)
        wait_for(lambda: bench.side.acks(e.decode(closing).id), "the closing chat's ACK")
        after = bench.counters()
        assert after.get("rejected_forged", 0) - before.get("rejected_forged", 0) == 3
        assert after.get("rejected_unsigned", 0) - before.get("rejected_unsigned", 0) == 1
        inbox = bench.inbox()
        assert env.id not in inbox
        assert inbox[e.decode(genuine).id].payload == b"the real one"
        assert not bench.side.acks(env.id)
        assert len(bench.side.acks(e.decode(genuine).id)) == 1, \
            "a forged copy of a delivered chat was acknowledged"

    # forwarding

    def test_relays_only_along_via_from_the_previous_hop_to_the_next(
            self, bench: Bench) -> None:
        """An envelope naming this node in its signed ``via`` goes on to the next hop, ttl
        lowered by one, with a RelayForwarded ACK back to its sender; not when it comes from
        the wrong hop, when it does not name this node (no open relay), or when its
        signature is not its sender's."""
        bench.connect(S, X)
        through = S.chat(b"through you", to=X.id, via=(NODE,))
        wrong_hop = S.chat(b"from the wrong hop", to=X.id, via=(NODE,))
        not_us = S.chat(b"not naming you", to=X.id)
        fake = forged(S.chat(b"forged", to=X.id, via=(NODE,)))
        before = bench.counters()
        bench.side.deliver(X.id, wrong_hop)  # X is not the hop before this node: S is
        bench.side.deliver(S.id, not_us)
        bench.side.deliver(S.id, fake)
        bench.side.deliver(S.id, through)
        out = bench.sent(e.decode(through).id, what="the relayed envelope goes to its next hop")
        assert out[0].peer == X.id
        fwd = out[0].env
        fwd.verify()  # bytes unchanged but the ttl (unsigned)
        assert (fwd.via, fwd.ttl) == ((NODE,), e.decode(through).ttl - 1)
        assert fwd.encode() == replace(e.decode(through), ttl=fwd.ttl).encode()
        back = wait_for(lambda: bench.side.acks(fwd.id, e.AckType.RELAY_FORWARDED),
                        "the RelayForwarded ACK to the sender")
        assert back[0].peer == S.id
        verified_ack(back[0], fwd.id, S.id)
        for raw in (wrong_hop, not_us, fake):
            assert not bench.side.envelopes(msg_id=e.decode(raw).id), \
                f"forwarded: {e.decode(raw).payload!r}"
        after = bench.counters()
        for reason in ("wrong_hop", "not_for_us", "forged"):
            key = f"rejected_{reason}"
            assert after.get(key, 0) == before.get(key, 0) + 1, key

    # sending

    def test_send_goes_only_to_the_first_hop_of_via_toward_a_node_behind_a_relay(
            self, bench: Bench) -> None:
        """D is reachable only through R (R and D announce each other): the envelope,
        sealed and signed by this node with ``via`` [R], leaves toward R only."""
        bench.connect(R)
        bench.side.deliver(R.id, R.gossip([R.announce([NODE, D.id]), D.announce([R.id])]))
        wait_for(lambda: (p := bench.peers().get(D.id)) is not None and p.path == "relayed",
                 "the router learns the path to D through R from their announcements")
        msg_id = bench.send(D.id, b"via R")
        out = bench.sent(msg_id, what="the message leaves toward R")
        env = out[0].env
        env.verify()
        assert out[0].peer == R.id
        assert (env.sender, env.to, env.via, env.msg_type, env.encrypted) == (
            NODE, D.id, (R.id,), e.MessageType.CHAT, True)
        assert D.identity.open(out[0].raw)[1] == b"via R"
        assert all(s.peer == R.id for s in bench.side.envelopes(msg_id=msg_id)), \
            "the message went to another peer than the first hop of its via"

    def test_an_unacknowledged_message_is_retried_with_backoff_until_its_ack(
            self, bench: Bench) -> None:
        """Not acknowledged: sent again after about 5 s, then after about 10 s (the same
        envelope). ACKs that are not the recipient's move nothing; the recipient's makes it
        delivered."""
        bench.connect(P)
        msg_id = bench.send(P.id, b"are you there?")
        first = bench.sent(msg_id)[0]
        assert first.peer == P.id
        second = bench.sent(msg_id, 2, "a retry about 5 s later", timeout_s=12)[1]
        assert 3.5 <= second.at - first.at <= 9, second.at - first.at
        assert second.raw == first.raw
        third = bench.sent(msg_id, 3, "a second retry, later still", timeout_s=20)[2]
        assert third.at - second.at >= 1.5 * (second.at - first.at) - 1, \
            (second.at - first.at, third.at - second.at)
        before = bench.counters()
        bench.side.deliver(P.id, forged(P.ack(msg_id)))
        bench.side.deliver(M.id, M.ack(msg_id))  # signed, but not by the recipient
        state = bench.outbox(msg_id)
        assert state is not None and state.status == "sent", state
        after = bench.counters()
        assert after.get("rejected_forged", 0) == before.get("rejected_forged", 0) + 1
        assert after.get("rejected_ack_not_from_recipient", 0) == \
            before.get("rejected_ack_not_from_recipient", 0) + 1
        bench.side.deliver(P.id, P.ack(msg_id))
        state = bench.outbox(msg_id)
        assert state is not None and state.status == "delivered", state

    def test_send_stores_before_it_replies_kill_9_and_it_goes_out_after_the_restart(
            self, bench: Bench) -> None:
        bench.connect(P)
        msg_id = bench.send(P.id, b"kept")
        killed = time.monotonic()
        bench.kill_and_restart()
        state = bench.outbox(msg_id)
        assert state is not None, "a message the router answered for is not in its outbox"
        wait_for(lambda: [s for s in bench.side.envelopes(msg_id=msg_id) if s.at > killed],
                 "after the restart the open messages are sent again at once", 4)

    def test_requests_fail_with_their_error_codes(self, bench: Bench) -> None:
        assert bench.error(rm.Send(to=NODE), b"to myself").name == "invalid"
        assert bench.error(rm.Send(to=P.id)).name == "invalid"  # no blob
        assert bench.error(rm.Send(to=P.id), b"x" * (MAX_PAYLOAD + 1)).name == "too_large"
        assert bench.error(rm.Read(id=os.urandom(16), sender=P.id)).name == "invalid"
        with pytest.raises(RemoteError) as info:
            bench.side.deliver(P.id, None)
        assert info.value.name == "invalid"
        bench.connect(P)
        assert bench.send(P.id, b"x" * MAX_PAYLOAD)  # 200 KiB pass

    def test_only_crypto_opens_the_identity_key(self, bench: Bench) -> None:
        only_crypto_opened_the_key(bench.node)
