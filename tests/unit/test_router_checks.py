"""The router's checks on what peers send it, at their edges (issue 13, `make mutate`): each
test here asserts what a peer or the operator would notice (refused, counted, not stored,
not acknowledged, answered), and closes survivors bench/mutation.md listed. The cores are
driven directly (sans-I/O), with real crypto, over the in-memory transport of router_sim."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import msgpack
import pytest

from services.router import gossip as g
from services.router.context import DELIVERED
from services.router.core import RouterCore, RouterSettings
from services.router.reasons import NO_ROUTE
from services.router.store import Store
from shared.core import Action, Call, Fail, PeerFailed, PeerReplied, Reply, Request
from shared.envelope import AckPayload, AckType, Envelope, EnvelopeError, MessageType, decode
from shared.primitives import SigningKey
from shared.wire import ErrorCode
from shared.wire.messages import router as rm

from .router_sim import Sim
from .test_router_core import Forger, send
from .test_router_hostile import announcement, inbox, node_key, signed, stranger


def deliver(sim: Sim, name: str, raw: bytes, peer: bytes,
            blobs: tuple[bytes, ...] | None = None) -> tuple[Any, list[Action]]:
    """The transport hands ``name``'s router an envelope; the router's answer, not run."""
    ctx = ("deliver", os.urandom(4))
    req = Request(ctx, rm.Deliver(peer=peer, path="direct"), (raw,) if blobs is None else blobs)
    return ctx, sim.nodes[name].router.handle(req, sim.now)


def crypto_answer(sim: Sim, name: str, call: Action) -> PeerReplied | PeerFailed:
    """What ``name``'s crypto answers to the router's call."""
    assert isinstance(call, Call) and call.role == "crypto"
    [r] = sim.nodes[name].crypto.handle(Request("c", call.body, call.blobs), sim.now)
    if isinstance(r, Reply):
        return PeerReplied(call.token, r.body, r.blobs)
    assert isinstance(r, Fail)
    return PeerFailed(call.token, r.code, r.message)


def ack_sends(actions: list[Action]) -> list[Envelope]:
    return [e for a in actions if isinstance(a, Call) and a.role == "transport" and a.blobs
            and (e := decode(a.blobs[0])).msg_type == MessageType.ACK]


def hand_ctx(sim: Sim, name: str, env: Envelope, peer: bytes) -> Any:
    node = sim.nodes[name]
    ctx = ("deliver", os.urandom(4))
    req = Request(ctx, rm.Deliver(peer=peer, path="direct"), (env.encode(),))
    sim.feed(name, lambda: node.router.handle(req, sim.now))
    sim.run()
    return ctx


# -- the transport's call is always answered, and answered right ----------------------------

def test_every_delivery_is_answered_to_the_transport_even_when_refused() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    a, b, c = (sim.nodes[n] for n in "abc")
    f = Forger(sim, "a", "b")
    ok = rm.DeliverReply()
    ctx, out = deliver(sim, "b", f.env(to=c.id).encode(), a.id)  # neither for b nor via it
    assert out == [Reply(ctx, ok)] and b.router.stats["rejected_not_for_us"] == 1
    ctx, out = deliver(sim, "b", b"", a.id, blobs=(b"x", b"y"))
    assert out == [Fail(ctx, ErrorCode.INVALID, "expected one blob: the envelope")]
    stale = f.env(timestamp_ms=int(sim.wall * 1000) - 86_400_000 - 601_000).encode()
    ctx, out = deliver(sim, "b", stale, a.id)  # a chat for b: refused before crypto
    assert out == [Reply(ctx, ok)] and b.router.stats["rejected_stale"] == 1
    ctx = hand_ctx(sim, "b", f.env(), a.id)  # a good one: answered after the commit
    assert b.replies[ctx] == Reply(ctx, ok) and len(b.received()) == 1


# -- copies of one chat ----------------------------------------------------------------------

def test_a_copy_of_a_chat_being_opened_is_neither_opened_nor_acknowledged_again() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    a, b = sim.nodes["a"], sim.nodes["b"]
    raw = Forger(sim, "a", "b").env().encode()
    _, [call] = deliver(sim, "b", raw, a.id)
    for n in (1, 2):  # the transport retries while crypto opens the first copy
        ctx, out = deliver(sim, "b", raw, a.id)
        assert out == [Reply(ctx, rm.DeliverReply())]  # no second open, no ACK yet
        assert b.router.stats["duplicates"] == n
    b.router.handle(crypto_answer(sim, "b", call), sim.now)
    assert len(ack_sends(b.router.flush(sim.now))) == 1
    assert b.router.store.has_in(a.id, decode(raw).id) and b.router.stats["received"] == 1


def test_genuine_copies_opened_at_once_are_stored_once_and_each_acknowledged() -> None:
    """The sender re-signed its message (a new path) while the first copy was being opened:
    every genuine copy is acknowledged, one is stored, and the quota is not charged twice."""
    sim = Sim("a", "b", inbox_sender_max_messages=1)
    sim.connect("a", "b")
    a, b = sim.nodes["a"], sim.nodes["b"]
    f = Forger(sim, "a", "b")
    first = f.env()
    copies = [first.encode()] + [f.env(id=first.id, timestamp_ms=first.timestamp_ms + i)
                                 .encode() for i in (1, 2)]
    calls = [deliver(sim, "b", raw, a.id)[1][0] for raw in copies]
    assert all(isinstance(c, Call) and c.role == "crypto" for c in calls)
    b.router.handle(crypto_answer(sim, "b", calls[0]), sim.now)
    acks = ack_sends(b.router.flush(sim.now))
    ctx, out = deliver(sim, "b", copies[1], a.id)  # its twin is still being opened
    assert out == [Reply(ctx, rm.DeliverReply())]
    for call in calls[1:]:
        b.router.handle(crypto_answer(sim, "b", call), sim.now)
    acks += ack_sends(b.router.flush(sim.now))
    assert len(acks) == 3 and b.router.stats["inbox_refused_sender"] == 0
    assert b.router.stats["duplicates"] == 3 and b.router.stats["received"] == 1
    assert b.received() == [] and len(inbox(sim, "b")) == 1


def test_chats_opened_at_once_are_held_to_the_hops_quota_when_stored() -> None:
    sim = Sim("b", inbox_hop_max_messages=2)
    b = sim.nodes["b"]
    hop = stranger().public
    for _ in range(4):  # all pass the first check: none is stored yet
        k = stranger()
        sim.feed("b", lambda k=k: deliver(sim, "b", signed(k, sim, b.id).encode(), hop)[1])
    sim.run()
    assert b.crypto.counters()["open"] == 4
    assert len(b.received()) == 2 and b.router.stats["inbox_refused_hop"] == 2


def test_chats_opened_at_once_are_held_to_the_byte_quota_when_stored() -> None:
    sim = Sim("b", inbox_sender_max_bytes=2000)
    b = sim.nodes["b"]
    k = stranger()
    for text in (b"p", b"q"):
        env = signed(k, sim, b.id, payload=text * 600)
        sim.feed("b", lambda e=env: deliver(sim, "b", e.encode(), k.public)[1])
    sim.run()
    assert b.crypto.counters()["open"] == 2
    assert b.received() == [b"p" * 600] and b.router.stats["inbox_refused_sender"] == 1


def test_a_stranger_over_its_byte_quota_costs_crypto_no_open() -> None:
    sim = Sim("b", inbox_sender_max_bytes=1000)
    b = sim.nodes["b"]
    k = stranger()
    hand_ctx(sim, "b", signed(k, sim, b.id, payload=b"p" * 600), k.public)
    assert b.router.stats["inbox_refused_sender"] == 1 and b.received() == []
    assert "open" not in b.crypto.counters()


# -- the replay window -------------------------------------------------------------------------

def test_the_replay_window_includes_both_of_its_edges() -> None:
    sim = Sim("a", "b", replay_window_s=60.0)
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    now_ms = int(sim.wall * 1000)
    f.deliver(f.env(payload=b"oldest", timestamp_ms=now_ms - 60_000).encode())
    f.deliver(f.env(payload=b"furthest ahead", timestamp_ms=now_ms + 300_000).encode())
    assert sim.nodes["b"].received() == [b"oldest", b"furthest ahead"]
    f.deliver(f.env(timestamp_ms=now_ms - 60_001).encode())
    f.deliver(f.env(timestamp_ms=now_ms + 300_001).encode())
    b = sim.nodes["b"]
    assert b.router.stats["rejected_stale"] == 1 and b.router.stats["rejected_future"] == 1


def test_a_chat_that_goes_stale_while_crypto_opens_it_is_not_stored_or_acknowledged() -> None:
    sim = Sim("a", "b", replay_window_s=60.0)
    sim.connect("a", "b")
    a, b = sim.nodes["a"], sim.nodes["b"]
    f = Forger(sim, "a", "b")
    raw = f.env(timestamp_ms=int(sim.wall * 1000) - 59_500).encode()
    ctx, [call] = deliver(sim, "b", raw, a.id)
    answer = crypto_answer(sim, "b", call)
    sim.wall += 1.0  # crypto took a second; the timestamp left the window meanwhile
    assert b.router.handle(answer, sim.now) == [Reply(ctx, rm.DeliverReply())]
    assert b.router.stats["rejected_stale"] == 1
    assert ack_sends(b.router.flush(sim.now)) == [] and not b.router.store.has_in(
        a.id, decode(raw).id)


def test_the_inbox_is_purged_past_the_window_and_gives_the_quota_back() -> None:
    sim = Sim("a", "b", replay_window_s=60.0, inbox_sender_max_messages=1)
    sim.connect("a", "b")
    b = sim.nodes["b"]
    f = Forger(sim, "a", "b")
    f.deliver(f.env(payload=b"1").encode())
    f.deliver(f.env(payload=b"refused").encode())
    assert b.received() == [b"1"] and b.router.stats["inbox_refused_sender"] == 1
    sim.run(70)
    assert b.router.counters()["inbox_purged"] == 1 and inbox(sim, "b") == []
    f.deliver(f.env(payload=b"2").encode())  # room again
    assert b.received() == [b"1", b"2"]
    sim.run(70)
    assert b.router.counters()["inbox_purged"] == 2
    assert b.router.queues()["inbox_messages"] == 0


# -- what crypto.open says -------------------------------------------------------------------

def test_crypto_refusals_are_counted_by_reason_and_a_busy_crypto_is_retried() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    a, b = sim.nodes["a"], sim.nodes["b"]
    raw = Forger(sim, "a", "b").env().encode()
    ctx, [call] = deliver(sim, "b", raw, a.id)
    out = b.router.handle(PeerFailed(call.token, ErrorCode.PEER_TIMEOUT, "crypto is slow"),
                          sim.now)
    assert out == [Fail(ctx, ErrorCode.UNAVAILABLE, "crypto is slow")]  # the transport retries
    assert not any(k.startswith("rejected") for k in b.router.stats)
    ctx, [call] = deliver(sim, "b", raw, a.id)  # the retry is opened again
    out = b.router.handle(PeerFailed(call.token, ErrorCode.INVALID, "no"), sim.now)
    assert out == [Reply(ctx, rm.DeliverReply())]
    assert b.router.stats["rejected_invalid"] == 1 and not b.router.store.has_in(
        a.id, decode(raw).id)


def test_a_crypto_that_does_not_sign_the_ack_with_open_gets_it_sealed_after() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    a, b = sim.nodes["a"], sim.nodes["b"]
    env = Forger(sim, "a", "b").env()
    _, [call] = deliver(sim, "b", env.encode(), a.id)
    answer = crypto_answer(sim, "b", call)
    assert isinstance(answer, PeerReplied)
    [seal] = b.router.handle(PeerReplied(answer.token, answer.body, answer.blobs[:1]),
                             sim.now)
    assert isinstance(seal, Call) and seal.role == "crypto"
    assert (seal.body.to, seal.body.envelope_type) == (a.id, MessageType.ACK)
    assert AckPayload.decode(seal.blobs[0]) == AckPayload(env.id, AckType.RECIPIENT_RECEIVED)


def test_acks_and_forwards_that_cannot_be_sent_are_counted() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    b, c = sim.nodes["b"], sim.nodes["c"]
    k = stranger()  # writes to b directly, then is gone: its ACK cannot be sent
    hand_ctx(sim, "b", signed(k, sim, b.id), k.public)
    assert b.received() == [b"x"] and b.router.counters()["ctl_sent_failures"] == 1
    topo = b.router.topo
    assert topo is not None
    topo.peer(c.id).connected = True  # b believes c is connected; the connection is gone
    hand_ctx(sim, "b", Forger(sim, "a", "c").env(via=(b.id,)), sim.nodes["a"].id)
    assert b.router.stats["forwarded"] == 1 and b.router.counters()["fwd_failures"] == 1
    assert c.received() == []


# -- what is stored and counted ----------------------------------------------------------------

def test_the_inbox_records_which_messages_came_through_a_relay_and_counts_them() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    send(sim, "a", "c", b"via b")
    send(sim, "b", "c", b"direct")
    assert [(m.payload, m.relayed) for m in inbox(sim, "c")] == [(b"via b", True),
                                                                (b"direct", False)]
    assert sim.nodes["c"].router.counters()["received"] == 2


def test_the_hop_of_each_message_is_stored_so_its_quota_survives_a_restart(
        tmp_path: Any) -> None:
    db = str(tmp_path / "b.db")
    sim = Sim("b", db={"b": db}, inbox_hop_max_messages=2)
    b = sim.nodes["b"]
    hop = stranger().public
    for _ in range(2):
        hand_ctx(sim, "b", signed(stranger(), sim, b.id), hop)
    b.router = RouterCore(Store(db), lambda: sim.wall, RouterSettings(inbox_hop_max_messages=2))
    sim.feed("b", lambda: b.router.on_timer(sim.now))
    sim.run()
    hand_ctx(sim, "b", signed(stranger(), sim, b.id), hop)
    assert b.router.stats["inbox_refused_hop"] == 1 and len(inbox(sim, "b")) == 2


def test_the_history_factor_setting_is_what_multiplies_a_contacts_quota() -> None:
    sim = Sim("a", "b", inbox_sender_max_messages=2, inbox_history_factor=1)
    sim.connect("a", "b")
    send(sim, "b", "a", b"a is my contact")
    for i in range(3):
        send(sim, "a", "b", b"%d" % i)
    b = sim.nodes["b"]
    assert b.received() == [b"0", b"1"] and b.router.stats["inbox_refused_sender"] == 1


# -- ACKs and receipts ---------------------------------------------------------------------------

def test_acks_for_no_message_of_ours_are_counted_each() -> None:
    sim = Sim("a", "m")
    sim.connect("a", "m")
    f = Forger(sim, "m", "a")
    for _ in range(2):
        f.deliver(f.env(msg_type=MessageType.ACK, payload=AckPayload(
            os.urandom(16), AckType.RECIPIENT_RECEIVED).encode()).encode())
    assert sim.nodes["a"].router.stats["unknown_acks"] == 2


def test_a_read_receipt_marks_the_recipient_as_heard_from() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    a, c = sim.nodes["a"], sim.nodes["c"]
    msg = send(sim, "a", "c", b"x")
    sim.wall += 100.0  # c reads it later (no timer runs meanwhile)
    ev = c.delivered[0][0]
    assert isinstance(sim.call("c", rm.Read(id=ev.id, sender=ev.sender)), Reply)
    assert a.statuses(msg)[-1] == "read"
    peers = {p.node_id: p for p in sim.call("a", rm.Peers()).body.peers}
    assert peers[c.id].last_seen_ms == int(sim.wall * 1000)


# -- forwarding ----------------------------------------------------------------------------------

def test_a_relay_forwards_a_copy_once_per_two_seconds_and_counts_exactly() -> None:
    sim = Sim("a", "b", "c", "x")
    for pair in ("ab", "bc"):
        sim.connect(*pair)
    a, b, c, x = (sim.nodes[n] for n in "abcx")
    f = Forger(sim, "a", "c")
    env = f.env(via=(b.id,))
    sim.drop_sends.add(frozenset("bc"))  # (so that only b's forwards of the chat count)
    start = sim.now
    for dt in (0.0, 1.0, 1.5, 2.0):  # (no timer runs: sim.now moves, not sim.run)
        sim.now = start + dt
        hand_ctx(sim, "b", env, a.id)
    assert b.router.stats["forward_duplicates"] == 2
    assert b.router.stats["forwarded"] == 2  # the copy 2.0 s later is the sender's retry
    for _ in range(2):  # to a node b is not connected to: not forwarded
        hand_ctx(sim, "b", f.env(via=(b.id,), to=x.id), a.id)
    assert b.router.stats["forward_unreachable"] == 2 and b.router.stats["forwarded"] == 2
    assert [e.id for n, r in sim.sent if n == "b" and (e := decode(r)).msg_type ==
            MessageType.CHAT] == [env.id] * 2


def test_the_forwarding_dedup_outlives_the_housekeeping_tick() -> None:
    sim = Sim("a", "b", "c")
    for pair in ("ab", "bc"):
        sim.connect(*pair)
    a, b = sim.nodes["a"], sim.nodes["b"]
    sim.drop_sends.add(frozenset("bc"))  # (so that only b's forwards of the chat count)
    sim.run(2)
    env = Forger(sim, "a", "c").env(via=(b.id,))
    tick = b.router._next_liveness  # when b next prunes its forwarding record
    sim.run(tick - sim.now - 0.5)
    hand_ctx(sim, "b", env, a.id)
    sim.run(1.0)  # the tick forgets only the copies forwarded 2 s ago or more
    assert sim.now > tick
    hand_ctx(sim, "b", env, a.id)
    assert b.router.stats["forward_duplicates"] == 1 and b.router.stats["forwarded"] == 1


# -- gossip ----------------------------------------------------------------------------------

def gossip_from(sim: Sim, src: str, dst: str, items: list[Any]) -> None:
    k = node_key(sim, src)
    env = signed(k, sim, sim.nodes[dst].id, msg_type=MessageType.PEER_ANNOUNCE, ttl=0,
                 payload=msgpack.packb(items, use_bin_type=True))
    hand_ctx(sim, dst, env, k.public)


def stranger_announcement(sim: Sim, key: SigningKey, name: str, neighbours: list[bytes],
                          host: str, ahead_ms: int = 60_000) -> bytes:
    payload = g.announce_payload(name, [(host, 4433)], neighbours)
    return signed(key, sim, key.public, msg_type=MessageType.PEER_ANNOUNCE, payload=payload,
                  timestamp_ms=int(sim.wall * 1000) + ahead_ms, ttl=0).encode()


def test_gossip_is_rate_limited_per_peer() -> None:
    sim = Sim("a", gossip_burst=2, gossip_rate=0.001)
    a = sim.nodes["a"]
    k1, k2 = stranger(), stranger()
    for k in (k1, k1, k1, k2):
        env = signed(k, sim, a.id, msg_type=MessageType.PEER_ANNOUNCE, ttl=0,
                     payload=g.gossip_payload([]))
        hand_ctx(sim, "a", env, k.public)
    assert a.router.stats["rejected_gossip_rate"] == 1  # k1's third; k2 has its own bucket


def test_gossip_keeps_the_newest_announcement_counts_what_it_learns_and_skips_bad_ones(
        ) -> None:
    sim = Sim("a", "m")
    sim.connect("a", "m")
    a, m = sim.nodes["a"], sim.nodes["m"]
    topo = a.router.topo
    assert topo is not None
    x, y = stranger(), stranger()
    gossip_from(sim, "m", "a", [announcement(sim, "m", ["a"], [])])
    before = a.router.stats["unconfirmed_edges"]
    ann_x = stranger_announcement(sim, x, "x", [m.id], "10.7.7.7")
    gossip_from(sim, "m", "a", [ann_x])  # x claims m; m's announcement does not list x
    assert topo.peers[x.public].host == "10.7.7.7"
    assert rm.PeerChanged(node_id=x.public, status="discovered", username="x") in a.events
    known = a.router.stats["gossip_known"]
    older = stranger_announcement(sim, x, "x", [m.id], "10.6.6.6", ahead_ms=0)
    gossip_from(sim, "m", "a", [ann_x, older])  # the same one again, and an older one
    assert a.router.stats["gossip_known"] == known + 2
    assert topo.peers[x.public].host == "10.7.7.7"
    own = announcement(sim, "a", ["m"], [])  # a's own announcement, gossiped back to it
    gossip_from(sim, "m", "a", [own])
    assert a.router.stats["gossip_known"] == known + 3 and a.id not in topo.peers
    forged = decode(stranger_announcement(sim, stranger(), "z", [], "10.5.5.5"))
    bad = Envelope(forged.id, x.public, x.public, forged.msg_type, forged.payload,
                   forged.timestamp_ms + 1, ttl=0, signature=forged.signature).encode()
    ann_y = stranger_announcement(sim, y, "y", [m.id], "10.8.8.8")
    gossip_from(sim, "m", "a", [bad, ann_y])  # one bad announcement spoils nothing else
    assert a.router.stats["rejected_bad_announcement"] == 1 and y.public in topo.peers
    assert a.router.stats["discovered"] == 2
    assert a.router.stats["unconfirmed_edges"] == before + 2
    assert sum(isinstance(e, rm.PeerChanged) and e.status == "discovered"
               and e.username in ("x", "y") for e in a.events) == 2


def test_a_message_waiting_for_a_path_goes_at_the_next_tick_after_gossip_shows_one(
        ) -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")  # (no time passes: a has heard no gossip yet)
    a, c = sim.nodes["a"], sim.nodes["c"]
    msg = send(sim, "a", "c", b"waiting")
    assert a.statuses(msg) == ["pending", "pending"] and a.router.stats["no_route"] == 1
    assert a.reasons(msg) == ["", NO_ROUTE]  # pending, then why: nobody knows c yet
    gossip_from(sim, "b", "a", [announcement(sim, "b", ["a", "c"], []),
                                announcement(sim, "c", ["b"], [])])
    sim.run(2.0)  # the next tick (every second), not the message's own retry 5 s after it
    assert c.received() == [b"waiting"]


@pytest.mark.parametrize("items", [["not bytes"], 5, [b"a"] * (g.GOSSIP_SAMPLE + 2)])
def test_gossip_that_is_not_a_short_list_of_announcements_is_refused(items: Any) -> None:
    sim = Sim("a", "m")
    sim.connect("a", "m")
    gossip_from(sim, "m", "a", items)
    assert sim.nodes["a"].router.stats["rejected_malformed_gossip"] == 1


def test_read_gossip_takes_up_to_the_sample_and_ones_own() -> None:
    items = [b"%d" % i for i in range(g.GOSSIP_SAMPLE + 1)]
    assert g.read_gossip(g.gossip_payload(items)) == items
    with pytest.raises(EnvelopeError):
        g.read_gossip(g.gossip_payload([*items, b"one more"]))
    with pytest.raises(EnvelopeError):
        g.read_gossip(msgpack.packb(["text"]))


def test_an_announcement_at_every_limit_is_accepted() -> None:
    me, now = b"\x01" * 32, 1_800_000_000_000
    addrs = [(f"10.0.0.{i}", 4433) for i in range(g.MAX_ADDRS)]
    neighbours = [bytes([i]) * 32 for i in range(g.MAX_NEIGHBOURS)]
    env = Envelope(os.urandom(16), me, me, MessageType.PEER_ANNOUNCE,
                   g.announce_payload("u" * g.MAX_USERNAME, addrs, neighbours), now)
    ann = g.read_announce(env, now)
    assert (len(ann.username), len(ann.addrs), len(ann.neighbours)) == (
        g.MAX_USERNAME, g.MAX_ADDRS, g.MAX_NEIGHBOURS)


def test_an_address_may_be_45_characters_long_and_no_longer() -> None:
    longest = "0000:0000:0000:0000:0000:ffff:255.255.255.255"  # IPv4-mapped, 45 chars
    scoped = "fe80::1%" + "e" * 38  # a valid address of 46 characters (a scope id)
    assert (len(longest), len(scoped)) == (45, 46)
    assert g.usable_address(longest, 4433) and not g.usable_address(scoped, 4433)


# -- the gossip rate limit's memory ------------------------------------------------------------

def test_the_rate_limit_forgets_refilled_buckets_once_it_holds_4096() -> None:
    rl = g.RateLimit(rate=1.0, burst=2)
    for i in range(4096):
        assert rl.take(i.to_bytes(4, "big"), 0.0)
    assert len(rl.buckets) == 4096
    assert rl.take(b"new", 10.0)  # every bucket refilled: all forgotten first
    assert set(rl.buckets) == {b"new"}


def test_the_rate_limit_prunes_at_its_cap_and_what_refilled_at_its_rate() -> None:
    rl = g.RateLimit(rate=2.0, burst=3, keys=2)
    assert rl.take(b"a", 0.0) and rl.take(b"b", 0.0)
    assert rl.take(b"c", 0.5)  # at the cap: a and b refilled (2 + 0.5 s × 2 = 3) and went
    assert set(rl.buckets) == {b"c"}
    rl.take(b"d", 0.5)
    rl.prune(0.75)  # c and d: 2 + 0.25 s × 2 < 3 tokens, kept
    assert set(rl.buckets) == {b"c", b"d"}
    rl.prune(1.0)  # exactly full again: forgotten
    assert rl.buckets == {}


# -- the peer table -------------------------------------------------------------------------------

def test_the_peer_table_still_evicts_after_restored_connected_and_added_peers(
        tmp_path: Any) -> None:
    """Entries the router creates itself (saved contacts, connections, bootstrap peers) can
    be ranked by the eviction that keeps the table at its cap."""
    db = str(tmp_path / "b.db")
    saved = Store(db)
    contact = stranger().public
    saved.put_peer(contact, "10.9.9.9", 9, False, 1_800_000_000_000, True)
    saved.close()
    sim = Sim("a", "b", db={"b": db}, max_peers=20)
    sim.connect("a", "b")
    sim.disconnect("a", "b")
    b = sim.nodes["b"]
    topo = b.router.topo
    assert topo is not None and contact in topo.peers
    now_ms = int(sim.wall * 1000)
    while len(topo.peers) < 20:
        topo.seen(os.urandom(32), now_ms)
    boot = stranger().public  # the table is full when the user adds a peer
    assert isinstance(sim.call("b", rm.AddPeer(node_id=boot, host="10.1.1.1", port=1)), Reply)
    for _ in range(100):
        topo.seen(os.urandom(32), now_ms + 1)
    assert len(topo.peers) <= 20 and topo.stats["peers_evicted"] >= 80
    assert contact in topo.peers and boot in topo.peers


def test_a_stranger_the_user_adds_as_a_peer_leaves_the_strangers_share() -> None:
    sim = Sim("b", inbox_max_messages=4, inbox_strangers_share=0.5)
    b = sim.nodes["b"]
    k = stranger()
    for _ in range(3):
        hand_ctx(sim, "b", signed(k, sim, b.id), k.public)
    assert len(b.received()) == 2 and b.router.stats["inbox_refused_strangers"] == 1
    sim.call("b", rm.AddPeer(node_id=k.public, host="10.1.1.1", port=1))
    j = stranger()
    hand_ctx(sim, "b", signed(j, sim, b.id), j.public)
    assert len(b.received()) == 3


def test_a_node_that_wrote_is_remembered_for_forget_after_s() -> None:
    from services.router.topology import OFFLINE_MS

    sim = Sim("b", forget_after_s=OFFLINE_MS / 1000 + 60)
    b = sim.nodes["b"]
    k = stranger()
    hand_ctx(sim, "b", signed(k, sim, b.id), k.public)
    sim.run(OFFLINE_MS / 1000 + 10, step=5.0)  # offline, not yet forgotten
    assert b.router.topo is not None and k.public in b.router.topo.peers
    sim.run(60, step=5.0)
    assert k.public not in b.router.topo.peers


def test_a_chat_refused_by_the_quota_after_crypto_opened_it_still_answers_the_transport(
        ) -> None:
    sim = Sim("b", inbox_sender_max_messages=1)
    b = sim.nodes["b"]
    k = stranger()
    sent = [deliver(sim, "b", signed(k, sim, b.id).encode(), k.public) for _ in range(2)]
    answers = [crypto_answer(sim, "b", call) for _, [call] in sent]
    b.router.handle(answers[0], sim.now)
    ctx, _ = sent[1]
    assert b.router.handle(answers[1], sim.now) == [Reply(ctx, rm.DeliverReply())]
    assert b.router.stats["inbox_refused_sender"] == 1


def test_a_read_receipt_after_the_senders_restart_moves_the_stored_message(
        tmp_path: Any) -> None:
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", db={"a": db})
    sim.connect("a", "b")
    a = sim.nodes["a"]
    msg = send(sim, "a", "b", b"x")
    assert a.statuses(msg)[-1] == "delivered"
    a.router.close(sim.now)  # a restart: the old process commits what it wrote
    a.router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: a.router.on_timer(sim.now))
    sim.run()
    ev = sim.nodes["b"].delivered[0][0]
    assert isinstance(sim.call("b", rm.Read(id=ev.id, sender=ev.sender)), Reply)
    assert a.statuses(msg)[-1] == "read"
    [state] = sim.call("a", rm.Outbox(ids=[msg])).body.messages
    assert state.status == "read"


def test_a_crash_loses_at_most_the_last_ticks_statuses_and_each_is_redone(
        tmp_path: Any) -> None:
    """``delivered`` rides on the next commit something waits for (or the next tick): a
    crash before it loses the status, not the message. The restarted sender sends it again
    and its recipient, which kept it, acknowledges it again: delivered, and in B's inbox
    once."""
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", db={"a": db})
    sim.connect("a", "b")
    a = sim.nodes["a"]
    first = send(sim, "a", "b", b"committed")

    def on_disk(msg_id: bytes) -> int:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as other:
            return int(other.execute("SELECT status FROM outbox WHERE id=?",
                                     (msg_id,)).fetchone()[0])

    assert on_disk(first) < DELIVERED  # not committed yet: nothing waited for it
    sim.feed("a", lambda: a.router.on_timer(sim.now))
    assert on_disk(first) == DELIVERED  # the tick commits it
    msg = send(sim, "a", "b", b"in flight")
    assert a.statuses(msg)[-1] == "delivered"
    a.router.ctx.store.db.close()  # killed: what was not committed is gone
    a.router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: a.router.on_timer(sim.now))
    sim.run(60)
    [first_state, state] = sim.call("a", rm.Outbox(ids=[first, msg])).body.messages
    assert (first_state.status, state.status) == ("delivered", "delivered")
    # the lost one was redone (sent again, acknowledged again), the committed one not
    assert (a.statuses(first).count("delivered"), a.statuses(msg).count("delivered")) == (1, 2)
    assert sorted(sim.nodes["b"].received()) == [b"committed", b"in flight"]


def test_a_late_relay_ack_after_the_senders_restart_is_a_stale_update(tmp_path: Any) -> None:
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", "c", db={"a": db})
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    a, b = sim.nodes["a"], sim.nodes["b"]
    msg = send(sim, "a", "c", b"x")
    assert a.statuses(msg)[-1] == "delivered"
    a.router.close(sim.now)  # a restart: the old process commits what it wrote
    a.router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: a.router.on_timer(sim.now))
    sim.run()
    f = Forger(sim, "b", "a")  # b's own relay ACK, arriving late (b is on the path)
    f.deliver(f.env(msg_type=MessageType.ACK,
                    payload=AckPayload(msg, AckType.RELAY_FORWARDED).encode()).encode())
    assert a.router.stats["stale_status_updates"] == 1
    sim.run(2)  # the router goes on
    [state] = sim.call("a", rm.Outbox(ids=[msg])).body.messages
    assert state.status == "delivered" and b.router.stats["forwarded"] >= 2
