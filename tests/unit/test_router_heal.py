"""The router healing its picture of the network after our own transport restarted, lost a
connection without telling, or could not dial yet (issue 14), and its retries through a relay
that has not said it forwarded (RELAYED). Sans-I/O: RouterCore and CryptoCore in
tests/unit/router_sim.py; tests/e2e/test_heal.py and test_chaos.py kill real processes."""

from __future__ import annotations

from pathlib import Path

from services.router.core import RouterCore, RouterSettings
from services.router.store import Store
from shared.core import Call, EventReceived, PeerFailed, PeerRestarted
from shared.envelope import MessageType, decode
from shared.wire import ErrorCode
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from .router_sim import Sim
from .test_router_core import send


def paths(sim: Sim, name: str, to: str) -> list[str]:
    return [e.path for e in sim.nodes[name].events
            if isinstance(e, rm.PathChanged) and e.node_id == sim.nodes[to].id]


def tries(sim: Sim, name: str, msg: bytes) -> int:
    """How often ``name`` handed the envelope of ``msg`` to its transport."""
    return sum(1 for n, raw in sim.sent if n == name and decode(raw).id == msg)


def peer_entry(sim: Sim, name: str, to: str) -> rm.PeerEntry:
    peers = sim.call(name, rm.Peers()).body.peers
    return next(p for p in peers if p.node_id == sim.nodes[to].id)


def drop_links(sim: Sim, name: str) -> None:
    """``name``'s transport holds no connection any more, and says nothing (it is a new
    process, or missed it)."""
    sim.links = {link for link in sim.links if name not in link}


def restart_transport(sim: Sim, name: str, lost: bool = False) -> None:
    node = sim.nodes[name]
    sim.feed(name, lambda: node.router.handle(PeerRestarted(role="transport", lost=lost),
                                              sim.now))
    sim.run()


# -- our transport restarted ----------------------------------------------------------------

def test_a_restarted_transport_marks_every_peer_offline_redials_and_resends_at_once() -> None:
    """What the old transport held died with it: B is offline at once (a path event); B, a
    contact, is dialled at once, and the message B never acknowledged goes again as soon as
    it is connected, not at its 5 s backoff; B delivers it once."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)  # past the first ticks
    a, b = sim.nodes["a"], sim.nodes["b"]
    sim.lose = lambda name, raw: name == "b" and decode(raw).msg_type == MessageType.ACK
    msg = send(sim, "a", "b", b"x")
    assert a.statuses(msg) == ["pending", "sent"] and b.received() == [b"x"]
    sim.lose = None
    sim.run(1.0)
    drop_links(sim, "a")
    dials = len(sim.dials)
    before = len(paths(sim, "a", "b"))
    restart_transport(sim, "a")
    assert a.router.stats["transport_restarts"] == 1
    assert paths(sim, "a", "b")[before:] == ["none", "direct"]  # offline, then dialled
    assert sim.dials[dials:] == [("a", b.id)]
    assert tries(sim, "a", msg) == 2 and a.statuses(msg)[-1] == "delivered"
    assert b.received() == [b"x"] and peer_entry(sim, "a", "b").connected


def test_a_restarted_transport_is_asked_what_it_holds_unless_it_is_gone() -> None:
    """A new transport process that already holds connections (its peers dialled it) is
    asked (transport.peers) and its peers are online again, even one that was stalled
    before; a transport that went silent (lost) is not asked."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("a", "c")
    a, c = sim.nodes["a"], sim.nodes["c"]
    stalled = tm.Path(peer=c.id, host="10.0.0.1", port=c.port, path="stalled", rtt_ms=1.0)
    sim.feed("a", lambda: a.router.handle(EventReceived(stalled), sim.now))
    sim.run()
    assert paths(sim, "a", "c")[-1] != "direct"
    out = a.router.handle(PeerRestarted(role="transport", lost=True), sim.now)
    assert not [x for x in out if isinstance(x, Call)]
    assert {e.body.node_id for e in out} == {sim.nodes["b"].id, c.id}
    out = a.router.handle(PeerRestarted(role="transport"), sim.now)
    assert [x for x in out if isinstance(x, Call)] == [Call("transport", tm.Peers(),
                                                            ("tpeers",))]
    sim.feed("a", lambda: out)
    sim.run()
    assert paths(sim, "a", "b")[-1] == "direct" and paths(sim, "a", "c")[-1] == "direct"
    assert a.router.stats["transport_restarts"] == 2


