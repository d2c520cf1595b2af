"""The outgoing side: the app's messages (``router.send``), from sealing to their last status.

The message is sealed by crypto with the path of the moment, then stored in the outbox
(SQLite) before the app's request is answered; the store is committed once per batch in the
core's flush, and the replies wait for it. The tracker moves a message Pending → Sent (first
hop took it) → Relayed → Delivered → Read, or Failed with a reason; it is retried with
backoff (5 s, doubling to 60 s, immediately when a peer connects) until it is acknowledged
or ``message_lifetime_s`` passes. A retry keeps the id; when the path has changed, crypto
re-signs the envelope with the new ``via``. After a restart the open messages are loaded
and retried at once.

When a direct connection stalls or drops, the messages last sent over it that are not
acknowledged are sent again at once along the next path (a relay); a peer that connects
gets again what was sent to it (services/router/peers.py tells this part when).

A message with no path says why (its ``reason``, services/router/reasons.py), at each
attempt and as soon as a dial to its recipient fails; the status stays what it was (a
``router.status`` event with the same status and a new reason). When the failure is final
for the only address of the recipient, a chat that nothing else carries (still ``pending``,
no holder) fails at once with it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from shared.core import Action, Call, Fail, PeerFailed, PeerReplied, Publish, Reply, Request
from shared.envelope import DEFAULT_TTL, MAX_VIA, MessageType, decode
from shared.wire import ErrorCode
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from .context import (
    DELIVERED,
    FAILED,
    PENDING,
    READ,
    RELAYED,
    SENT,
    STATUS,
    Context,
    OutMsg,
    groups_caller,
    split_ids,
)
from .handoff import Handoff
from .reasons import NO_ROUTE, held, offline
from .store import OutRow
from .topology import STALE_MS

if TYPE_CHECKING:
    from .peers import Peers

MAX_PAYLOAD = 200 * 1024
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 60.0
RESEND_AFTER_S = 1.0
"""A peer that connects gets again only what was sent at least this long ago: a message
just sent through a relay is on its way (a punch completing meanwhile must not double it)."""
RELAY_ACK_S = 2.0
RELAY_FAST_TRIES = 4
"""A message sent through a relay that has not said it forwarded it is sent again after
``RELAY_ACK_S`` (its first ``RELAY_FAST_TRIES`` tries; then the usual backoff)."""


def backoff(attempts: int) -> float:
    """How long a message sent ``attempts`` times waits for its ACK before the next try."""
    return min(RETRY_FIRST_S * 2 ** (attempts - 1), RETRY_MAX_S)


class Outgoing:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sealing: set[bytes] = set()
        self.handoff = Handoff(ctx)
        self.handoff.on_held = self.held
        self.peers: Peers
        """The :class:`~.peers.Peers` that dials and punches for a path (set by the core)."""

    def send(self, req: Request, now: float) -> list[Action]:
        ctx = self.ctx
        body = req.body
        assert isinstance(body, rm.Send) and ctx.topo is not None
        if len(req.blobs) != 1:
            return [Fail(req.ctx, ErrorCode.INVALID, "expected one blob: the payload")]
        if body.to == ctx.node_id:
            return [Fail(req.ctx, ErrorCode.INVALID, "cannot send a message to this node "
                         "itself")]
        if body.groups and not groups_caller(req.caller):
            return [Fail(req.ctx, ErrorCode.FORBIDDEN, "only the groups service sends group "
                         "envelopes")]
        if len(req.blobs[0]) > MAX_PAYLOAD:
            return [Fail(req.ctx, ErrorCode.TOO_LARGE, f"payload of {len(req.blobs[0])} "
                         f"bytes exceeds {MAX_PAYLOAD}")]
        if body.id is not None and (body.id in ctx.out or body.id in self.sealing
                                    or ctx.store.has_out(body.id)):
            if body.id in self.sealing:  # the first copy is being sealed: answer later
                return [Fail(req.ctx, ErrorCode.OVERLOADED, "this id is being stored; "
                             "retry")]
            return [Reply(req.ctx, rm.SendReply(id=body.id))]  # idempotent
        if len(ctx.out) >= ctx.settings.max_open_messages:
            return [Fail(req.ctx, ErrorCode.OVERLOADED, f"{len(ctx.out)} messages are "
                         "not delivered yet")]
        via = self._route(body.to, body.relay) or ()
        msg_id = body.id or ctx.rng.randbytes(16)
        if body.signal:
            if not body.groups:
                return [Fail(req.ctx, ErrorCode.INVALID, "only group payloads are signals")]
            return [Call("crypto", cm.Seal(to=body.to, envelope_type=MessageType.GROUP_SIGNAL,
                                           via=list(via), id=msg_id),
                         ("sealsig", req.ctx, msg_id), blobs=req.blobs)]
        self.sealing.add(msg_id)
        kind = MessageType.GROUP if body.groups else MessageType.CHAT
        expires_ms = 0 if body.lifetime_s is None \
            else ctx.now_ms() + int(body.lifetime_s * 1000)
        return [Call("crypto", cm.Seal(to=body.to, envelope_type=kind,
                                       via=list(via), encrypt=body.encrypt, id=msg_id),
                     ("seal", req.ctx, msg_id, expires_ms, body.relay), blobs=req.blobs)]

    def signal_sealed(self, req_ctx: object, msg_id: bytes,
                      event: PeerReplied | PeerFailed) -> list[Action]:
        """A group signal sealed: sent once, to its first hop; not stored, not retried."""
        if not isinstance(event, PeerReplied):
            return [Fail(req_ctx, event.code, event.message)]
        env = decode(event.blobs[0])
        self.ctx.stats["signals_sent"] += 1
        hop = env.via[0] if env.via else env.to
        return [Reply(req_ctx, rm.SendReply(id=msg_id)),
                Call("transport", tm.Send(peer=hop), ("ctl_sent",), blobs=event.blobs)]

    def sealed(self, req_ctx: object, msg_id: bytes, expires_ms: int, relay: bytes | None,
               event: PeerReplied | PeerFailed, now: float) -> list[Action]:
        ctx = self.ctx
        self.sealing.discard(msg_id)
        if isinstance(event, PeerFailed):
            return [Fail(req_ctx, event.code, event.message)]
        env = decode(event.blobs[0])
        now_ms = ctx.now_ms()
        msg = OutMsg(msg_id, env.to, env, PENDING, now_ms, next_try=now,
                     expires_ms=expires_ms, relay=relay)
        ctx.out[msg_id] = msg
        ctx.store.put_out(OutRow(msg_id, env.to, event.blobs[0], PENDING, "", now_ms,
                                 now_ms, 0, expires_ms, relay or b""))
        ctx.stats["accepted"] += 1
        self.peers.contact(env.to)
        ctx.held.append(Reply(req_ctx, rm.SendReply(id=msg_id)))
        return [Publish(rm.StatusChanged(id=msg_id, to=env.to, status="pending"))] + \
            self.attempt(msg, now)

    def attempt(self, msg: OutMsg, now: float) -> list[Action]:
        """Send (or re-send) a message along the best path of the moment."""
        ctx = self.ctx
        assert ctx.topo is not None
        if msg.busy or msg.status >= DELIVERED:
            return []
        if self.expired(msg):
            lifetime_ms = self.expires_at_ms(msg) - msg.created_ms
            return self.advance(msg, FAILED, "expired: not acknowledged within "
                                f"{lifetime_ms / 1000:g} s")
        route = self._route(msg.to, msg.relay)
        actions: list[Action] = self.handoff.offer(msg, now)  # long unacknowledged: backup
        if route != ():  # a direct path, for later messages
            actions += self.peers.connect(msg.to, now) + self.peers.punch(msg.to, route, now)
        if route is None:
            msg.next_try = now + RETRY_FIRST_S  # or as soon as a peer connects
            ctx.stats["no_route"] += 1
            return actions + self.explain(msg)
        msg.busy = True
        if route != msg.env.via:  # a new path: crypto signs the new via
            unsigned = replace(msg.env, via=route, ttl=DEFAULT_TTL, signature=b"")
            return actions + [Call("crypto", cm.Sign(), ("resign", msg.id),
                                   blobs=(unsigned.encode(),))]
        msg.attempts += 1
        msg.sent_at = now
        msg.next_try = now + backoff(msg.attempts)
        if route and msg.status < RELAYED and msg.attempts <= RELAY_FAST_TRIES:
            # a relay that forwards says so at once (RELAYED); silence means it could not
            # (its next hop had just gone, or not come back yet): ask again soon
            msg.next_try = now + min(RELAY_ACK_S, backoff(msg.attempts))
        if msg.attempts > 1:
            ctx.stats["retries"] += 1
        hop = route[0] if route else msg.to
        return actions + [Call("transport", tm.Send(peer=hop), ("xmit", msg.id),
                               blobs=(msg.env.encode(),))]

    def _route(self, to: bytes, relay: bytes | None) -> tuple[bytes, ...] | None:
        """The relays to ``to`` in the topology or, when it knows no path, through
        ``relay`` (the app's hint, kept with the message) when that one is reachable: it
        forwards only if it is connected to ``to``, and says so."""
        topo = self.ctx.topo
        assert topo is not None
        route = topo.route(to)
        if route is not None or relay is None or relay == to or relay == self.ctx.node_id:
            return route
        first = topo.route(relay)
        if first is None or relay in first or len(first) >= MAX_VIA:
            return None
        return (*first, relay)

    def resigned(self, msg_id: bytes, event: PeerReplied | PeerFailed,
                 now: float) -> list[Action]:
        msg = self.ctx.out.get(msg_id)
        if msg is None:
            return []
        msg.busy = False
        if isinstance(event, PeerFailed):
            msg.next_try = now + RETRY_FIRST_S
            return []
        msg.env = decode(event.blobs[0])
        self.ctx.store.update_out(msg.id, msg.status, "", self.ctx.now_ms(), msg.attempts,
                                  event.blobs[0])
        return self.attempt(msg, now)

    def transmitted(self, msg_id: bytes, event: PeerReplied | PeerFailed,
                    now: float) -> list[Action]:
        ctx = self.ctx
        msg = ctx.out.get(msg_id)
        if msg is None:
            return []
        msg.busy = False
        if isinstance(event, PeerReplied):
            return self.advance(msg, SENT)
        ctx.stats["send_failures"] += 1
        if event.code == ErrorCode.TOO_LARGE:
            return self.advance(msg, FAILED, event.message)
        if event.code == ErrorCode.OVERLOADED:
            msg.next_try = now + 0.5
            return []
        if event.code == ErrorCode.UNAVAILABLE and ctx.topo is not None:
            # the transport holds no connection to the hop (or is gone): our view was
            # wrong; the next attempt dials or takes a relay (with the message's backoff,
            # set by attempt)
            return self.peers.not_connected(msg.env.via[0] if msg.env.via else msg.to, now)
        return []

    def outgoing(self, msg_id: bytes) -> OutMsg | None:
        """One of our messages an ACK or receipt may move (loaded when not in memory)."""
        ctx = self.ctx
        msg = ctx.out.get(msg_id)
        if msg is None:
            row = ctx.store.get_out(msg_id)
            if row is None or row.status >= READ:
                return None
            msg = OutMsg(row.id, row.recipient, decode(row.envelope), row.status,
                         row.created_ms, row.attempts, expires_ms=row.expires_ms,
                         relay=row.relay or None, holders=split_ids(row.holders),
                         reason=row.reason)
            if msg.status < DELIVERED:  # a delivered one is not kept (see ``advance``)
                ctx.out[msg_id] = msg
        return msg

    def advance(self, msg: OutMsg, status: int, reason: str = "") -> list[Action]:
        ctx = self.ctx
        if msg.status == FAILED or status <= msg.status or (
                status == FAILED and msg.status >= DELIVERED):
            ctx.stats["stale_status_updates"] += 1
            return []
        if status == READ and msg.status < DELIVERED:
            # the read receipt came before the delivery ACK (another path, or the ACK was
            # lost): read implies delivered, and a listener waiting for `delivered` sees it
            return self.advance(msg, DELIVERED) + self.advance(msg, READ)
        msg.status, msg.reason = status, reason
        # sent, relayed and delivered are redone if a crash loses them (the message is sent
        # again, its recipient acknowledges it again); read and failed are final
        ctx.store.update_out(msg.id, status, reason, ctx.now_ms(), msg.attempts,
                             lazy=status in (SENT, RELAYED, DELIVERED))
        if status >= DELIVERED:
            # done with in memory: nothing retries a delivered message, and a read receipt
            # loads it again from the outbox (``outgoing``), as after a restart (which
            # restores only the undelivered). Kept until read, every delivered message of a
            # peer that never reads stayed in memory (~1.8 KB each, bench_memory --soak) and
            # counted against ``max_open_messages``.
            ctx.out.pop(msg.id, None)
        if status >= DELIVERED:
            self.handoff.forget(msg.id)
        ctx.stats[STATUS[status]] += 1
        return [Publish(rm.StatusChanged(id=msg.id, to=msg.to, status=STATUS[status],  # type: ignore[arg-type]
                                         reason=reason, held_by=len(msg.holders)))]

    # -- why it waits -----------------------------------------------------------------------

    def why(self, msg: OutMsg) -> tuple[str, bool]:
        """Why ``msg`` has no path now, and whether that is final (reasons.py); "" while a
        dial to a recipient seen moments ago is under way (its answer says more)."""
        topo = self.ctx.topo
        assert topo is not None
        p = topo.peers.get(msg.to)
        failure = self.peers.failures.get(msg.to)
        if failure is not None and failure.final and not msg.holders and (
                p is None or not p.host or (p.host, p.port) == failure.addr):
            return failure.text, True  # (holders carry it whatever an address says)
        if p is not None and p.last_seen_ms > 0:  # it was there: it is away
            if failure is None and p.host and msg.to in self.peers.connecting \
                    and self.ctx.now_ms() - p.last_seen_ms < STALE_MS:
                return "", False
            detail = failure.detail if failure else "" if p.host else "no address known"
            return offline(self.expires_at_ms(msg), len(msg.holders), detail), False
        why = failure.text if failure is not None else \
            NO_ROUTE if p is None or not p.host else ""
        if msg.holders:  # never seen, but holders wait for it too
            return held(why, self.expires_at_ms(msg), len(msg.holders)), False
        return why, False

    def explain(self, msg: OutMsg, force: bool = False) -> list[Action]:
        """Say why ``msg`` has no path (a status event with its status and the reason, when
        the reason changed, or ``force``: its holders changed); fail it when that is final
        and nothing else carries it (a chat still pending, held by no holder)."""
        reason, final = self.why(msg)
        if final and msg.status == PENDING and not msg.holders \
                and msg.env.msg_type == MessageType.CHAT:
            self.ctx.stats["failed_unreachable"] += 1
            return self.advance(msg, FAILED, reason)
        if not force and (not reason or reason == msg.reason):
            return []
        ctx = self.ctx
        if reason and reason != msg.reason:
            msg.reason = reason
            ctx.store.update_out(msg.id, msg.status, reason, ctx.now_ms(), msg.attempts)
            ctx.stats["reasons_given"] += 1
        return [Publish(rm.StatusChanged(id=msg.id, to=msg.to, status=STATUS[msg.status],  # type: ignore[arg-type]
                                         reason=msg.reason, held_by=len(msg.holders)))]

    def explain_for(self, node: bytes, now: float) -> list[Action]:
        """A dial to ``node`` failed: every message waiting for it says why, now."""
        actions: list[Action] = []
        for msg in list(self.ctx.out.values()):
            if msg.to == node and msg.status < DELIVERED \
                    and self._route(msg.to, msg.relay) is None:
                actions += self.explain(msg)
        return actions

    def held(self, msg: OutMsg) -> list[Action]:
        """A holder took a copy of ``msg``: a status event says so (``held_by``), with
        the reason, which counts the holders."""
        if self._route(msg.to, msg.relay) is None:
            reason, _final = self.why(msg)
            if reason and reason != msg.reason:
                msg.reason = reason
                self.ctx.store.update_out(msg.id, msg.status, reason, self.ctx.now_ms(),
                                          msg.attempts)
        return [Publish(rm.StatusChanged(id=msg.id, to=msg.to, status=STATUS[msg.status],  # type: ignore[arg-type]
                                         reason=msg.reason, held_by=len(msg.holders)))]

    def states(self, ids: list[bytes], limit: int) -> list[rm.MessageState]:
        """``router.outbox``: the messages asked for, or the latest."""
        store = self.ctx.store
        rows = [r for i in ids if (r := store.get_out(i)) is not None] if ids \
            else store.latest_out(limit)
        return [rm.MessageState(id=r.id, to=r.recipient, status=STATUS[r.status],  # type: ignore[arg-type]
                                reason=r.reason, updated_ms=r.updated_ms,
                                held_by=len(r.holders) // 32) for r in rows]

    # -- when paths change ----------------------------------------------------------------

    def due(self, now: float) -> list[Action]:
        """At each tick: what waits for its next try, and what expired meanwhile (failed at
        once, not at its next try: the holders of its copies delete them at that time
        too)."""
        actions: list[Action] = []
        for msg in list(self.ctx.out.values()):
            if not msg.busy and msg.status < DELIVERED and (now >= msg.next_try
                                                            or self.expired(msg)):
                actions += self.attempt(msg, now)
        return actions

    def expires_at_ms(self, msg: OutMsg) -> int:
        """When ``msg`` fails unacknowledged (Unix ms)."""
        return msg.expires_ms or msg.created_ms + int(self.ctx.settings.message_lifetime_s
                                                      * 1000)

    def expired(self, msg: OutMsg) -> bool:
        return self.ctx.wall() * 1000 > self.expires_at_ms(msg)

    def peer_up(self, now: float) -> list[Action]:
        """A path may have appeared: retry what waits for one."""
        actions: list[Action] = []
        for msg in list(self.ctx.out.values()):
            if msg.status < SENT and not msg.busy:
                actions += self.attempt(msg, now)
        return actions

    def resend_to(self, peer: bytes, now: float) -> list[Action]:
        """``peer`` (re)connected: what was sent over its last connection, or to it through
        a relay, and is not acknowledged may have died with its old process or connection
        (a relay forwards into a connection it has not yet seen die): again now, over the
        path of the moment (the receiver drops duplicates)."""
        actions: list[Action] = []
        for msg in list(self.ctx.out.values()):
            hop = msg.env.via[0] if msg.env.via else msg.to
            if peer in (hop, msg.to) and SENT <= msg.status < DELIVERED and not msg.busy \
                    and now - msg.sent_at >= RESEND_AFTER_S:
                self.ctx.stats["resent_on_connect"] += 1
                actions += self.attempt(msg, now)
        return actions

    def reroute(self, gone: bytes, now: float) -> list[Action]:
        """Send again at once what was last sent over a connection that just dropped and
        is not acknowledged yet: the next attempt takes the path of the moment."""
        actions: list[Action] = []
        for msg in list(self.ctx.out.values()):
            hop = msg.env.via[0] if msg.env.via else msg.to
            if hop == gone and SENT <= msg.status < DELIVERED and not msg.busy:
                self.ctx.stats["rerouted"] += 1
                actions += self.attempt(msg, now)
        return actions

    def retry_now(self, node: bytes, until: float) -> None:
        """What waits for ``node`` (to it, or through it first) tries again by ``until``."""
        for msg in self.ctx.out.values():
            if node in (msg.to, *msg.env.via[:1]) and msg.status < DELIVERED:
                msg.next_try = min(msg.next_try, until)

    def retry_all(self, now: float) -> None:
        """Every open message tries again at once (the transport restarted)."""
        for msg in self.ctx.out.values():
            if msg.status < DELIVERED:
                msg.next_try = now
