"""The shell's bookkeeping of calls in flight and of the services it depends on
(:mod:`shared.calls`), without sockets: replies, timeouts, restarts and silences."""

from __future__ import annotations

import logging
from collections import Counter

from shared.calls import Calls
from shared.core import PeerFailed, PeerReplied, PeerRestarted
from shared.wire import Decoded, ErrorCode, Header
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.sys import ErrorReply, PingReply

LOG = logging.getLogger("test")


def calls() -> Calls:
    return Calls(Counter(), silence_s=5.0, log=LOG)


def reply(parent: bytes, body: object, src: str = "router") -> Decoded:
    return Decoded(Header(body.msg_type, b"r" + parent, parent, src, 0.0),  # type: ignore[attr-defined]
                   body, (b"blob",))  # type: ignore[arg-type]


def test_a_reply_ends_its_call_once_and_a_second_one_is_late() -> None:
    c = calls()
    c.add(b"1", "tok", "router", NodeId, 2.0, now=0.0)
    answer = NodeIdReply(node_id=b"\1" * 32)
    assert c.answer("router", reply(b"1", answer)) == PeerReplied("tok", answer, (b"blob",))
    assert len(c) == 0
    assert c.answer("router", reply(b"1", answer)) is None
    assert c.expire(10.0) == []  # ended: its deadline says nothing
    assert c.stats["late_replies"] == 1


def test_a_reply_from_another_service_is_not_the_answer() -> None:
    c = calls()
    c.add(b"1", "tok", "router", NodeId, 2.0, now=0.0)
    assert c.answer("groups", reply(b"1", NodeIdReply(node_id=b"\1" * 32))) is None
    assert len(c) == 1 and c.stats["late_replies"] == 1


def test_error_and_wrong_replies_fail_the_call() -> None:
    c = calls()
    c.add(b"1", "a", "router", NodeId, 2.0, now=0.0)
    c.add(b"2", "b", "router", NodeId, 2.0, now=0.0)
    c.add(b"3", "c", "router", NodeId, 2.0, now=0.0)
    busy = ErrorReply(code=int(ErrorCode.OVERLOADED), name="overloaded", message="full")
    assert c.answer("router", reply(b"1", busy)) == \
        PeerFailed("a", ErrorCode.OVERLOADED, "router: full")
    odd = ErrorReply(code=999, name="odd", message="?")
    assert c.answer("router", reply(b"2", odd)) == PeerFailed("b", ErrorCode.FAILED,
                                                "router: ?")
    wrong = c.answer("router", reply(b"3", PingReply(service="router", impl="x", pid=1)))
    assert isinstance(wrong, PeerFailed) and wrong.code == ErrorCode.FAILED
    assert "answered crypto.node_id with sys.ping_reply" in wrong.message
    assert c.stats["unexpected_replies"] == 1


def test_a_call_times_out_at_its_deadline_and_not_before() -> None:
    c = calls()
    c.add(b"1", "tok", "router", NodeId, 2.0, now=10.0)
    c.add(b"2", "later", "router", NodeId, 3.0, now=10.0)
    assert c.next_deadline() == 12.0
    assert c.expire(11.99) == []
    [failed] = c.expire(12.0)
    assert failed == PeerFailed("tok", ErrorCode.PEER_TIMEOUT,
                                "router did not answer crypto.node_id within 2 s "
                                "(is it running?)")
    assert c.stats["call_timeouts"] == 1 and len(c) == 1
    assert c.cancel(b"2") and not c.cancel(b"2")
    assert c.next_deadline() is None  # the cancelled call's deadline is gone too


def test_a_restart_fails_the_calls_to_that_service_only_then_tells_the_core() -> None:
    c = calls()
    assert c.heard("router", b"one", 0.0, known=False) == []  # not a service we depend on
    assert not c.knows("router")
    assert c.heard("router", b"one", 0.0, known=True) == []  # first word: the base line
    c.add(b"1", "r", "router", NodeId, 2.0, now=0.0)
    c.add(b"2", "g", "groups", NodeId, 2.0, now=0.0)
    assert c.heard("router", b"one", 1.0, known=True) == []  # the same process
    assert c.heard("router", b"two", 1.5, known=True) == [
        PeerFailed("r", ErrorCode.UNAVAILABLE, "router restarted"),
        PeerRestarted("router", lost=False)]
    assert len(c) == 1 and c.stats["peer_services_restarted"] == 1


def test_a_call_made_while_the_core_hears_of_one_silent_service_fails_with_the_next() -> None:
    """Two services fall silent in one tick: whatever the core calls while it hears of the
    first, to the second, fails with the second (the caller takes :meth:`Calls.gone` of
    each in turn), instead of waiting out its timeout for a service known to be gone."""
    c = calls()
    c.heard("groups", b"g", 0.0, known=True)
    c.heard("router", b"r", 0.0, known=True)
    fed = []
    for role in c.silent(5.0):
        for event in c.gone(role, lost=True):
            fed.append(event)
            if event == PeerRestarted("groups", lost=True):  # the core calls the router
                c.add(b"new", "retry", "router", NodeId, 60.0, now=5.0)
    assert PeerFailed("retry", ErrorCode.UNAVAILABLE, "router went silent") in fed
    assert len(c) == 0


def test_a_silent_service_is_gone_once_and_back_when_it_speaks() -> None:
    c = calls()
    c.heard("router", b"one", 0.0, known=True)
    c.add(b"1", "r", "router", NodeId, 60.0, now=0.0)
    assert c.next_deadline() == 5.0  # the silence comes before the call's timeout
    assert c.silent(4.9) == []
    assert c.silent(5.0) == ["router"]
    assert c.gone("router", lost=True) == [
        PeerFailed("r", ErrorCode.UNAVAILABLE, "router went silent"),
        PeerRestarted("router", lost=True)]
    assert c.silent(50.0) == []  # once
    assert c.next_deadline() is None
    # it speaks again (same incarnation): what we held about it was dropped, so resync
    assert c.heard("router", b"one", 51.0, known=True) == [PeerRestarted("router", lost=False)]
    assert (c.stats["peer_services_lost"], c.stats["peer_services_restarted"]) == (1, 1)
    assert c.next_deadline() == 56.0
