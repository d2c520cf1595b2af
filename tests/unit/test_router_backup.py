"""The backup hand-off and redelivery across router and backup cores (router_sim: real
crypto, in-memory transport, a BackupCore per node)."""

from __future__ import annotations

import msgpack

from services.backup.quota import Quota
from shared.envelope import decode
from shared.wire.messages import router as rm

from .router_sim import Sim
from .test_router_core import Forger


def send(sim: Sim, src: str, dst: str, text: bytes) -> bytes:
    reply = sim.call(src, rm.Send(to=sim.nodes[dst].id), (text,))
    assert isinstance(reply.body, rm.SendReply), reply
    return reply.body.id  # type: ignore[no-any-return]


def held_by(sim: Sim, name: str, msg: bytes) -> list[int]:
    return [e.held_by for e in sim.nodes[name].events
            if isinstance(e, rm.StatusChanged) and e.id == msg]


def test_a_message_outlives_its_sender_through_a_holder() -> None:
    """a sends to c, which is away; after backup_after_s a hands it to h, and goes away
    itself. c comes back to h only: it gets the message once, h deletes its copy on c's
    ACK, and a learns that it was delivered when it comes back to h."""
    sim = Sim("a", "h", "c", backup_after_s=30)
    a, h, c = sim.nodes["a"], sim.nodes["h"], sim.nodes["c"]
    sim.connect("a", "h")
    msgs = [send(sim, "a", "c", b"m%d" % i) for i in range(3)]
    sim.run(20)
    assert a.router.stats["backup_offers"] == 0  # not yet
    sim.run(40)
    assert all(held_by(sim, "a", m)[-1] == 1 for m in msgs)
    assert h.backup is not None and h.backup.quota.total_messages == 3
    [state] = sim.call("a", rm.Outbox(ids=[msgs[0]])).body.messages
    assert state.held_by == 1 and state.status == "pending"
    sim.reachable.discard(frozenset(("a", "h")))
    sim.disconnect("a", "h")  # a goes away
    sim.connect("c", "h")  # c is back, knowing only h
    sim.run(2)
    assert sorted(c.received()) == [b"m0", b"m1", b"m2"]
    assert h.backup.quota.total_messages == 0 and h.backup.store.receipt_count() == 3
    assert all(a.statuses(m)[-1] == "pending" for m in msgs)
    sim.connect("a", "h")  # a is back: h gives it c's ACKs
    sim.run(2)
    assert all(a.statuses(m)[-1] == "delivered" for m in msgs), [a.statuses(m) for m in msgs]
    sim.run(60)  # a's own retries reach c through h now: duplicates, not shown twice
    assert sorted(c.received()) == [b"m0", b"m1", b"m2"]


def test_a_message_delivered_before_backup_after_s_is_never_handed_off() -> None:
    sim = Sim("a", "h", "c", backup_after_s=30)
    sim.connect("a", "h")
    sim.connect("a", "c")
    msg = send(sim, "a", "c", b"quick")
    sim.run(60)
    assert sim.nodes["a"].statuses(msg)[-1] == "delivered"
    assert sim.nodes["a"].router.stats["backup_offers"] == 0
    assert sim.nodes["h"].backup is not None and sim.nodes["h"].backup.quota.total_messages == 0


def test_a_holder_gives_a_returning_recipient_everything_at_once_page_by_page() -> None:
    """More than one page (256): the next page leaves as soon as the router took the last,
    not at the next look (10 s later)."""
    sim = Sim("a", "h", "c", backup_after_s=30)
    h, c = sim.nodes["h"], sim.nodes["c"]
    sim.connect("a", "h")
    for i in range(600):
        send(sim, "a", "c", b"m%d" % i)
    sim.run(60)
    assert h.backup is not None and h.backup.quota.total_messages == 600
    sim.reachable.discard(frozenset(("a", "h")))
    sim.disconnect("a", "h")
    sim.connect("c", "h")
    sim.run(1)
    assert len(c.received()) == 600 and len(set(c.received())) == 600
    assert h.backup.quota.total_messages == 0


def test_a_holder_takes_only_a_senders_own_sealed_messages_and_counts_the_rest() -> None:
    """A BackupStore must carry [expires_ms, envelope] of a chat its own sender sealed and
    encrypted: a peer cannot park third parties' envelopes or plaintext on a holder."""
    sim = Sim("a", "h", "c")
    sim.connect("a", "h")
    h = sim.nodes["h"]
    f = Forger(sim, "a", "h")
    c_id = sim.nodes["c"].id
    own = f.env(to=c_id, payload=b"x", encrypted=True).encode()
    other = Forger(sim, "c", "h").env(to=sim.nodes["a"].id, encrypted=True).encode()
    plain = f.env(to=c_id, payload=b"plaintext").encode()
    exp = int(sim.wall * 1000) + 60_000
    cases = [(b"\x93garbage", "rejected_malformed_backup"),
             (msgpack.packb([exp, other]), "rejected_backup_not_own")]
    for payload, counter in cases:
        f.deliver(f.env(msg_type="BackupStore", payload=payload).encode())
        assert h.router.stats[counter] == 1, counter
    f.deliver(f.env(msg_type="BackupStore", payload=msgpack.packb([exp, plain])).encode())
    assert h.backup is not None and h.backup.stats["refused_not_sealed"] == 1
    assert h.backup.quota.total_messages == 0
    f.deliver(f.env(msg_type="BackupStore", payload=msgpack.packb([exp, own])).encode())
    assert h.backup.quota.total_messages == 1
    assert h.router.stats["backup_holding"] == 1 and decode(own).to == c_id


