"""What the router knows of the network: peers, their liveness, their announcements, and the
paths to them. Pure data and functions; times are Unix milliseconds given by the caller.

Announcements (services/router/gossip.py) give, per node, what that node signed about
itself: its name, its addresses and its neighbours. Paths of up to four relays are searched
in the graph of **mutual** edges only: X–Y counts when X's announcement lists Y and Y's lists
X, so a node cannot make itself a relay for another by claiming to be its neighbour; the
node it names has to say so too (issue 13). Our own edges are our connections (a fact the
transport authenticated), which are the first hop of every path. All paths from this node
are computed at once by one breadth-first search, kept until the graph changes.

The peer table is bounded (``max_peers``): identities cost nothing, and a stranger can make
the router remember one by sending a message or an announcement. When it is full, a batch
of the peers with the least history is evicted: never a connected or bootstrap peer; last
the contacts (nodes this node has sent to) and the relays on the paths to them, then the
peers known longer than ``history_ms``; the longest silent first within each class. A full
table of peers that cannot be evicted refuses newcomers (``peers_refused``).

Liveness: a peer is ``online`` while connected or heard from in the last ``STALE_MS``,
``stale`` up to ``OFFLINE_MS``, then ``offline``; an offline peer without history (not a
bootstrap peer nor a contact) is forgotten after ``forget_ms``.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

from shared.envelope import MAX_VIA

STALE_MS = 20_000
OFFLINE_MS = 45_000
FORGET_MS = 3_600_000
HISTORY_MS = 3_600_000
MAX_PEERS = 2_000
EVICT_FRACTION = 0.1
"""When the table is full, this share of it is evicted at once, so that the cost of finding
the victims (a pass over the table) is paid once per that many newcomers."""

Addr = tuple[str, int]


@dataclass
class Peer:
    node_id: bytes
    host: str = ""
    port: int = 0
    """The address to dial: the connection's, a bootstrap's, or one the node announced."""
    addrs: tuple[Addr, ...] = ()
    """The addresses the node signed in its announcement."""
    boot_addr: Addr | None = None
    """A bootstrap peer's address as configured or introduced (``router.add_peer``)."""
    seen_addr: Addr | None = None
    """The address of its last connection (saved in router.db for peers with history)."""
    connected: bool = False
    rtt_ms: float | None = None
    last_seen_ms: int = 0
    first_seen_ms: int = 0
    username: str = ""
    neighbours: frozenset[bytes] = frozenset()
    announce: bytes = b""
    announce_ms: int = 0
    status: str = "offline"
    bootstrap: bool = False
    contact: bool = False
    """This node has sent it a message (history: kept longer, favoured by quotas)."""

    @property
    def history(self) -> bool:
        return self.bootstrap or self.contact


@dataclass(frozen=True)
class Announce:
    node_id: bytes
    username: str
    addrs: tuple[Addr, ...]
    neighbours: frozenset[bytes]
    timestamp_ms: int


def path_kind(route: tuple[bytes, ...] | None) -> Literal["direct", "relayed", "none"]:
    """What a route from :meth:`Topology.route` means to a user."""
    return "none" if route is None else "relayed" if route else "direct"


