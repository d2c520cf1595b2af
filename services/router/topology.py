"""What the router knows of the network: peers, their liveness, their announcements, and the
paths to them. Pure data and functions; times are Unix milliseconds given by the caller.

Announcements. Every node signs a ``PeerAnnounce`` envelope addressed to itself whose payload
is msgpack ``[username, host, port, [neighbour node ids]]`` (its directly connected peers, at
most ``MAX_NEIGHBOURS``). Nodes pass each other samples of the announcements they hold
(gossip, §8.7 of docs/protocol.md); a receiver keeps, per node, the newest one whose
signature verifies and whose timestamp is within the last hour (and not in the future), in a
view bounded by ``MAX_VIEW`` nodes. The neighbour lists give the graph in which paths of up
to four relays are searched.

Liveness: a peer is ``online`` while connected or heard from in the last ``STALE_MS``,
``stale`` up to ``OFFLINE_MS``, then ``offline``; an offline peer that is not a bootstrap
peer is forgotten after ``FORGET_MS``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import msgpack

from shared.envelope import MAX_VIA, Envelope, EnvelopeError, MessageType

STALE_MS = 20_000
OFFLINE_MS = 45_000
FORGET_MS = 3_600_000
ANNOUNCE_MAX_AGE_MS = 3_600_000
MAX_FUTURE_MS = 300_000
MAX_NEIGHBOURS = 32
MAX_VIEW = 1000
MAX_USERNAME = 64


@dataclass
class Peer:
    node_id: bytes
    host: str = ""
    port: int = 0
    connected: bool = False
    rtt_ms: float | None = None
    last_seen_ms: int = 0
    username: str = ""
    neighbours: frozenset[bytes] = frozenset()
    announce: bytes = b""
    announce_ms: int = 0
    status: str = "offline"
    bootstrap: bool = False


@dataclass(frozen=True)
class Announce:
    node_id: bytes
    username: str
    host: str
    port: int
    neighbours: frozenset[bytes]
    timestamp_ms: int


def path_kind(route: tuple[bytes, ...] | None) -> Literal["direct", "relayed", "none"]:
    """What a route from :meth:`Topology.route` means to a user."""
    return "none" if route is None else "relayed" if route else "direct"


def announce_payload(username: str, host: str, port: int, neighbours: list[bytes]) -> bytes:
    return msgpack.packb([username[:MAX_USERNAME], host, port,
                          sorted(neighbours)[:MAX_NEIGHBOURS]], use_bin_type=True)


def read_announce(env: Envelope, now_ms: int) -> Announce:
    """Check a (signature-verified) announcement envelope; raise EnvelopeError if it is not
    a valid, fresh one."""
    if env.msg_type != MessageType.PEER_ANNOUNCE or env.to != env.sender or env.encrypted:
        raise EnvelopeError("not a self-addressed announcement")
    if env.timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise EnvelopeError("announcement from the future")
    if env.timestamp_ms < now_ms - ANNOUNCE_MAX_AGE_MS:
        raise EnvelopeError("announcement older than an hour")
    try:
        a = msgpack.unpackb(env.payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise EnvelopeError("announcement payload is not msgpack") from None
    if not (isinstance(a, list) and len(a) == 4 and isinstance(a[0], str)
            and isinstance(a[1], str) and isinstance(a[2], int) and isinstance(a[3], list)
            and len(a[3]) <= MAX_NEIGHBOURS and len(a[0]) <= MAX_USERNAME
            and len(a[1]) <= 255 and 0 <= a[2] <= 65535
            and all(isinstance(n, bytes) and len(n) == 32 for n in a[3])):
        raise EnvelopeError("announcement payload has the wrong shape")
    return Announce(env.sender, a[0], a[1], a[2], frozenset(a[3]), env.timestamp_ms)


@dataclass
class Topology:
    local: bytes
    peers: dict[bytes, Peer] = field(default_factory=dict)
    reported: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    """(gossiper, node) -> when a connected gossiper last told us it is connected to node
    (it gossips that node's address): an edge even before node's newer announcement
    arrives. Kept ``OFFLINE_MS``."""

    def report(self, gossiper: bytes, node: bytes, now_ms: int) -> None:
        if node not in (self.local, gossiper) and node in self.peers:
            self.reported[(gossiper, node)] = now_ms

    def peer(self, node_id: bytes) -> Peer:
        p = self.peers.get(node_id)
        if p is None:
            p = self.peers[node_id] = Peer(node_id)
        return p

    def connected(self) -> list[bytes]:
        return [n for n, p in self.peers.items() if p.connected]

    def seen(self, node_id: bytes, now_ms: int) -> None:
        if node_id != self.local:
            p = self.peer(node_id)
            p.last_seen_ms = max(p.last_seen_ms, now_ms)

    def learn(self, a: Announce, raw: bytes, hint: tuple[str, int], now_ms: int) -> bool:
        """Keep a verified announcement if it is newer than the one held; True if the node
        was unknown until now."""
        if a.node_id == self.local:
            return False
        new = a.node_id not in self.peers
        if new and len(self.peers) >= MAX_VIEW and not self._evict():
            return False
        p = self.peer(a.node_id)
        if a.timestamp_ms <= p.announce_ms:
            return False
        p.username, p.neighbours, p.announce, p.announce_ms = (
            a.username, a.neighbours, raw, a.timestamp_ms)
        if not p.connected:
            host, port = (a.host, a.port) if a.host not in ("", "0.0.0.0", "::") \
                and a.port else hint
            if host and port:
                p.host, p.port = host, port
        p.last_seen_ms = max(p.last_seen_ms, min(a.timestamp_ms, now_ms))
        return new

    def _evict(self) -> bool:
        victims = [p for p in self.peers.values() if not p.connected and not p.bootstrap]
        if not victims:
            return False
        del self.peers[min(victims, key=lambda p: p.last_seen_ms).node_id]
        return True

    def route(self, to: bytes) -> tuple[bytes, ...] | None:
        """Relays to go through to reach ``to`` now: () when connected to it, the shortest
        chain of at most four relays found in the announced graph (first hop connected),
        or None."""
        if to in self.peers and self.peers[to].connected:
            return ()
        graph = self._graph()
        start = sorted(self.connected(), key=lambda n: (self.peers[n].rtt_ms or 1e9, n))
        parents: dict[bytes, bytes | None] = {n: None for n in start}
        queue = deque((n, 1) for n in start)
        while queue:
            node, depth = queue.popleft()
            if to in graph.get(node, ()):
                chain = [node]
                while (up := parents[chain[-1]]) is not None:
                    chain.append(up)
                return tuple(reversed(chain))
            if depth >= MAX_VIA:
                continue
            for nxt in sorted(graph.get(node, ())):
                if nxt not in parents and nxt not in (self.local, to):
                    parents[nxt] = node
                    queue.append((nxt, depth + 1))
        return None

    def _graph(self) -> dict[bytes, set[bytes]]:
        """Undirected edges from the announcements (either side listing the other), plus
        our own connections."""
        g: dict[bytes, set[bytes]] = {}
        edges = [(p.node_id, n) for p in self.peers.values() for n in p.neighbours]
        for x, y in edges + list(self.reported):
            g.setdefault(x, set()).add(y)
            g.setdefault(y, set()).add(x)
        return g

    def liveness(self, now_ms: int) -> list[tuple[bytes, str]]:
        """Update statuses; return the changes, and forget long-offline peers."""
        changes = []
        self.reported = {k: t for k, t in self.reported.items()
                         if now_ms - t < OFFLINE_MS and k[1] in self.peers}
        for p in list(self.peers.values()):
            age = now_ms - p.last_seen_ms
            status = "online" if p.connected or age < STALE_MS else (
                "stale" if age < OFFLINE_MS else "offline")
            if status == "offline" and age >= FORGET_MS and not p.bootstrap:
                del self.peers[p.node_id]
                continue
            if status != p.status:
                p.status = status
                changes.append((p.node_id, status))
        return changes

    def sample(self, exclude: bytes, n: int) -> list[Peer]:
        """Announcements to gossip: the freshest ``n`` of those held, other than the
        receiver's own."""
        held = [p for p in self.peers.values() if p.announce and p.node_id != exclude]
        return sorted(held, key=lambda p: -p.announce_ms)[:n]
