"""Router core: routing, delivery guarantees, topology and discovery, and the app API.

Theory of operation. The router never holds the identity secret: it asks crypto for its node
id at start, to seal (encrypt and sign) what it originates and to open what is addressed to
it. Until the node id is known, requests that need it fail with ``unavailable``.

Incoming (``router.deliver`` from the transport). Every envelope is decoded and its
signature verified in-process before anything else; unsigned, forged, malformed and oversize
envelopes are rejected and counted (``rejected_*``). Then:

* addressed to us: the timestamp must lie in the replay window (``replay_window_s`` back,
  5 min ahead). A ``Chat`` that is already in the inbox (same sender and id) is not
  delivered again but acknowledged again, so a sender whose ACK was lost stops retrying; a
  new one goes to crypto.open, which also returns the signed ACK for it (``ack_via``), is
  stored in the inbox (SQLite) and only then acknowledged and the transport's call
  answered, so a crash loses nothing (the transport retries). The
  inbox is the dedup record, kept as long as the replay window: older copies fail the
  freshness check instead. ``Ack`` and ``ReadReceipt`` move the tracker, and only when they
  come from the node that can vouch for them (the recipient; a relay on the path for
  ``RelayForwarded``). ``PeerAnnounce`` carries gossip.
* we are in its ``via``: forwarded to the next hop with ttl − 1 (ttl 0 → rejected), once per
  ``FORWARD_DEDUP_S`` (the sender's retries come later and pass), and for a ``Chat`` a
  ``RelayForwarded`` ACK goes back along the path. Relays forward nothing else: an envelope
  neither for us nor naming us is rejected (``rejected_not_for_us``): no open relay.

Outgoing (``router.send``). The message is sealed by crypto with the path of the moment, then
stored in the outbox (SQLite) before the app's request is answered; the store is committed
once per batch in :meth:`flush`, and the replies wait for it. The tracker moves a message
Pending → Sent (first hop took it) → Relayed → Delivered → Read, or Failed with a reason; it
is retried with backoff (5 s, doubling to 60 s, immediately when a peer connects) until it
is acknowledged or ``message_lifetime_s`` passes. A retry keeps the id; when the path has
changed, crypto re-signs the envelope with the new ``via``. After a restart the open
messages are loaded and retried at once.

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
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from shared.envelope import (
    DEFAULT_TTL,
    MAX_TTL,
    MAX_VIA,
    AckPayload,
    AckType,
    Envelope,
    EnvelopeError,
    EnvelopeTooLarge,
    MessageType,
    ReadReceiptPayload,
    Unsigned,
    decode,
)
from shared.primitives import BadSignature
from shared.wire import ErrorCode
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from . import gossip
from .quota import InboxLimits, InboxQuota
from .store import CHAT, GROUP, InRow, OutRow, Store
from .topology import Topology, path_kind

PENDING, SENT, RELAYED, DELIVERED, READ, FAILED = range(6)
STATUS = ("pending", "sent", "relayed", "delivered", "read", "failed")
MAX_PAYLOAD = 200 * 1024
INBOX_REPLY_BYTES = 1024 * 1024
MAX_FUTURE_MS = 300_000
FORWARD_DEDUP_S = 2.0
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 60.0
TICK_S = 1.0
LIVENESS_S = 5.0
ANNOUNCE_S = 60.0
CONNECT_RETRY_S = 5.0
RESEND_AFTER_S = 1.0
"""A peer that connects gets again only what was sent at least this long ago: a message
just sent through a relay is on its way (a punch completing meanwhile must not double it)."""
REDIAL_CONTACTS = 16
"""Contacts dialled when the router or its transport starts again."""
RELAY_ACK_S = 2.0
RELAY_FAST_TRIES = 4
"""A message sent through a relay that has not said it forwarded it is sent again after
``RELAY_ACK_S`` (its first ``RELAY_FAST_TRIES`` tries; then the usual backoff)."""
TRANSPORT_RETRY_S = 0.5
"""How soon messages waiting for a peer try again when our own transport could not dial yet
(``unavailable``: it restarted and has no binding yet)."""
PUNCH_RETRY_FIRST_S = 2.0
PUNCH_RETRY_MAX_S = 16.0
RETRYABLE = frozenset({ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED})
_OPEN_REJECTS = {ErrorCode.BAD_SIGNATURE: "forged", ErrorCode.UNSIGNED: "unsigned",
                 ErrorCode.TOO_LARGE: "oversize", ErrorCode.BAD_ENVELOPE: "malformed"}
"""crypto.open's refusals, counted under the names the router's own checks use."""


SIGNAL_RATE, SIGNAL_BURST = 20.0, 40.0
"""Group signals taken from one sender per second, and in a burst."""
SIGNAL_MAX_AGE_MS = 30_000
"""A group signal older (or further ahead) than this is stale: it only matters now."""
_MESSAGE_TYPES = frozenset({MessageType.CHAT, MessageType.GROUP})
"""Envelope types that are opened, stored in the inbox and acknowledged."""


def _groups_caller(caller: str | None) -> bool:
    """Group envelopes are the groups service's (over ipc/inproc, where callers are not
    told apart by key, the file system guards the bus)."""
    return caller is None or caller in ("service:groups", "owner")


def _backoff(attempts: int) -> float:
    """How long a message sent ``attempts`` times waits for its ACK before the next try."""
    return min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return "failed"
_NODE_ID = "node_id"


@dataclass
class RouterSettings:
    """The router's bounds; see RouterConfig (services/router/config.py) for each."""

    username: str = "anonymous"
    replay_window_s: float = 86_400 + 600
    message_lifetime_s: float = 86_400
    gossip_interval_s: float = 5.0
    max_open_messages: int = 100_000
    bootstrap: tuple[tuple[bytes, str, int], ...] = ()
    inbox_max_bytes: int = InboxLimits.max_bytes
    inbox_max_messages: int = InboxLimits.max_messages
    inbox_strangers_share: float = InboxLimits.strangers_share
    inbox_sender_max_bytes: int = InboxLimits.sender_bytes
    inbox_sender_max_messages: int = InboxLimits.sender_messages
    inbox_hop_max_bytes: int = InboxLimits.hop_bytes
    inbox_hop_max_messages: int = InboxLimits.hop_messages
    inbox_history_factor: int = InboxLimits.history_factor
    max_peers: int = 2_000
    max_saved_peers: int = 1_000
    forget_after_s: float = 3_600
    gossip_rate: float = 1.0
    gossip_burst: int = 10

    def inbox_limits(self) -> InboxLimits:
        return InboxLimits(self.inbox_max_bytes, self.inbox_max_messages,
                           self.inbox_strangers_share, self.inbox_sender_max_bytes,
                           self.inbox_sender_max_messages, self.inbox_hop_max_bytes,
                           self.inbox_hop_max_messages, self.inbox_history_factor)


@dataclass
class OutMsg:
    id: bytes
    to: bytes
    env: Envelope
    status: int
    created_ms: int
    attempts: int = 0
    next_try: float = 0.0
    busy: bool = False
    """A crypto or transport call about this message is in flight."""
    sent_at: float = float("-inf")
    """When it was last handed to the transport."""
    expires_ms: int = 0
    """When it fails unacknowledged (Unix ms); 0: ``message_lifetime_s`` after creation."""
    relay: bytes | None = None
    """The relay the app named, for when the topology knows no path."""


