"""Router cores with real crypto, over the in-memory transport of router_sim."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from services.crypto.core import Identity
from services.router.core import RouterCore, RouterSettings
from services.router.reasons import NO_ROUTE
from services.router.store import Store
from shared.core import (
    Call,
    EventReceived,
    Fail,
    PeerFailed,
    PeerReplied,
    PeerRestarted,
    Reply,
    Request,
)
from shared.envelope import AckPayload, AckType, Envelope, MessageType, decode
from shared.wire import ErrorCode
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm
from shared.wire.messages.crypto import NodeId, NodeIdReply

from .router_sim import Sim

NODE = b"\x07" * 32


def core() -> RouterCore:
    return RouterCore(Store(":memory:"), lambda: 1_800_000_000.0)


def test_node_info_asks_crypto_once_and_answers_everyone_waiting() -> None:
    c = core()
    first = c.handle(Request("a", rm.NodeInfo()), 0.0)
    assert len(first) == 1 and isinstance(first[0], Call)
    call = first[0]
    assert call.role == "crypto" and call.body == NodeId()
    assert c.handle(Request("b", rm.NodeInfo()), 0.1) == []
    out = c.handle(PeerReplied(call.token, NodeIdReply(node_id=NODE)), 0.2)
    assert out[:2] == [Reply("a", rm.NodeInfoReply(node_id=NODE)),
                       Reply("b", rm.NodeInfoReply(node_id=NODE))]
    assert c.handle(Request("c", rm.NodeInfo()), 0.3) == [
        Reply("c", rm.NodeInfoReply(node_id=NODE))]


def test_crypto_failure_fails_the_waiting_requests_and_the_next_one_retries() -> None:
    c = core()
    [call] = c.handle(Request("a", rm.NodeInfo()), 0.0)
    assert isinstance(call, Call)
    out = c.handle(PeerFailed(call.token, ErrorCode.PEER_TIMEOUT, "crypto did not answer"), 2.0)
    assert out == [Fail("a", ErrorCode.PEER_TIMEOUT, "crypto did not answer")]
    again = c.handle(Request("b", rm.NodeInfo()), 3.0)
    assert len(again) == 1 and isinstance(again[0], Call)


def test_requests_before_the_node_id_is_known_fail_unavailable() -> None:
    c = core()
    out = c.handle(Request("x", rm.Deliver(peer=NODE, path="direct"), (b"e",)), 0.0)
    assert isinstance(out[0], Fail) and out[0].code is ErrorCode.UNAVAILABLE


def send(sim: Sim, src: str, dst: str, text: bytes, **kw: object) -> bytes:
    reply = sim.call(src, rm.Send(to=sim.nodes[dst].id, **kw), (text,))  # type: ignore[arg-type]
    assert isinstance(reply, Reply), reply
    return reply.body.id  # type: ignore[no-any-return]


def read_all(sim: Sim, name: str) -> None:
    node = sim.nodes[name]
    for ev, _ in node.delivered:
        assert isinstance(sim.call(name, rm.Read(id=ev.id, sender=ev.sender)), Reply)


def test_direct_message_goes_sent_delivered_read() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    msg = send(sim, "a", "b", b"hello")
    assert sim.nodes["b"].received() == [b"hello"]
    ev = sim.nodes["b"].delivered[0][0]
    assert ev.encrypted and ev.verified and not ev.relayed and ev.sender == sim.nodes["a"].id
    read_all(sim, "b")
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "delivered", "read"]


def test_a_delivered_message_leaves_memory_and_its_read_receipt_still_arrives() -> None:
    """Once delivered, a message is on disk only: not in memory, not counted as open (nor
    against ``max_open_messages``); looking it up again (a duplicate ACK, a receipt) does
    not bring it back; the read receipt, loaded from the outbox, still makes it read."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    a = sim.nodes["a"].router
    msgs = [send(sim, "a", "b", b"m%d" % i) for i in range(3)]
    assert [sim.nodes["a"].statuses(m)[-1] for m in msgs] == ["delivered"] * 3
    assert a.queues()["open_messages"] == 0 and not a.ctx.out
    found = a.outgoing.outgoing(msgs[0])
    assert found is not None and found.id == msgs[0] and not a.ctx.out
    read_all(sim, "b")
    assert [sim.nodes["a"].statuses(m)[-1] for m in msgs] == ["read"] * 3
    assert not a.ctx.out


