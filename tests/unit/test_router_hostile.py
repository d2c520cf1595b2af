"""Router cores against hostile peers (issue 13), over the in-memory transport of router_sim:
inbox quotas, the bounded peer table, signed gossip only, forwarding along the signed path,
the replay window, and the checks that used to be removable with the suite green."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.router.core import RouterCore, RouterSettings
from services.router.gossip import announce_payload, gossip_payload
from services.router.store import Store
from services.router.topology import Announce, Topology
from shared.core import Call, PeerReplied, Reply, Request
from shared.envelope import (
    AckPayload,
    AckType,
    Envelope,
    MessageType,
    ReadReceiptPayload,
    decode,
)
from shared.primitives import SigningKey
from shared.wire.messages import router as rm

from .router_sim import Sim
from .test_router_core import Forger, send


def stranger() -> SigningKey:
    return SigningKey(os.urandom(32))


def node_key(sim: Sim, name: str) -> SigningKey:
    return SigningKey(bytes([list(sim.nodes).index(name) + 1]) * 32)


def signed(key: SigningKey, sim: Sim, to: bytes, **kw: Any) -> Envelope:
    fields: dict[str, Any] = dict(id=os.urandom(16), sender=key.public, to=to,
                                  msg_type="Chat", payload=b"x",
                                  timestamp_ms=int(sim.wall * 1000))
    fields.update(kw)
    env = Envelope(**fields)
    return env.with_signature(key.sign(env.signing_bytes()))


def hand(sim: Sim, name: str, env: Envelope | bytes, peer: bytes, run: bool = True) -> None:
    """``peer`` (the authenticated last hop) hands ``name``'s router an envelope."""
    node = sim.nodes[name]
    raw = env if isinstance(env, bytes) else env.encode()
    req = Request(("deliver", os.urandom(4)), rm.Deliver(peer=peer, path="direct"), (raw,))
    sim.feed(name, lambda: node.router.handle(req, sim.now))
    if run:
        sim.run()


def sent_by(sim: Sim, name: str, kind: str) -> list[Envelope]:
    """What ``name`` gave its transport to send (delivered or not)."""
    return [e for n, r in sim.tried if n == name and (e := decode(r)).msg_type == kind]


def inbox(sim: Sim, name: str) -> list[rm.Stored]:
    reply = sim.call(name, rm.Inbox(after=0, limit=1000))
    return list(reply.body.messages)


# -- 1. the inbox's quotas ------------------------------------------------------------------

def test_a_stranger_over_its_quota_is_refused_unacknowledged_and_gets_in_once_known() -> None:
    sim = Sim("a", "b", inbox_sender_max_messages=3)
    sim.connect("a", "b")
    ids = [send(sim, "a", "b", b"%d" % i) for i in range(5)]
    a, b = sim.nodes["a"], sim.nodes["b"]
    assert b.received() == [b"0", b"1", b"2"]
    assert b.router.stats["inbox_refused_sender"] == 2
    assert "open" not in b.crypto.counters() or b.crypto.counters()["open"] == 3
    assert [a.statuses(i)[-1] for i in ids] == ["delivered"] * 3 + ["sent"] * 2
    assert len(sent_by(sim, "b", MessageType.ACK)) == 3  # the refused ones: no ACK
    sim.run(6)  # a retries; still refused, nothing stored twice, nothing dropped
    assert b.received() == [b"0", b"1", b"2"] and len(inbox(sim, "b")) == 3
    send(sim, "b", "a", b"hi")  # b writes to a: a has history now, a larger quota
    sim.run(12)
    assert sorted(b.received()) == [b"%d" % i for i in range(5)]
    assert [a.statuses(i)[-1] for i in ids] == ["delivered"] * 5


def test_made_up_senders_through_one_peer_hit_that_peers_quota_before_crypto() -> None:
    sim = Sim("a", "b", inbox_hop_max_messages=4)
    sim.connect("a", "b")
    b = sim.nodes["b"]
    hop = stranger().public
    for _ in range(10):
        hand(sim, "b", signed(stranger(), sim, b.id), hop)
    assert len(b.received()) == 4 and b.router.stats["inbox_refused_hop"] == 6
    assert b.crypto.counters()["open"] == 4  # refused before crypto.open
    send(sim, "a", "b", b"legit")  # another connection is not affected
    assert b.received()[-1] == b"legit"