class RouterCore(Core):
    role = "router"
    handles = frozenset({rm.NodeInfo, rm.Deliver, rm.Send, rm.Read, rm.Outbox, rm.Inbox,
                         rm.Peers, rm.AddPeer})

    def __init__(self, store: Store, wall: Callable[[], float],
                 settings: RouterSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.wall = wall
        self.settings = settings or RouterSettings()
        self.rng = rng or random.Random()
        self.node_id: bytes | None = None
        self.topo: Topology | None = None
        self._waiting: list[object] = []
        self._asked_id = False
        self.out: dict[bytes, OutMsg] = {}
        self._sealing: set[bytes] = set()
        self._held_replies: list[Action] = []
        """Replies, delivery ACKs and new-message events that wait for the store's commit
        (flush)."""
        self._opening: dict[tuple[bytes, bytes], set[bytes]] = {}
        """(sender, id) of chats being opened by crypto → the exact bytes of each copy."""
        self._forwarded: dict[tuple[bytes, bytes], float] = {}
        self._connecting: dict[bytes, float] = {}
        self._stalled: set[bytes] = set()
        """Connected peers whose keep-alives go unanswered: routed around."""
        self._punching: dict[bytes, tuple[float, int]] = {}
        """node -> (no punch before, failures in a row); inf while one is in flight."""
        self._next_tick = 0.0
        self._next_liveness = 0.0
        self._next_gossip = 0.0
        self._next_announce = 0.0
        self._announce_dirty = True
        self._announcing = False
        self._own_announce = b""
        self._own_addrs: list[tuple[str, int]] = []
        self._greet: set[bytes] = set()
        """Peers that connected since our announcement was last sealed: they get the new
        one (which lists them) as soon as it is, so the edge is mutual at once."""
        self._routes_changed = False
        self._saved_peers_added = False
        """Announcements changed the graph: messages waiting for a path are tried at the
        next tick (once, however many announcements came)."""
        self._gossip_limit = gossip.RateLimit(self.settings.gossip_rate,
                                              self.settings.gossip_burst)
        self._signal_limit = gossip.RateLimit(SIGNAL_RATE, SIGNAL_BURST)
        self.quota = InboxQuota(self.settings.inbox_limits(), self._has_history)
        self.stats: Counter[str] = Counter()

    # -- plumbing -----------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.wall() * 1000)

    def handle(self, event: Input, now: float) -> list[Action]:
        match event:
            case Request(body=rm.NodeInfo()):
                if self.node_id is not None:
                    return [Reply(event.ctx, rm.NodeInfoReply(node_id=self.node_id))]
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
            case Request() if self.node_id is None:
                return [Fail(event.ctx, ErrorCode.UNAVAILABLE, "the router does not know its "
                             "node id yet (is crypto running?)")] + self._ask_id()
            case Request(body=rm.Deliver(peer=peer)):
                return self._deliver(event, peer, now)
            case Request(body=rm.Send()):
                return self._send(event, now)
            case Request(body=rm.Read(id=msg_id, sender=sender)):
                return self._read(event.ctx, msg_id, sender, now)
            case Request(body=rm.Outbox(ids=ids, limit=limit)):
                return [Reply(event.ctx, rm.OutboxReply(messages=self._states(ids, limit)))]
            case Request(body=rm.Inbox(after=after, limit=limit, groups=groups)):
                if groups and not _groups_caller(event.caller):
                    return [Fail(event.ctx, ErrorCode.FORBIDDEN, "only the groups service "
                                 "reads group envelopes")]
                stored = GROUP if groups else CHAT
                rows: list[InRow] = []
                size = 0
                for r in self.store.inbox_after(after, limit, stored):
                    size += len(r.payload) + 100
                    if rows and size > INBOX_REPLY_BYTES:
                        break
                    rows.append(r)
                return [Reply(event.ctx, rm.InboxReply(messages=[rm.Stored(
                    seq=r.seq, id=r.id, sender=r.sender, timestamp_ms=r.timestamp_ms,
                    encrypted=r.encrypted, relayed=r.relayed, payload=r.payload)
                    for r in rows], tail=self.store.inbox_tail(stored)))]
            case Request(body=rm.Peers()):
                return [Reply(event.ctx, rm.PeersReply(peers=self._peer_entries()))]
            case Request(body=rm.AddPeer(node_id=node, host=host, port=port)):
                if node == self.node_id:
                    return [Fail(event.ctx, ErrorCode.INVALID, "that is this node's own id")]
                self._add_bootstrap(node, host, port)
                return [Reply(event.ctx, rm.AddPeerReply())] + self._connect(node, now)
            case PeerReplied(token=(kind, *rest)) | PeerFailed(token=(kind, *rest)):
                return self._answered(kind, rest, event, now)
            case BusEvent(body=body):
                return self._transport_event(body, now)
            case PeerRestarted(role="transport", lost=lost):
                return self._transport_restarted(lost, now)
        return super().handle(event, now)

    def _ask_id(self) -> list[Action]:
        if self._asked_id:
            return []
        self._asked_id = True
        return [Call("crypto", cm.NodeId(), _NODE_ID)]

    def _has_history(self, node: bytes) -> bool:
        return self.topo is not None and self.topo.has_history(node)

    def _started(self, node_id: bytes, now: float) -> list[Action]:
        self.node_id = node_id
        s = self.settings
        now_ms = self.now_ms()
        self.topo = Topology(node_id, max_peers=s.max_peers,
                             forget_ms=int(s.forget_after_s * 1000))
        waiting, self._waiting = self._waiting, []
        actions: list[Action] = [Reply(ctx, rm.NodeInfoReply(node_id=node_id))
                                 for ctx in waiting]
        self.stats["saved_peers_pruned"] += self.store.prune_peers(s.max_saved_peers)
        for node, host, port, boot, seen, contact in self.store.peers():
            if node == node_id:
                continue
            p = self.topo.peer(node, now_ms)
            p.host, p.port, p.bootstrap, p.last_seen_ms = host, port, boot, seen
            p.contact = contact
        for node in self.store.contacts():
            if node != node_id:
                self.topo.peer(node, now_ms).contact = True
        for node, host, port in s.bootstrap:
            self._add_bootstrap(node, host, port)
        self.quota.load(self.store.inbox_usage())
        for row in self.store.open_out(DELIVERED):
            self.out[row.id] = OutMsg(row.id, row.recipient, decode(row.envelope), row.status,
                                      row.created_ms, row.attempts, next_try=now,
                                      expires_ms=row.expires_ms, relay=row.relay or None)
        self.stats["restored_messages"] += len(self.out)
        actions.append(Call("transport", tm.Peers(), ("tpeers",)))
        actions += self._redial_contacts(now)
        return actions

    def _redial_contacts(self, now: float) -> list[Action]:
        """After a restart, dial the contacts seen last (the bootstrap peers are dialled at
        every tick anyway): a peer still holding a connection to our dead process learns
        at once that we are back, instead of when that connection times out."""
        assert self.topo is not None
        contacts = sorted((p for p in self.topo.peers.values()
                           if p.contact and not p.bootstrap and not p.connected),
                          key=lambda p: p.last_seen_ms, reverse=True)
        return [a for p in contacts[:REDIAL_CONTACTS] for a in self._connect(p.node_id, now)]

    def _add_bootstrap(self, node: bytes, host: str, port: int) -> None:
        assert self.topo is not None
        if node == self.node_id:
            return
        p = self.topo.peer(node, self.now_ms())
        gained = not p.history
        p.bootstrap = True
        if not p.connected:
            p.host, p.port = host, port
        self.store.put_peer(node, host, port, True, p.last_seen_ms, p.contact)
        if gained:
            self.quota.recount()

    # -- incoming envelopes -------------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self.stats[f"rejected_{reason}"] += 1

    def _deliver(self, req: Request, peer: bytes, now: float) -> list[Action]:
        ok: list[Action] = [Reply(req.ctx, rm.DeliverReply())]
        if len(req.blobs) != 1:
            return [Fail(req.ctx, ErrorCode.INVALID, "expected one blob: the envelope")]
        raw = req.blobs[0]
        assert self.topo is not None and self.node_id is not None
        now_ms = self.now_ms()
        try:
            env = decode(raw)
            self.topo.seen(peer, now_ms)  # the authenticated last hop
            if env.to == self.node_id and env.msg_type in _MESSAGE_TYPES:
                # a chat for us goes to crypto.open, which verifies the signature before
                # anything else; nothing here uses it before that (see _receive_chat)
                return self._receive_chat(req, env, raw, peer, now)
            if env.to == self.node_id and env.msg_type == MessageType.PEER_ANNOUNCE \
                    and not self._gossip_allowed(env, peer, now):
                return ok  # refused before its signatures cost anything
            if env.to == self.node_id and env.msg_type == MessageType.ACK:
                return ok + self._on_ack(env, now)  # verified once it is known to be ours
            if env.to == self.node_id and env.msg_type == MessageType.READ_RECEIPT:
                return ok + self._on_receipt(env, now)
            if env.to == self.node_id and env.msg_type == MessageType.GROUP_SIGNAL:
                return ok + self._signal(env, raw, now)
            env.verify()
        except EnvelopeTooLarge:
            self._reject("oversize")
            return ok
        except Unsigned:
            self._reject("unsigned")
            return ok
        except BadSignature:
            self._reject("forged")
            return ok
        except EnvelopeError:
            self._reject("malformed")
            return ok
        if env.to == self.node_id:
            if not self._fresh(env, now_ms):
                return ok
            if env.msg_type == MessageType.PEER_ANNOUNCE:
                return ok + self._on_gossip(env, now)
            self._reject("unsupported_type")
            return ok
        if self.node_id in env.via:
            return ok + self._forward(env, peer, now)
        self._reject("not_for_us")
        return ok

    def _signal(self, env: Envelope, raw: bytes, now: float) -> list[Action]:
        """A group signal for this node: fresh, within its sender's rate, then opened by
        crypto (which verifies it first) and passed on; nothing is stored or ACKed."""
        if not self._fresh_unverified(env, self.now_ms()) or \
                abs(self.now_ms() - env.timestamp_ms) > SIGNAL_MAX_AGE_MS:
            self._reject("stale_signal")
            return []
        if not self._signal_limit.take(env.sender, now):
            self._reject("signal_rate")
            return []
        return [Call("crypto", cm.Open(), ("signal", env), blobs=(raw,))]

    def _gossip_allowed(self, env: Envelope, peer: bytes, now: float) -> bool:
        """Gossip comes straight from its signer, at most ``gossip_rate`` per second."""
        if env.via or env.sender != peer:
            self._reject("gossip_not_direct")
            return False
        if not self._gossip_limit.take(peer, now):
            self._reject("gossip_rate")
            return False
        return True

    def _fresh(self, env: Envelope, now_ms: int) -> bool:
        if self._fresh_unverified(env, now_ms):
            return True
        self._reject("future" if env.timestamp_ms > now_ms else "stale")
        return False

    def _verified(self, env: Envelope) -> bool:
        """Verify here (the envelopes crypto.open does not verify first); count a refusal."""
        try:
            env.verify()
        except Unsigned:
            self._reject("unsigned")
            return False
        except BadSignature:
            self._reject("forged")
            return False
        return True

    def _receive_chat(self, req: Request, env: Envelope, raw: bytes, hop: bytes,
                      now: float) -> list[Action]:
        """A chat addressed to this node, not verified yet.

        A new one is verified once, by ``crypto.open`` (verify first, then decrypt, then
        sign the ACK), and everything else waits for its answer (:meth:`_opened`); until
        then only its exact bytes are remembered, as being opened. Any other copy (the same
        id from the same sender while one is being opened, or after one was delivered) is
        verified here before it is counted, acknowledged or opened, so a forged copy is
        rejected as forged and can neither stand in for the genuine one nor block it. So
        is an envelope whose timestamp is outside the window: it is refused as stale (or
        from the future) without costing crypto an open. A new one over the inbox quotas
        of its sender or of ``hop`` (the peer that delivered it) is refused before it costs
        anything (services/router/quota.py); its sender retries it later.
        """
        ok: list[Action] = [Reply(req.ctx, rm.DeliverReply())]
        key = (env.sender, env.id)
        inflight = self._opening.get(key)
        now_ms = self.now_ms()
        delivered = self.store.has_in(env.sender, env.id)
        if inflight is not None or delivered or not self._fresh_unverified(env, now_ms):
            if not self._verified(env) or not self._fresh(env, now_ms):
                return ok
            assert self.topo is not None
            self.topo.seen(env.sender, now_ms)
            if inflight is None or raw in inflight or delivered:
                self.stats["duplicates"] += 1
                # delivered before: acknowledge again, once more (one being opened will be)
                return ok + self._ack(env) if inflight is None else ok
            # other bytes than the copy being opened (its sender re-signed it for a new
            # path, or that copy is a forgery): open this one too; the inbox keeps one
        elif not self._room(env, hop, len(env.payload) + len(raw)):  # (plaintext ≤ payload)
            return ok
        self._opening.setdefault(key, set()).add(raw)
        # crypto signs the delivery ACK along with opening: no second call for it
        return [Call("crypto", cm.Open(ack_via=list(reversed(env.via))),
                     ("open", req.ctx, env, raw, hop), blobs=(raw,))]

    def _room(self, env: Envelope, hop: bytes, size: int) -> bool:
        """Whether the inbox quotas let this chat in (counted when they do not)."""
        why = self.quota.refusal(env.sender, hop, size)
        if why is not None:
            self.stats[f"inbox_refused_{why}"] += 1
            return False
        return True

    def _fresh_unverified(self, env: Envelope, now_ms: int) -> bool:
        """The freshness check without counting (on a timestamp not verified yet)."""
        return now_ms - self.settings.replay_window_s * 1000 <= env.timestamp_ms \
            <= now_ms + MAX_FUTURE_MS

    def _opened(self, ctx: object, env: Envelope, raw: bytes, hop: bytes,
                event: PeerReplied | PeerFailed, now: float) -> list[Action]:
        key = (env.sender, env.id)
        inflight = self._opening.get(key, set())
        inflight.discard(raw)
        if not inflight:
            self._opening.pop(key, None)
        if isinstance(event, PeerFailed):
            if event.code in RETRYABLE:  # crypto is away: the transport retries later
                return [Fail(ctx, ErrorCode.UNAVAILABLE, event.message)]
            self._reject(_OPEN_REJECTS.get(event.code) or _code_name(event.code))
            return [Reply(ctx, rm.DeliverReply())]
        # verified by crypto: now the checks that trust its fields
        now_ms = self.now_ms()
        if not self._fresh(env, now_ms):
            return [Reply(ctx, rm.DeliverReply())]  # the ACK crypto signed is not sent
        assert self.topo is not None
        payload = event.blobs[0]
        if not self.store.has_in(env.sender, env.id) \
                and not self._room(env, hop, len(payload) + len(raw)):
            return [Reply(ctx, rm.DeliverReply())]  # not stored, so not acknowledged
        kind = GROUP if env.msg_type == MessageType.GROUP else CHAT
        seq = self.store.put_in(env.id, env.sender, env.timestamp_ms, env.encrypted,
                                bool(env.via), payload, now_ms, raw, hop, kind)
        actions: list[Action] = []
        if seq is not None:
            self.quota.add(env.sender, hop, len(payload) + len(raw))
            self.topo.seen(env.sender, now_ms)
            self.stats["received"] += 1
            # after the commit, like the ACK: the app never sees a seq a crash could undo
            event_type = rm.GroupEnvelope if kind == GROUP else rm.MessageReceived
            self._held_replies.append(Publish(event_type(
                seq=seq, id=env.id, sender=env.sender, timestamp_ms=env.timestamp_ms,
                encrypted=env.encrypted, relayed=bool(env.via)), (event.blobs[0],)))
        else:
            self.stats["duplicates"] += 1  # two copies were opened at once; one is kept
        if len(event.blobs) < 2:  # a crypto that does not sign ACKs with open
            actions += self._ack(env)
        else:  # back along the path, after the commit, ahead of the transport's reply
            hop = env.via[-1] if env.via else env.sender
            self._held_replies.append(Call("transport", tm.Send(peer=hop), ("ctl_sent",),
                                           blobs=(event.blobs[1],)))
        self._held_replies.append(Reply(ctx, rm.DeliverReply()))  # after the commit
        return actions

    def _ack(self, env: Envelope) -> list[Action]:
        """The delivery ACK, back along the reversed path."""
        payload = AckPayload(env.id, AckType.RECIPIENT_RECEIVED).encode()
        return self._control(env.sender, MessageType.ACK, payload, tuple(reversed(env.via)),
                             env.encode())

    def _control(self, to: bytes, kind: str, payload: bytes,
                 via: tuple[bytes, ...], proof: bytes | None = None) -> list[Action]:
        """Seal (sign, not encrypt) a control envelope and send it to its first hop; best
        effort: the sender's retries cover a lost one. ``proof``: for an ACK or read receipt,
        the envelope it acknowledges (crypto signs acknowledgements only with it)."""
        hop = via[0] if via else to
        blobs = (payload,) if proof is None else (payload, proof)
        return [Call("crypto", cm.Seal(to=to, envelope_type=kind, via=list(via),
                                       encrypt=False), ("ctl", hop), blobs=blobs)]

    def _on_ack(self, env: Envelope, now: float) -> list[Action]:
        """An ACK for us, not verified yet: one for no message of ours is dropped without
        costing a signature check (made-up senders send those by the thousand)."""
        try:
            ack = AckPayload.decode(env.payload)
        except EnvelopeError:
            self._reject("malformed_ack")
            return []
        msg = self._outgoing(ack.original_id)
        if msg is None:
            self.stats["unknown_acks"] += 1
            return []
        if not self._verified(env) or not self._fresh(env, self.now_ms()):
            return []
        if ack.ack_type == AckType.RECIPIENT_RECEIVED:
            if env.sender != msg.to:
                self._reject("ack_not_from_recipient")
                return []
            self._heard(env.sender)
            return self._advance(msg, DELIVERED)
        if env.sender not in msg.env.via:
            self._reject("ack_not_from_relay")
            return []
        self._heard(env.sender)
        msg.next_try = max(msg.next_try, now + _backoff(msg.attempts))  # now the recipient's
        return self._advance(msg, RELAYED)

    def _heard(self, node: bytes) -> None:
        """A node we sent to answered (the only envelopes from non-neighbours that make
        the router remember a node, besides stored chats and announcements)."""
        assert self.topo is not None
        self.topo.seen(node, self.now_ms())

    def _on_receipt(self, env: Envelope, now: float) -> list[Action]:
        try:
            rr = ReadReceiptPayload.decode(env.payload)
        except EnvelopeError:
            self._reject("malformed_receipt")
            return []
        msg = self._outgoing(rr.original_id)
        if msg is None:
            self._reject("receipt_unknown")
            return []
        if not self._verified(env) or not self._fresh(env, self.now_ms()):
            return []
        if env.sender != msg.to:
            self._reject("receipt_unknown")
            return []
        self._heard(env.sender)
        return self._advance(msg, READ)

    def _forward(self, env: Envelope, peer: bytes, now: float) -> list[Action]:
        """Carry an envelope that names this node in its (signed) ``via`` one hop on.

        Only along the path its sender chose: it must come from the hop before us in
        ``via`` (or from its sender when we are first), and goes only to the hop after us
        (or to ``to``), and only when that one is connected (a relay dials nobody for a
        stranger). ``ttl`` is not signed, so it is bounded by the signed path: at
        ``via[pos]`` it is at most ``MAX_TTL - pos`` (each relay before lowered it by one),
        and a copy whose ttl was raised on the way is refused (``rejected_ttl_raised``);
        together with the check on the previous hop, a relay cannot make an envelope
        travel further than its sender allowed."""
        assert self.node_id is not None and self.topo is not None
        if not self._fresh(env, self.now_ms()):
            return []
        pos = env.via.index(self.node_id)
        if peer != (env.via[pos - 1] if pos else env.sender):
            self._reject("wrong_hop")
            return []
        if len(set(env.via)) != len(env.via) or env.sender in env.via \
                or env.to in env.via or env.to == env.sender:
            self._reject("loop")
            return []
        if env.ttl > MAX_TTL - pos:
            self._reject("ttl_raised")
            return []
        if env.ttl == 0:
            self._reject("ttl_exhausted")
            return []
        key = (env.sender, env.id)
        if now - self._forwarded.get(key, -1e9) < FORWARD_DEDUP_S:
            self.stats["forward_duplicates"] += 1
            return []
        self._forwarded[key] = now
        hop = env.via[pos + 1] if pos + 1 < len(env.via) else env.to
        nxt = self.topo.peers.get(hop)
        if nxt is None or not nxt.connected:
            self.stats["forward_unreachable"] += 1
            return []
        self.stats["forwarded"] += 1
        actions: list[Action] = [Call("transport", tm.Send(peer=hop), ("fwd",),
                                      blobs=(replace(env, ttl=env.ttl - 1).encode(),))]
        if env.msg_type in (MessageType.CHAT, MessageType.GROUP):  # no ACKs of ACKs
            back = tuple(reversed(env.via[:pos]))
            payload = AckPayload(env.id, AckType.RELAY_FORWARDED).encode()
            actions += self._control(env.sender, MessageType.ACK, payload, back, env.encode())
        return actions

    # -- outgoing messages --------------------------------------------------------------------

    def _send(self, req: Request, now: float) -> list[Action]:
        body = req.body
        assert isinstance(body, rm.Send) and self.topo is not None
        if len(req.blobs) != 1:
            return [Fail(req.ctx, ErrorCode.INVALID, "expected one blob: the payload")]
        if body.to == self.node_id:
            return [Fail(req.ctx, ErrorCode.INVALID, "cannot send a message to this node "
                         "itself")]
        if body.groups and not _groups_caller(req.caller):
            return [Fail(req.ctx, ErrorCode.FORBIDDEN, "only the groups service sends group "
                         "envelopes")]
        if len(req.blobs[0]) > MAX_PAYLOAD:
            return [Fail(req.ctx, ErrorCode.TOO_LARGE, f"payload of {len(req.blobs[0])} "
                         f"bytes exceeds {MAX_PAYLOAD}")]
        if body.id is not None and (body.id in self.out or body.id in self._sealing
                                    or self.store.get_out(body.id) is not None):
            if body.id in self._sealing:  # the first copy is being sealed: answer later
                return [Fail(req.ctx, ErrorCode.OVERLOADED, "this id is being stored; "
                             "retry")]
            return [Reply(req.ctx, rm.SendReply(id=body.id))]  # idempotent
        if len(self.out) >= self.settings.max_open_messages:
            return [Fail(req.ctx, ErrorCode.OVERLOADED, f"{len(self.out)} messages are "
                         "not delivered yet")]
        via = self._route(body.to, body.relay) or ()
        msg_id = body.id or self.rng.randbytes(16)
        if body.signal:
            if not body.groups:
                return [Fail(req.ctx, ErrorCode.INVALID, "only group payloads are signals")]
            return [Call("crypto", cm.Seal(to=body.to, envelope_type=MessageType.GROUP_SIGNAL,
                                           via=list(via), id=msg_id),
                         ("sealsig", req.ctx, msg_id), blobs=req.blobs)]
        self._sealing.add(msg_id)
        kind = MessageType.GROUP if body.groups else MessageType.CHAT
        expires_ms = 0 if body.lifetime_s is None \
            else self.now_ms() + int(body.lifetime_s * 1000)
        return [Call("crypto", cm.Seal(to=body.to, envelope_type=kind,
                                       via=list(via), encrypt=body.encrypt, id=msg_id),
                     ("seal", req.ctx, msg_id, expires_ms, body.relay), blobs=req.blobs)]

    def _sealed(self, ctx: object, msg_id: bytes, expires_ms: int, relay: bytes | None,
                event: PeerReplied | PeerFailed, now: float) -> list[Action]:
        self._sealing.discard(msg_id)
        if isinstance(event, PeerFailed):
            return [Fail(ctx, event.code, event.message)]
        env = decode(event.blobs[0])
        now_ms = self.now_ms()
        msg = OutMsg(msg_id, env.to, env, PENDING, now_ms, next_try=now,
                     expires_ms=expires_ms, relay=relay)
        self.out[msg_id] = msg
        self.store.put_out(OutRow(msg_id, env.to, event.blobs[0], PENDING, "", now_ms,
                                  now_ms, 0, expires_ms, relay or b""))
        self.stats["accepted"] += 1
        self._contact(env.to)
        self._held_replies.append(Reply(ctx, rm.SendReply(id=msg_id)))
        return [Publish(rm.StatusChanged(id=msg_id, to=env.to, status="pending"))] + \
            self._attempt(msg, now)

    def _contact(self, node: bytes) -> None:
        """This node sends to ``node``: it has history now (saved, kept, favoured)."""
        assert self.topo is not None
        p = self.topo.peer(node, self.now_ms())
        if not p.contact:
            p.contact = True
            self.store.put_peer(node, p.host, p.port, p.bootstrap, p.last_seen_ms, True)
            self._saved_peers_added = True
            self.quota.recount()

    def _attempt(self, msg: OutMsg, now: float) -> list[Action]:
        """Send (or re-send) a message along the best path of the moment."""
        assert self.topo is not None
        if msg.busy or msg.status >= DELIVERED:
            return []
        lifetime_ms = msg.expires_ms - msg.created_ms if msg.expires_ms \
            else self.settings.message_lifetime_s * 1000
        if self.wall() * 1000 - msg.created_ms > lifetime_ms:
            return self._advance(msg, FAILED, "not acknowledged within "
                                 f"{lifetime_ms / 1000:g} s")
        route = self._route(msg.to, msg.relay)
        actions: list[Action] = []
        if route != ():  # a direct path, for later messages
            actions += self._connect(msg.to, now) + self._punch(msg.to, route, now)
        if route is None:
            msg.next_try = now + RETRY_FIRST_S  # or as soon as a peer connects
            self.stats["no_route"] += 1
            return actions
        msg.busy = True
        if route != msg.env.via:  # a new path: crypto signs the new via
            unsigned = replace(msg.env, via=route, ttl=DEFAULT_TTL, signature=b"")
            return actions + [Call("crypto", cm.Sign(), ("resign", msg.id),
                                   blobs=(unsigned.encode(),))]
        msg.attempts += 1
        msg.sent_at = now
        msg.next_try = now + _backoff(msg.attempts)
        if route and msg.status < RELAYED and msg.attempts <= RELAY_FAST_TRIES:
            # a relay that forwards says so at once (RELAYED); silence means it could not
            # (its next hop had just gone, or not come back yet): ask again soon
            msg.next_try = now + min(RELAY_ACK_S, _backoff(msg.attempts))
        if msg.attempts > 1:
            self.stats["retries"] += 1
        hop = route[0] if route else msg.to
        return actions + [Call("transport", tm.Send(peer=hop), ("xmit", msg.id),
                               blobs=(msg.env.encode(),))]

    def _route(self, to: bytes, relay: bytes | None) -> tuple[bytes, ...] | None:
        """The relays to ``to`` in the topology or, when it knows no path, through
        ``relay`` (the app's hint, kept with the message) when that one is reachable: it
        forwards only if it is connected to ``to``, and says so."""
        assert self.topo is not None
        route = self.topo.route(to)
        if route is not None or relay is None or relay == to or relay == self.node_id:
            return route
        first = self.topo.route(relay)
        if first is None or relay in first or len(first) >= MAX_VIA:
            return None
        return (*first, relay)

    def _resigned(self, msg_id: bytes, event: PeerReplied | PeerFailed,
                  now: float) -> list[Action]:
        msg = self.out.get(msg_id)
        if msg is None:
            return []
        msg.busy = False
        if isinstance(event, PeerFailed):
            msg.next_try = now + RETRY_FIRST_S
            return []
        msg.env = decode(event.blobs[0])
        self.store.update_out(msg.id, msg.status, "", self.now_ms(), msg.attempts,
                              event.blobs[0])
        return self._attempt(msg, now)

    def _transmitted(self, msg_id: bytes, event: PeerReplied | PeerFailed,
                     now: float) -> list[Action]:
        msg = self.out.get(msg_id)
        if msg is None:
            return []
        msg.busy = False
        if isinstance(event, PeerReplied):
            return self._advance(msg, SENT)
        self.stats["send_failures"] += 1
        if event.code == ErrorCode.TOO_LARGE:
            return self._advance(msg, FAILED, event.message)
        if event.code == ErrorCode.OVERLOADED:
            msg.next_try = now + 0.5
            return []
        if event.code == ErrorCode.UNAVAILABLE and self.topo is not None:
            # the transport holds no connection to the hop (or is gone): our view was
            # wrong. Mark it offline, so that the next attempt dials or takes a relay (with
            # the message's backoff, set by _attempt), and dial now.
            hop = msg.env.via[0] if msg.env.via else msg.to
            p = self.topo.peers.get(hop)
            if p is not None and p.connected:
                self.stats["send_not_connected"] += 1
                self.topo.set_connected(hop, False)
                p.rtt_ms = None
                self._stalled.discard(hop)
                self._announce_dirty = True
                return [self._path_event(hop)] + self._connect(hop, now)
        return []

    def _outgoing(self, msg_id: bytes) -> OutMsg | None:
        msg = self.out.get(msg_id)
        if msg is None:
            row = self.store.get_out(msg_id)
            if row is None or row.status >= READ:
                return None
            msg = OutMsg(row.id, row.recipient, decode(row.envelope), row.status,
                         row.created_ms, row.attempts, expires_ms=row.expires_ms,
                         relay=row.relay or None)
            self.out[msg_id] = msg
        return msg

    def _advance(self, msg: OutMsg, status: int, reason: str = "") -> list[Action]:
        if msg.status == FAILED or status <= msg.status or (
                status == FAILED and msg.status >= DELIVERED):
            self.stats["stale_status_updates"] += 1
            return []
        msg.status = status
        self.store.update_out(msg.id, status, reason, self.now_ms(), msg.attempts)
        if status >= READ or status == FAILED:
            del self.out[msg.id]
        self.stats[STATUS[status]] += 1
        return [Publish(rm.StatusChanged(id=msg.id, to=msg.to, status=STATUS[status],  # type: ignore[arg-type]
                                         reason=reason))]

    def _read(self, ctx: object, msg_id: bytes, sender: bytes, now: float) -> list[Action]:
        assert self.topo is not None
        if not self.store.mark_read(sender, msg_id):
            if not self.store.has_in(sender, msg_id, CHAT):
                return [Fail(ctx, ErrorCode.INVALID, "no such message in the inbox")]
            return [Reply(ctx, rm.ReadReply())]  # read before: one receipt is enough
        via = self.topo.route(sender) or ()
        self._held_replies.append(Reply(ctx, rm.ReadReply()))
        proof = self.store.envelope_in(sender, msg_id)
        if not proof:  # stored before envelopes were kept: crypto would refuse the receipt
            self.stats["receipts_without_proof"] += 1
            return []
        return self._control(sender, MessageType.READ_RECEIPT,
                             ReadReceiptPayload(msg_id, self.now_ms()).encode(), via, proof)

    def _states(self, ids: list[bytes], limit: int) -> list[rm.MessageState]:
        rows = [r for i in ids if (r := self.store.get_out(i)) is not None] if ids \
            else self.store.latest_out(limit)
        return [rm.MessageState(id=r.id, to=r.recipient, status=STATUS[r.status],  # type: ignore[arg-type]
                                reason=r.reason, updated_ms=r.updated_ms) for r in rows]

    # -- answers to our calls -----------------------------------------------------------------

    def _answered(self, kind: str, rest: list[Any], event: PeerReplied | PeerFailed,
                  now: float) -> list[Action]:
        ok = isinstance(event, PeerReplied)
        match kind:
            case "seal":
                return self._sealed(rest[0], rest[1], rest[2], rest[3], event, now)
            case "open":
                return self._opened(rest[0], rest[1], rest[2], rest[3], event, now)
            case "resign":
                return self._resigned(rest[0], event, now)
            case "sealsig":
                if not isinstance(event, PeerReplied):
                    return [Fail(rest[0], event.code, event.message)]
                env = decode(event.blobs[0])
                self.stats["signals_sent"] += 1
                hop = env.via[0] if env.via else env.to
                return [Reply(rest[0], rm.SendReply(id=rest[1])),
                        Call("transport", tm.Send(peer=hop), ("ctl_sent",), blobs=event.blobs)]
            case "signal":
                if isinstance(event, PeerReplied) and event.blobs:
                    e = rest[0]
                    self.stats["signals_received"] += 1
                    return [Publish(rm.GroupEnvelope(
                        seq=0, id=e.id, sender=e.sender, timestamp_ms=e.timestamp_ms,
                        encrypted=e.encrypted, relayed=bool(e.via)), event.blobs[:1])]
                if isinstance(event, PeerFailed) and event.code not in RETRYABLE:
                    self._reject(_OPEN_REJECTS.get(event.code) or _code_name(event.code))
                return []
            case "xmit":
                return self._transmitted(rest[0], event, now)
            case "ctl" if ok:
                assert isinstance(event, PeerReplied)
                return [Call("transport", tm.Send(peer=rest[0]), ("ctl_sent",),
                             blobs=event.blobs)]
            case "ann_info":
                if isinstance(event, PeerReplied) and isinstance(event.body, tm.InfoReply):
                    b = event.body
                    self._own_addrs = gossip.own_addresses(
                        b.host, b.port, [(a.host, a.port) for a in b.reflexive],
                        [(a.host, a.port) for a in b.local])
                return self._seal_announce()
            case "announce" if ok:
                assert isinstance(event, PeerReplied) and self.topo is not None
                self._announcing = False
                self._own_announce = event.blobs[0]
                actions: list[Action] = []
                for peer in rest[0]:  # they are in it now: tell them at once
                    if peer in self.topo.peers and self.topo.peers[peer].connected:
                        actions += self._gossip_to(peer)
                return actions
            case "announce":
                self._announcing = False
                self._announce_dirty = True
                return []
            case "gossip" if ok:
                assert isinstance(event, PeerReplied)
                return [Call("transport", tm.Send(peer=rest[0]), ("ctl_sent",),
                             blobs=event.blobs)]
            case "tpeers" if isinstance(event, PeerReplied) \
                    and isinstance(event.body, tm.PeersReply):
                assert self.topo is not None
                held = {p.node_id for p in event.body.peers}
                actions = []
                for node, entry in list(self.topo.peers.items()):
                    if entry.connected and node not in held:  # an event we missed
                        self.stats["views_reconciled"] += 1
                        actions += self._transport_event(
                            tm.PeerDisconnected(peer=node, reason="not held"), now)
                for p in event.body.peers:
                    known = self.topo.peers.get(p.node_id)
                    if known is None or not (known.connected or p.node_id in self._stalled):
                        if known is not None:
                            self.stats["views_reconciled"] += 1
                        actions += self._transport_event(tm.PeerConnected(
                            peer=p.node_id, host=p.host, port=p.port, dialled=False), now)
                    if p.node_id in self.topo.peers and p.rtt_ms is not None:
                        self.topo.peers[p.node_id].rtt_ms = p.rtt_ms
                return actions
            case "connect" if not ok:
                assert isinstance(event, PeerFailed)
                self._connecting.pop(rest[0], None)  # may be dialled again at once
                if event.code == ErrorCode.UNAVAILABLE:
                    # our own transport is not ready (just restarted, no binding yet): the
                    # address is not at fault; what waits for this peer tries again soon
                    # instead of at its backoff
                    for msg in self.out.values():
                        if rest[0] in (msg.to, *msg.env.via[:1]) and msg.status < DELIVERED:
                            msg.next_try = min(msg.next_try, now + TRANSPORT_RETRY_S)
                elif self.topo is not None:
                    self.topo.next_address(rest[0])
                return []
            case "punch":
                self._punched(rest[0], ok, now)
                return []
        if not ok:
            assert isinstance(event, PeerFailed)
            self.stats[f"{kind}_failures"] += 1
        return []

    # -- topology, discovery ------------------------------------------------------------------

    def _transport_event(self, body: Any, now: float) -> list[Action]:
        if self.topo is None:
            return []
        match body:
            case tm.PeerConnected(peer=peer, host=host, port=port):
                self._stalled.discard(peer)
                self._connected(peer, host, port, None)
                self._connecting.pop(peer, None)
                p = self.topo.peers[peer]
                if p.history:  # strangers are never saved
                    self.store.put_peer(peer, host, port, p.bootstrap, self.now_ms(),
                                        p.contact)
                self._greet.add(peer)  # gossip once our announcement lists it
                return [self._path_event(peer)] + self._peer_up(now) \
                    + self._resend_to(peer, now)
            case tm.PeerDisconnected(peer=peer) if peer in self.topo.peers:
                self._stalled.discard(peer)
                self._greet.discard(peer)
                self.topo.set_connected(peer, False)
                self.topo.peers[peer].rtt_ms = None
                self._announce_dirty = True
                return [self._path_event(peer)] + self._reroute(peer, now)
            case tm.Path(peer=peer, path="stalled") if peer in self.topo.peers:
                if not self.topo.peers[peer].connected:
                    return []
                # route around it now; the transport drops it if it stays silent
                self.topo.set_connected(peer, False)
                self._stalled.add(peer)
                self._announce_dirty = True
                self.stats["stalled_paths"] += 1
                return [self._path_event(peer)] + self._reroute(peer, now)
            case tm.Path(peer=peer, path="direct", rtt_ms=rtt) if peer in self.topo.peers:
                p = self.topo.peers[peer]
                p.rtt_ms = rtt
                if peer in self._stalled:  # it answers again
                    self._stalled.discard(peer)
                    self.topo.set_connected(peer, True)
                    self._announce_dirty = True
                    return [self._path_event(peer)] + self._peer_up(now)
            case tm.Reflexive():  # our public address moved: punching may work now
                self._punching = {n: (now, f) if t != float("inf") else (t, f)
                                  for n, (t, f) in self._punching.items()}
        return []

    def _transport_restarted(self, lost: bool, now: float) -> list[Action]:
        """The transport's connections died with its process (or it went silent): every
        peer is offline, no dial or punch is in flight, and what it had not confirmed
        delivered is sent again at once; then the picture is rebuilt from what the new one
        holds (``transport.peers``), dialling the peers messages wait for."""
        if self.topo is None:
            return []
        self.stats["transport_restarts"] += 1
        actions: list[Action] = []
        for node, p in list(self.topo.peers.items()):
            if p.connected or node in self._stalled:
                self.topo.set_connected(node, False)
                p.rtt_ms = None
                actions.append(self._path_event(node))
        self._stalled.clear()
        self._connecting.clear()
        self._greet.clear()
        self._punching = {n: (now, f) for n, (_, f) in self._punching.items()}
        self._announce_dirty = True
        for msg in self.out.values():
            if msg.status < DELIVERED:
                msg.next_try = now
        if not lost:
            actions.append(Call("transport", tm.Peers(), ("tpeers",)))
            actions += self._redial_contacts(now)
        return actions

    def _connected(self, node: bytes, host: str, port: int, rtt: float | None) -> None:
        assert self.topo is not None
        p = self.topo.peer(node, self.now_ms())
        self.topo.set_connected(node, True)
        p.host, p.port, p.rtt_ms = host, port, rtt
        p.last_seen_ms = self.now_ms()
        self._announce_dirty = True

    def _peer_up(self, now: float) -> list[Action]:
        """A path may have appeared: retry what waits for one."""
        actions: list[Action] = []
        for msg in list(self.out.values()):
            if msg.status < SENT and not msg.busy:
                actions += self._attempt(msg, now)
        return actions

    def _connect(self, node: bytes, now: float) -> list[Action]:
        assert self.topo is not None
        p = self.topo.peers.get(node)
        if p is None or p.connected or not p.host or not p.port \
                or now < self._connecting.get(node, -1e9):
            return []
        self._connecting[node] = now + CONNECT_RETRY_S
        return [Call("transport", tm.Connect(peer=node, host=p.host, port=p.port),
                     ("connect", node), timeout_s=10.0)]

    def _punch(self, node: bytes, route: tuple[bytes, ...] | None,
               now: float) -> list[Action]:
        """Ask the transport to punch through to ``node`` when its one relay is connected
        to both of us (the relay introduces us)."""
        if route is None or len(route) != 1 \
                or now < self._punching.get(node, (-1e9, 0))[0]:
            return []
        self._punching[node] = (float("inf"), self._punching.get(node, (0.0, 0))[1])
        self.stats["punches"] += 1
        return [Call("transport", tm.Punch(peer=node, via=route[0]), ("punch", node),
                     timeout_s=15.0)]

    def _punched(self, node: bytes, ok: bool, now: float) -> None:
        failures = 0 if ok else self._punching.get(node, (0.0, 0))[1] + 1
        self.stats["punches_direct" if ok else "punches_failed"] += 1
        self._punching[node] = (now + min(PUNCH_RETRY_FIRST_S * 2 ** max(failures - 1, 0),
                                          PUNCH_RETRY_MAX_S), failures)

    def _path_event(self, node: bytes) -> Publish:
        assert self.topo is not None
        p = self.topo.peers[node]
        route = self.topo.route(node)
        return Publish(rm.PathChanged(node_id=node, path=path_kind(route),
                                      route=list(route or ()),
                                      rtt_ms=p.rtt_ms if p.connected else None))

    def _resend_to(self, peer: bytes, now: float) -> list[Action]:
        """``peer`` (re)connected: what was sent over its last connection, or to it through
        a relay, and is not acknowledged may have died with its old process or connection
        (a relay forwards into a connection it has not yet seen die): again now, over the
        path of the moment (the receiver drops duplicates)."""
        actions: list[Action] = []
        for msg in list(self.out.values()):
            hop = msg.env.via[0] if msg.env.via else msg.to
            if peer in (hop, msg.to) and SENT <= msg.status < DELIVERED and not msg.busy \
                    and now - msg.sent_at >= RESEND_AFTER_S:
                self.stats["resent_on_connect"] += 1
                actions += self._attempt(msg, now)
        return actions

    def _reroute(self, gone: bytes, now: float) -> list[Action]:
        """Send again at once what was last sent over a connection that just dropped and
        is not acknowledged yet: the next attempt takes the path of the moment."""
        actions: list[Action] = []
        for msg in list(self.out.values()):
            hop = msg.env.via[0] if msg.env.via else msg.to
            if hop == gone and SENT <= msg.status < DELIVERED and not msg.busy:
                self.stats["rerouted"] += 1
                actions += self._attempt(msg, now)
        return actions

    def _on_gossip(self, env: Envelope, now: float) -> list[Action]:
        """Announcements from a connected peer (services/router/gossip.py): each is
        verified and kept if newer than the one held; the gossiper vouches for nothing."""
        assert self.topo is not None
        now_ms = self.now_ms()
        try:
            items = gossip.read_gossip(env.payload)
        except EnvelopeError:
            self._reject("malformed_gossip")
            return []
        actions: list[Action] = []
        for raw in items:
            try:
                inner = decode(raw)
                held = self.topo.peers.get(inner.sender)
                if inner.sender == self.node_id or (
                        held is not None and inner.timestamp_ms <= held.announce_ms):
                    self.stats["gossip_known"] += 1  # not newer: no signature to check
                    continue
                inner.verify()
                ann = gossip.read_announce(inner, now_ms)
            except (EnvelopeError, BadSignature):
                self._reject("bad_announcement")
                continue
            new = self.topo.learn(ann, raw, now_ms)
            self._routes_changed = True
            self.stats["unconfirmed_edges"] += self.topo.unconfirmed(ann)
            if new:
                self.stats["discovered"] += 1
                actions.append(Publish(rm.PeerChanged(node_id=ann.node_id,
                                                      status="discovered",
                                                      username=ann.username)))
        return actions

    def _gossip_to(self, peer: bytes) -> list[Action]:
        assert self.topo is not None
        items = [self._own_announce] if self._own_announce else []
        items += [p.announce for p in self.topo.sample(peer, gossip.GOSSIP_SAMPLE)]
        if not items:
            return []
        return [Call("crypto", cm.Seal(to=peer, envelope_type=MessageType.PEER_ANNOUNCE,
                                       ttl=0, encrypt=False), ("gossip", peer),
                     blobs=(gossip.gossip_payload(items),))]

    def _seal_announce(self) -> list[Action]:
        """Sign our announcement: name, addresses, neighbours (gossip.py)."""
        assert self.topo is not None and self.node_id is not None
        greet, self._greet = frozenset(self._greet), set()
        payload = gossip.announce_payload(self.settings.username, self._own_addrs,
                                          self.topo.neighbours(gossip.MAX_NEIGHBOURS))
        return [Call("crypto", cm.Seal(to=self.node_id, envelope_type=MessageType.PEER_ANNOUNCE,
                                       ttl=0, encrypt=False), ("announce", greet),
                     blobs=(payload,))]

    def _peer_entries(self) -> list[rm.PeerEntry]:
        assert self.topo is not None
        out = []
        routes = self.topo.routes()
        for n, p in sorted(self.topo.peers.items()):
            route = routes.get(n)
            out.append(rm.PeerEntry(
                node_id=p.node_id, username=p.username,
                status="online" if p.connected else p.status,  # type: ignore[arg-type]
                connected=p.connected, path=path_kind(route), route=list(route or ()),
                host=p.host, port=p.port, rtt_ms=p.rtt_ms,
                last_seen_ms=max(0, p.last_seen_ms)))
        return out

    # -- time ---------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.topo is None:
            return None if self._asked_id else self._next_tick
        return self._next_tick

    def on_timer(self, now: float) -> list[Action]:
        if self.topo is None:  # ask crypto who we are (again, every 2 s, while it fails)
            self._next_tick = now + 2.0
            return self._ask_id()
        self._next_tick = now + TICK_S
        actions: list[Action] = []
        for msg in list(self.out.values()):
            if not msg.busy and msg.status < DELIVERED and now >= msg.next_try:
                actions += self._attempt(msg, now)
        for node, p in list(self.topo.peers.items()):
            if p.bootstrap and not p.connected:
                actions += self._connect(node, now)
        if (now >= self._next_announce or self._announce_dirty) and not self._announcing:
            # where are we? (the addresses peers see us at change), then sign
            self._next_announce = now + ANNOUNCE_S
            self._announce_dirty = False
            self._announcing = True
            actions.append(Call("transport", tm.Info(), ("ann_info",), timeout_s=2.0))
        if self._routes_changed:
            self._routes_changed = False
            actions += self._peer_up(now)
        if now >= self._next_gossip:
            self._next_gossip = now + self.settings.gossip_interval_s
            for peer in self.topo.connected():
                actions += self._gossip_to(peer)
        if now >= self._next_liveness:
            self._next_liveness = now + LIVENESS_S
            # what the transport holds, against our picture (an event missed while either
            # side restarted would otherwise leave it wrong for good)
            actions.append(Call("transport", tm.Peers(), ("tpeers",), timeout_s=2.0))
            actions += [Publish(rm.PeerChanged(node_id=n, status=s))  # type: ignore[arg-type]
                        for n, s in self.topo.liveness(self.now_ms())]
            self._forget(self.topo.removed, self.topo.removed_saved)
            self.topo.removed, self.topo.removed_saved = [], []
            self._forwarded = {k: t for k, t in self._forwarded.items()
                               if now - t < FORWARD_DEDUP_S}
            self._gossip_limit.prune(now)
            if self._saved_peers_added:
                self._saved_peers_added = False
                self.stats["saved_peers_pruned"] += self.store.prune_peers(
                    self.settings.max_saved_peers)
            cutoff = self.now_ms() - int(self.settings.replay_window_s * 1000)
            gone = self.store.purge_in(cutoff)
            if gone:
                self.stats["inbox_purged"] += sum(n for _, _, n, _ in gone)
                self.quota.remove(gone)
            self.stats["outbox_purged"] += self.store.purge_out(
                cutoff - int(self.settings.message_lifetime_s * 1000))
        return actions

    def _forget(self, nodes: list[bytes], saved: list[bytes]) -> None:
        """Peers the topology evicted or forgot: forget everything else about them."""
        for n in nodes:
            self._connecting.pop(n, None)
            self._punching.pop(n, None)
            self._stalled.discard(n)
        self.store.delete_peers(saved)

    def flush(self, now: float) -> list[Action]:
        """Once per batch: commit what the batch stored, then answer what waited for it."""
        self.store.commit()
        held, self._held_replies = self._held_replies, []
        return held

    def close(self, now: float) -> list[Action]:
        self.store.close()
        return []

    def counters(self) -> dict[str, int]:
        return dict(self.stats) | (dict(self.topo.stats) if self.topo else {})

    def queues(self) -> dict[str, int]:
        return {"waiting_node_id": len(self._waiting), "open_messages": len(self.out),
                "opening": len(self._opening), "known_peers": len(self.topo.peers)
                if self.topo else 0, "inbox_messages": self.quota.total[0],
                "inbox_bytes": self.quota.total[1],
                "inbox_strangers_bytes": self.quota.strangers[1]}