def test_sending_again_with_the_same_id_is_answered_not_sent_again() -> None:
    """An app that lost the reply sends again with the id it chose: the same answer, one
    message, also after the first copy was delivered and left memory (the outbox on disk
    answers)."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    mine = bytes(range(16))
    assert send(sim, "a", "b", b"once", id=mine) == mine
    assert not sim.nodes["a"].router.ctx.out  # delivered: on disk only
    assert send(sim, "a", "b", b"once", id=mine) == mine
    sim.run(5)
    assert sim.nodes["b"].received() == [b"once"]
    assert sim.nodes["a"].statuses(mine).count("pending") == 1


def test_a_node_learned_by_gossip_is_reached_through_a_relay() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")  # a and c cannot reach each other
    sim.run(12)  # announcements travel
    peers = {p.node_id: p for p in sim.call("a", rm.Peers()).body.peers}
    assert sim.nodes["c"].id in peers and peers[sim.nodes["c"].id].route == [
        sim.nodes["b"].id]
    msg = send(sim, "a", "c", b"via b")
    assert sim.nodes["c"].received() == [b"via b"]
    assert sim.nodes["c"].delivered[0][0].relayed
    read_all(sim, "c")
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "relayed", "delivered", "read"]
    assert sim.nodes["b"].router.stats["forwarded"] >= 2  # the message and the ACK back


def test_the_delivery_ack_comes_with_crypto_open_signed_back_along_the_path() -> None:
    """B's router makes one crypto call per new chat: crypto.open returns the ACK too,
    and it goes out only after the inbox commit, to the last relay of the path."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    c = sim.nodes["c"]
    commits: list[int] = []
    real_commit = c.router.store.commit

    def commit() -> None:
        commits.append(len(sim.sent))
        real_commit()

    c.router.store.commit = commit  # type: ignore[method-assign]
    seals_before = c.crypto.counters().get("seal", 0)
    msg = send(sim, "a", "c", b"via b")
    assert "delivered" in sim.nodes["a"].statuses(msg)
    [(i, raw)] = [(i, r) for i, (n, r) in enumerate(sim.sent) if n == "c"
                  and decode(r).msg_type == MessageType.ACK]
    ack = decode(raw)
    ack.verify()
    assert (ack.sender, ack.to, ack.via) == (c.id, sim.nodes["a"].id, (sim.nodes["b"].id,))
    assert AckPayload.decode(ack.payload) == AckPayload(msg, AckType.RECIPIENT_RECEIVED)
    assert any(n <= i for n in commits)  # the inbox was committed before the ACK left
    assert c.crypto.counters()["open_acks"] == 1
    assert c.crypto.counters().get("seal", 0) == seals_before  # no crypto.seal for it


def test_multi_hop_path_over_three_relays() -> None:
    sim = Sim("a", "b", "c", "d", "e")
    for x, y in ("ab", "bc", "cd", "de"):
        sim.connect(x, y)
    sim.run(30)
    msg = send(sim, "a", "e", b"far")
    sim.run(1)
    assert sim.nodes["e"].received() == [b"far"]
    assert "delivered" in sim.nodes["a"].statuses(msg)
    env = decode(sim.nodes["a"].router.store.get_out(msg).envelope)  # type: ignore[union-attr]
    assert env.via == tuple(sim.nodes[n].id for n in "bcd")


