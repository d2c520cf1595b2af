"""The backup core: holding sealed envelopes for others, ending a copy only on the
recipient's signed ACK or at expiry, and the shrinking share per hop. Real crypto (the crypto
core seals and signs, and opens to produce the recipient's ACK)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.backup.core import MAX_LIFETIME_MS, BackupCore, BackupSettings
from services.backup.quota import Quota
from services.backup.store import Store
from services.crypto.core import CryptoCore
from shared.core import Fail, Publish, Reply, Request
from shared.envelope import decode
from shared.wire import ErrorCode
from shared.wire.messages import backup as bm
from shared.wire.messages import crypto as cm

WALL = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = WALL

    def __call__(self) -> float:
        return self.t


def node(i: int, clock: Clock) -> CryptoCore:
    return CryptoCore(bytes([i]) * 32, os.urandom, lambda: int(clock.t * 1000))


def seal(sender: CryptoCore, to: CryptoCore, text: bytes = b"hello", **kw: Any) -> bytes:
    [r] = sender.handle(Request("s", cm.Seal(to=to.identity.node_id, envelope_type="Chat",
                                             **kw), (text,)), 0.0)
    assert isinstance(r, Reply), r
    return r.blobs[0]


def ack_of(recipient: CryptoCore, raw: bytes) -> bytes:
    [r] = recipient.handle(Request("o", cm.Open(ack_via=[]), (raw,)), 0.0)
    assert isinstance(r, Reply) and len(r.blobs) == 2, r
    return r.blobs[1]


class Holder:
    def __init__(self, clock: Clock, db: str = ":memory:", **settings: Any) -> None:
        self.clock = clock
        self.db = db
        self.core = BackupCore(Store(db), clock, BackupSettings(**settings))

    def ask(self, body: Any, blobs: tuple[bytes, ...] = ()) -> Any:
        out = self.core.handle(Request("app", body, blobs), 0.0) + self.core.flush(0.0)
        [r] = [a for a in out if isinstance(a, Reply | Fail)]
        return r

    def hold(self, raw: bytes, expires_ms: int | None = None, hop: bytes | None = None) -> Any:
        exp = expires_ms if expires_ms is not None else int(self.clock.t * 1000) + 3_600_000
        return self.ask(bm.Hold(expires_ms=exp, hop=hop), (raw,))

    def tick(self) -> list[Any]:
        return self.core.on_timer(self.clock.t) + self.core.flush(self.clock.t)

    def pending(self, recipient: bytes) -> Reply:
        r = self.ask(bm.Pending(recipient=recipient))
        assert isinstance(r, Reply)
        return r


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_sealed_envelope_is_held_for_its_recipient_as_its_sender_signed_it(
        clock: Clock, tmp_path: Path) -> None:
    a, c = node(1, clock), node(3, clock)
    h = Holder(clock, str(tmp_path / "b.db"))
    raw = seal(a, c, b"secret words")
    r = h.hold(raw)
    assert isinstance(r, Reply) and not r.body.already
    assert isinstance(h.hold(raw), Reply) and h.hold(raw).body.already  # idempotent
    p = h.pending(c.identity.node_id)
    assert p.blobs == (raw,) and p.body.envelopes[0].origin == a.identity.node_id
    assert h.pending(a.identity.node_id).blobs == ()
    # ciphertext only, and it survives a restart
    assert b"secret words" not in (tmp_path / "b.db").read_bytes()
    h.core.close(0.0)
    h2 = Holder(clock, str(tmp_path / "b.db"))
    assert h2.pending(c.identity.node_id).blobs == (raw,)
    assert h2.ask(bm.Summary()).body.messages == 1


def test_what_is_not_a_signed_sealed_chat_is_refused_and_counted(clock: Clock) -> None:
    a, c = node(1, clock), node(3, clock)
    h = Holder(clock)
    raw = seal(a, c)
    env = decode(raw)
    cases = {
        "forged": replace(env, payload=env.payload[:-1] + bytes([env.payload[-1] ^ 1])).encode(),
        "unsigned": replace(env, signature=b"").encode(),
        "not_sealed": seal(a, c, encrypt=False),
        "malformed": b"\x93garbage",
    }
    codes = {}
    for why, blob in cases.items():
        r = h.hold(blob)
        assert isinstance(r, Fail), why
        codes[why] = r.code
        assert h.core.stats[f"refused_{why}"] == 1, why
    assert codes["forged"] is ErrorCode.BAD_SIGNATURE
    assert codes["unsigned"] is ErrorCode.UNSIGNED
    r = h.hold(raw, expires_ms=int(clock.t * 1000) - 1)
    assert isinstance(r, Fail) and r.code is ErrorCode.EXPIRED
    assert h.ask(bm.Summary()).body.messages == 0


def test_a_copy_never_outlives_the_message(clock: Clock) -> None:
    a, c = node(1, clock), node(3, clock)
    h = Holder(clock)
    raw = seal(a, c)
    r = h.hold(raw, expires_ms=int(clock.t * 1000) + 10 * MAX_LIFETIME_MS)
    assert r.body.expires_ms == decode(raw).timestamp_ms + MAX_LIFETIME_MS
    old = seal(a, c, timestamp_ms=int(clock.t * 1000) - MAX_LIFETIME_MS - 1)
    assert isinstance(h.hold(old), Fail) and h.core.stats["refused_expired"] == 1


def test_only_the_recipients_signed_ack_ends_a_copy_and_the_ack_is_kept_for_the_origin(
        clock: Clock) -> None:
    a, m, c = node(1, clock), node(2, clock), node(3, clock)
    h = Holder(clock)
    raw = seal(a, c)
    h.hold(raw)
    ack = decode(ack_of(c, raw))
    # an ACK by someone else (m opens a copy sealed to it, then rewrites the id it names)
    other = ack_of(m, seal(a, m))
    forged = replace(decode(other), payload=ack.payload)
    for blob, why in ((forged.encode(), "confirmation_forged"),
                      (replace(ack, signature=b"").encode(), "confirmation_unsigned"),
                      (raw, "confirmation_not_ack")):
        assert isinstance(h.ask(bm.Delivered(), (blob,)), Fail), why
        assert h.core.stats[f"refused_{why}"] == 1, why
    # m's own genuine ACK, for a message it received, names an id h holds for c
    mine = ack_of(m, seal(a, m, id=decode(raw).id))
    r = h.ask(bm.Delivered(), (mine,))
    assert isinstance(r, Fail) and h.core.stats["refused_confirmation_not_recipient"] == 1
    assert h.pending(c.identity.node_id).blobs == (raw,)
    r = h.ask(bm.Delivered(), (ack.encode(),))
    assert isinstance(r, Reply) and r.body.deleted
    assert h.pending(c.identity.node_id).blobs == ()
    receipts = h.ask(bm.Receipts(origin=a.identity.node_id))
    assert receipts.blobs == (ack.encode(),)
    # a late replica of a delivered message is not taken again
    again = h.hold(raw)
    assert isinstance(again, Fail) and h.core.stats["refused_delivered"] == 1
    assert h.ask(bm.Summary()).body.messages == 0


def test_at_expiry_every_copy_is_deleted_and_announced(clock: Clock, tmp_path: Path) -> None:
    a, c = node(1, clock), node(3, clock)
    h = Holder(clock, str(tmp_path / "b.db"))
    now_ms = int(clock.t * 1000)
    short, long_ = seal(a, c, b"short"), seal(a, c, b"long")
    h.hold(short, expires_ms=now_ms + 20_000)
    h.hold(long_, expires_ms=now_ms + 60_000)
    assert [x for x in h.tick() if isinstance(x, Publish)] == []
    clock.t += 21
    [ev] = [x.body for x in h.tick() if isinstance(x, Publish)]
    assert isinstance(ev, bm.Expired) and ev.id == decode(short).id
    assert ev.recipient == c.identity.node_id and h.core.stats["expired"] == 1
    assert h.pending(c.identity.node_id).blobs == (long_,)
    assert h.core.next_deadline() is not None
    s = h.ask(bm.Summary()).body
    assert (s.messages, s.bytes) == (1, len(long_))


def test_one_hop_flooding_gets_a_shrinking_share_and_never_pushes_another_out(
        clock: Clock) -> None:
    a, b, c = node(1, clock), node(2, clock), node(3, clock)
    h = Holder(clock, capacity_messages=100)
    held_a = sum(isinstance(h.hold(seal(a, c, b"%d" % i)), Reply) for i in range(100))
    assert held_a == 50 and h.core.stats["refused_share"] == 50
    held_b = [isinstance(h.hold(seal(b, c, b"b%d" % i)), Reply) for i in range(30)]
    assert sum(held_b) == 25  # half of what a leaves free
    assert h.ask(bm.Summary()).body.messages == 75  # a's 50 are all still held
    assert isinstance(h.hold(seal(a, c, b"more")), Fail)  # a cannot grow now
    # the hop that handed them over is charged, not the (free) sender id
    relay = node(4, clock).identity.node_id
    assert isinstance(h.hold(seal(node(5, clock), c), hop=relay), Reply)
    assert h.core.quota.messages[relay] == 1


def test_the_share_is_restored_after_a_restart(clock: Clock, tmp_path: Path) -> None:
    a, c = node(1, clock), node(3, clock)
    h = Holder(clock, str(tmp_path / "b.db"), capacity_messages=100)
    for i in range(60):
        h.hold(seal(a, c, b"%d" % i))
    h.core.close(0.0)
    h2 = Holder(clock, str(tmp_path / "b.db"), capacity_messages=100)
    assert h2.core.quota.messages[a.identity.node_id] == 50
    assert isinstance(h2.hold(seal(a, c, b"x")), Fail)


def test_quota_share_arithmetic() -> None:
    q = Quota(1000, 1000)
    assert q.refusal(b"a", 500) is None and q.refusal(b"a", 501) == "share"
    q.add(b"a", 500)
    assert q.refusal(b"b", 250) is None and q.refusal(b"b", 251) == "share"
    q.remove(b"a", 500)
    assert q.total_bytes == 0 and not q.bytes
