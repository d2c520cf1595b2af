"""The transport core's delivery queue towards the router, sans-I/O."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.transport.core import DELIVER, DELIVER_QUEUE_COST, TransportCore
from services.transport.endpoint import FRAME_COST
from shared.core import Call, PeerFailed, PeerReplied
from shared.wire import ErrorCode
from shared.wire.messages import router as rm

from .test_transport_endpoint import A_ID, B_SEED, NOW_S, endpoint


def core_with_inbox(n: int) -> TransportCore:
    core = TransportCore(Ed25519PrivateKey.generate(), lambda: NOW_S, ("10.0.0.2", 4433))
    core.endpoint, core._next_bind = endpoint(B_SEED), None
    for i in range(n):
        core._inbox.append((i, A_ID, b"e%d" % i))
        core._inbox_cost += FRAME_COST
    return core


def deliveries(actions: list) -> list[bytes]:  # type: ignore[type-arg]
    return [a.blobs[0] for a in actions if isinstance(a, Call) and a.token[0] == DELIVER]


def test_failed_deliveries_are_retried_in_arrival_order() -> None:
    core = core_with_inbox(70)
    calls = [a for a in core.flush(1.0) if isinstance(a, Call)]
    assert deliveries(calls) == [b"e%d" % i for i in range(64)]  # the window
    assert all(isinstance(c.body, rm.Deliver) for c in calls)
    for c in reversed(calls[::2]):  # the even ones time out, in any order
        core.handle(PeerFailed(c.token, ErrorCode.PEER_TIMEOUT, "timeout"), 6.0)
    for c in calls[1::2]:
        core.handle(PeerReplied(c.token, rm.DeliverReply()), 6.0)
    assert deliveries(core.flush(6.1)) == []  # backing off
    retried = deliveries(core.on_timer(6.6))
    assert retried == [b"e%d" % i for i in range(0, 64, 2)] + [b"e%d" % i for i in range(64, 70)]
    assert core.stats["deliver_retries"] == 32 and core.stats["delivered"] == 32


def test_a_refused_delivery_is_dropped_and_counted() -> None:
    core = core_with_inbox(1)
    (call,) = [a for a in core.flush(1.0) if isinstance(a, Call)]
    core.handle(PeerFailed(call.token, ErrorCode.INVALID, "not an envelope"), 1.1)
    assert deliveries(core.on_timer(2.0)) == []
    assert core.stats["deliveries_refused"] == 1 and core.queues()["deliver_queue"] == 0


def test_a_full_queue_stops_the_endpoint_reading_until_half_empty() -> None:
    core = core_with_inbox(DELIVER_QUEUE_COST // FRAME_COST)
    ep = core.endpoint
    assert ep is not None
    core.flush(1.0)  # 64 go out; the rest still cost more than half
    assert not ep.accepting and core.stats["paused_reading"] == 1
    while core._inbox_cost > DELIVER_QUEUE_COST // 2:  # (the 64 in flight count too)
        core._inbox.pop()
        core._inbox_cost -= FRAME_COST
    core.flush(2.0)
    assert ep.accepting and core.stats["paused_reading"] == 1


def test_a_departed_stranger_is_forgotten_a_node_the_router_asked_for_is_redialled() -> None:
    """Strangers (connected unasked) are not re-dialled when they leave, nor remembered;
    a node the router asked for is re-dialled, and forgotten once the re-dials give up."""
    from services.transport.core import REDIAL_ATTEMPTS
    from services.transport.endpoint import PeerAuthenticated, PeerClosed
    from shared.core import Request
    from shared.wire.messages import transport as m

    core = core_with_inbox(0)
    ep = core.endpoint
    assert ep is not None
    stranger, wanted = b"\x55" * 32, b"\x66" * 32
    core.handle(Request("ctx", m.Connect(peer=wanted, host="10.0.0.6", port=4433)), 1.0)
    for node, addr in ((stranger, ("10.0.0.5", 4433)), (wanted, ("10.0.0.6", 4433))):
        ep._events.append(PeerAuthenticated(node, addr, node == wanted))
    core.flush(1.0)
    assert set(core._known) == {wanted}
    for node in (stranger, wanted):
        ep._events.append(PeerClosed(node, ("10.0.0.9", 1), "gone"))
    core.flush(2.0)
    assert set(core._redial) == {wanted} and set(core._known) == {wanted}
    now = 2.0
    for _ in range(REDIAL_ATTEMPTS + 1):  # every re-dial fails
        now = max(now, core._redial.get(wanted, (now, 0))[0]) + 0.1
        core.on_timer(now)
        for conn in list(ep._conns):
            ep._fail(conn, "no answer")
            ep._forget(conn)
        ep._events.append(PeerClosed(None, ("10.0.0.6", 4433), "no answer"))
        core.flush(now)
    assert not core._redial and not core._known
    assert core.stats["redials"] == REDIAL_ATTEMPTS and core.stats["redials_given_up"] == 1


def test_the_router_s_interest_and_acceptance_reach_admission() -> None:
    """A node the router asks for (connect, punch) is known to admission; a peer whose
    envelope the router accepted is worth its slot."""
    from types import SimpleNamespace

    from shared.core import Request
    from shared.wire.messages import transport as m

    core = core_with_inbox(0)
    ep = core.endpoint
    assert ep is not None
    asked, punched = b"\x66" * 32, b"\x68" * 32
    core.handle(Request("c1", m.Connect(peer=asked, host="10.0.0.6", port=4433)), 1.0)
    core.handle(Request("c2", m.Punch(peer=punched, via=b"\x67" * 32)), 1.0)
    assert asked in ep.known and punched in ep.known
    conn = SimpleNamespace(valued_at=0.0, closing=False)
    ep.peers[A_ID] = conn  # type: ignore[assignment]
    core._inbox.append((1, A_ID, b"env"))
    core._inbox_cost += FRAME_COST
    (call,) = [a for a in core.flush(3.0) if isinstance(a, Call)]
    core.handle(PeerReplied(call.token, rm.DeliverReply()), 4.0)
    assert conn.valued_at == 4.0


def test_a_peer_that_connected_first_is_known_once_the_router_asks_for_it() -> None:
    """A stranger (it dialled us) that the router then asks for (``router.add_peer`` sends
    ``transport.connect``) is known from then on: to admission and for re-dials."""
    from types import SimpleNamespace

    from shared.core import Request
    from shared.wire.messages import transport as m

    core = core_with_inbox(0)
    ep = core.endpoint
    assert ep is not None
    ep.peers[A_ID] = SimpleNamespace(addr=("10.0.0.7", 4433))  # type: ignore[assignment]
    assert A_ID not in ep.known and A_ID not in core._known
    (reply,) = core.handle(Request("c", m.Connect(peer=A_ID, host="10.0.0.7", port=4433)), 1.0)
    assert isinstance(reply.body, m.ConnectReply)  # type: ignore[attr-defined]
    assert A_ID in ep.known and core._known[A_ID] == ("10.0.0.7", 4433)


def test_one_peers_backlog_does_not_hold_up_another_peer() -> None:
    """A flood from one connection (made-up senders relayed by M) queued ahead of a
    legitimate peer's envelope: the peers are served in turn, each in its own order."""
    core = core_with_inbox(0)
    flooder, legit = b"\x0b" * 32, b"\x0c" * 32
    for i in range(200):
        core._inbox.append((i, flooder, b"m%d" % i))
    core._inbox.append((200, legit, b"legit"))
    core._inbox.append((201, legit, b"legit2"))
    sent = deliveries(core.flush(1.0))
    assert sent[:4] == [b"m0", b"legit", b"m1", b"legit2"]
    assert [d for d in sent if d.startswith(b"m")] == [b"m%d" % i for i in range(62)]