def test_a_restarted_transport_lets_a_failed_punch_go_again_at_once() -> None:
    """The old transport's punches died with it: the next message to C (known through B,
    behind a NAT) punches again at once, not after the punch backoff (2 s, doubling)."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    c = sim.nodes["c"]
    send(sim, "a", "c", b"1")  # through B; the punch fails
    send(sim, "a", "c", b"2")
    assert sim.punches.count(("a", "c")) == 1
    restart_transport(sim, "a")  # it holds B still: asked, B is back at once
    assert paths(sim, "a", "b")[-1] == "direct"
    send(sim, "a", "c", b"3")
    assert sim.punches.count(("a", "c")) == 2
    assert c.received() == [b"1", b"2", b"3"]


def test_messages_restored_after_a_router_restart_go_at_the_first_tick(tmp_path: Path) -> None:
    """The router restarts while its transport holds no connection to B: the messages it
    reloads are tried at the first tick (a dial), not left waiting."""
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", db={"a": db})
    sim.connect("a", "b")
    sim.drop_sends.add(frozenset("ab"))
    ids = [send(sim, "a", "b", b"m%d" % i) for i in range(3)]
    sim.drop_sends.clear()
    drop_links(sim, "a")
    sim.nodes["a"].router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: sim.nodes["a"].router.on_timer(sim.now))
    sim.run(2.5)  # the node id, then the first tick
    assert sorted(sim.nodes["b"].received()) == sorted(b"m%d" % i for i in range(3))
    states = sim.call("a", rm.Outbox(ids=ids)).body.messages
    assert [s.status for s in states] == ["delivered"] * 3


def test_a_restarted_router_takes_the_connections_its_transport_holds_at_once(
        tmp_path: Path) -> None:
    """A new router process asks transport.peers as soon as it knows its node id: the peers
    the transport holds are online before its first tick."""
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", db={"a": db})
    sim.connect("a", "b")
    sim.run(3)
    sim.nodes["a"].router.close(sim.now)  # the process dies (its file is closed)
    before = len(paths(sim, "a", "b"))
    sim.nodes["a"].router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: sim.nodes["a"].router.on_timer(sim.now))
    sim.run()  # crypto answers the node id; no time passes
    assert paths(sim, "a", "b")[before:] == ["direct"] and peer_entry(sim, "a", "b").connected


# -- a send or a dial our transport cannot make -------------------------------------------

def test_a_send_failing_unavailable_marks_the_hop_offline_and_dials_it() -> None:
    """The transport lost A's connection to B without telling (our view was wrong): the
    send fails unavailable, B is marked offline, dialled, and the message goes over the
    new connection at once."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)  # past the first ticks
    a, b = sim.nodes["a"], sim.nodes["b"]
    drop_links(sim, "a")
    dials = len(sim.dials)
    msg = send(sim, "a", "b", b"x")
    assert a.router.stats["send_failures"] == 1
    assert a.router.stats["send_not_connected"] == 1
    assert sim.dials[dials:] == [("a", b.id)]
    assert paths(sim, "a", "b")[-2:] == ["none", "direct"]
    assert b.received() == [b"x"] and a.statuses(msg)[-1] == "delivered"
    drop_links(sim, "a")  # and again
    send(sim, "a", "b", b"y")
    assert a.router.stats["send_not_connected"] == 2 and b.received() == [b"x", b"y"]


def test_a_send_failing_otherwise_or_to_a_hop_already_offline_changes_no_path() -> None:
    """Only unavailable says the transport holds no connection; a timeout does not, and a
    hop already offline is not marked (or dialled) again."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)
    a = sim.nodes["a"]
    sim.drop_sends.add(frozenset("ab"))  # not acknowledged: still open (a delivered message
    msg = send(sim, "a", "b", b"x")      # is no longer kept in memory)
    dials = len(sim.dials)
    for code in (ErrorCode.PEER_TIMEOUT, ErrorCode.FAILED):
        out = a.router.handle(PeerFailed(("xmit", msg), code, "slow"), sim.now)
        assert out == []
    assert peer_entry(sim, "a", "b").connected and len(sim.dials) == dials
    sim.reachable.clear()  # B stays offline (the open message's redial fails)
    sim.disconnect("a", "b")
    assert not peer_entry(sim, "a", "b").connected
    dials = len(sim.dials)
    out = a.router.handle(PeerFailed(("xmit", msg), ErrorCode.UNAVAILABLE, "gone"), sim.now)
    assert out == [] and a.router.stats["send_not_connected"] == 0
    assert len(sim.dials) == dials and a.router.stats["send_failures"] == 3


def test_a_relayed_send_failing_unavailable_marks_the_relay_offline() -> None:
    """Through a relay, the hop that is gone is the relay, not the recipient; while it
    cannot be dialled its rtt is unknown."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    a, b = sim.nodes["a"], sim.nodes["b"]
    drop_links(sim, "a")
    sim.reachable.discard(frozenset("ab"))
    dials = len(sim.dials)
    send(sim, "a", "c", b"x")
    assert a.router.stats["send_not_connected"] == 1
    assert ("a", b.id) in sim.dials[dials:]
    entry = peer_entry(sim, "a", "b")
    assert not entry.connected and entry.rtt_ms is None
    assert paths(sim, "a", "b")[-1] == "none"