def test_strangers_fill_at_most_their_share_and_contacts_still_get_in_until_full() -> None:
    sim = Sim("a", "b", inbox_max_messages=10, inbox_strangers_share=0.5)
    sim.connect("a", "b")
    b = sim.nodes["b"]
    send(sim, "b", "a", b"you are my contact")
    for _ in range(8):
        hand(sim, "b", signed(stranger(), sim, b.id), stranger().public)
    assert len(b.received()) == 5 and b.router.stats["inbox_refused_strangers"] == 3
    for i in range(7):
        send(sim, "a", "b", b"from a contact %d" % i)
    assert len(b.received()) == 10 and b.router.stats["inbox_refused_full"] == 2
    assert len(inbox(sim, "b")) == 10  # nothing accepted was dropped to make room


def test_the_byte_quota_counts_what_is_stored_and_overhead() -> None:
    sim = Sim("b", inbox_sender_max_bytes=2000)
    b = sim.nodes["b"]
    k = stranger()
    first = signed(k, sim, b.id, payload=b"p" * 600)
    hand(sim, "b", first, k.public)
    hand(sim, "b", signed(k, sim, b.id, payload=b"q" * 600), k.public)
    assert b.received() == [b"p" * 600] and b.router.stats["inbox_refused_sender"] == 1
    # the plaintext, and the signed envelope kept for the read receipt
    assert b.router.queues()["inbox_bytes"] == 600 + len(first.encode()) + 128


def test_copies_opened_at_once_are_checked_again_before_they_are_stored() -> None:
    sim = Sim("b", inbox_sender_max_messages=2)
    b = sim.nodes["b"]
    k = stranger()
    for i in range(5):  # all pass the first check: none is stored yet
        hand(sim, "b", signed(k, sim, b.id, payload=b"%d" % i), k.public, run=False)
    sim.run()
    assert len(b.received()) == 2 and b.router.stats["inbox_refused_sender"] == 3
    assert b.crypto.counters()["open"] == 5
    assert len(sent_by(sim, "b", MessageType.ACK)) == 2


def test_quotas_are_counted_from_the_inbox_after_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    sim = Sim("b", db={"b": db}, inbox_sender_max_messages=2)
    b = sim.nodes["b"]
    k = stranger()
    for i in range(2):
        hand(sim, "b", signed(k, sim, b.id, payload=b"%d" % i), k.public)
    b.router = RouterCore(Store(db), lambda: sim.wall,
                          RouterSettings(inbox_sender_max_messages=2))
    sim.feed("b", lambda: b.router.on_timer(sim.now))
    sim.run()
    hand(sim, "b", signed(k, sim, b.id, payload=b"3"), k.public)
    assert b.router.stats["inbox_refused_sender"] == 1
    assert b.router.queues()["inbox_messages"] == 2


# -- 2. the peer table ----------------------------------------------------------------------

def test_router_peers_is_fast_at_the_cap_and_thirty_thousand_made_up_nodes_stay_bounded(
        ) -> None:
    sim = Sim("a")
    a = sim.nodes["a"]
    topo = a.router.topo
    assert topo is not None
    now_ms = int(sim.wall * 1000)
    ids = [os.urandom(32) for _ in range(1_990)]
    for i, n in enumerate(ids):  # a dense graph: each lists (and is listed by) 32 others
        near = frozenset(ids[(i + j) % len(ids)] for j in range(-16, 17) if j)
        topo.learn(Announce(n, "x", (("10.1.0.1", 1),), near, now_ms), b"ann", now_ms)
    for n in ids[:3]:
        topo.set_connected(n, True)
    t0 = time.monotonic()
    peers = sim.call("a", rm.Peers()).body.peers
    elapsed = time.monotonic() - t0
    assert len(peers) == 1_990 and sum(p.path == "relayed" for p in peers) > 100
    assert elapsed < 2.0, f"router.peers took {elapsed:.2f} s at the cap"
    for _ in range(30_000):
        topo.seen(os.urandom(32), now_ms)
    assert len(topo.peers) <= 2_000 and topo.stats["peers_evicted"] >= 28_000
    assert all(n in topo.peers for n in ids[:3])  # connected: never evicted