def test_a_lost_message_is_retried_and_delivered_once() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.drop_sends.add(frozenset("ab"))  # everything between them vanishes...
    msg = send(sim, "a", "b", b"once")
    assert sim.nodes["b"].received() == []
    sim.drop_sends.clear()
    sim.run(6)  # retried after 5 s
    assert sim.nodes["b"].received() == [b"once"]
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "delivered"]
    assert sim.nodes["a"].router.stats["retries"] == 1


def test_retry_after_a_lost_ack_is_acknowledged_again_not_delivered_again() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    b = sim.nodes["b"]
    acks_lost: list[bytes] = []

    def lose_first_ack(name: str, raw: bytes) -> bool:
        if name == "b" and decode(raw).msg_type == MessageType.ACK and not acks_lost:
            acks_lost.append(raw)
            return True
        return False

    sim.lose = lose_first_ack
    msg = send(sim, "a", "b", b"x")
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent"] and len(acks_lost) == 1
    sim.run(6)
    assert b.received() == [b"x"] and b.router.stats["duplicates"] == 1
    assert sim.nodes["a"].statuses(msg)[-1] == "delivered"
    assert b.crypto.counters()["open_acks"] == 1  # the first ACK came with crypto.open
    acks = [r for n, r in sim.sent if n == "b" and decode(r).msg_type == MessageType.ACK]
    assert len(acks) == 2 and acks[0] == acks_lost[0]  # the second: sealed for the retry


def test_sending_again_with_the_same_id_stores_one_message() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    msg_id = os.urandom(16)
    assert send(sim, "a", "b", b"x", id=msg_id) == msg_id
    assert send(sim, "a", "b", b"x", id=msg_id) == msg_id
    sim.run(10)
    assert sim.nodes["b"].received() == [b"x"]


def test_messages_wait_for_a_peer_and_go_when_it_connects() -> None:
    sim = Sim("a", "b")
    sim.reachable.add(frozenset("ab"))
    a = sim.nodes["a"]
    assert isinstance(sim.call("a", rm.AddPeer(node_id=sim.nodes["b"].id, host="10.0.0.1",
                                               port=5001)), Reply)
    msg = send(sim, "a", "b", b"late")
    sim.run(2)
    assert sim.nodes["b"].received() == [b"late"]
    assert a.statuses(msg)[-1] == "delivered"


def test_outbox_survives_a_router_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", db={"a": db})
    sim.connect("a", "b")
    sim.drop_sends.add(frozenset("ab"))
    ids = [send(sim, "a", "b", b"m%d" % i) for i in range(20)]
    sim.drop_sends.clear()
    # the router process dies: a new core on the same file
    sim.nodes["a"].router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: sim.nodes["a"].router.on_timer(sim.now))
    sim.run(2)
    assert sorted(sim.nodes["b"].received()) == sorted(b"m%d" % i for i in range(20))
    states = sim.call("a", rm.Outbox(ids=ids)).body.messages
    assert [s.status for s in states] == ["delivered"] * 20


class Forger:
    """Builds envelopes by hand, as a hostile or broken peer would."""

    def __init__(self, sim: Sim, src: str, dst: str) -> None:
        self.sim, self.src, self.dst = sim, src, dst
        self.ident = Identity(bytes([list(sim.nodes).index(src) + 1]) * 32, os.urandom)

    def env(self, **kw: object) -> Envelope:
        fields: dict[str, object] = dict(
            id=os.urandom(16), sender=self.ident.node_id, to=self.sim.nodes[self.dst].id,
            msg_type="Chat", payload=b"plain", timestamp_ms=int(self.sim.wall * 1000))
        fields.update(kw)
        return self.ident.sign(Envelope(**fields))  # type: ignore[arg-type]

    def deliver(self, raw: bytes, via: str | None = None) -> None:
        to = self.sim.nodes[via or self.dst]
        req = Request(("deliver", "x"), rm.Deliver(peer=self.ident.node_id, path="direct"),
                      (raw,))
        self.sim.feed(to.name, lambda: to.router.handle(req, self.sim.now))
        self.sim.run()


