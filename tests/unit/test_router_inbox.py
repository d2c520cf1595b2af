"""The inbox's read state (issue 17): what an app showed is marked read by `router.read`,
kept on disk, left out by `router.inbox` `unread`, and acknowledged with one read receipt;
a receipt that overtakes the delivery ACK still yields `delivered` before `read`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.router.store import CHAT, GROUP, Store
from shared.core import Fail, Reply
from shared.envelope import MessageType, decode
from shared.wire import ErrorCode
from shared.wire.messages import router as rm

from .router_sim import Sim
from .test_router_core import send


def inbox(sim: Sim, name: str, **kw: object) -> rm.InboxReply:
    reply = sim.call(name, rm.Inbox(**kw))  # type: ignore[arg-type]
    assert isinstance(reply, Reply), reply
    assert isinstance(reply.body, rm.InboxReply)
    return reply.body


def receipts(sim: Sim, sender: str) -> int:
    """Read receipts ``sender`` handed to its transport so far."""
    return sum(1 for name, raw in sim.sent
               if name == sender and decode(raw).msg_type == MessageType.READ_RECEIPT)


def test_read_marks_a_message_read_and_unread_leaves_it_out() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    for text in (b"one", b"two", b"three"):
        send(sim, "a", "b", text)
    got = inbox(sim, "b", unread=True)
    assert [m.payload for m in got.messages] == [b"one", b"two", b"three"]
    assert not any(m.read for m in got.messages) and got.unread == 3
    two = got.messages[1]
    assert isinstance(sim.call("b", rm.Read(id=two.id, sender=two.sender)), Reply)
    after = inbox(sim, "b", unread=True)
    assert [m.payload for m in after.messages] == [b"one", b"three"] and after.unread == 2
    everything = inbox(sim, "b")
    assert [(m.payload, m.read) for m in everything.messages] == [
        (b"one", False), (b"two", True), (b"three", False)]
    assert everything.unread == 2 and everything.tail == got.messages[-1].seq
    # `after` still counts from the given seq; `unread` is the whole inbox's count
    later = inbox(sim, "b", after=two.seq, unread=True)
    assert [m.payload for m in later.messages] == [b"three"] and later.unread == 2


def test_read_is_idempotent_and_sends_one_receipt() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    msg = send(sim, "a", "b", b"hello")
    ev = sim.nodes["b"].delivered[0][0]
    for _ in range(3):
        assert isinstance(sim.call("b", rm.Read(id=ev.id, sender=ev.sender)), Reply)
    assert receipts(sim, "b") == 1
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "delivered", "read"]
    nothing = sim.call("b", rm.Read(id=b"\x00" * 16, sender=ev.sender))
    assert isinstance(nothing, Fail) and nothing.code is ErrorCode.INVALID
    assert receipts(sim, "b") == 1


def test_newest_returns_the_last_page_in_seq_order() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    for i in range(5):
        send(sim, "a", "b", b"m%d" % i)
    first = inbox(sim, "b", limit=2)
    assert [m.payload for m in first.messages] == [b"m0", b"m1"]
    last = inbox(sim, "b", limit=2, newest=True)
    assert [m.payload for m in last.messages] == [b"m3", b"m4"]
    m3 = last.messages[0]
    sim.call("b", rm.Read(id=m3.id, sender=m3.sender))
    unread = inbox(sim, "b", limit=2, newest=True, unread=True)
    assert [m.payload for m in unread.messages] == [b"m2", b"m4"]
    assert unread.unread == 4


def test_a_receipt_ahead_of_the_lost_ack_still_shows_delivered_first() -> None:
    """B's delivery ACK is lost on the way; B's app reads the message and the receipt gets
    through: A's listeners see `delivered`, then `read`, and B's re-ACK of A's retry later
    changes nothing."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.lose = lambda name, raw: name == "b" and decode(raw).msg_type == MessageType.ACK
    msg = send(sim, "a", "b", b"hello")
    a = sim.nodes["a"]
    assert a.statuses(msg) == ["pending", "sent"]
    ev = sim.nodes["b"].delivered[0][0]
    sim.call("b", rm.Read(id=ev.id, sender=ev.sender))
    assert a.statuses(msg) == ["pending", "sent", "delivered", "read"]
    sim.lose = None
    sim.run(30)  # A would retry an unacknowledged message; this one is done
    assert a.statuses(msg) == ["pending", "sent", "delivered", "read"]
    assert a.router.stats["delivered"] == 1 and a.router.stats["read"] == 1


def test_the_read_state_is_on_disk_and_an_old_router_db_gains_the_index(
        tmp_path: Path) -> None:
    """A router.db made by the first release (no envelope, hop, kind columns, no unread
    index) opens with its read marks intact; marks made now survive a restart."""
    path = tmp_path / "router.db"
    old = sqlite3.connect(path)
    old.executescript("""
    CREATE TABLE inbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id BLOB NOT NULL, sender BLOB NOT NULL,
        timestamp_ms INTEGER NOT NULL, encrypted INTEGER NOT NULL, relayed INTEGER NOT NULL,
        payload BLOB NOT NULL, received_ms INTEGER NOT NULL, read INTEGER NOT NULL DEFAULT 0,
        UNIQUE (sender, id)
    );
    """)
    sender = b"\x05" * 32
    for i, read in enumerate((1, 0, 0)):
        old.execute("INSERT INTO inbox (id, sender, timestamp_ms, encrypted, relayed, payload,"
                    " received_ms, read) VALUES (?,?,?,?,?,?,?,?)",
                    (bytes([i]) * 16, sender, 1, 1, 0, b"old%d" % i, 1, read))
    old.commit()
    old.close()
    store = Store(path)
    indexes = {r[1] for r in store.db.execute("PRAGMA index_list(inbox)")}
    assert "inbox_unread" in indexes
    assert [r.payload for r in store.inbox_after(0, 10, unread=True)] == [b"old1", b"old2"]
    assert store.unread_count() == 2
    assert store.mark_read(sender, b"\x01" * 16)
    assert not store.mark_read(sender, b"\x01" * 16)  # once
    store.close()
    again = Store(path)
    assert [r.payload for r in again.inbox_after(0, 10, unread=True)] == [b"old2"]
    assert [r.read for r in again.inbox_after(0, 10)] == [True, True, False]
    again.close()


def test_group_envelopes_are_not_read_by_apps_and_not_counted() -> None:
    store = Store(":memory:")
    store.put_in(b"\x01" * 16, b"\x02" * 32, 1, True, False, b"chat", 1, kind=CHAT)
    store.put_in(b"\x03" * 16, b"\x02" * 32, 1, True, False, b"group", 1, kind=GROUP)
    assert store.unread_count() == 1
    assert not store.mark_read(b"\x02" * 32, b"\x03" * 16)
    assert [r.payload for r in store.inbox_after(0, 10, GROUP, unread=True)] == [b"group"]