def test_eviction_keeps_connected_bootstrap_contacts_and_long_known_peers() -> None:
    t = Topology(b"\0" * 32, max_peers=50)
    now = 10_000_000_000
    keep = {}
    for role in ("connected", "bootstrap", "contact", "old"):
        p = t.peer(os.urandom(32), now - 7_200_000 if role == "old" else now)
        keep[role] = p.node_id
        if role == "connected":
            t.set_connected(p.node_id, True)
        elif role == "bootstrap":
            p.bootstrap = True
        elif role == "contact":
            p.contact = True
    relay, far = os.urandom(32), os.urandom(32)  # the contact's path: connected–relay–far
    t.peers[keep["contact"]].neighbours = frozenset({far})
    t.learn(Announce(far, "far", (), frozenset({relay, keep["contact"]}), now), b"a", now)
    t.learn(Announce(relay, "r", (), frozenset({far, keep["connected"]}), now), b"a", now)
    t.peers[keep["connected"]].neighbours = frozenset({relay})
    t._routes = None
    assert t.route(keep["contact"]) == (keep["connected"], relay, far)
    for i in range(1_000):
        t.seen(os.urandom(32), now + i)
    assert len(t.peers) <= 50 and all(n in t.peers for n in keep.values())
    assert relay in t.peers and far in t.peers
    t.max_peers = 3  # more protected peers than room: newcomers are refused
    t.seen(os.urandom(32), now)
    assert len(t.peers) == 3 and t.stats["peers_refused"] >= 1