@pytest.mark.parametrize("case", ["unsigned", "forged", "malformed", "oversize", "stale",
                                  "future", "not_for_us", "ttl_exhausted"])
def test_bad_envelopes_are_rejected_counted_and_never_reach_the_app(case: str) -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    good = f.env()
    now_ms = int(sim.wall * 1000)
    raw = {
        "unsigned": replace(good, signature=b"").encode(),
        "forged": replace(good, payload=b"changed").encode(),
        "malformed": b"\x93garbage",
        "oversize": good.encode() + b"\x00" * (256 * 1024),
        "stale": f.env(timestamp_ms=now_ms - 86_400_000 - 601_000).encode(),
        "future": f.env(timestamp_ms=now_ms + 600_000).encode(),
        "not_for_us": f.env(to=sim.nodes["c"].id).encode(),
        "ttl_exhausted": f.env(to=sim.nodes["c"].id, via=(sim.nodes["b"].id,), ttl=0).encode(),
    }[case]
    f.deliver(raw)
    b = sim.nodes["b"]
    assert b.received() == [] and sim.nodes["c"].received() == []
    assert b.router.stats[f"rejected_{case}"] == 1


def test_a_replay_is_not_delivered_twice_and_is_refused_after_the_window() -> None:
    sim = Sim("a", "b", replay_window_s=60.0)
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    raw = f.env(payload=b"once").encode()
    f.deliver(raw)
    f.deliver(raw)
    b = sim.nodes["b"]
    assert b.received() == [b"once"] and b.router.stats["duplicates"] == 1
    sim.run(70)  # past the window: the inbox forgot it, the timestamp is too old now
    f.deliver(raw)
    assert b.received() == [b"once"] and b.router.stats["rejected_stale"] == 1


def test_a_chat_for_us_is_verified_once_and_a_forged_copy_of_a_known_id_is_forged() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    good = f.env(payload=b"once")
    f.deliver(good.encode())
    b = sim.nodes["b"]
    assert b.received() == [b"once"] and b.crypto.counters()["open"] == 1
    acks = len([r for n, r in sim.sent if n == "b" and decode(r).msg_type == MessageType.ACK])
    f.deliver(replace(good, payload=b"changed").encode())  # same sender and id, forged
    assert b.router.stats["rejected_forged"] == 1 and b.router.stats["duplicates"] == 0
    f.deliver(replace(good, id=os.urandom(16), payload=b"changed").encode())  # a new id
    assert b.router.stats["rejected_forged"] == 2  # refused by crypto.open
    assert b.crypto.counters()["rejected_bad_signature"] == 1
    assert b.received() == [b"once"]
    assert len([r for n, r in sim.sent if n == "b" and decode(r).msg_type == MessageType.ACK]) \
        == acks  # neither was acknowledged


def test_an_unsigned_copy_of_a_delivered_chat_is_not_acknowledged() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    good = f.env(payload=b"once")
    f.deliver(good.encode())
    b = sim.nodes["b"]
    acks = len([r for n, r in sim.sent if n == "b" and decode(r).msg_type == MessageType.ACK])
    f.deliver(replace(good, signature=b"").encode())
    assert b.router.stats["rejected_unsigned"] == 1 and b.router.stats["duplicates"] == 0
    assert len([r for n, r in sim.sent if n == "b" and decode(r).msg_type == MessageType.ACK]) \
        == acks
    f.deliver(good.encode())  # the genuine copy again: re-acknowledged
    assert b.router.stats["duplicates"] == 1


def _forge_ahead(sim: Sim, attacker: str, dst: str, every: bool, unsigned: bool = False,
                 only_from: str | None = None) -> list[int]:
    """Before a genuine chat reaches ``dst``, a forged copy of it (same sender and id,
    altered payload or no signature) from ``attacker`` arrives first."""
    f = Forger(sim, attacker, dst)
    node = sim.nodes[dst]
    hits: list[int] = []

    def lose(name: str, raw: bytes) -> bool:
        env = decode(raw)
        if env.msg_type == MessageType.CHAT and env.to == node.id and (every or not hits) \
                and only_from in (None, name):
            bad = replace(env, signature=b"") if unsigned else replace(env, payload=b"forged")
            req = Request(("deliver", "x"), rm.Deliver(peer=f.ident.node_id, path="direct"),
                          (bad.encode(),))
            sim.feed(dst, lambda: node.router.handle(req, sim.now))  # queued first
            hits.append(1)
        return False

    sim.lose = lose
    return hits