def test_when_a_holder_dies_the_others_restore_the_copies_and_the_recipient_still_gets_it(
        ) -> None:
    """a hands its message to h1, h2, h3 (each copy names the three); a goes away and h3
    dies. h1 and h2 see two of three reachable and hand a copy to h4, the connected peer
    closest to the recipient outside the set; c comes back to h4 only and gets it once."""
    sim = Sim("a", "h1", "h2", "h3", "h4", "c", backup_after_s=30)
    for h in ("h1", "h2", "h3"):
        sim.connect("a", h)
        sim.connect(h, "h4")
    for x, y in (("h1", "h2"), ("h1", "h3"), ("h2", "h3")):
        sim.connect(x, y)
    msg = send(sim, "a", "c", b"outlives a holder")
    sim.run(45)
    assert held_by(sim, "a", msg)[-1] == 3
    h4 = sim.nodes["h4"].backup
    assert h4 is not None and h4.quota.total_messages == 0
    for n in ("h1", "h2", "h3"):  # a goes away
        sim.reachable.discard(frozenset(("a", n)))
        sim.disconnect("a", n)
    for n in ("h1", "h2", "h4"):  # h3 dies
        sim.reachable.discard(frozenset(("h3", n)))
        sim.disconnect("h3", n)
    sim.run(30)  # the holders' looks (every 10 s)
    assert h4.quota.total_messages == 1
    assert sim.nodes["h1"].backup.stats["replicated"] >= 1  # type: ignore[union-attr]
    sim.connect("c", "h4")
    sim.run(2)
    assert sim.nodes["c"].received() == [b"outlives a holder"]


def test_a_holder_without_room_says_so_and_the_sender_asks_the_next_one_at_once() -> None:
    """Quotas: the holder closest to c has room for 50 of a's messages (half of its 100);
    it answers the other 10 ``HoldRefused``, and a hands those to the next closest holder
    at its next attempt (5 s), not after asking the full one again and again (30 s)."""
    sim = Sim("a", "h1", "h2", "c", backup_after_s=30, backup_copies=1)
    c_id = sim.nodes["c"].id
    near, far = sorted((sim.nodes["h1"], sim.nodes["h2"]),
                       key=lambda n: int.from_bytes(n.id, "big") ^ int.from_bytes(c_id, "big"))
    for h in (near, far):
        assert h.backup is not None
        h.backup.quota = Quota(h.backup.quota.capacity_bytes, 100)
    sim.connect("a", "h1")
    sim.connect("a", "h2")
    msgs = [send(sim, "a", "c", b"m%d" % i) for i in range(60)]
    sim.run(38)
    assert near.backup is not None and far.backup is not None
    assert near.backup.quota.total_messages == 50  # its share: half of what is free
    assert near.backup.stats["refused_share"] == 10
    assert far.backup.quota.total_messages == 10
    a = sim.nodes["a"]
    assert a.router.stats["backup_offers_refused"] == 10
    assert all(held_by(sim, "a", m)[-1] == 1 for m in msgs)
    assert near.router.stats["backup_hold_refused"] == 10  # asked once each, not thrice


def test_a_holder_that_leaves_hands_its_copies_on_before_it_stops() -> None:
    """h1 holds a's message alone (one copy) and its backup service stops while its router
    still runs (the node goes down: supervisord stops backup first): h1 hands the copy to
    h2, the connected peer closest to c, and has left once h2's router took it; c, back at
    h2 only, gets the message."""
    sim = Sim("a", "h1", "h2", "c", backup_after_s=30, backup_copies=1)
    sim.connect("a", "h1")
    sim.connect("h1", "h2")
    msg = send(sim, "a", "c", b"handed on")
    sim.run(40)
    assert held_by(sim, "a", msg)[-1] == 1
    h1, h2 = sim.nodes["h1"].backup, sim.nodes["h2"].backup
    assert h1 is not None and h2 is not None and h2.quota.total_messages == 0
    sim.reachable.discard(frozenset(("a", "h1")))
    sim.disconnect("a", "h1")  # a goes away
    sim._backup("h1", lambda b: b.leave(sim.now))
    assert not h1.left()
    sim.run()
    assert h1.left() and h1.stats["handed_on"] == 1
    assert h2.quota.total_messages == 1
    sim.reachable.discard(frozenset(("h1", "h2")))
    sim.disconnect("h1", "h2")  # h1 is gone
    sim.connect("c", "h2")
    sim.run(2)
    assert sim.nodes["c"].received() == [b"handed on"]


def test_a_holder_with_nothing_held_leaves_at_once() -> None:
    sim = Sim("h")
    backup = sim.nodes["h"].backup
    assert backup is not None and backup.leave(sim.now) == [] and backup.left()
