"""Contract of the backup role: the generic bus contract, and what `backup.*` promises
(docs/protocol.md): it holds sealed envelopes as their senders signed them, hands them back
for their recipient, survives a restart, and ends a copy only on the recipient's signed
delivery ACK; forgeries are refused with their error codes and counted."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest
import zmq

from services.crypto.core import Identity
from shared import envelope as e
from shared.bus import socket
from shared.primitives import SigningKey
from shared.wire import RemoteError, decode
from shared.wire.errors import ErrorCode
from shared.wire.messages import Message
from shared.wire.messages import backup as bm
from shared.wire.messages import router as rm
from shared.wire.messages.sys import Status, StatusReply

from .generic import RoleContract, only_crypto_opened_the_key
from .harness import SEED, Node
from .router_for_backup import RouterForBackup

ROLE = "backup"
A = Identity(b"\x51" * 32, os.urandom)
C = Identity(b"\x53" * 32, os.urandom)
M = Identity(b"\x54" * 32, os.urandom)
NODE = SigningKey(SEED).public
T = TypeVar("T")


def call(node: Node, body: Message, *blobs: bytes) -> tuple[Message, tuple[bytes, ...]]:
    with node.client() as c:
        msg = c.call(ROLE, body, blobs)
    return msg.body, msg.blobs


def error(node: Node, body: Message, *blobs: bytes) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call(node, body, *blobs)
    return info.value


def now_ms() -> int:
    return int(time.time() * 1000)


def sealed(text: bytes, sender: Identity = A, to: Identity = C) -> bytes:
    return sender.seal(to.node_id, "Chat", text, now_ms()).encode()


def delivery_ack(raw: bytes, by: Identity = C) -> bytes:
    env = e.decode(raw)
    payload = e.AckPayload(env.id, e.AckType.RECIPIENT_RECEIVED).encode()
    return by.seal(env.sender, "Ack", payload, now_ms(), encrypt=False).encode()


def hold(node: Node, raw: bytes) -> Message:
    body, _ = call(node, bm.Hold(expires_ms=now_ms() + 3_600_000), raw)
    return body


def pending(node: Node, to: Identity = C) -> tuple[bytes, ...]:
    body, blobs = call(node, bm.Pending(recipient=to.node_id, limit=16))
    assert isinstance(body, bm.PendingReply) and len(body.envelopes) == len(blobs)
    return blobs


class TestBackupContract(RoleContract):
    role = ROLE


class Router:
    """The node's router, played by the suite (only when the backup role runs alone)."""

    side: RouterForBackup | None = None


@pytest.fixture(scope="module")
def router(node: Node) -> Iterator[Router]:
    r = Router()
    if not node.all_in_one:
        r.side = RouterForBackup(node, NODE)
        try:
            wait_for(lambda: r.side is not None and r.side.subscribed(b"router.path")
                     and r.side.subscribed(b"router.confirmation"),
                     "the backup service subscribes to router.path and router.confirmation")
        except AssertionError:
            r.side.close()
            raise
    try:
        yield r
        assert r.side is None or not r.side.errors, r.side.errors
    finally:
        if r.side is not None:
            r.side.close()


def played(router: Router) -> RouterForBackup:
    if router.side is None:
        pytest.skip("the suite plays the router, so the backup role must run alone (a "
                    "command template with {role})")
    return router.side


def wait_for(check: Callable[[], T], what: str, timeout_s: float = 10.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout_s:g} s: {what}")
        time.sleep(0.02)