@pytest.mark.parametrize("unsigned", [False, True])
def test_a_forged_copy_racing_ahead_neither_blocks_nor_replaces_the_genuine_one(
        unsigned: bool) -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    _forge_ahead(sim, "a", "b", every=True, unsigned=unsigned)  # before every attempt
    msg = send(sim, "a", "b", b"hello")
    b = sim.nodes["b"]
    assert b.received() == [b"hello"] and "delivered" in sim.nodes["a"].statuses(msg)
    assert b.router.stats["rejected_unsigned" if unsigned else "rejected_forged"] == 1
    assert b.router.stats["duplicates"] == 0 and not b.router._opening


def test_a_relay_racing_a_forged_copy_ahead_does_not_block_delivery() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "c")
    sim.connect("c", "b")
    sim.run(12)
    _forge_ahead(sim, "c", "b", every=True, only_from="c")
    msg = send(sim, "a", "b", b"via c")
    b = sim.nodes["b"]
    assert b.received() == [b"via c"] and b.delivered[0][0].relayed
    assert "delivered" in sim.nodes["a"].statuses(msg) and b.router.stats["rejected_forged"] == 1


def test_a_stale_chat_is_refused_without_costing_crypto_an_open() -> None:
    sim = Sim("a", "b", replay_window_s=60.0)
    sim.connect("a", "b")
    f = Forger(sim, "a", "b")
    b = sim.nodes["b"]
    f.deliver(f.env(timestamp_ms=int(sim.wall * 1000) - 120_000).encode())
    f.deliver(replace(f.env(timestamp_ms=int(sim.wall * 1000) - 120_000),
                      payload=b"changed").encode())
    assert b.router.stats["rejected_stale"] == 1 and b.router.stats["rejected_forged"] == 1
    assert "open" not in b.crypto.counters() and b.received() == []


def test_an_unknown_error_code_from_crypto_open_is_counted_not_a_crash() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    b = sim.nodes["b"]
    f = Forger(sim, "a", "b")
    ctx = ("deliver", "x")
    [call] = b.router.handle(Request(ctx, rm.Deliver(peer=f.ident.node_id, path="direct"),
                                     (f.env().encode(),)), sim.now)
    assert isinstance(call, Call)
    assert b.router.handle(PeerFailed(call.token, 999, "weird"), sim.now) == \
        [Reply(ctx, rm.DeliverReply())]
    assert b.router.stats["rejected_failed"] == 1 and not b.router._opening


def test_acks_count_only_from_the_recipient() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("a", "c")
    sim.drop_sends.add(frozenset("ab"))
    msg = send(sim, "a", "b", b"x")
    fake = Forger(sim, "c", "a")
    fake.deliver(fake.env(msg_type=MessageType.ACK, payload=AckPayload(
        msg, AckType.RECIPIENT_RECEIVED).encode()).encode())
    assert sim.nodes["a"].router.stats["rejected_ack_not_from_recipient"] == 1
    assert "delivered" not in sim.nodes["a"].statuses(msg)


def test_a_message_that_cannot_be_delivered_fails_with_a_reason() -> None:
    sim = Sim("a", "b", message_lifetime_s=30.0)
    msg = send(sim, "a", "b", b"nobody")
    sim.run(40)
    [state] = sim.call("a", rm.Outbox(ids=[msg])).body.messages
    assert state.status == "failed" and "30" in state.reason
    assert sim.nodes["a"].statuses(msg) == ["pending", "pending", "failed"]
    assert sim.nodes["a"].reasons(msg)[1] == NO_ROUTE  # said at once, while it waited