@dataclass
class Topology:
    local: bytes
    max_peers: int = MAX_PEERS
    history_ms: int = HISTORY_MS
    forget_ms: int = FORGET_MS
    peers: dict[bytes, Peer] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    removed: list[bytes] = field(default_factory=list)
    """Nodes evicted or forgotten since the caller last drained this list."""
    removed_saved: list[bytes] = field(default_factory=list)
    """Those of them that had history (the caller saved them)."""
    _routes: dict[bytes, tuple[bytes, ...]] | None = None
    """node -> relays, for every node reachable now; None when the graph changed."""

    # -- the table ----------------------------------------------------------------------------

    def peer(self, node_id: bytes, now_ms: int = 0) -> Peer:
        """The entry for ``node_id``, created if needed whatever the cap (for the peers the
        node itself vouches for: connections, bootstrap peers, contacts)."""
        p = self.peers.get(node_id)
        if p is None:
            p = self.peers[node_id] = Peer(node_id, first_seen_ms=now_ms)
            if len(self.peers) > self.max_peers:
                self._evict(now_ms, keep=node_id)
        return p

    def admit(self, node_id: bytes, now_ms: int) -> Peer | None:
        """The entry for ``node_id``, created if the cap allows (for what strangers tell
        us about); None when the table is full of peers that cannot be evicted."""
        p = self.peers.get(node_id)
        if p is not None:
            return p
        if node_id == self.local:
            return None
        if len(self.peers) >= self.max_peers:
            self._evict(now_ms)
            if len(self.peers) >= self.max_peers:
                self.stats["peers_refused"] += 1
                return None
        p = self.peers[node_id] = Peer(node_id, first_seen_ms=now_ms)
        return p

    def _evict(self, now_ms: int, keep: bytes | None = None) -> None:
        """Evict a batch of the peers with the least history."""
        old = now_ms - self.history_ms
        routes = self.routes()
        needed = {r for p in self.peers.values() if p.contact
                  for r in routes.get(p.node_id, ())}  # the relays to our contacts
        candidates = [p for p in self.peers.values()
                      if not p.connected and not p.bootstrap and p.node_id != keep]
        n = max(1, int(self.max_peers * EVICT_FRACTION), len(self.peers) - self.max_peers)
        for p in heapq.nsmallest(n, candidates, key=lambda p: (
                p.contact or p.node_id in needed, p.first_seen_ms <= old, p.last_seen_ms)):
            self._remove(p.node_id)
            self.stats["peers_evicted"] += 1

    def _remove(self, node_id: bytes) -> None:
        p = self.peers.pop(node_id)
        self.removed.append(node_id)
        if p.history:
            self.removed_saved.append(node_id)
        if p.neighbours or p.connected:
            self._routes = None

    def set_connected(self, node_id: bytes, connected: bool) -> None:
        p = self.peers.get(node_id)
        if p is not None and p.connected != connected:
            p.connected = connected
            self._routes = None

    def connected(self) -> list[bytes]:
        return [n for n, p in self.peers.items() if p.connected]

    def has_history(self, node_id: bytes) -> bool:
        p = self.peers.get(node_id)
        return p is not None and p.history

    def seen(self, node_id: bytes, now_ms: int) -> None:
        if node_id != self.local:
            p = self.admit(node_id, now_ms)
            if p is not None:
                p.last_seen_ms = max(p.last_seen_ms, now_ms)

    def learn(self, a: Announce, raw: bytes, now_ms: int) -> bool:
        """Keep a verified announcement if it is newer than the one held; True if the node
        was unknown until now."""
        if a.node_id == self.local:
            return False
        new = a.node_id not in self.peers
        p = self.admit(a.node_id, now_ms)
        if p is None or a.timestamp_ms <= p.announce_ms:
            return False
        if a.neighbours != p.neighbours:
            self._routes = None
        p.username, p.neighbours, p.announce, p.announce_ms, p.addrs = (
            a.username, a.neighbours, raw, a.timestamp_ms, a.addrs)
        if not p.connected and not p.bootstrap and a.addrs:
            p.host, p.port = a.addrs[0]
        p.last_seen_ms = max(p.last_seen_ms, min(a.timestamp_ms, now_ms))
        return new

    def next_address(self, node_id: bytes) -> None:
        """A dial failed: try the next address next time. In turn: a bootstrap peer's
        configured address, the address of the node's last connection, the addresses it
        announced (signed by the node: a node that moved is found at its new address)."""
        p = self.peers.get(node_id)
        if p is None:
            return
        addrs: list[Addr] = []
        for a in (p.boot_addr if p.bootstrap else None, p.seen_addr, *p.addrs):
            if a is not None and a not in addrs:
                addrs.append(a)
        if not addrs:
            return
        i = addrs.index((p.host, p.port)) + 1 if (p.host, p.port) in addrs else 0
        p.host, p.port = addrs[i % len(addrs)]

    def unconfirmed(self, a: Announce) -> int:
        """How many of ``a``'s neighbours that we know the announcement of do not list it
        back (edges not used for routing, counted)."""
        return sum(1 for n in a.neighbours if (q := self.peers.get(n)) is not None
                   and q.announce and a.node_id not in q.neighbours)

    # -- paths --------------------------------------------------------------------------------

    def route(self, to: bytes) -> tuple[bytes, ...] | None:
        """Relays to go through to reach ``to`` now: () when connected to it, the shortest
        chain of at most four relays in the graph of mutual edges (first hop connected),
        or None."""
        return self.routes().get(to)

    def routes(self) -> dict[bytes, tuple[bytes, ...]]:
        """Every node reachable now, and the relays to it (one search per graph change)."""
        if self._routes is None:
            self._routes = self._search()
        return self._routes

    def _search(self) -> dict[bytes, tuple[bytes, ...]]:
        graph = self._graph()
        start = sorted(self.connected(), key=lambda n: (self.peers[n].rtt_ms or 1e9, n))
        routes: dict[bytes, tuple[bytes, ...]] = {n: () for n in start}
        chain: dict[bytes, tuple[bytes, ...]] = {n: (n,) for n in start}
        queue = deque(start)
        while queue:
            node = queue.popleft()
            relays = chain[node]
            for nxt in sorted(graph.get(node, ())):
                if nxt == self.local:
                    continue
                if nxt not in routes:
                    routes[nxt] = relays
                if nxt not in chain and len(relays) < MAX_VIA:
                    chain[nxt] = relays + (nxt,)
                    queue.append(nxt)
        return routes

    def _graph(self) -> dict[bytes, set[bytes]]:
        """Edges both ends announce."""
        g: dict[bytes, set[bytes]] = {}
        peers = self.peers
        for x, p in peers.items():
            for y in p.neighbours:
                q = peers.get(y)
                if q is not None and x in q.neighbours:
                    g.setdefault(x, set()).add(y)
        return g

    # -- time ---------------------------------------------------------------------------------

    def liveness(self, now_ms: int) -> list[tuple[bytes, str]]:
        """Update statuses; return the changes, and forget long-offline peers without
        history."""
        changes = []
        for p in list(self.peers.values()):
            age = now_ms - p.last_seen_ms
            status = "online" if p.connected or age < STALE_MS else (
                "stale" if age < OFFLINE_MS else "offline")
            if status == "offline" and age >= self.forget_ms and not p.history:
                self._remove(p.node_id)
                self.stats["peers_forgotten"] += 1
                continue
            if status != p.status:
                p.status = status
                changes.append((p.node_id, status))
        return changes

    def sample(self, exclude: bytes, n: int) -> list[Peer]:
        """Announcements to gossip: the freshest ``n`` of those held, other than the
        receiver's own."""
        return heapq.nlargest(n, (p for p in self.peers.values()
                                  if p.announce and p.node_id != exclude),
                              key=lambda p: p.announce_ms)

    def neighbours(self, limit: int) -> list[bytes]:
        """Our connected peers to announce, those with history first, then the longest
        known: a crowd of new connections cannot push the established ones out."""
        conn = [p for p in self.peers.values() if p.connected]
        best = heapq.nsmallest(limit, conn, key=lambda p: (
            not p.history, p.first_seen_ms, p.node_id))
        return [p.node_id for p in best]
