"""Peers: connections, dialling and hole punching, and the picture of who is online.

Paths: direct when connected; otherwise the shortest chain of at most four relays in the
graph of announced neighbours (services/router/topology.py), while a direct connection is
sought in the background: dialled when an address is known, and hole-punched through the
relay when that relay is connected to both (``transport.punch``; retried with backoff from
``PUNCH_RETRY_FIRST_S`` to ``PUNCH_RETRY_MAX_S``, sooner when this node's public address
changes). Delivery never waits for either: messages go through the relay meanwhile. When a
direct connection stalls (the transport's keep-alives go unanswered for 1-2 s) or drops, the
messages last sent over it that are not acknowledged are sent again at once along the next
path (a relay), and ``router.path`` tells the app; a stalled one that answers again is used
again.

A dial that fails is remembered with what the transport said (services/router/reasons.py):
the messages waiting for that node say why at once, and an address where another node
answers (or whose host name does not exist) is final: messages that only it could carry
fail, and the address stops being dialled.

The transport's events keep the picture current, and what it holds (``transport.peers``) is
compared with it at start, after the transport restarts and every ``LIVENESS_S`` (the core's
tick). Peers with history (bootstrap peers, contacts) are saved and dialled again after a
restart; strangers never are.
"""

from __future__ import annotations

from typing import Any

from shared.core import Action, Call, Fail, PeerFailed, Publish, Reply, Request
from shared.wire import ErrorCode
from shared.wire.frame import MAX_BLOBS
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from .context import Context, backup_caller
from .discovery import Discovery
from .outgoing import Outgoing
from .reasons import DialFailure, dial_failure
from .topology import path_kind

CONNECT_RETRY_S = 5.0
MAX_PASS_ON = MAX_BLOBS
"""Envelopes in one ``router.pass_on`` (one bus message's blobs)."""
REDIAL_CONTACTS = 16
"""Contacts dialled when the router or its transport starts again."""
REJOIN_S = 3_600.0
"""For this long after that start, those contacts that are not connected yet are dialled
again, ``REJOIN_FIRST_S`` after the first dial, then twice as long each time up to
``REJOIN_MAX_GAP_S``: the first dial may come before our own transport can dial (no binding
yet), or find the peer down too. A peer learns this node's address from the connection, so
one that kept dialling an old address (this node's port changed) finds it again once it is
back, even if it has nothing to send to this node."""
REJOIN_FIRST_S = 1.0
REJOIN_MAX_GAP_S = 300.0
TRANSPORT_RETRY_S = 0.5
"""How soon messages waiting for a peer try again when our own transport could not dial yet
(``unavailable``: it restarted and has no binding yet)."""
PUNCH_RETRY_FIRST_S = 2.0
PUNCH_RETRY_MAX_S = 16.0