def test_a_dial_our_transport_cannot_make_yet_retries_the_waiting_messages_soon() -> None:
    """Our transport just restarted (no binding): a dial fails unavailable. The address is
    not at fault, and what waits for that peer tries again in 0.5 s instead of at its 5 s
    backoff; other failures wait for the backoff."""
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)  # past the first ticks
    a, b = sim.nodes["a"], sim.nodes["b"]
    sim.disconnect("a", "b")
    sim.transport_down.add("a")
    dials = len(sim.dials)
    msg = send(sim, "a", "b", b"x")
    assert sim.dials[dials:] == [("a", b.id)]
    sim.run(1.0)  # the next tick
    assert sim.dials[dials:] == [("a", b.id)] * 2
    sim.transport_down.clear()
    sim.run(1.0)
    assert b.received() == [b"x"] and a.statuses(msg)[-1] == "delivered"


def test_a_dial_that_fails_otherwise_waits_for_the_backoff() -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("a", "c")
    sim.run(3)
    a, b, c = sim.nodes["a"], sim.nodes["b"], sim.nodes["c"]
    sim.reachable.clear()
    sim.disconnect("a", "b")
    sim.disconnect("a", "c")
    dials = len(sim.dials)
    send(sim, "a", "b", b"x")  # unreachable: peer_timeout
    send(sim, "a", "c", b"y")
    assert sim.dials[dials:] == [("a", b.id), ("a", c.id)]
    # a dial of C fails unavailable: only what waits for C is hurried
    fail = PeerFailed(("connect", c.id, ("10.0.0.1", c.port)), ErrorCode.UNAVAILABLE,
                      "no binding yet")
    sim.feed("a", lambda: a.router.handle(fail, sim.now))
    sim.run(1.0)
    assert sim.dials[dials:].count(("a", c.id)) == 2
    assert sim.dials[dials:].count(("a", b.id)) == 1
    sim.run(4.5)  # B's message: its 5 s
    assert sim.dials[dials:].count(("a", b.id)) == 2


def test_a_dial_that_fails_moves_to_the_next_announced_address_unless_unavailable() -> None:
    """C announces two addresses; a dial that times out tries the next one next time, a
    dial our own transport could not make does not count against the address."""
    sim = Sim("a", "b", "c")
    sim.reflexive["c"] = [("192.0.2.30", 40003)]
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    a, c = sim.nodes["a"], sim.nodes["c"]
    assert (peer_entry(sim, "a", "c").host, peer_entry(sim, "a", "c").port) \
        == ("192.0.2.30", 40003)
    sim.transport_down.add("a")
    addr = ("192.0.2.30", 40003)
    fail = PeerFailed(("connect", c.id, addr), ErrorCode.UNAVAILABLE, "no binding yet")
    sim.feed("a", lambda: a.router.handle(fail, sim.now))
    sim.run()
    assert peer_entry(sim, "a", "c").host == "192.0.2.30"
    fail = PeerFailed(("connect", c.id, addr), ErrorCode.PEER_TIMEOUT, "no answer")
    sim.feed("a", lambda: a.router.handle(fail, sim.now))
    sim.run()
    assert (peer_entry(sim, "a", "c").host, peer_entry(sim, "a", "c").port) \
        == ("10.0.0.1", c.port)


def test_a_new_port_mapping_is_announced_at_once_first_among_the_addresses() -> None:
    """C's home router maps a port for it (transport.mapped): C announces again at once,
    not at its next minute, and A's first address for C is the mapped one (before what
    peers see C at, which behind a symmetric NAT no stranger gets through)."""
    sim = Sim("a", "b", "c")
    sim.reflexive["c"] = [("192.0.2.30", 40003)]
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)  # two gossip intervals, well within the minute between announcements
    c = sim.nodes["c"]
    sim.mapped["c"] = [("192.0.2.30", 4433)]
    mapped = tm.Mapped(host="192.0.2.30", port=4433, protocol="pcp")
    sim.feed("c", lambda: c.router.handle(EventReceived(mapped), sim.now))
    sim.run(12)  # two gossip intervals, well within the minute between announcements
    entry = peer_entry(sim, "a", "c")
    assert (entry.host, entry.port) == ("192.0.2.30", 4433)