def test_strangers_are_not_saved_and_are_forgotten_contacts_and_bootstrap_are_kept(
        tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    old = Store(db)  # what an earlier version saved: every node that ever connected
    old.put_peer(os.urandom(32), "10.9.9.9", 9, False, 1)
    old.close()
    sim = Sim("a", "b", "c", db={"b": db}, forget_after_s=600.0, max_saved_peers=5)
    sim.connect("a", "b")
    sim.connect("b", "c")
    b = sim.nodes["b"]
    k = stranger()
    hand(sim, "b", signed(k, sim, b.id), k.public)  # a stranger writes, then goes
    send(sim, "b", "c", b"c is a contact")
    assert b.router.store.peers() == [(sim.nodes["c"].id, "10.0.0.1", 5002, False,
                                       b.router.store.peers()[0][4], True)]
    assert k.public in b.router.topo.peers  # type: ignore[union-attr]
    sim.disconnect("b", "c")
    sim.disconnect("a", "b")
    sim.run(700)
    peers = b.router.topo.peers  # type: ignore[union-attr]
    assert k.public not in peers and sim.nodes["a"].id not in peers
    assert sim.nodes["c"].id in peers and b.router.counters()["peers_forgotten"] >= 2
    for _ in range(10):  # more contacts than may be saved: the most recent stay
        sim.call("b", rm.Send(to=stranger().public), (b"to nobody",))
    sim.run(6)
    assert len(b.router.store.peers()) == 5


# -- 3. gossip: only what a node signed about itself ----------------------------------------

def chain() -> Sim:
    """a–b–d–c, and m connected to a: a reaches c through b and d."""
    sim = Sim("a", "b", "c", "d", "m")
    for x, y in ("ab", "bd", "dc", "am"):
        sim.connect(x, y)
    sim.run(20)
    return sim


def route(sim: Sim, src: str, dst: str) -> tuple[str, ...] | None:
    topo = sim.nodes[src].router.topo
    assert topo is not None
    r = topo.route(sim.nodes[dst].id)
    return None if r is None else tuple(sim.by_id(n).name for n in r)  # type: ignore[union-attr]


def announcement(sim: Sim, name: str, neighbours: list[str], addrs: list[Any],
                 ahead_ms: int = 60_000) -> bytes:
    k = node_key(sim, name)
    me = sim.nodes[name].id
    payload = announce_payload(name, addrs, [sim.nodes[n].id for n in neighbours])
    return signed(k, sim, me, msg_type=MessageType.PEER_ANNOUNCE, payload=payload,
                  timestamp_ms=int(sim.wall * 1000) + ahead_ms, ttl=0).encode()


def gossip(sim: Sim, src: str, dst: str, items: list[Any], key: SigningKey | None = None,
           peer: bytes | None = None, **kw: Any) -> None:
    import msgpack

    k = key or node_key(sim, src)
    env = signed(k, sim, sim.nodes[dst].id, msg_type=MessageType.PEER_ANNOUNCE, ttl=0,
                 payload=msgpack.packb(items, use_bin_type=True), **kw)
    hand(sim, dst, env, peer or k.public)


def test_a_neighbour_claimed_by_one_side_only_does_not_make_a_relay() -> None:
    sim = chain()
    a = sim.nodes["a"]
    assert route(sim, "a", "c") == ("b", "d")
    # m signs that it is connected to c (it is not: c does not say so)
    gossip(sim, "m", "a", [announcement(sim, "m", ["c", "a"], [["10.0.0.1", 5004]])])
    assert route(sim, "a", "c") == ("b", "d")
    assert a.router.stats["unconfirmed_edges"] >= 1
    msg = send(sim, "a", "c", b"not through m")
    assert sim.nodes["c"].received() == [b"not through m"]
    assert "delivered" in a.statuses(msg)
    assert a.router.stats["forwarded"] == 0 and sim.nodes["m"].router.stats["forwarded"] == 0


def test_a_node_is_dialled_only_where_it_said_and_address_hints_are_refused() -> None:
    sim = chain()
    a, c = sim.nodes["a"], sim.nodes["c"]
    topo = a.router.topo
    assert topo is not None
    held = topo.peers[c.id].announce
    assert (topo.peers[c.id].host, topo.peers[c.id].port) == ("10.0.0.1", c.port)
    gossip(sim, "m", "a", [[held, "6.6.6.6", 666]])  # the old format: an unsigned hint
    assert a.router.stats["rejected_malformed_gossip"] == 1
    # an announcement naming a host (resolving it could block) is refused whole
    gossip(sim, "m", "a", [announcement(sim, "m", ["a"], [["evil.example", 1]])])
    assert a.router.stats["rejected_bad_announcement"] == 1
    assert (topo.peers[c.id].host, topo.peers[c.id].port) == ("10.0.0.1", c.port)


def test_gossip_must_come_straight_from_its_signer_at_a_bounded_rate() -> None:
    sim = Sim("a", "m", "x", gossip_burst=3, gossip_rate=0.1)
    sim.connect("a", "m")
    a, m = sim.nodes["a"], sim.nodes["m"]
    k = node_key(sim, "m")
    ann = [announcement(sim, "m", ["a"], [])]
    unknown = [announcement(sim, "x", [], [["10.9.9.9", 4433]])]  # a node a never met
    other = stranger()
    gossip(sim, "m", "a", unknown, key=other, peer=m.id)  # signed by another than the peer
    gossip(sim, "m", "a", unknown, via=(a.id,))  # relayed
    assert a.router.stats["rejected_gossip_not_direct"] == 2
    assert a.router.topo is not None and sim.nodes["x"].id not in a.router.topo.peers
    for _ in range(10):  # forged, but refused before any signature is checked
        env = signed(k, sim, a.id, msg_type=MessageType.PEER_ANNOUNCE, ttl=0,
                     payload=gossip_payload(ann))
        hand(sim, "a", replace(env, payload=gossip_payload([])), m.id)
    assert a.router.stats["rejected_gossip_rate"] >= 7
    # the refused ones cost no verification: only those within the burst were found forged
    assert a.router.stats["rejected_forged"] + a.router.stats["rejected_gossip_rate"] == 10
    assert a.router.stats["rejected_forged"] <= 3


def test_forged_gossip_and_forged_announcements_are_refused() -> None:
    sim = Sim("a", "m")
    sim.connect("a", "m")
    a, m = sim.nodes["a"], sim.nodes["m"]
    x = stranger()
    payload = announce_payload("x", [["10.7.7.7", 7]], [m.id])
    ann = signed(x, sim, x.public, msg_type=MessageType.PEER_ANNOUNCE, payload=payload, ttl=0)
    forged_ann = replace(ann, payload=announce_payload("x", [["6.6.6.6", 6]], [m.id]))
    gossip(sim, "m", "a", [forged_ann.encode()])
    assert a.router.stats["rejected_bad_announcement"] == 1
    env = signed(node_key(sim, "m"), sim, a.id, msg_type=MessageType.PEER_ANNOUNCE, ttl=0,
                 payload=gossip_payload([ann.encode()]))
    hand(sim, "a", replace(env, payload=gossip_payload([forged_ann.encode()])), m.id)
    assert a.router.stats["rejected_forged"] == 1
    assert x.public not in a.router.topo.peers  # type: ignore[union-attr]
    hand(sim, "a", env, m.id)
    assert a.router.topo.peers[x.public].host == "10.7.7.7"  # type: ignore[union-attr]


# -- 4. forwarding along the signed path only; the replay window ----------------------------

def relay_sim() -> Sim:
    sim = Sim("a", "b", "c", "x")
    for pair in ("ab", "bc", "bx"):
        sim.connect(*pair)
    return sim


def forward_count(sim: Sim, name: str) -> int:
    return sim.nodes[name].router.stats["forwarded"]


def test_a_relay_forwards_only_what_comes_from_the_previous_hop_of_the_signed_path() -> None:
    sim = relay_sim()
    a, b, c, x = (sim.nodes[n] for n in "abcx")
    f = Forger(sim, "a", "c")
    env = f.env(via=(b.id,))
    hand(sim, "b", env, x.id)  # x replays a's envelope through b
    assert b.router.stats["rejected_wrong_hop"] == 1 and c.received() == []
    hand(sim, "b", env, a.id)
    assert c.received() == [b"plain"] and forward_count(sim, "b") >= 1


def test_a_relay_refuses_a_raised_ttl_loops_and_dials_nobody() -> None:
    sim = Sim("a", "b", "c", "d", "e")
    for pair in ("ab", "bc"):
        sim.connect(*pair)
    a, b, c, d, e = (sim.nodes[n] for n in "abcde")
    f = Forger(sim, "a", "d")
    hand(sim, "c", f.env(via=(b.id, c.id), ttl=4), b.id)  # at via[1] the ttl is at most 3
    assert c.router.stats["rejected_ttl_raised"] == 1
    hand(sim, "b", f.env(via=(b.id, c.id, b.id)), a.id)
    hand(sim, "b", f.env(via=(b.id, a.id)), a.id)
    hand(sim, "b", f.env(via=(b.id, c.id), to=c.id), a.id)
    hand(sim, "b", f.env(via=(b.id,), to=a.id), a.id)
    assert b.router.stats["rejected_loop"] == 4 and c.received() == []
    calls_before = len(sim.sent)
    known = b.router.topo.peer(e.id)  # type: ignore[union-attr]
    known.host, known.port = "10.0.0.1", e.port  # b knows where e is, but is not connected
    hand(sim, "b", f.env(via=(b.id,), to=e.id), a.id)
    assert b.router.stats["forward_unreachable"] == 1 and len(sim.sent) == calls_before
    assert ("b", e.id) not in sim.dials and d.received() == [] and e.received() == []


def test_each_relay_lowers_the_ttl_and_forwards_a_copy_once() -> None:
    sim = Sim("a", "b", "c", "d")
    for pair in ("ab", "bc", "cd"):
        sim.connect(*pair)
    a, b, c, d = (sim.nodes[n] for n in "abcd")
    env = Forger(sim, "a", "d").env(via=(b.id, c.id), ttl=4)
    hand(sim, "b", env, a.id)
    hand(sim, "b", env, a.id)  # the same copy again at once: forwarded once
    assert b.router.stats["forward_duplicates"] == 1
    ttls = [decode(r).ttl for n, r in sim.sent if n in "bc" and decode(r).id == env.id]
    assert ttls == [3, 2] and d.received() == [b"plain"]


def test_a_replay_ahead_of_time_is_still_refused_after_the_inbox_purge() -> None:
    sim = Sim("a", "b", replay_window_s=60.0)
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    raw = f.env(payload=b"once", timestamp_ms=int(sim.wall * 1000) + 240_000).encode()
    f.deliver(raw)
    b = sim.nodes["b"]
    sim.run(70)  # received more than the window ago, but its timestamp is still fresh
    f.deliver(raw)
    assert b.received() == [b"once"] and b.router.stats["duplicates"] == 1
    sim.run(250)
    f.deliver(raw)
    assert b.received() == [b"once"] and b.router.stats["rejected_stale"] == 1


# -- 5. checks that used to be removable with the suite green -------------------------------

def test_forged_acks_and_receipts_move_nothing() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    a, b, c = (sim.nodes[n] for n in "abc")
    sim.drop_sends.add(frozenset("bc"))  # the message never reaches c
    msg = send(sim, "a", "c", b"x")
    assert a.statuses(msg) == ["pending", "sent", "relayed"]
    kc = stranger()  # not c's key: a forgery in c's name
    for kind, payload in ((MessageType.ACK, AckPayload(msg, AckType.RECIPIENT_RECEIVED)),
                          (MessageType.READ_RECEIPT, ReadReceiptPayload(msg, 1))):
        env = signed(kc, sim, a.id, msg_type=kind, payload=payload.encode(), via=(b.id,))
        hand(sim, "a", replace(env, sender=c.id), b.id)
    assert a.router.stats["rejected_forged"] == 2
    old = int(sim.wall * 1000) - 86_400_000 - 700_000  # c's own, but replayed from long ago
    for kind, payload in ((MessageType.ACK, AckPayload(msg, AckType.RECIPIENT_RECEIVED)),
                          (MessageType.READ_RECEIPT, ReadReceiptPayload(msg, 1))):
        hand(sim, "a", signed(node_key(sim, "c"), sim, a.id, msg_type=kind, via=(b.id,),
                              payload=payload.encode(), timestamp_ms=old), b.id)
    assert a.router.stats["rejected_stale"] == 2
    assert a.statuses(msg) == ["pending", "sent", "relayed"]


def test_relay_acks_count_only_from_the_path_and_receipts_only_from_the_recipient() -> None:
    sim = Sim("a", "b", "c", "m")
    for pair in ("ab", "bc", "am"):
        sim.connect(*pair)
    sim.run(12)
    a = sim.nodes["a"]
    sim.drop_sends.add(frozenset("ab"))
    msg = send(sim, "a", "c", b"x")
    assert a.statuses(msg) == ["pending", "sent"]
    f = Forger(sim, "m", "a")
    f.deliver(f.env(msg_type=MessageType.ACK,
                    payload=AckPayload(msg, AckType.RELAY_FORWARDED).encode()).encode())
    f.deliver(f.env(msg_type=MessageType.READ_RECEIPT,
                    payload=ReadReceiptPayload(msg, 1).encode()).encode())
    assert a.router.stats["rejected_ack_not_from_relay"] == 1
    assert a.router.stats["rejected_receipt_unknown"] == 1
    assert a.statuses(msg) == ["pending", "sent"]


def test_a_forged_envelope_is_not_forwarded() -> None:
    sim = relay_sim()
    a, b, c = (sim.nodes[n] for n in "abc")
    env = Forger(sim, "a", "c").env(via=(b.id,))
    hand(sim, "b", replace(env, payload=b"changed"), a.id)
    assert b.router.stats["rejected_forged"] == 1 and forward_count(sim, "b") == 0
    assert c.received() == []


def test_the_transports_call_is_answered_only_after_the_inbox_commit() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    b = sim.nodes["b"]
    raw = Forger(sim, "a", "b").env().encode()
    ctx = ("deliver", "t")
    [call] = b.router.handle(Request(ctx, rm.Deliver(peer=sim.nodes["a"].id, path="direct"),
                                     (raw,)), sim.now)
    assert isinstance(call, Call)
    [opened] = b.crypto.handle(Request("c", call.body, call.blobs), sim.now)
    out = b.router.handle(PeerReplied(call.token, opened.body, opened.blobs), sim.now)
    assert not any(isinstance(x, Reply) and x.ctx == ctx for x in out)
    commits: list[bool] = []
    real = b.router.store.commit

    def commit() -> None:
        commits.append(True)
        real()

    b.router.store.commit = commit  # type: ignore[method-assign]
    held = b.router.flush(sim.now)
    assert commits and any(isinstance(x, Reply) and x.ctx == ctx for x in held)
    assert b.router.store.has_in(sim.nodes["a"].id, decode(raw).id)


def test_connected_peers_list_established_neighbours_first() -> None:
    t = Topology(b"\0" * 32)
    for i in range(40):
        p = t.peer(bytes([i]) * 32, 1000 + i)
        t.set_connected(p.node_id, True)
    t.peers[bytes([39]) * 32].contact = True
    best = t.neighbours(32)
    assert best[0] == bytes([39]) * 32 and bytes([38]) * 32 not in best


def test_the_sim_info_reply_gives_an_address_to_announce() -> None:
    """(the router announces what transport.info says, never a gossiper's word)"""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)
    topo = sim.nodes["a"].router.topo
    assert topo is not None
    assert topo.peers[sim.nodes["b"].id].addrs == (("10.0.0.1", sim.nodes["b"].port),)