def paths(sim: Sim, name: str, to: str) -> list[str]:
    return [e.path for e in sim.nodes[name].events
            if isinstance(e, rm.PathChanged) and e.node_id == sim.nodes[to].id]


def test_a_relayed_peer_is_hole_punched_and_later_messages_go_direct() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.punchable.add(frozenset("ac"))  # behind NATs: no dial gets through, a punch does
    sim.run(12)
    send(sim, "a", "c", b"first")
    assert sim.nodes["c"].delivered[0][0].relayed  # delivery did not wait for the punch
    assert ("a", "c") in sim.punches and paths(sim, "a", "c")[-1] == "direct"
    send(sim, "a", "c", b"second")
    assert sim.nodes["c"].received() == [b"first", b"second"]
    assert not sim.nodes["c"].delivered[1][0].relayed
    peers = {p.node_id: p for p in sim.call("a", rm.Peers()).body.peers}
    assert peers[sim.nodes["c"].id].path == "direct"


def test_a_failed_punch_is_retried_with_backoff_while_messages_flow_through_the_relay(
        ) -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")  # symmetric NATs: never a direct path
    sim.run(12)
    for i in range(12):
        send(sim, "a", "c", b"%d" % i)
        sim.run(1)
    assert len(sim.nodes["c"].received()) == 12
    assert all(m.relayed for m, _ in sim.nodes["c"].delivered)
    tries = sim.punches.count(("a", "c"))
    assert 3 <= tries <= 5  # after 0, 2, 4 (+8...) s: backing off, not once per message
    peers = {p.node_id: p for p in sim.call("a", rm.Peers()).body.peers}
    assert peers[sim.nodes["c"].id].path == "relayed"


def test_a_dropped_direct_path_moves_unacknowledged_messages_to_the_relay_at_once() -> None:
    sim = Sim("a", "b", "c")
    for pair in ("ab", "bc", "ac"):
        sim.connect(*pair)
    sim.run(12)
    sim.drop_sends.add(frozenset("ac"))  # the direct path breaks silently...
    msg = send(sim, "a", "c", b"x")
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent"]
    sim.reachable.discard(frozenset("ac"))
    sim.disconnect("a", "c")  # ...until the transport declares it dead
    assert sim.nodes["c"].received() == [b"x"] and sim.nodes["c"].delivered[0][0].relayed
    assert sim.nodes["a"].statuses(msg)[-1] == "delivered"
    assert sim.nodes["a"].router.stats["rerouted"] == 1
    assert paths(sim, "a", "c")[-1] == "relayed"


def test_a_stalled_direct_path_is_routed_around_and_used_again_when_it_answers() -> None:
    sim = Sim("a", "b", "c")
    for pair in ("ab", "bc", "ac"):
        sim.connect(*pair)
    sim.run(12)
    sim.drop_sends.add(frozenset("ac"))
    msg = send(sim, "a", "c", b"x")
    a, c = sim.nodes["a"], sim.nodes["c"]
    stalled = tm.Path(peer=c.id, host="10.0.0.1", port=c.port, path="stalled", rtt_ms=1.0)
    sim.feed("a", lambda: a.router.handle(EventReceived(stalled), sim.now))
    sim.run()
    assert c.received() == [b"x"] and c.delivered[0][0].relayed
    assert a.statuses(msg)[-1] == "delivered" and paths(sim, "a", "c")[-1] == "relayed"
    sim.drop_sends.clear()
    alive = tm.Path(peer=c.id, host="10.0.0.1", port=c.port, path="direct", rtt_ms=1.0)
    sim.feed("a", lambda: a.router.handle(EventReceived(alive), sim.now))
    sim.run()
    assert paths(sim, "a", "c")[-1] == "direct"
    send(sim, "a", "c", b"y")
    assert not c.delivered[1][0].relayed