# -- the view against what the transport holds ---------------------------------------------

def test_the_router_asks_the_transport_what_it_holds_every_liveness_tick() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)  # past the first ticks
    a = sim.nodes["a"]
    out = a.router.on_timer(sim.now + 5.0)
    assert Call("transport", tm.Peers(), ("tpeers",), timeout_s=2.0) in out


def test_peers_the_transport_no_longer_holds_go_offline_and_held_ones_come_back() -> None:
    """Events missed while a service restarted: the liveness tick compares the router's
    view with transport.peers, both ways, and counts each correction."""
    sim = Sim("a", "b", "c", "d")
    sim.connect("a", "b")
    sim.connect("a", "c")
    a = sim.nodes["a"]
    sim.lose = lambda name, raw: name == "b" and decode(raw).msg_type == MessageType.ACK
    msg = send(sim, "a", "b", b"x")  # sent, not acknowledged
    sim.lose = None
    rerouted = a.router.stats["rerouted"]
    drop_links(sim, "a")  # the transport lost both without a word
    sim.reachable.clear()
    sim.run(5.0)
    assert a.router.stats["views_reconciled"] == 2
    assert paths(sim, "a", "b")[-1] == "none" and paths(sim, "a", "c")[-1] == "none"
    assert a.router.stats["rerouted"] == rerouted + 1  # what went over B goes again
    assert not peer_entry(sim, "a", "b").connected
    # they are back, and D too, which the router never heard of: no events either
    sim.links |= {frozenset("ab"), frozenset("ac"), frozenset("ad")}
    sim.run(5.0)
    assert a.router.stats["views_reconciled"] == 4  # B and C; D is new, not a correction
    assert [paths(sim, "a", n)[-1] for n in "bcd"] == ["direct"] * 3
    assert peer_entry(sim, "a", "d").rtt_ms == 1.0  # the transport's measure
    assert a.statuses(msg)[-1] == "delivered"
    sim.run(10.0)
    assert a.router.stats["views_reconciled"] == 4  # nothing more to correct


def test_a_stalled_peer_the_transport_holds_stays_routed_around() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)  # past the first ticks
    a, b = sim.nodes["a"], sim.nodes["b"]
    stalled = tm.Path(peer=b.id, host="10.0.0.1", port=b.port, path="stalled", rtt_ms=1.0)
    sim.feed("a", lambda: a.router.handle(EventReceived(stalled), sim.now))
    sim.run(10.0)
    assert paths(sim, "a", "b")[-1] == "none"
    assert a.router.stats["views_reconciled"] == 0


# -- retries through a relay -----------------------------------------------------------------

def test_a_relay_that_stays_silent_is_asked_four_times_two_seconds_apart_then_backs_off(
        ) -> None:
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    sim.lose = lambda name, raw: name == "a"  # nothing A sends arrives: no RELAYED
    msg = send(sim, "a", "c", b"x")
    assert tries(sim, "a", msg) == 1
    sim.run(1.5)
    assert tries(sim, "a", msg) == 1
    sim.run(7.0)  # 8.5 s: after 0, 2, 4, 6 and 8 s
    assert tries(sim, "a", msg) == 5
    sim.run(55.0)  # then the backoff of a fifth try: 60 s
    assert tries(sim, "a", msg) == 5
    assert sim.nodes["a"].steps(msg) == ["pending", "sent"]