def test_a_contact_evicted_from_a_full_table_is_forgotten_on_disk_too() -> None:
    sim = Sim("b", max_peers=16)
    b = sim.nodes["b"]
    for _ in range(30):  # (only the user's own sends can do this: contacts are evicted last)
        sim.call("b", rm.Send(to=stranger().public), (b"hello",))
    sim.run(6)
    topo = b.router.topo
    assert topo is not None and len(topo.peers) <= 16
    assert {n for n, *_ in b.router.store.peers()} == set(topo.peers)



def test_gossip_rate_limit_buckets() -> None:
    from services.router.gossip import RateLimit

    rl = RateLimit(rate=2.0, burst=3, keys=2)
    assert [rl.take(b"a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not rl.take(b"a", 0.25)  # half a token back
    assert rl.take(b"a", 0.5)  # (refilled at `rate` per second since the last refusal)
    assert not rl.take(b"a", 0.5)
    assert rl.take(b"b", 0.5) and rl.take(b"c", 0.5)  # a third key beyond `keys`: pruned
    assert set(rl.buckets) == {b"a", b"b", b"c"}  # nothing had refilled: all kept
    assert rl.take(b"d", 10.0)  # everything refilled long ago: forgotten
    assert set(rl.buckets) == {b"d"}
    assert rl.buckets[b"d"] == (2.0, 10.0)


@pytest.mark.parametrize("host, port, ok", [
    ("10.0.0.1", 4433, True), ("2001:db8::1", 1, True), ("10.0.0.1", 65535, True),
    ("10.0.0.1", 0, False), ("10.0.0.1", 65536, False), ("10.0.0.1", True, False),
    ("10.0.0.1", "4433", False), (b"10.0.0.1", 4433, False), ("evil.example", 4433, False),
    ("0.0.0.0", 4433, False), ("224.0.0.1", 4433, False), ("::", 4433, False),
    ("1" * 46, 4433, False), ("1.2.3.4\x00", 4433, False)])
def test_only_literal_dialable_addresses_are_usable(host: object, port: object,
                                                    ok: bool) -> None:
    from services.router.gossip import usable_address

    assert usable_address(host, port) is ok


def test_an_announcement_is_self_addressed_fresh_and_well_formed() -> None:
    from msgpack import packb

    from services.router import gossip as g
    from shared.envelope import EnvelopeError

    me, other, now = b"\x01" * 32, b"\x02" * 32, 1_800_000_000_000
    good = Envelope(os.urandom(16), me, me, MessageType.PEER_ANNOUNCE,
                    g.announce_payload("me", [("10.0.0.1", 4433)], [other]), now)
    ann = g.read_announce(good, now)
    assert (ann.node_id, ann.username, ann.addrs, ann.neighbours) == (
        me, "me", (("10.0.0.1", 4433),), frozenset({other}))
    assert g.read_announce(replace(good, timestamp_ms=now + g.MAX_FUTURE_MS), now)
    assert g.read_announce(replace(good, timestamp_ms=now - g.ANNOUNCE_MAX_AGE_MS), now)
    bad = [replace(good, to=other), replace(good, encrypted=True), replace(good, via=(other,)),
           replace(good, msg_type=MessageType.CHAT),
           replace(good, timestamp_ms=now + g.MAX_FUTURE_MS + 1),
           replace(good, timestamp_ms=now - g.ANNOUNCE_MAX_AGE_MS - 1),
           replace(good, payload=b"\xc1"),
           replace(good, payload=packb(["x" * (g.MAX_USERNAME + 1), [], []])),
           replace(good, payload=packb(["me", [["10.0.0.1", 1]] * (g.MAX_ADDRS + 1), []])),
           replace(good, payload=packb(["me", [], [other] * (g.MAX_NEIGHBOURS + 1)])),
           replace(good, payload=packb(["me", [], []])[:-1]),
           replace(good, payload=g.announce_payload("me", [("evil.example", 1)], [])),
           replace(good, payload=g.announce_payload("me", [], [b"short"]))]
    for env in bad:
        with pytest.raises(EnvelopeError):
            g.read_announce(env, now)
