"""Contract of the backup role: the generic bus contract, and what `backup.*` promises
(docs/protocol.md): it holds sealed envelopes as their senders signed them, hands them back
for their recipient, survives a restart, and ends a copy only on the recipient's signed
delivery ACK; forgeries are refused with their error codes and counted."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import pytest

from services.crypto.core import Identity
from shared import envelope as e
from shared.wire import RemoteError
from shared.wire.errors import ErrorCode
from shared.wire.messages import Message
from shared.wire.messages import backup as bm

from .generic import RoleContract
from .harness import Node

ROLE = "backup"
A = Identity(b"\x51" * 32, os.urandom)
C = Identity(b"\x53" * 32, os.urandom)
M = Identity(b"\x54" * 32, os.urandom)


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

    def test_what_it_holds_survives_a_restart(self, fresh_node: Node) -> None:
        raw = sealed(b"kept")
        hold(fresh_node, raw)
        fresh_node.stop()
        fresh_node.procs.clear()
        fresh_node.start(ROLE)
        assert raw in pending(fresh_node)
        summary, _ = call(fresh_node, bm.Summary())
        assert isinstance(summary, bm.SummaryReply) and summary.messages == 1
