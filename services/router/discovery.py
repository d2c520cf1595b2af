"""Discovery: this node's signed announcement, and the gossip that passes announcements on
(the formats and their checks are in services/router/gossip.py).

The announcement (name, addresses, neighbours) is signed again every ``ANNOUNCE_S`` and
whenever this node's connections change; a peer that connected since it was last signed gets
the new one (which lists it) at once, so the edge is mutual at once. Every
``gossip_interval_s`` each connected peer gets our announcement and a sample of those we
hold. Gossip is taken only straight from its signer and within its rate, before any
signature is checked; each announcement in it is verified and kept if newer than the one
held, and the routes it changes are tried at the next tick.
"""

from __future__ import annotations

from shared.core import Action, Call, PeerFailed, PeerReplied, Publish
from shared.envelope import Envelope, EnvelopeError, MessageType, decode
from shared.primitives import BadSignature
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from . import gossip
from .context import Context

ANNOUNCE_S = 60.0


class Discovery:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.next_gossip = 0.0
        self.next_announce = 0.0
        self.dirty = True
        """Our connections changed since the announcement was last signed."""
        self.announcing = False
        self.own_announce = b""
        self.own_addrs: list[tuple[str, int]] = []
        self.greet: set[bytes] = set()
        """Peers that connected since our announcement was last sealed: they get the new
        one (which lists them) as soon as it is, so the edge is mutual at once."""
        self.routes_changed = False
        """Announcements changed the graph: messages waiting for a path are tried at the
        next tick (once, however many announcements came)."""
        self.limit = gossip.RateLimit(ctx.settings.gossip_rate, ctx.settings.gossip_burst)

    # -- gossip from peers ----------------------------------------------------------------

    def gossip_allowed(self, env: Envelope, peer: bytes, now: float) -> bool:
        """Gossip comes straight from its signer, at most ``gossip_rate`` per second."""
        if env.via or env.sender != peer:
            self.ctx.reject("gossip_not_direct")
            return False
        if not self.limit.take(peer, now):
            self.ctx.reject("gossip_rate")
            return False
        return True

    def on_gossip(self, env: Envelope, now: float) -> list[Action]:
        """Announcements from a connected peer (services/router/gossip.py): each is
        verified and kept if newer than the one held; the gossiper vouches for nothing."""
        ctx = self.ctx
        assert ctx.topo is not None
        now_ms = ctx.now_ms()
        try:
            items = gossip.read_gossip(env.payload)
        except EnvelopeError:
            ctx.reject("malformed_gossip")
            return []
        actions: list[Action] = []
        for raw in items:
            try:
                inner = decode(raw)
                held = ctx.topo.peers.get(inner.sender)
                if inner.sender == ctx.node_id or (
                        held is not None and inner.timestamp_ms <= held.announce_ms):
                    ctx.stats["gossip_known"] += 1  # not newer: no signature to check
                    continue
                inner.verify()
                ann = gossip.read_announce(inner, now_ms)
            except (EnvelopeError, BadSignature):
                ctx.reject("bad_announcement")
                continue
            new = ctx.topo.learn(ann, raw, now_ms)
            self.routes_changed = True
            ctx.stats["unconfirmed_edges"] += ctx.topo.unconfirmed(ann)
            if new:
                ctx.stats["discovered"] += 1
                actions.append(Publish(rm.PeerChanged(node_id=ann.node_id,
                                                      status="discovered",
                                                      username=ann.username)))
        return actions

    # -- what this node sends -------------------------------------------------------------

    def gossip_to(self, peer: bytes) -> list[Action]:
        topo = self.ctx.topo
        assert topo is not None
        items = [self.own_announce] if self.own_announce else []
        items += [p.announce for p in topo.sample(peer, gossip.GOSSIP_SAMPLE)]
        if not items:
            return []
        return [Call("crypto", cm.Seal(to=peer, envelope_type=MessageType.PEER_ANNOUNCE,
                                       ttl=0, encrypt=False), ("gossip", peer),
                     blobs=(gossip.gossip_payload(items),))]

    def _seal_announce(self) -> list[Action]:
        """Sign our announcement: name, addresses, neighbours (gossip.py)."""
        ctx = self.ctx
        assert ctx.topo is not None and ctx.node_id is not None
        greet, self.greet = frozenset(self.greet), set()
        payload = gossip.announce_payload(ctx.settings.username, self.own_addrs,
                                          ctx.topo.neighbours(gossip.MAX_NEIGHBOURS))
        return [Call("crypto", cm.Seal(to=ctx.node_id, envelope_type=MessageType.PEER_ANNOUNCE,
                                       ttl=0, encrypt=False), ("announce", greet),
                     blobs=(payload,))]

    def info(self, event: PeerReplied | PeerFailed) -> list[Action]:
        """The transport said where we are (``transport.info``): sign the announcement."""
        if isinstance(event, PeerReplied) and isinstance(event.body, tm.InfoReply):
            b = event.body
            self.own_addrs = gossip.own_addresses(
                b.host, b.port, [(a.host, a.port) for a in b.reflexive],
                [(a.host, a.port) for a in b.local], [(a.host, a.port) for a in b.mapped])
        return self._seal_announce()

    def announced(self, greet: frozenset[bytes], event: PeerReplied) -> list[Action]:
        """Crypto signed our announcement: the peers it newly lists get it at once."""
        topo = self.ctx.topo
        assert topo is not None
        self.announcing = False
        self.own_announce = event.blobs[0]
        actions: list[Action] = []
        for peer in greet:  # they are in it now: tell them at once
            if peer in topo.peers and topo.peers[peer].connected:
                actions += self.gossip_to(peer)
        return actions

    def announce_failed(self) -> None:
        self.announcing = False
        self.dirty = True

    # -- time -----------------------------------------------------------------------------

    def announce_due(self, now: float) -> list[Action]:
        if (now >= self.next_announce or self.dirty) and not self.announcing:
            # where are we? (the addresses peers see us at change), then sign
            self.next_announce = now + ANNOUNCE_S
            self.dirty = False
            self.announcing = True
            return [Call("transport", tm.Info(), ("ann_info",), timeout_s=2.0)]
        return []

    def gossip_due(self, now: float) -> list[Action]:
        topo = self.ctx.topo
        assert topo is not None
        actions: list[Action] = []
        if now >= self.next_gossip:
            self.next_gossip = now + self.ctx.settings.gossip_interval_s
            for peer in topo.connected():
                actions += self.gossip_to(peer)
        return actions