class TestBackupRole:
    """What the backup role does with what it holds; its router is played by the suite
    (tests/contract/router_for_backup.py) when it runs alone."""

    def status(self, node: Node) -> StatusReply:
        with node.client() as c:
            reply = c.request(ROLE, Status())
        assert isinstance(reply, StatusReply)
        return reply

    def test_holds_the_envelope_as_signed_and_hands_it_back_for_its_recipient(
            self, node: Node) -> None:
        raw = sealed(b"for c")
        body = hold(node, raw)
        assert isinstance(body, bm.HoldReply) and not body.already
        again = hold(node, raw)
        assert isinstance(again, bm.HoldReply) and again.already
        assert raw in pending(node) and raw not in pending(node, A)
        assert C.open(raw)[1] == b"for c"  # the very bytes: the recipient can open them

    def test_refuses_what_its_sender_did_not_sign_or_did_not_seal(self, node: Node) -> None:
        env = e.decode(sealed(b"x"))
        before = self.status(node).counters
        forged = replace(env, payload=env.payload[:-1] + bytes([env.payload[-1] ^ 1])).encode()
        assert error(node, bm.Hold(expires_ms=now_ms() + 60_000), forged).code == \
            ErrorCode.BAD_SIGNATURE
        unsigned = replace(env, signature=b"").encode()
        assert error(node, bm.Hold(expires_ms=now_ms() + 60_000), unsigned).code == \
            ErrorCode.UNSIGNED
        plain = A.seal(C.node_id, "Chat", b"plaintext", now_ms(), encrypt=False).encode()
        assert error(node, bm.Hold(expires_ms=now_ms() + 60_000), plain).code == \
            ErrorCode.INVALID
        assert error(node, bm.Hold(expires_ms=now_ms() - 1), sealed(b"y")).code == \
            ErrorCode.EXPIRED
        after = self.status(node).counters
        for why in ("forged", "unsigned", "not_sealed", "expired"):
            assert after.get(f"refused_{why}", 0) == before.get(f"refused_{why}", 0) + 1, why
        assert forged not in pending(node) and plain not in pending(node)

    def test_only_the_recipients_signed_ack_deletes_a_copy(self, node: Node) -> None:
        raw = sealed(b"to be confirmed")
        hold(node, raw)
        other = delivery_ack(raw, by=M)  # signed, but not by the recipient
        assert error(node, bm.Delivered(), other).code == ErrorCode.INVALID
        ack = e.decode(delivery_ack(raw))
        tampered = replace(ack, timestamp_ms=ack.timestamp_ms + 1).encode()
        assert error(node, bm.Delivered(), tampered).code == ErrorCode.BAD_SIGNATURE
        assert raw in pending(node)
        body, _ = call(node, bm.Delivered(), ack.encode())
        assert isinstance(body, bm.DeliveredReply) and body.deleted
        assert raw not in pending(node)
        body, acks = call(node, bm.Receipts(origin=A.node_id, limit=16))
        assert ack.encode() in acks
        assert self.status(node).counters.get("refused_confirmation_not_recipient", 0) >= 1

    def test_it_stores_before_it_answers_kill_9_after_the_reply_keeps_the_copy(
            self, fresh_node: Node) -> None:
        raw = sealed(b"kept")
        hold(fresh_node, raw)
        p = fresh_node.proc(ROLE)
        os.killpg(p.pid, signal.SIGKILL)  # nothing is flushed, nothing is closed
        p.wait()
        fresh_node.procs.clear()
        fresh_node.start(ROLE)
        assert raw in pending(fresh_node), "a copy the service answered for is gone"
        summary, _ = call(fresh_node, bm.Summary())
        assert isinstance(summary, bm.SummaryReply) and summary.messages == 1

    # with its router

    def test_gives_a_node_that_is_back_what_it_holds_for_it(self, node: Node,
                                                            router: Router) -> None:
        """``router.path`` ``direct`` for the recipient: the held envelopes go to it,
        unchanged, through ``router.pass_on``."""
        side = played(router)
        to = Identity(os.urandom(32), os.urandom)
        raws = [sealed(b"for when you are back %d" % i, to=to) for i in range(3)]
        for raw in raws:
            hold(node, raw)
        side.publish(rm.PathChanged(node_id=to.node_id, path="direct"))

        def given() -> list[bytes]:
            return [env for p in list(side.passed_on) if p.to == to.node_id
                    for env in p.envelopes]

        got = wait_for(lambda: len(given()) >= 3 and given(),
                       "router.pass_on of the three held envelopes to the node that is back")
        assert sorted(got) == sorted(raws)

    def test_a_recipients_ack_passing_by_ends_the_copy_and_is_kept_for_the_origin(
            self, node: Node, router: Router) -> None:
        """``router.confirmation``: only the recipient's signed ACK ends the copy it names."""
        side = played(router)
        raw = sealed(b"confirmed on the way")
        hold(node, raw)
        before = self.status(node).counters
        other = delivery_ack(raw, by=M)
        side.publish(rm.Confirmation(sender=M.node_id, to=A.node_id), other)
        wait_for(lambda: self.status(node).counters.get("refused_confirmation_not_recipient",
                                                        0) > before.get(
            "refused_confirmation_not_recipient", 0),
            "an ACK not signed by the recipient is refused and counted")
        assert raw in pending(node)
        ack = delivery_ack(raw)
        side.publish(rm.Confirmation(sender=C.node_id, to=A.node_id), ack)
        wait_for(lambda: raw not in pending(node), "the recipient's ACK ends the copy")
        _, acks = call(node, bm.Receipts(origin=A.node_id, limit=16))
        assert ack in acks

    def test_an_expired_copy_is_deleted_and_announced(self, node: Node) -> None:
        sub = socket(zmq.Context.instance(), zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(node.endpoints[ROLE].events)
        try:
            wait_for(lambda: sub.poll(100) and sub.recv_multipart()[0] == b"sys.heartbeat",
                     "a sys.heartbeat of the backup service (the subscription is live)")
            raw = sealed(b"short-lived")
            body, _ = call(node, bm.Hold(expires_ms=now_ms() + 1000), raw)
            assert isinstance(body, bm.HoldReply)
            env = e.decode(raw)

            def expired() -> bool:
                while sub.poll(100):
                    frames = sub.recv_multipart()
                    if frames[0] == b"backup.expired":
                        ev = decode(frames[1:]).body
                        if isinstance(ev, bm.Expired) and ev.id == env.id:
                            return True
                return False

            wait_for(expired, "backup.expired for the copy after its expiry", 15)
            assert raw not in pending(node)
        finally:
            sub.close(0)

    def test_only_crypto_opens_the_identity_key(self, node: Node) -> None:
        only_crypto_opened_the_key(node)