def test_a_new_public_address_makes_the_next_message_punch_again_at_once() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    send(sim, "a", "c", b"1")  # punch fails: backing off
    send(sim, "a", "c", b"2")
    assert sim.punches.count(("a", "c")) == 1
    a = sim.nodes["a"]
    moved = tm.Reflexive(host="100.64.0.9", port=40001, peer=sim.nodes["b"].id)
    sim.feed("a", lambda: a.router.handle(EventReceived(moved), sim.now))
    sim.punchable.add(frozenset("ac"))  # the new mapping lets it through
    send(sim, "a", "c", b"3")
    assert sim.punches.count(("a", "c")) == 2 and paths(sim, "a", "c")[-1] == "direct"


def test_the_inbox_reply_names_its_tail_so_an_app_can_start_from_new_messages() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    assert sim.call("b", rm.Inbox(after=2**63 - 1, limit=1)).body.tail == 0
    for text in (b"1", b"2", b"3"):
        send(sim, "a", "b", text)
    reply = sim.call("b", rm.Inbox(after=2**63 - 1, limit=1)).body
    assert reply.messages == [] and reply.tail == sim.nodes["b"].delivered[-1][0].seq
    assert sim.call("b", rm.Inbox(after=0, limit=1)).body.tail == reply.tail


def test_a_crypto_answering_the_wrong_thing_fails_the_waiting_and_is_asked_again() -> None:
    c = core()
    [call] = c.handle(Request("a", rm.NodeInfo()), 0.0)
    assert isinstance(call, Call)
    out = c.handle(PeerReplied(call.token, rm.AddPeerReply()), 0.5)
    assert out == [Fail("a", ErrorCode.FAILED, f"crypto answered {rm.AddPeerReply().msg_type}")]
    assert c.on_timer(1.0) == [Call("crypto", NodeId(), call.token)]  # asked again
    c.handle(PeerFailed(call.token, ErrorCode.PEER_TIMEOUT, "no"), 1.5)
    assert c.on_timer(4.0) == [Call("crypto", NodeId(), call.token)]
    out = c.handle(Request("x", rm.Peers()), 4.5)
    assert out[0] == Fail("x", ErrorCode.UNAVAILABLE, "the router does not know its node "
                          "id yet (is crypto running?)")


def test_a_relay_that_did_not_forward_is_asked_again_soon_then_with_backoff() -> None:
    """A message through B that B could not pass on (its link to C had just dropped; B sends
    no relay ACK) goes again after 2 s, not after the 5 s of a direct send; once B says it
    forwarded it, the usual backoff applies (a relay ACK alone does not make it retry
    fast)."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)  # announcements travel: A reaches C through B
    a_sends = [0]

    def lose_first(name: str, raw: bytes) -> bool:
        if name != "a":
            return False
        a_sends[0] += 1
        return a_sends[0] == 1

    sim.lose = lose_first
    msg = send(sim, "a", "c", b"again soon")
    assert sim.nodes["c"].received() == []
    sim.run(2.5)
    assert sim.nodes["c"].received() == [b"again soon"]
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "relayed", "delivered"]
    # a relayed message whose delivery ACK is lost waits for the backoff, not 2 s
    sim.lose = lambda name, raw: name == "c"  # C's ACKs vanish
    msg = send(sim, "a", "c", b"relayed, not acknowledged")
    def tries() -> int:
        return sum(1 for n, raw in sim.sent if n == "a" and decode(raw).id == msg)

    assert tries() == 1
    sim.run(4.5)
    assert tries() == 1
    sim.run(1.0)  # 5 s: the first retry of the usual backoff
    assert tries() == 2
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "relayed"]


def test_a_restarted_router_dials_its_contacts_not_strangers(tmp_path: Path) -> None:
    """A sent to B (a contact); C only wrote to A (a stranger to A). A's router starts
    again on the same file: it dials B at once, with nothing waiting for B, and not C."""
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", "c", db={"a": db})
    sim.connect("a", "b")
    sim.connect("a", "c")
    send(sim, "a", "b", b"hello")
    send(sim, "c", "a", b"hi")
    sim.dials.clear()
    sim.nodes["a"].router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: sim.nodes["a"].router.on_timer(sim.now))
    sim.run()
    assert ("a", sim.nodes["b"].id) in sim.dials
    assert ("a", sim.nodes["c"].id) not in sim.dials


def test_after_a_transport_restart_the_router_dials_its_contacts_not_strangers() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("a", "c")
    send(sim, "a", "b", b"hello")
    send(sim, "c", "a", b"hi")
    sim.dials.clear()
    router = sim.nodes["a"].router
    sim.feed("a", lambda: router.handle(PeerRestarted("transport"), sim.now))
    sim.run()
    assert ("a", sim.nodes["b"].id) in sim.dials
    assert ("a", sim.nodes["c"].id) not in sim.dials
    assert router.stats["transport_restarts"] == 1


def test_a_peer_that_connects_gets_at_once_what_a_relay_passed_into_a_dead_connection(
        ) -> None:
    """B forwarded A's message (A saw "relayed") into a connection to C that was already
    dead; when C connects to A, the message goes again at once, directly, not at A's
    backoff."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    c_id = sim.nodes["c"].id
    sim.lose = lambda name, raw: name == "b" and decode(raw).to == c_id  # B's copy dies
    msg = send(sim, "a", "c", b"into the void")
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "relayed"]
    assert sim.nodes["c"].received() == []
    sim.lose = None
    sim.run(1.0)  # not at once: a message just sent through a relay is on its way
    sim.connect("a", "c")  # long before A's 5 s backoff
    assert sim.nodes["c"].received() == [b"into the void"]
    assert sim.nodes["a"].statuses(msg)[-1] == "delivered"