def test_a_relayed_message_waits_for_the_backoff_between_tries() -> None:
    """Once the relay said it forwarded (RELAYED), the recipient's ACK is waited for with
    the usual backoff: tries at 0, 5 and 15 s, also when the relay is silent about a
    retry."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    sim.lose = lambda name, raw: name == "c"  # C's ACKs vanish
    msg = send(sim, "a", "c", b"x")
    assert sim.nodes["a"].statuses(msg) == ["pending", "sent", "relayed"]
    sim.lose = lambda name, raw: name == "a"  # and now the retries too: no relay ACK
    sim.run(4.5)
    assert tries(sim, "a", msg) == 1
    sim.run(1.0)
    assert tries(sim, "a", msg) == 2
    sim.run(9.0)  # 14.5 s
    assert tries(sim, "a", msg) == 2
    sim.run(1.0)
    assert tries(sim, "a", msg) == 3


def test_a_direct_message_is_not_retried_fast_and_backs_off() -> None:
    sim = Sim("a", "b")
    sim.connect("a", "b")
    sim.run(3)  # past the first ticks
    sim.lose = lambda name, raw: name == "a"
    msg = send(sim, "a", "b", b"x")
    sim.run(4.5)
    assert tries(sim, "a", msg) == 1
    sim.run(1.0)
    assert tries(sim, "a", msg) == 2
    sim.run(9.0)  # 14.5 s: the second wait is 10 s
    assert tries(sim, "a", msg) == 2
    sim.run(1.0)
    assert tries(sim, "a", msg) == 3


# -- after a restart: contacts dialled, unacknowledged messages resent on connect ----------

def test_after_a_restart_the_16_contacts_seen_last_are_dialled() -> None:
    """20 contacts: the 16 seen most recently are dialled, the 4 seen longest ago are not
    (bootstrap peers are dialled by the tick anyway, strangers never)."""
    sim = Sim("a")
    router = sim.nodes["a"].router
    assert router.topo is not None
    ids = [bytes([i]) * 32 for i in range(1, 21)]
    for i, node in enumerate(ids):
        p = router.topo.peer(node, 0)
        p.contact, p.host, p.port, p.last_seen_ms = True, "10.0.0.9", 4000 + i, 1000 * i
    dialled = [a.body.peer for a in router._redial_contacts(sim.now)
               if isinstance(a, Call) and isinstance(a.body, tm.Connect)]
    assert dialled == ids[:3:-1]  # the most recent first; not the 4 oldest


def test_restored_and_restart_flushed_messages_are_tried_at_the_next_tick(
        tmp_path: Path) -> None:
    """Messages for a peer that cannot be reached: after a router restart (restored from
    the file) and after a transport restart they are tried again at the next tick, and the
    timer keeps working."""
    db = str(tmp_path / "a.db")
    sim = Sim("a", "b", db={"a": db})
    sim.connect("a", "b")
    sim.drop_sends.add(frozenset("ab"))
    msg = send(sim, "a", "b", b"waits")
    drop_links(sim, "a")
    sim.reachable.clear()  # B is gone for good
    sim.nodes["a"].router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed("a", lambda: sim.nodes["a"].router.on_timer(sim.now))
    sim.run(2.5)  # the node id at the first tick, the restored message at the next
    router = sim.nodes["a"].router
    assert router.stats["no_route"] == 1  # then 5 s of backoff...
    restart_transport(sim, "a")
    sim.run(1.0)
    assert router.stats["no_route"] == 2  # ...cut short by the transport's restart
    assert sim.nodes["a"].steps(msg) == ["pending", "sent"]


def test_a_peer_that_connects_again_gets_what_was_sent_over_it_or_to_it(
        ) -> None:
    """A sends two messages to C through B that B never receives, one to C that C got and
    acknowledged, and one to B that B got. B connects again: the two through B go again,
    counted exactly (not the delivered one, not B's own)."""
    sim = Sim("a", "b", "c")
    sim.connect("a", "b")
    sim.connect("b", "c")
    sim.run(12)
    a, b, c = (sim.nodes[n] for n in "abc")
    done = send(sim, "a", "c", b"delivered")
    send(sim, "a", "b", b"to b")
    sim.lose = lambda name, raw: name == "a"  # A's next sends vanish on the way to B
    lost = [send(sim, "a", "c", b"lost %d" % i) for i in range(2)]
    sim.lose = None
    assert a.statuses(done)[-1] == "delivered" and c.received() == [b"delivered"]
    event = tm.PeerConnected(peer=b.id, host="10.0.0.1", port=b.port, dialled=True)
    sim.feed("a", lambda: a.router.handle(EventReceived(event), sim.now))
    sim.run()  # no time passed: what was just sent is on its way, not sent twice
    assert a.router.stats["resent_on_connect"] == 0 and c.received() == [b"delivered"]
    sim.run(1.0)  # before the relay retry (2 s)
    sim.feed("a", lambda: a.router.handle(EventReceived(event), sim.now))
    sim.run()
    assert a.router.stats["resent_on_connect"] == 2
    assert sorted(c.received()) == sorted([b"delivered", b"lost 0", b"lost 1"])
    assert all(a.statuses(m)[-1] == "delivered" for m in lost)
