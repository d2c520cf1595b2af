"""Why a message is not delivered, said at once (issue 17): the reason a pending message
carries for each way a send goes wrong, which of them are final, and what is no longer
retried (router_sim: real crypto, in-memory transport whose dials fail as the real one
says)."""

from __future__ import annotations

from typing import Any

from services.router.reasons import NO_ROUTE, dial_failure, offline, utc
from shared.wire import ErrorCode
from shared.wire.messages import router as rm

from .router_sim import Sim

DIFFERENT = "refused: a different node (0303030303030303) answers at 10.0.0.9:5001"
NOTHING = "unreachable: nothing listening at 10.0.0.9:5001"
NO_SUCH_HOST = "dns: cannot resolve no-such-host.invalid: no such host"


def send(sim: Sim, src: str, dst: str, text: bytes = b"hi") -> bytes:
    reply = sim.call(src, rm.Send(to=sim.nodes[dst].id), (text,))
    assert isinstance(reply.body, rm.SendReply), reply
    return reply.body.id  # type: ignore[no-any-return]


def introduce(sim: Sim, src: str, dst: str, host: str = "10.0.0.9", port: int = 0) -> None:
    """``tom send DST@host:port`` does this first (``router.add_peer``); the port is where
    the node listens unless given (the sim's dials succeed there only)."""
    reply = sim.call(src, rm.AddPeer(node_id=sim.nodes[dst].id, host=host,
                                     port=port or sim.nodes[dst].port))
    assert isinstance(reply.body, rm.AddPeerReply), reply


def state(sim: Sim, name: str, msg: bytes) -> rm.MessageState:
    [st] = sim.call(name, rm.Outbox(ids=[msg])).body.messages
    return st  # type: ignore[no-any-return]


def dials(sim: Sim, src: str, dst: str) -> int:
    return sim.dials.count((src, sim.nodes[dst].id))


def entry(sim: Sim, name: str, to: str) -> Any:
    return next(p for p in sim.call(name, rm.Peers()).body.peers
                if p.node_id == sim.nodes[to].id)


def test_a_node_nobody_knows_says_no_route_and_stays_pending() -> None:
    """(a) No address, no path: said at the first attempt; not final (an announcement may
    bring a path), so it is still retried."""
    sim = Sim("a", "b")
    msg = send(sim, "a", "b")
    a = sim.nodes["a"]
    assert a.statuses(msg) == ["pending", "pending"] and a.reasons(msg) == ["", NO_ROUTE]
    sim.run(60)
    st = state(sim, "a", msg)
    assert (st.status, st.reason) == ("pending", NO_ROUTE)
    assert a.reasons(msg) == ["", NO_ROUTE]  # said once, not at every retry
    assert a.router.stats["no_route"] > 5


def test_nothing_listening_at_the_address_is_said_at_once_and_is_not_final() -> None:
    """(b) The transport's word on the dial reaches the message as soon as it comes; the
    address is dialled again (the node may start later), the message is retried."""
    sim = Sim("a", "b")
    sim.dial_errors[sim.nodes["b"].id] = (ErrorCode.FAILED, NOTHING)
    introduce(sim, "a", "b")
    msg = send(sim, "a", "b")
    assert sim.nodes["a"].reasons(msg)[-1] == NOTHING
    before = dials(sim, "a", "b")
    sim.run(30)
    assert state(sim, "a", msg).status == "pending" and dials(sim, "a", "b") > before
    sim.dial_errors.clear()
    sim.reachable.add(frozenset("ab"))  # b starts listening there
    sim.run(6)
    assert sim.nodes["a"].steps(msg)[-1] == "delivered"
    assert sim.nodes["a"].reasons(msg)[-1] == ""  # no reason once it moved on