def test_a_relay_named_by_the_app_carries_a_message_the_topology_has_no_path_for() -> None:
    """The groups service names a group's hub as the relay to another member: a hub that
    announces at most 32 neighbours is the only path a member of a large star knows."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")  # no announcements travel: a knows no path to c
    a, c = sim.nodes["a"], sim.nodes["c"]
    assert a.router.topo is not None and a.router.topo.route(c.id) is None
    stuck = send(sim, "a", "c", b"no path")
    assert c.received() == [] and a.steps(stuck) == ["pending"]
    msg = send(sim, "a", "c", b"through b", relay=sim.nodes["b"].id)
    assert c.received() == [b"through b"] and c.delivered[0][0].relayed
    assert a.statuses(msg) == ["pending", "sent", "relayed", "delivered"]
    # a relay that is not reachable is no path either
    other = send(sim, "a", "c", b"through nobody", relay=b"\x09" * 32)
    assert a.steps(other) == ["pending"] and c.received() == [b"through b"]


def test_the_named_relay_outlives_a_direct_path_and_a_restart(tmp_path: Path) -> None:
    """Sealed while a and c were connected (no via), the message is lost on the way; the
    direct path goes, a restarts: the relay b the app named is still the way to c."""
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", "c", db={"a": db})
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.connect("a", "c")
    a, c = sim.nodes["a"], sim.nodes["c"]
    sim.lose = lambda name, raw: name == "a" and decode(raw).to == c.id
    msg = send(sim, "a", "c", b"lost once", relay=sim.nodes["b"].id)
    assert c.received() == [] and not decode(a.router.store.get_out(msg).envelope).via
    a.router.store.commit()
    a.router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: a.router.on_timer(sim.now))
    sim.run(1)  # still connected: sent directly again, and lost again
    assert c.received() == []
    sim.lose = None
    sim.reachable.discard(frozenset(("a", "c")))
    sim.disconnect("a", "c")
    sim.run(5)
    assert a.router.topo is not None and a.router.topo.route(c.id) is None
    assert c.received() == [b"lost once"] and c.delivered[0][0].relayed
    [state] = sim.call("a", rm.Outbox(ids=[msg])).body.messages
    assert state.status == "delivered"
