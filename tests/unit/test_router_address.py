"""A node whose address changed is found again by itself (issue 17). Sans-I/O: RouterCore and
CryptoCore in tests/unit/router_sim.py, where a dial succeeds only at the port the other
node listens on now; tests/e2e/test_address.py moves real nodes."""

from __future__ import annotations

from pathlib import Path

from services.router.core import RouterCore, RouterSettings
from services.router.peers import REJOIN_MAX_GAP_S, REJOIN_S
from services.router.store import Store
from shared.wire.messages import router as rm

from .router_sim import Sim
from .test_router_core import send
from .test_router_heal import drop_links, peer_entry


def restart_router(sim: Sim, name: str, db: str) -> None:
    """``name``'s whole node stops (its peers see the connection close) and starts again
    from its router.db, its transport not able to dial for the first seconds."""
    for other in sim.nodes:
        if other != name and frozenset((name, other)) in sim.links:
            sim.disconnect(name, other)
    drop_links(sim, name)
    node = sim.nodes[name]
    node.router.close(sim.now)
    node.router = RouterCore(Store(db), lambda: sim.wall, RouterSettings())
    sim.feed(name, lambda: node.router.on_timer(sim.now))


def test_a_node_back_on_a_new_port_dials_its_contacts_until_its_transport_can(
        tmp_path: Path) -> None:
    """B restarts on another port; A, with a message waiting for B, knows only B's old port
    (B is A's contact, not a bootstrap peer, and no common peer gossips B's announcement).
    B's transport cannot dial for its first 4 s (no binding yet): B dials its contact A
    again (1 s, then 2 s, 4 s... later) until it can; A learns B's new port from the
    connection and delivers the waiting message, without waiting for its backoff."""
    db = str(tmp_path / "b.db")
    sim = Sim("a", "b", db={"b": db})
    sim.connect("a", "b")
    a, b = sim.nodes["a"], sim.nodes["b"]
    send(sim, "a", "b", b"hello")
    send(sim, "b", "a", b"hi")  # both are contacts of each other
    sim.run(2)
    restart_router(sim, "b", db)
    b.port += 1000  # B listens elsewhere now
    sim.transport_down.add("b")
    msg = send(sim, "a", "b", b"are you there?")
    sim.run(4)
    assert a.steps(msg) == ["pending"] and peer_entry(sim, "a", "b").port == b.port - 1000
    assert sim.dials.count(("b", a.id)) == 3  # at start, 1 s and 3 s later
    sim.transport_down.discard("b")
    sim.run(4)  # the next at 7 s
    assert a.statuses(msg)[-1] == "delivered" and b.received()[-1] == b"are you there?"
    assert peer_entry(sim, "a", "b").port == b.port
    dials = sim.dials.count(("b", a.id))
    sim.run(600)  # connected: dialled no more
    assert sim.dials.count(("b", a.id)) == dials


def test_contacts_that_do_not_come_back_are_dialled_less_and_less_for_an_hour(
        tmp_path: Path) -> None:
    """A is gone: B dials it at its restart, then 1, 2, 4, 8... s later, then every 5
    minutes, and stops an hour after the restart."""
    db = str(tmp_path / "b.db")
    sim = Sim("a", "b", db={"b": db})
    sim.connect("a", "b")
    send(sim, "b", "a", b"hi")
    restart_router(sim, "b", db)
    sim.reachable.clear()  # A is gone
    a_id = sim.nodes["a"].id
    start = sim.now
    times: list[float] = []
    while sim.now < start + REJOIN_S + 600:
        before = sim.dials.count(("b", a_id))
        sim.run(1.0)
        times += [round(sim.now - start)] * (sim.dials.count(("b", a_id)) - before)
    gaps = [y - x for x, y in zip(times, times[1:], strict=False)]
    assert times[0] <= 1 and gaps[:5] == [1, 2, 4, 8, 16], times
    assert max(gaps) == REJOIN_MAX_GAP_S and gaps[-1] == REJOIN_MAX_GAP_S
    assert start + REJOIN_S - REJOIN_MAX_GAP_S <= start + times[-1] <= start + REJOIN_S
    assert len(times) <= 21  # about 20 dials in the hour


def test_a_bootstrap_peer_that_moved_is_dialled_at_the_address_it_announced() -> None:
    """A was told B is at B's old port (a bootstrap peer), but B listens elsewhere now and
    says so in its signed announcement, which A gets from C's gossip. The configured
    address fails: A dials the announced one and is connected to B directly."""
    sim = Sim("a", "b", "c")
    b = sim.nodes["b"]
    old = b.port
    b.port += 1000
    sim.reachable.add(frozenset("ab"))
    sim.call("a", rm.AddPeer(node_id=b.id, host="10.0.0.1", port=old))
    sim.connect("a", "c")
    sim.connect("b", "c")
    sim.run(20)  # gossip every 5 s: B's announcement reaches A through C
    entry = peer_entry(sim, "a", "b")
    assert entry.connected and entry.path == "direct" and entry.port == b.port
    assert ("a", b.id) in sim.dials


def test_adding_a_peer_that_is_connected_already_asks_the_transport_for_it() -> None:
    """B dialled A first (to A's transport a stranger, read at a stranger's rate); when A's
    owner adds B, A's router still sends ``transport.connect``: B is asked for from then on."""
    sim = Sim("a", "b")
    b = sim.nodes["b"]
    sim.reachable.add(frozenset("ab"))
    sim.connect("b", "a")
    sim.run(1)
    assert peer_entry(sim, "a", "b").connected
    sim.dials.clear()
    sim.call("a", rm.AddPeer(node_id=b.id, host="10.0.0.1", port=b.port))
    sim.run(1)
    assert ("a", b.id) in sim.dials
