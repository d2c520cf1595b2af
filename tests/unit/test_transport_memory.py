"""One memory budget for all of a peer's connections: retired ones and ones that end."""

from __future__ import annotations

from services.transport.endpoint import Endpoint, PeerAuthenticated, Received, SendError

from .test_transport_endpoint import A_ID, A_SEED, B_ID, B_SEED, Net, add_endpoint, endpoint

FRAME = 64 * 1024


def sends(ep: Endpoint, n: int, net: Net) -> int:
    done = 0
    for _ in range(n):
        try:
            ep.send(B_ID, b"\x92" + bytes(FRAME - 1), net.now)
        except SendError:
            break
        done += 1
    return done


def test_a_peer_s_connection_churn_cannot_grow_the_owner_s_queue() -> None:
    """B's owner is slow (budget spent). A peer opens connection after connection (each
    retires the previous one at B) and sends on each once it is retired: B hands over
    nothing past its budget but the overdraft for connections that end; the rest is
    dropped at close, counted (the sender's router retries end to end)."""
    net = Net(b=endpoint(B_SEED))
    b = net.eps[net.addr["b"]]
    b.budget, b.overdraft = 0, 6 * FRAME
    prev = None
    for i in range(8):
        conn = b.peers.get(A_ID)
        a = add_endpoint(net, f"a{i}", endpoint(A_SEED), (f"10.0.1.{i + 1}", 4433))
        a.dial(B_ID, net.addr["b"], net.now)
        net.run(500, until=lambda i=i: b.counters["authenticated"] == i + 1)  # type: ignore[misc]
        if prev is not None and conn is not None:  # retired at B now: it sends there
            assert conn.retired_until is not None
            assert sends(prev, 6, net) == 6
            net.run(500, until=lambda c=conn: len(c.rx) >= 6 * (FRAME + 4) or c.closing)  # type: ignore[misc]
        prev = a
    net.run(2000, until=lambda: len(b._conns) <= 2)  # the older retired ones have ended
    got = sum(len(e.data) for e in net.of("b", Received))
    assert got <= 6 * FRAME + FRAME, got / FRAME
    assert b.counters["retired"] == 7 and b.counters["frames_dropped_at_close"] >= 30


def test_a_retired_connection_only_finishes_what_was_in_flight() -> None:
    """Its window no longer grows: a peer cannot go on using a retired connection."""
    net = Net(b=endpoint(B_SEED))
    b = net.eps[net.addr["b"]]
    a1 = add_endpoint(net, "a1", endpoint(A_SEED), ("10.0.1.1", 4433))
    a1.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: bool(net.of("b", PeerAuthenticated)))
    conn = b.peers[a1.node_id]
    a2 = add_endpoint(net, "a2", endpoint(A_SEED), ("10.0.1.2", 4433))
    a2.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: conn.retired_until is not None)
    assert sends(a1, 24, net) == 24  # three windows' worth, on the retired connection
    net.run(2000, until=lambda: conn.closing)
    got = len(net.of("b", Received))
    assert 0 < got <= b.window // FRAME + 1, got


def test_what_waited_on_a_retired_connection_arrives_once_the_owner_takes_more() -> None:
    net = Net(b=endpoint(B_SEED))
    b = net.eps[net.addr["b"]]
    a1 = add_endpoint(net, "a1", endpoint(A_SEED), ("10.0.1.1", 4433))
    a1.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: bool(net.of("b", PeerAuthenticated)))
    b.budget = 0
    sent = [b"\x92%d" % i + bytes(1000) for i in range(20)]
    for data in sent:
        a1.send(B_ID, data, net.now)
    conn = b.peers[a1.node_id]
    net.run(200, until=lambda: len(conn.rx) >= 20 * 1004)
    a2 = add_endpoint(net, "a2", endpoint(A_SEED), ("10.0.1.2", 4433))
    a2.dial(B_ID, net.addr["b"], net.now)
    net.run(200, until=lambda: b.peers[a1.node_id] is not conn)
    assert conn.retired_until is not None and conn.rx
    assert not net.of("b", Received)  # metered, like the current connection
    b.resume(net.now)
    net.run(200, until=lambda: len(net.of("b", Received)) == 20)
    assert [e.data for e in net.of("b", Received)] == sent
