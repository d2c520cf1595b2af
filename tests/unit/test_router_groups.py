"""The router's side of group messaging: `Group` envelopes for the groups service, and a
lifetime per message (what the groups service's short-lived payloads use)."""

from __future__ import annotations

from shared.core import Fail, Request
from shared.envelope import decode
from shared.wire import ErrorCode
from shared.wire.messages import router as rm

from .router_sim import Sim


def send(sim: Sim, src: str, dst: str, payload: bytes, **kw: object) -> bytes:
    reply = sim.call(src, rm.Send(to=sim.nodes[dst].id, **kw), (payload,))  # type: ignore[arg-type]
    assert isinstance(reply.body, rm.SendReply), reply
    return reply.body.id


def group_events(sim: Sim, name: str) -> list[rm.GroupEnvelope]:
    return [e for e in sim.nodes[name].events if isinstance(e, rm.GroupEnvelope)]


def test_a_group_envelope_is_stored_acked_and_announced_to_the_groups_service_only() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    chat = send(sim, "a", "b", b"for the app")
    group = send(sim, "a", "b", b"for the groups service", groups=True)
    sim.run(1)
    assert sim.nodes["a"].statuses(group)[-1] == "delivered"
    assert sim.nodes["a"].statuses(chat)[-1] == "delivered"
    assert sim.nodes["b"].received() == [b"for the app"]  # router.message: chats only
    [ev] = group_events(sim, "b")
    assert ev.sender == sim.nodes["a"].id and ev.id == group
    apps = sim.call("b", rm.Inbox()).body
    assert [m.payload for m in apps.messages] == [b"for the app"]
    groups = sim.call("b", rm.Inbox(groups=True)).body
    assert [m.payload for m in groups.messages] == [b"for the groups service"]
    assert groups.messages[0].seq == ev.seq and groups.tail == ev.seq
    assert apps.tail < groups.tail  # one seq, two kinds


def test_a_group_envelope_sent_again_is_acked_again_and_announced_once() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    msg_id = b"\x05" * 16
    send(sim, "a", "b", b"once", groups=True, id=msg_id)
    sim.run(1)
    router = sim.nodes["a"].router
    env = router.store.get_out(msg_id)
    assert env is not None
    before = sim.nodes["b"].router.stats["duplicates"]
    router.out.clear()
    sim.feed("b", lambda: sim.nodes["b"].router.handle(Request(
        "t", rm.Deliver(peer=sim.nodes["a"].id, path="direct"), (env.envelope,)), sim.now))
    sim.run(1)
    assert sim.nodes["b"].router.stats["duplicates"] == before + 1
    assert len(group_events(sim, "b")) == 1


def test_only_the_groups_service_sends_or_reads_group_envelopes_over_an_authenticated_bus(
        ) -> None:
    sim = Sim("a", "b")
    router = sim.nodes["a"].router
    b = sim.nodes["b"].id
    for caller, allowed in (("app:chat", False), ("service:router", False),
                            ("service:groups", True), ("owner", True), (None, True)):
        out = router.handle(Request("x", rm.Send(to=b, groups=True), (b"p",), caller=caller),
                            sim.now)
        refused = [a for a in out if isinstance(a, Fail) and a.code == ErrorCode.FORBIDDEN]
        assert bool(refused) != allowed, caller
        out = router.handle(Request("y", rm.Inbox(groups=True), caller=caller), sim.now)
        refused = [a for a in out if isinstance(a, Fail) and a.code == ErrorCode.FORBIDDEN]
        assert bool(refused) != allowed, caller
    out = router.handle(Request("z", rm.Inbox(), caller="app:chat"), sim.now)
    assert not [a for a in out if isinstance(a, Fail)]


def test_a_message_with_a_lifetime_fails_once_it_has_passed_and_others_go_on() -> None:
    sim = Sim("a", "b")
    short = send(sim, "a", "b", b"beat", groups=True, lifetime_s=3.0)
    long = send(sim, "a", "b", b"entries", groups=True)
    sim.run(10)
    [state] = sim.call("a", rm.Outbox(ids=[short])).body.messages
    assert state.status == "failed" and "3 s" in state.reason
    [other] = sim.call("a", rm.Outbox(ids=[long])).body.messages
    assert other.status == "pending"
    sim.connect("a", "b")
    sim.run(2)
    assert sim.nodes["a"].statuses(long)[-1] == "delivered"
    assert [e.id for e in group_events(sim, "b")] == [long]


def test_a_lifetime_survives_a_router_restart(tmp_path: object) -> None:
    import pathlib
    db = str(pathlib.Path(str(tmp_path)) / "a.db")
    sim = Sim("a", "b", db={"a": db})
    short = send(sim, "a", "b", b"beat", groups=True, lifetime_s=3.0)
    sim.nodes["a"].router.store.close()
    sim2 = Sim("a", "b", db={"a": db})
    sim2.run(10)  # (checked when it is next tried: it is never sent once expired)
    [state] = sim2.call("a", rm.Outbox(ids=[short])).body.messages
    assert state.status == "failed", state


def test_a_signal_goes_once_and_is_neither_stored_acked_nor_kept_in_an_inbox() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sig = send(sim, "a", "b", b"beat", groups=True, signal=True)
    sim.run(30)
    assert [n for n, e in sim.sent if decode(e).id == sig] == ["a"]  # once, no ACK back
    assert sim.nodes["a"].router.store.get_out(sig) is None
    assert sim.nodes["a"].statuses(sig) == []
    [ev] = group_events(sim, "b")
    assert ev.seq == 0 and ev.id == sig and ev.sender == sim.nodes["a"].id
    assert sim.call("b", rm.Inbox(groups=True)).body.messages == []
    assert sim.call("a", rm.Send(to=sim.nodes["b"].id, signal=True), (b"x",)).code \
        == ErrorCode.INVALID  # only group payloads


def test_signals_over_the_rate_or_out_of_time_are_refused_and_counted() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    for _ in range(60):
        sim.request("a", rm.Send(to=sim.nodes["b"].id, groups=True, signal=True), (b"x",))
    sim.run()
    b = sim.nodes["b"].router
    assert 40 <= len(group_events(sim, "b")) < 60
    assert b.stats["rejected_signal_rate"] == 60 - len(group_events(sim, "b"))
    env = next(e for _, e in reversed(sim.sent) if decode(e).msg_type == "GroupSignal")
    sim.wall += 60  # the same signal a minute later: a replay
    sim.feed("b", lambda: b.handle(Request("t", rm.Deliver(peer=sim.nodes["a"].id,
                                                           path="direct"), (env,)), sim.now))
    sim.run()
    assert b.stats["rejected_stale_signal"] == 1