def test_a_host_name_that_does_not_exist_fails_the_message_at_once() -> None:
    """(c) Final for that address: the chat fails with the resolver's word, the peer is no
    longer dialled as a bootstrap peer (its name is not resolved again every 5 s)."""
    sim = Sim("a", "b")
    b = sim.nodes["b"]
    sim.dial_errors[b.id] = (ErrorCode.FAILED, NO_SUCH_HOST)
    introduce(sim, "a", "b", "no-such-host.invalid")
    msg = send(sim, "a", "b")
    st = state(sim, "a", msg)
    assert (st.status, st.reason) == ("failed", NO_SUCH_HOST)
    assert sim.nodes["a"].steps(msg) == ["pending", "failed"]
    before = dials(sim, "a", "b")
    sim.run(30)
    assert dials(sim, "a", "b") == before
    assert sim.nodes["a"].router.stats["bootstrap_dropped"] == 1
    # the name resolves now: a new message dials it again and waits for that answer,
    # instead of failing on what the last dial said
    sim.dial_errors.clear()
    sim.reachable.add(frozenset("ab"))
    later = send(sim, "a", "b")
    assert sim.nodes["a"].steps(later)[-1] == "delivered"


def test_a_resolver_that_does_not_answer_is_not_final() -> None:
    sim = Sim("a", "b")
    temporary = "dns: cannot resolve peer.example: no answer within 5 s"
    sim.dial_errors[sim.nodes["b"].id] = (ErrorCode.PEER_TIMEOUT, temporary)
    introduce(sim, "a", "b", "peer.example")
    msg = send(sim, "a", "b")
    sim.run(10)
    st = state(sim, "a", msg)
    assert (st.status, st.reason) == ("pending", temporary)


def test_a_different_node_at_the_address_fails_the_message_and_the_address_is_forgotten(
        ) -> None:
    """(d) The address answered with another node: the chat fails at once, and nothing is
    retried against that address (no dial for a minute, none after a restart either)."""
    sim = Sim("a", "b")
    b = sim.nodes["b"]
    sim.dial_errors[b.id] = (ErrorCode.FAILED, DIFFERENT)
    introduce(sim, "a", "b")
    msg = send(sim, "a", "b")
    st = state(sim, "a", msg)
    assert (st.status, st.reason) == ("failed", DIFFERENT)
    before = dials(sim, "a", "b")
    sim.run(60)
    assert dials(sim, "a", "b") == before  # no bootstrap re-dial, no retry of the message
    e = entry(sim, "a", "b")
    assert (e.host, e.port) == ("", 0)
    saved = {n: (h, p, boot) for n, h, p, boot, _, _ in sim.nodes["a"].router.store.peers()}
    assert saved[b.id] == ("", 0, False)
    # a second message to it fails at once too, saying why
    again = send(sim, "a", "b")
    assert state(sim, "a", again).reason == DIFFERENT
    # a new address from the user is tried afresh
    sim.dial_errors.clear()
    sim.reachable.add(frozenset("ab"))
    introduce(sim, "a", "b", "10.0.0.1", b.port)
    third = send(sim, "a", "b")
    assert sim.nodes["a"].steps(third)[-1] == "delivered"


def test_a_refused_address_does_not_fail_what_holders_or_a_path_carry() -> None:
    """Only a chat that nothing else carries fails: one held by holders, or with a path
    through a relay, keeps going whatever a dial says."""
    sim = Sim("a", "h", "b", backup_after_s=2)
    sim.connect("a", "h")
    held = send(sim, "a", "b")
    sim.run(8)  # its next attempt, past backup_after_s: handed to h
    st = state(sim, "a", held)
    assert st.held_by == 1  # b never seen: why, and where it waits
    until = sim.nodes["a"].router.outgoing.expires_at_ms(sim.nodes["a"].router.out[held])
    assert st.reason == f"{NO_ROUTE}; held for delivery until {utc(until)}, on this node " \
        "and by 1 holder"
    sim.dial_errors[sim.nodes["b"].id] = (ErrorCode.FAILED, DIFFERENT)
    introduce(sim, "a", "b")
    sim.run(1)
    st = state(sim, "a", held)
    assert st.status == "pending" and st.reason.startswith(DIFFERENT + "; held for ")


