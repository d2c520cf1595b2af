"""Router core: routing, delivery guarantees, topology and discovery, and the app API.

This is the entry point and the plumbing: it learns the node id from crypto, routes each
request, each answer to the router's own calls and each transport event to the part that
owns it, runs the tick and commits the store once per batch (:meth:`RouterCore.flush`),
releasing the replies that waited for the commit. The parts share a
:class:`~.context.Context` (services/router/context.py: settings, store, topology, the
open messages, the counters, the envelope checks):

* services/router/outgoing.py: ``router.send``, sealing, attempts, retries and backoff,
  statuses, re-signing for a new path, ``router.outbox``;
* services/router/incoming.py: ``router.deliver``, opening, the inbox and its quotas, ACKs
  and read receipts, ``router.read`` and ``router.inbox``;
* services/router/relay.py: forwarding envelopes that name this node in their ``via``;
* services/router/peers.py: connections, dialling, punching, the transport's picture,
  ``router.peers`` and ``router.add_peer``;
* services/router/discovery.py: this node's announcement and gossip.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from shared.core import (
    Action,
    Call,
    Core,
    Fail,
    Input,
    PeerFailed,
    PeerReplied,
    PeerRestarted,
    Publish,
    Reply,
    Request,
)
from shared.core import EventReceived as BusEvent
from shared.envelope import decode
from shared.wire import ErrorCode
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from .context import DELIVERED, Context, OutMsg, RouterSettings, split_ids
from .discovery import Discovery
from .incoming import Incoming
from .outgoing import MAX_PAYLOAD, Outgoing
from .peers import Peers
from .quota import InboxQuota
from .relay import Relay
from .store import Store
from .topology import Topology

__all__ = ["MAX_PAYLOAD", "RouterCore", "RouterSettings"]

TICK_S = 1.0
LIVENESS_S = 5.0
_NODE_ID = "node_id"


class RouterCore(Core):
    role = "router"
    handles = frozenset({rm.NodeInfo, rm.Deliver, rm.Send, rm.Read, rm.Outbox, rm.Inbox,
                         rm.Peers, rm.AddPeer, rm.PassOn, rm.Replicate})

    def __init__(self, store: Store, wall: Callable[[], float],
                 settings: RouterSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.ctx = ctx = Context(store, wall, settings or RouterSettings(),
                                 rng or random.Random())
        self.outgoing = Outgoing(ctx)
        self.discovery = Discovery(ctx)
        self.relay = Relay(ctx)
        self.peers = Peers(ctx, self.outgoing, self.discovery)
        self.outgoing.peers = self.peers
        self.incoming = Incoming(ctx, self.outgoing, self.relay, self.discovery)
        self._waiting: list[object] = []
        self._asked_id = False
        self._next_tick = 0.0
        self._next_liveness = 0.0

    # what tests and tools read of the shared state

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def settings(self) -> RouterSettings:
        return self.ctx.settings

    @property
    def node_id(self) -> bytes | None:
        return self.ctx.node_id

    @property
    def topo(self) -> Topology | None:
        return self.ctx.topo

    @property
    def out(self) -> dict[bytes, OutMsg]:
        return self.ctx.out

    @property
    def quota(self) -> InboxQuota:
        return self.ctx.quota

    @property
    def stats(self) -> Counter[str]:
        return self.ctx.stats

    @property
    def _opening(self) -> dict[tuple[bytes, bytes], set[bytes]]:
        return self.incoming.opening

    def _redial_contacts(self, now: float) -> list[Action]:
        return self.peers.redial_contacts(now)

    # -- plumbing -----------------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.ctx.now_ms()

    def handle(self, event: Input, now: float) -> list[Action]:
        match event:
            case Request(body=rm.NodeInfo()):
                if self.ctx.node_id is not None:
                    return [Reply(event.ctx, rm.NodeInfoReply(node_id=self.ctx.node_id))]
                self._waiting.append(event.ctx)
                return self._ask_id()
            case PeerReplied(token=token, body=cm.NodeIdReply(node_id=node_id)) \
                    if token == _NODE_ID:
                return self._started(node_id, now)
            case PeerFailed(token=token, code=code, message=message) if token == _NODE_ID:
                self._asked_id = False
                waiting, self._waiting = self._waiting, []
                return [Fail(ctx, code, message) for ctx in waiting]
            case PeerReplied(token=token, body=body) if token == _NODE_ID:
                self._asked_id = False
                waiting, self._waiting = self._waiting, []
                return [Fail(ctx, ErrorCode.FAILED, f"crypto answered {body.msg_type}")
                        for ctx in waiting]
            case Request() if self.ctx.node_id is None:
                return [Fail(event.ctx, ErrorCode.UNAVAILABLE, "the router does not know its "
                             "node id yet (is crypto running?)")] + self._ask_id()
            case Request(body=rm.Deliver(peer=peer)):
                return self.incoming.deliver(event, peer, now)
            case Request(body=rm.Send()):
                return self.outgoing.send(event, now)
            case Request(body=rm.Read(id=msg_id, sender=sender)):
                return self.incoming.read(event.ctx, msg_id, sender, now)
            case Request(body=rm.Outbox(ids=ids, limit=limit)):
                return [Reply(event.ctx, rm.OutboxReply(
                    messages=self.outgoing.states(ids, limit)))]
            case Request(body=rm.Inbox() as query):
                return self.incoming.inbox(event, query)
            case Request(body=rm.PassOn()):
                return self.peers.pass_on(event)
            case Request(body=rm.Replicate()):
                return self.outgoing.handoff.replicate(event)
            case Request(body=rm.Peers()):
                return [Reply(event.ctx, rm.PeersReply(peers=self.peers.entries()))]
            case Request(body=rm.AddPeer(node_id=node, host=host, port=port)):
                if node == self.ctx.node_id:
                    return [Fail(event.ctx, ErrorCode.INVALID, "that is this node's own id")]
                self.peers.add_bootstrap(node, host, port)
                return [Reply(event.ctx, rm.AddPeerReply())] + self.peers.connect(
                    node, now, connected_too=True)
            case PeerReplied(token=(kind, *rest)) | PeerFailed(token=(kind, *rest)):
                return self._answered(kind, rest, event, now)
            case BusEvent(body=body):
                return self.peers.transport_event(body, now)
            case PeerRestarted(role="transport", lost=lost):
                return self.peers.transport_restarted(lost, now)
        return super().handle(event, now)

    def _ask_id(self) -> list[Action]:
        if self._asked_id:
            return []
        self._asked_id = True
        return [Call("crypto", cm.NodeId(), _NODE_ID)]

    def _started(self, node_id: bytes, now: float) -> list[Action]:
        ctx = self.ctx
        ctx.node_id = node_id
        s = ctx.settings
        now_ms = ctx.now_ms()
        ctx.topo = topo = Topology(node_id, max_peers=s.max_peers,
                                   forget_ms=int(s.forget_after_s * 1000))
        waiting, self._waiting = self._waiting, []
        actions: list[Action] = [Reply(c, rm.NodeInfoReply(node_id=node_id))
                                 for c in waiting]
        ctx.stats["saved_peers_pruned"] += ctx.store.prune_peers(s.max_saved_peers)
        for node, host, port, boot, seen, contact in ctx.store.peers():
            if node == node_id:
                continue
            p = topo.peer(node, now_ms)
            p.host, p.port, p.bootstrap, p.last_seen_ms = host, port, boot, seen
            p.contact = contact
            p.seen_addr = (host, port) if host else None  # ("": refused, issue 17)
            if boot:  # introduced (router.add_peer); the configured ones are set below
                p.boot_addr = (host, port)
        for node in ctx.store.contacts():
            if node != node_id:
                topo.peer(node, now_ms).contact = True
        for node, host, port in s.bootstrap:
            self.peers.add_bootstrap(node, host, port)
        ctx.quota.load(ctx.store.inbox_usage())
        for row in ctx.store.open_out(DELIVERED):
            ctx.out[row.id] = OutMsg(row.id, row.recipient, decode(row.envelope), row.status,
                                     row.created_ms, row.attempts, next_try=now,
                                     expires_ms=row.expires_ms, relay=row.relay or None,
                                     holders=split_ids(row.holders), reason=row.reason)
        ctx.stats["restored_messages"] += len(ctx.out)
        actions.append(Call("transport", tm.Peers(), ("tpeers",)))
        actions += self.peers.redial_contacts(now)
        return actions

    # -- answers to our calls -----------------------------------------------------------------

    def _answered(self, kind: str, rest: list[Any], event: PeerReplied | PeerFailed,
                  now: float) -> list[Action]:
        ok = isinstance(event, PeerReplied)
        match kind:
            case "seal":
                return self.outgoing.sealed(rest[0], rest[1], rest[2], rest[3], event, now)
            case "open":
                return self.incoming.opened(rest[0], rest[1], rest[2], rest[3], event, now)
            case "resign":
                return self.outgoing.resigned(rest[0], event, now)
            case "sealsig":
                return self.outgoing.signal_sealed(rest[0], rest[1], event)
            case "signal":
                return self.incoming.signal_opened(rest[0], event)
            case "xmit":
                return self.outgoing.transmitted(rest[0], event, now)
            case "ctl" if ok:
                assert isinstance(event, PeerReplied)
                return [Call("transport", tm.Send(peer=hop), ("ctl_sent",), blobs=event.blobs)
                        for hop in rest if hop is not None]
            case "passed_on":
                return []
            case "bk_sealed":
                return self.outgoing.handoff.sealed(rest[0], rest[1], event)
            case "bk_hold":
                return self.outgoing.handoff.stored(rest[0], event)
            case "ann_info":
                return self.discovery.info(event)
            case "announce" if ok:
                assert isinstance(event, PeerReplied)
                return self.discovery.announced(rest[0], event)
            case "announce":
                self.discovery.announce_failed()
                return []
            case "gossip" if ok:
                assert isinstance(event, PeerReplied)
                return [Call("transport", tm.Send(peer=rest[0]), ("ctl_sent",),
                             blobs=event.blobs)]
            case "tpeers" if isinstance(event, PeerReplied) \
                    and isinstance(event.body, tm.PeersReply):
                return self.peers.reconcile(event.body.peers, now)
            case "connect" if not ok:
                assert isinstance(event, PeerFailed)
                return self.peers.connect_failed(rest[0], rest[1], event, now)
            case "punch":
                self.peers.punched(rest[0], ok, now)
                return []
        if not ok:
            assert isinstance(event, PeerFailed)
            self.ctx.stats[f"{kind}_failures"] += 1
        return []

    # -- time ---------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.ctx.topo is None:
            return None if self._asked_id else self._next_tick
        return self._next_tick

    def on_timer(self, now: float) -> list[Action]:
        ctx = self.ctx
        if ctx.topo is None:  # ask crypto who we are (again, every 2 s, while it fails)
            self._next_tick = now + 2.0
            return self._ask_id()
        self._next_tick = now + TICK_S
        ctx.store.commit_all()  # the lazy status updates of the last tick
        actions = self.outgoing.due(now)
        actions += self.peers.dial_bootstrap(now)
        actions += self.discovery.announce_due(now)
        if self.discovery.routes_changed:
            self.discovery.routes_changed = False
            actions += self.outgoing.peer_up(now)
        actions += self.discovery.gossip_due(now)
        if now >= self._next_liveness:
            self._next_liveness = now + LIVENESS_S
            # what the transport holds, against our picture (an event missed while either
            # side restarted would otherwise leave it wrong for good)
            actions.append(Call("transport", tm.Peers(), ("tpeers",), timeout_s=2.0))
            actions += [Publish(rm.PeerChanged(node_id=n, status=s))  # type: ignore[arg-type]
                        for n, s in ctx.topo.liveness(ctx.now_ms())]
            self.peers.forget()
            self.relay.prune(now)
            self.discovery.limit.prune(now)
            self.peers.prune_saved()
            cutoff = ctx.now_ms() - int(ctx.settings.replay_window_s * 1000)
            self.incoming.purge(cutoff)
            ctx.stats["outbox_purged"] += ctx.store.purge_out(
                cutoff - int(ctx.settings.message_lifetime_s * 1000))
        return actions

    def flush(self, now: float) -> list[Action]:
        """Once per batch: commit what the batch stored, then answer what waited for it."""
        self.ctx.store.commit()
        held, self.ctx.held = self.ctx.held, []
        return held

    def close(self, now: float) -> list[Action]:
        self.ctx.store.close()
        return []

    def counters(self) -> dict[str, int]:
        ctx = self.ctx
        return dict(ctx.stats) | (dict(ctx.topo.stats) if ctx.topo else {})

    def queues(self) -> dict[str, int]:
        ctx = self.ctx
        return {"waiting_node_id": len(self._waiting), "open_messages": len(ctx.out),
                "opening": len(self.incoming.opening), "known_peers": len(ctx.topo.peers)
                if ctx.topo else 0, "inbox_messages": ctx.quota.total[0],
                "inbox_bytes": ctx.quota.total[1],
                "inbox_strangers_bytes": ctx.quota.strangers[1]}