class Peers:
    def __init__(self, ctx: Context, outgoing: Outgoing, discovery: Discovery) -> None:
        self.ctx = ctx
        self.outgoing = outgoing
        self.discovery = discovery
        self.connecting: dict[bytes, float] = {}
        self.stalled: set[bytes] = set()
        """Connected peers whose keep-alives go unanswered: routed around."""
        self.punching: dict[bytes, tuple[float, int]] = {}
        """node -> (no punch before, failures in a row); inf while one is in flight."""
        self.saved_peers_added = False
        """A contact was saved since the saved peers were last pruned."""
        self.failures: dict[bytes, DialFailure] = {}
        """node -> its last dial's failure, until it connects or is dialled again."""
        self.rejoin: dict[bytes, tuple[float, float]] = {}
        """Contacts dialled since the last restart that have not connected yet: when to
        dial again, and the wait after that."""
        self.rejoin_until = 0.0

    # -- the peers this node keeps ---------------------------------------------------------

    def redial_contacts(self, now: float) -> list[Action]:
        """After a restart, dial the contacts seen last (the bootstrap peers are dialled at
        every tick anyway): a peer still holding a connection to our dead process learns
        at once that we are back, instead of when that connection times out, and a peer
        that knew this node at another address (its port changed) learns the new one.
        Those not connected are dialled again, backing off, for ``REJOIN_S``."""
        assert self.ctx.topo is not None
        contacts = sorted((p for p in self.ctx.topo.peers.values()
                           if p.contact and not p.bootstrap and not p.connected),
                          key=lambda p: p.last_seen_ms, reverse=True)[:REDIAL_CONTACTS]
        self.rejoin = {p.node_id: (now + REJOIN_FIRST_S, 2 * REJOIN_FIRST_S)
                       for p in contacts}
        self.rejoin_until = now + REJOIN_S
        return [a for p in contacts for a in self.connect(p.node_id, now)]

    def add_bootstrap(self, node: bytes, host: str, port: int) -> None:
        ctx = self.ctx
        assert ctx.topo is not None
        if node == ctx.node_id:
            return
        p = ctx.topo.peer(node, ctx.now_ms())
        gained = not p.history
        p.bootstrap = True
        p.boot_addr = (host, port)
        if not p.connected:
            p.host, p.port = host, port
            self.failures.pop(node, None)  # a new word from the user: try it afresh
        ctx.store.put_peer(node, host, port, True, p.last_seen_ms, p.contact)
        if gained:
            ctx.quota.recount()

    def contact(self, node: bytes) -> None:
        """This node sends to ``node``: it has history now (saved, kept, favoured)."""
        ctx = self.ctx
        assert ctx.topo is not None
        p = ctx.topo.peer(node, ctx.now_ms())
        if not p.contact:
            p.contact = True
            ctx.store.put_peer(node, p.host, p.port, p.bootstrap, p.last_seen_ms, True)
            self.saved_peers_added = True
            ctx.quota.recount()

    def forget(self) -> None:
        """Peers the topology evicted or forgot since the last call: forget everything else
        about them."""
        ctx = self.ctx
        assert ctx.topo is not None
        for n in ctx.topo.removed:
            self.connecting.pop(n, None)
            self.failures.pop(n, None)
            self.punching.pop(n, None)
            self.stalled.discard(n)
            self.rejoin.pop(n, None)
        ctx.store.delete_peers(ctx.topo.removed_saved)
        ctx.topo.removed, ctx.topo.removed_saved = [], []

    def prune_saved(self) -> None:
        """The saved peers, pruned to ``max_saved_peers`` when contacts were added."""
        if self.saved_peers_added:
            self.saved_peers_added = False
            self.ctx.stats["saved_peers_pruned"] += self.ctx.store.prune_peers(
                self.ctx.settings.max_saved_peers)

    def entries(self) -> list[rm.PeerEntry]:
        """``router.peers``: every peer known, with its path."""
        topo = self.ctx.topo
        assert topo is not None
        out = []
        routes = topo.routes()
        for n, p in sorted(topo.peers.items()):
            route = routes.get(n)
            out.append(rm.PeerEntry(
                node_id=p.node_id, username=p.username,
                status="online" if p.connected else p.status,  # type: ignore[arg-type]
                connected=p.connected, path=path_kind(route), route=list(route or ()),
                host=p.host, port=p.port, rtt_ms=p.rtt_ms,
                last_seen_ms=max(0, p.last_seen_ms)))
        return out

    # -- the transport's picture ----------------------------------------------------------

    def transport_event(self, body: Any, now: float) -> list[Action]:
        ctx = self.ctx
        topo = ctx.topo
        if topo is None:
            return []
        match body:
            case tm.PeerConnected(peer=peer, host=host, port=port):
                self.stalled.discard(peer)
                self._connected(peer, host, port, None)
                self.connecting.pop(peer, None)
                self.failures.pop(peer, None)
                p = topo.peers[peer]
                if p.history:  # strangers are never saved
                    ctx.store.put_peer(peer, host, port, p.bootstrap, ctx.now_ms(),
                                       p.contact)
                self.discovery.greet.add(peer)  # gossip once our announcement lists it
                return [self.path_event(peer)] + self.outgoing.peer_up(now) \
                    + self.outgoing.resend_to(peer, now)
            case tm.PeerDisconnected(peer=peer) if peer in topo.peers:
                self.stalled.discard(peer)
                self.discovery.greet.discard(peer)
                topo.set_connected(peer, False)
                topo.peers[peer].rtt_ms = None
                self.discovery.dirty = True
                return [self.path_event(peer)] + self.outgoing.reroute(peer, now)
            case tm.Path(peer=peer, path="stalled") if peer in topo.peers:
                if not topo.peers[peer].connected:
                    return []
                # route around it now; the transport drops it if it stays silent
                topo.set_connected(peer, False)
                self.stalled.add(peer)
                self.discovery.dirty = True
                ctx.stats["stalled_paths"] += 1
                return [self.path_event(peer)] + self.outgoing.reroute(peer, now)
            case tm.Path(peer=peer, path="direct", rtt_ms=rtt) if peer in topo.peers:
                p = topo.peers[peer]
                p.rtt_ms = rtt
                if peer in self.stalled:  # it answers again
                    self.stalled.discard(peer)
                    topo.set_connected(peer, True)
                    self.discovery.dirty = True
                    return [self.path_event(peer)] + self.outgoing.peer_up(now)
            case tm.Mapped():  # our router maps a port for us, or stopped: announce it
                self.discovery.dirty = True
                ctx.stats["mappings_changed"] += 1
            case tm.Reflexive():  # our public address moved: punching may work now
                self.punching = {n: (now, f) if t != float("inf") else (t, f)
                                 for n, (t, f) in self.punching.items()}
        return []

    def transport_restarted(self, lost: bool, now: float) -> list[Action]:
        """The transport's connections died with its process (or it went silent): every
        peer is offline, no dial or punch is in flight, and what it had not confirmed
        delivered is sent again at once; then the picture is rebuilt from what the new one
        holds (``transport.peers``), dialling the peers messages wait for."""
        ctx = self.ctx
        if ctx.topo is None:
            return []
        ctx.stats["transport_restarts"] += 1
        actions: list[Action] = []
        for node, p in list(ctx.topo.peers.items()):
            if p.connected or node in self.stalled:
                ctx.topo.set_connected(node, False)
                p.rtt_ms = None
                actions.append(self.path_event(node))
        self.stalled.clear()
        self.connecting.clear()
        self.discovery.greet.clear()
        self.punching = {n: (now, f) for n, (_, f) in self.punching.items()}
        self.discovery.dirty = True
        self.outgoing.retry_all(now)
        if not lost:
            actions.append(Call("transport", tm.Peers(), ("tpeers",)))
            actions += self.redial_contacts(now)
        return actions

    def reconcile(self, held: list[tm.PeerInfo], now: float) -> list[Action]:
        """What the transport holds (``transport.peers``), against our picture: the events
        missed while either side restarted are made up."""
        ctx = self.ctx
        assert ctx.topo is not None
        holding = {p.node_id for p in held}
        actions: list[Action] = []
        for node, entry in list(ctx.topo.peers.items()):
            if entry.connected and node not in holding:  # an event we missed
                ctx.stats["views_reconciled"] += 1
                actions += self.transport_event(
                    tm.PeerDisconnected(peer=node, reason="not held"), now)
        for p in held:
            known = ctx.topo.peers.get(p.node_id)
            if known is None or not (known.connected or p.node_id in self.stalled):
                if known is not None:
                    ctx.stats["views_reconciled"] += 1
                actions += self.transport_event(tm.PeerConnected(
                    peer=p.node_id, host=p.host, port=p.port, dialled=False), now)
            if p.node_id in ctx.topo.peers and p.rtt_ms is not None:
                ctx.topo.peers[p.node_id].rtt_ms = p.rtt_ms
        return actions

    def pass_on(self, req: Request) -> list[Action]:
        """``router.pass_on``: envelopes the backup service holds for ``to`` (or ACKs it
        keeps for it), sent unchanged on the direct connection; the receiving router checks
        them as it checks any envelope."""
        body = req.body
        assert isinstance(body, rm.PassOn) and self.ctx.topo is not None
        if not backup_caller(req.caller):
            return [Fail(req.ctx, ErrorCode.FORBIDDEN, "only the backup service passes "
                         "envelopes on")]
        if not 1 <= len(req.blobs) <= MAX_PASS_ON:
            return [Fail(req.ctx, ErrorCode.INVALID, f"expected 1 to {MAX_PASS_ON} envelopes")]
        p = self.ctx.topo.peers.get(body.to)
        if p is None or not p.connected:
            return [Fail(req.ctx, ErrorCode.UNAVAILABLE, "not directly connected to that node")]
        self.ctx.stats["passed_on"] += len(req.blobs)
        actions: list[Action] = [Reply(req.ctx, rm.PassOnReply(count=len(req.blobs)))]
        return actions + [Call("transport", tm.Send(peer=body.to), ("passed_on",),
                               blobs=(raw,)) for raw in req.blobs]

    def not_connected(self, hop: bytes, now: float) -> list[Action]:
        """A send found no connection to ``hop`` that our view holds connected: mark it
        offline, so that the next attempt dials or takes a relay, and dial now."""
        ctx = self.ctx
        assert ctx.topo is not None
        p = ctx.topo.peers.get(hop)
        if p is not None and p.connected:
            ctx.stats["send_not_connected"] += 1
            ctx.topo.set_connected(hop, False)
            p.rtt_ms = None
            self.stalled.discard(hop)
            self.discovery.dirty = True
            return [self.path_event(hop)] + self.connect(hop, now)
        return []

    def _connected(self, node: bytes, host: str, port: int, rtt: float | None) -> None:
        ctx = self.ctx
        assert ctx.topo is not None
        p = ctx.topo.peer(node, ctx.now_ms())
        ctx.topo.set_connected(node, True)
        p.host, p.port, p.rtt_ms = host, port, rtt
        p.seen_addr = (host, port)
        self.rejoin.pop(node, None)
        p.last_seen_ms = ctx.now_ms()
        self.discovery.dirty = True

    def path_event(self, node: bytes) -> Publish:
        topo = self.ctx.topo
        assert topo is not None
        p = topo.peers[node]
        route = topo.route(node)
        return Publish(rm.PathChanged(node_id=node, path=path_kind(route),
                                      route=list(route or ()),
                                      rtt_ms=p.rtt_ms if p.connected else None))

    # -- dialling and punching ------------------------------------------------------------

    def connect(self, node: bytes, now: float, connected_too: bool = False) -> list[Action]:
        """Dial ``node`` at its address. ``connected_too``: also when it is connected already
        (it dialled us): the transport then knows it as asked for, not as a stranger whose
        envelopes it reads at a stranger's rate (``router.add_peer``)."""
        assert self.ctx.topo is not None
        p = self.ctx.topo.peers.get(node)
        if p is None or (p.connected and not connected_too) or not p.host or not p.port \
                or now < self.connecting.get(node, -1e9):
            return []
        self.connecting[node] = now + CONNECT_RETRY_S
        self.failures.pop(node, None)  # what the last dial said may no longer hold
        return [Call("transport", tm.Connect(peer=node, host=p.host, port=p.port),
                     ("connect", node, (p.host, p.port)), timeout_s=10.0)]

    def connect_failed(self, node: bytes, addr: tuple[str, int], event: PeerFailed,
                       now: float) -> list[Action]:
        """A dial failed: remember why, tell the messages waiting for ``node``; an address
        that can never reach it is forgotten (a refusal) or no longer dialled."""
        ctx = self.ctx
        self.connecting.pop(node, None)  # may be dialled again at once
        if event.code == ErrorCode.UNAVAILABLE:
            # our own transport is not ready (just restarted, no binding yet): the
            # address is not at fault; what waits for this peer tries again soon
            # instead of at its backoff
            self.outgoing.retry_now(node, now + TRANSPORT_RETRY_S)
            return []
        if ctx.topo is None:
            return []
        failure = self.failures[node] = dial_failure(event.code, event.message, addr)
        ctx.stats["dials_failed"] += 1
        p = ctx.topo.peers.get(node)
        if failure.final and p is not None:
            self._unusable(p.node_id, addr, refused=failure.text.startswith("refused"))
        ctx.topo.next_address(node)
        return self.outgoing.explain_for(node, now)

    def _unusable(self, node: bytes, addr: tuple[str, int], refused: bool) -> None:
        """``addr`` can never reach ``node``: not dialled again as a bootstrap peer (unless
        the configuration says so), and forgotten when another node answers there."""
        ctx = self.ctx
        assert ctx.topo is not None
        p = ctx.topo.peers[node]
        saved = p.history
        configured = any(n == node for n, _, _ in ctx.settings.bootstrap)
        if refused and not configured:  # forget it wherever it came from
            ctx.stats["addresses_refused"] += 1
            p.addrs = tuple(a for a in p.addrs if a != addr)
            if p.boot_addr == addr:
                p.boot_addr = None
            if p.seen_addr == addr:
                p.seen_addr = None
            if (p.host, p.port) == addr:
                p.host, p.port = "", 0  # (the caller moves to the next address, if any)
        if p.bootstrap and not configured:
            ctx.stats["bootstrap_dropped"] += 1
            p.bootstrap = False
        if saved:
            ctx.store.set_address(node, p.host, p.port, p.bootstrap)
            if not p.history:
                ctx.quota.recount()

    def dial_bootstrap(self, now: float) -> list[Action]:
        """At each tick: the bootstrap peers not connected, and for ``REJOIN_S`` after a
        restart the contacts dialled then that are not connected yet, when due."""
        assert self.ctx.topo is not None
        actions: list[Action] = []
        for node, p in list(self.ctx.topo.peers.items()):
            if p.bootstrap and not p.connected:
                actions += self.connect(node, now)
        if now >= self.rejoin_until:
            self.rejoin.clear()
        for node, (due, gap) in list(self.rejoin.items()):
            if now >= due:
                self.rejoin[node] = (now + gap, min(2 * gap, REJOIN_MAX_GAP_S))
                actions += self.connect(node, now)
        return actions

    def punch(self, node: bytes, route: tuple[bytes, ...] | None,
              now: float) -> list[Action]:
        """Ask the transport to punch through to ``node`` when its one relay is connected
        to both of us (the relay introduces us)."""
        if route is None or len(route) != 1 \
                or now < self.punching.get(node, (-1e9, 0))[0]:
            return []
        self.punching[node] = (float("inf"), self.punching.get(node, (0.0, 0))[1])
        self.ctx.stats["punches"] += 1
        return [Call("transport", tm.Punch(peer=node, via=route[0]), ("punch", node),
                     timeout_s=15.0)]

    def punched(self, node: bytes, ok: bool, now: float) -> None:
        failures = 0 if ok else self.punching.get(node, (0.0, 0))[1] + 1
        self.ctx.stats["punches_direct" if ok else "punches_failed"] += 1
        self.punching[node] = (now + min(PUNCH_RETRY_FIRST_S * 2 ** max(failures - 1, 0),
                                         PUNCH_RETRY_MAX_S), failures)