def test_an_offline_recipient_says_where_and_until_when_the_message_is_held() -> None:
    """(e) b was known; it is gone. The reason says it waits here until its expiry, with
    the last try; once a holder takes a copy, the reason counts it (with held_by)."""
    sim = Sim("a", "h", "b", backup_after_s=3)
    sim.connect("a", "b")
    sim.connect("a", "h")
    sim.run(2)
    sim.reachable.discard(frozenset("ab"))
    sim.disconnect("a", "b")
    sim.dial_errors[sim.nodes["b"].id] = (ErrorCode.FAILED, "unreachable: nothing listening "
                                          "at 10.0.0.1:5002")
    msg = send(sim, "a", "b")
    a = sim.nodes["a"]
    until = a.router.outgoing.expires_at_ms(a.router.out[msg])
    here = offline(until, 0, "nothing listening at 10.0.0.1:5002")
    assert here == (f"recipient offline: held for delivery until {utc(until)}, on this node "
                    "(last try: nothing listening at 10.0.0.1:5002)")
    assert a.reasons(msg)[-1] == here and state(sim, "a", msg).reason == here
    sim.run(8)  # its next attempt, past backup_after_s: handed to h
    events = [e for e in a.events if isinstance(e, rm.StatusChanged) and e.id == msg]
    assert events[-1].held_by == 1 and events[-1].status == "pending"
    assert events[-1].reason == offline(until, 1, "nothing listening at 10.0.0.1:5002")
    assert "on this node and by 1 holder (" in events[-1].reason
    sim.dial_errors.clear()
    sim.connect("a", "b")  # back
    assert a.steps(msg)[-1] == "delivered" and a.reasons(msg)[-1] == ""


def test_a_recipient_that_just_left_waits_for_the_dial_before_it_is_called_offline() -> None:
    """Seen moments ago, its address being dialled: no reason until the dial says one (it
    may well answer)."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.disconnect("a", "b")  # still reachable: the dial will work
    out = sim.nodes["a"].router.outgoing
    sim.reachable.discard(frozenset("ab"))
    msg = send(sim, "a", "b")  # the sim answers the dial at once: no answer
    assert sim.nodes["a"].reasons(msg)[-1].startswith("recipient offline")
    msg_obj = sim.nodes["a"].router.out[msg]
    out.peers.failures.clear()
    out.peers.connecting[sim.nodes["b"].id] = sim.now + 5  # a dial under way
    assert out.why(msg_obj) == ("", False)


def test_what_the_transport_says_is_classified_by_its_kind_and_code() -> None:
    addr = ("10.0.0.9", 4433)
    assert dial_failure(ErrorCode.FAILED, DIFFERENT, addr).final
    said = dial_failure(ErrorCode.FAILED, f"transport: {NOTHING}", addr)  # as the bus has it
    assert (said.text, said.final) == (NOTHING, False)
    assert dial_failure(ErrorCode.FAILED, NO_SUCH_HOST, addr).final
    assert not dial_failure(ErrorCode.PEER_TIMEOUT, "dns: cannot resolve x: no answer",
                            addr).final
    assert not dial_failure(ErrorCode.FAILED, NOTHING, addr).final
    other = dial_failure(ErrorCode.FAILED, "could not\nconnect", addr)
    assert (other.text, other.final) == ("unreachable: 10.0.0.9:4433: could not connect",
                                         False)
    assert len(dial_failure(ErrorCode.FAILED, "refused: " + "x" * 1000, addr).text) == 300


def test_a_dial_answered_unavailable_by_our_own_transport_says_nothing() -> None:
    """Our transport restarting is not the address's fault: no reason from it."""
    sim = Sim("a", "b")
    sim.transport_down.add("a")
    introduce(sim, "a", "b")
    msg = send(sim, "a", "b")
    sim.run(3)
    assert sim.nodes["a"].reasons(msg) == [""] and state(sim, "a", msg).status == "pending"
    assert "b" not in {n for n, _ in sim.dials} and dials(sim, "a", "b") >= 2  # hurried
