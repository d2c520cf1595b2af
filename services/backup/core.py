"""Backup core: sealed envelopes held for offline recipients on behalf of other nodes.

What it holds is an envelope exactly as its sender's router sealed and signed it: encrypted
end to end to the recipient, so a holder stores ciphertext it cannot read, and delivers bytes
it cannot alter (the signature covers them). Each copy keeps the message's absolute expiry,
at most 24 h after the sender's signed timestamp; nothing extends it.

A copy ends in two ways only:

* the recipient's signed delivery ACK (``backup.delivered``): an ``Ack`` envelope of type
  ``RecipientReceived`` for that envelope id, signed by the copy's recipient and addressed to
  its origin. The ACK is kept (``receipts``) until the message's expiry, so the origin learns
  of the delivery when it comes back even if it was away meanwhile. Anything else is refused
  and counted: nobody but the recipient can end a copy early;
* its expiry (the timer): deleted, counted, and announced (``backup.expired``).

Storage is bounded in total and per hop by :mod:`.quota` (a shrinking share, never an
eviction). docs/architecture.md, "Backup decisions", states the rules; the router's hand-off,
the redelivery and the replication among holders build on this core.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from shared.core import (
    Action,
    Call,
    Core,
    EventReceived,
    Fail,
    Input,
    PeerFailed,
    PeerReplied,
    Publish,
    Reply,
    Request,
)
from shared.envelope import (
    AckPayload,
    AckType,
    BadSignature,
    EnvelopeError,
    MessageType,
    Unsigned,
    decode,
)
from shared.nodeid import distance
from shared.wire import ErrorCode
from shared.wire.frame import MAX_BLOBS
from shared.wire.messages import backup as bm
from shared.wire.messages import router as rm

from .quota import Quota
from .store import Held, Store

MAX_LIFETIME_MS = 86_400_000
"""A copy lives at most this long after the envelope's signed timestamp."""
MAX_FUTURE_MS = 60_000
"""Clock skew tolerated on an envelope's timestamp."""
MAX_ENVELOPE = 256 * 1024
"""Above the router's 200 KiB payload limit plus the envelope's own fields."""
PURGE_EVERY_S = 5.0
PUSH_EVERY_S = 5.0
"""A recipient (or origin) directly connected is given what is held for it at most this
often (its router drops duplicates and ACKs them again: the ACK ends the copy)."""
LOOK_EVERY_S = 10.0
"""While something is held, the router's peers are looked at this often (a path event
missed while this service restarted must not leave a copy waiting for the next one)."""
PUSH_BATCH = 256
"""Envelopes given to a node per page, in ``router.pass_on`` calls of ``MAX_BLOBS`` each;
the next page leaves when the router has taken this one, until all are given."""


@dataclass(frozen=True)
class BackupSettings:
    capacity_bytes: int = 64 * 1024 * 1024
    capacity_messages: int = 50_000
    copies: int = 3


MAX_HOLDERS = 8
REPLICATE_SETS = 64
"""Holder sets looked at per look (the rest at the next ones)."""
LEAVE_SETS = 256
"""Holder sets handed on when this service stops (a page of each)."""


class BackupCore(Core):
    role = "backup"
    handles = frozenset({bm.Hold, bm.Pending, bm.Delivered, bm.Receipts, bm.Summary})

    def __init__(self, store: Store, wall: Callable[[], float],
                 settings: BackupSettings | None = None) -> None:
        self.store = store
        self.wall = wall
        self.settings = settings or BackupSettings()
        self.quota = Quota(self.settings.capacity_bytes, self.settings.capacity_messages)
        self.hops: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
        """(origin, id) -> (the hop charged for it, its size)."""
        for origin, msg_id, hop, size in store.charges():
            self.hops[(origin, msg_id)] = (hop, size)
            self.quota.add(hop, size)
        self.stats: Counter[str] = Counter()
        self._next_purge = 0.0
        self._next_look = 0.0
        self._pushed: dict[bytes, float] = {}
        self._cursor: dict[bytes, int] = {}
        """node -> the last row of its push in progress."""
        self.node_id: bytes | None = None
        self._held: list[Action] = []
        self._leaving = 0
        """Hand-on calls (``leave``) not answered yet."""

    def now_ms(self) -> int:
        return int(self.wall() * 1000)

    def handle(self, event: Input, now: float) -> list[Action]:
        match event:
            case EventReceived(body=rm.PathChanged(node_id=node, path="direct")):
                return self._push(node, now)
            case EventReceived(body=rm.Confirmation(), blobs=(raw,)):
                return self._confirmed(raw)
            case PeerReplied(token="peers", body=rm.PeersReply(peers=peers)):
                return [a for p in peers if p.connected for a in self._push(p.node_id, now)] \
                    + self._replicate(peers)
            case PeerReplied(token="node_id", body=rm.NodeInfoReply(node_id=node_id)):
                self.node_id = node_id
                return []
            case PeerReplied(token=("replicated", _node, n)):
                self.stats["replicated"] += n
                return []
            case PeerFailed(token=("replicated", _, _)) | PeerFailed(token="node_id"):
                return []
            case PeerReplied(token="leave_peers", body=rm.PeersReply(peers=peers)):
                return self._hand_on(peers)
            case PeerReplied(token=("handed_on", _node, n)):
                self.stats["handed_on"] += n
                self._leaving -= 1
                return []
            case PeerFailed(token=("handed_on", _, _)) | PeerFailed(token="leave_peers"):
                self.stats["hand_on_failures"] += 1
                self._leaving = max(0, self._leaving - 1)
                return []
            case PeerReplied(token=("passed", node, n, last)):
                self.stats["passed_on"] += n
                return self._page(node) if last else []  # the router took it: the next
            case PeerFailed(token=("passed", node, _n, _last)):
                self._pushed.pop(node, None)  # not connected after all: at the next path
                self._cursor.pop(node, None)
                return []
            case PeerFailed(token="peers"):
                return []
        if not isinstance(event, Request):
            return []
        match event.body:
            case bm.Hold():
                return self._hold(event)
            case bm.Pending(recipient=recipient, limit=limit):
                rows = self.store.for_recipient(recipient, limit + 1)
                return [Reply(event.ctx, bm.PendingReply(
                    envelopes=[bm.HeldEnvelope(id=h.id, origin=h.origin,
                                               expires_ms=h.expires_ms) for h in rows[:limit]],
                    more=len(rows) > limit), tuple(h.envelope for h in rows[:limit]))]
            case bm.Delivered():
                return self._delivered(event)
            case bm.Receipts(origin=origin, limit=limit):
                acks = self.store.receipts(origin, limit)
                return [Reply(event.ctx, bm.ReceiptsReply(count=len(acks)), tuple(acks))]
            case bm.Summary():
                return [Reply(event.ctx, self._summary())]
        return super().handle(event, now)

    # -- holding ------------------------------------------------------------------------------

    def _hold(self, req: Request) -> list[Action]:
        body = req.body
        assert isinstance(body, bm.Hold)
        if len(req.blobs) != 1:
            return self._refuse(req, "malformed", ErrorCode.INVALID,
                                "expected one blob: the sealed envelope")
        raw = req.blobs[0]
        if len(raw) > MAX_ENVELOPE:
            return self._refuse(req, "oversize", ErrorCode.TOO_LARGE,
                                f"envelope of {len(raw)} bytes exceeds {MAX_ENVELOPE}")
        now_ms = self.now_ms()
        try:
            env = decode(raw)
            if env.msg_type != MessageType.CHAT or not env.encrypted:
                return self._refuse(req, "not_sealed", ErrorCode.INVALID,
                                    "only end-to-end encrypted chat envelopes are held")
            if env.timestamp_ms > now_ms + MAX_FUTURE_MS:
                return self._refuse(req, "future", ErrorCode.INVALID,
                                    "the envelope's timestamp is in the future")
            env.verify()
        except Unsigned:
            return self._refuse(req, "unsigned", ErrorCode.UNSIGNED, "the envelope is unsigned")
        except BadSignature:
            return self._refuse(req, "forged", ErrorCode.BAD_SIGNATURE,
                                "the envelope's signature is not its sender's")
        except EnvelopeError as e:
            return self._refuse(req, "malformed", ErrorCode.BAD_ENVELOPE, str(e))
        expires = min(body.expires_ms, env.timestamp_ms + MAX_LIFETIME_MS)
        if expires <= now_ms:
            return self._refuse(req, "expired", ErrorCode.EXPIRED,
                                "the message has no lifetime left")
        if self.store.get(env.sender, env.id) is not None:
            return [Reply(req.ctx, bm.HoldReply(expires_ms=expires, already=True))]
        if self.store.has_receipt(env.sender, env.id):  # delivered: a late replica
            self.stats["refused_delivered"] += 1
            return [Fail(req.ctx, ErrorCode.REFUSED, "that message was delivered")]
        hop = body.hop or env.sender
        why = self.quota.refusal(hop, len(raw))
        if why is not None:
            return self._refuse(req, why, ErrorCode.OVERLOADED,
                                "this node's backup store is full" if why == "full" else
                                "that origin's share of this node's backup store is used up")
        holders = b"".join(list(dict.fromkeys(body.holders))[:MAX_HOLDERS])
        self.store.put(Held(env.sender, env.id, env.to, expires, raw), hop, now_ms, holders)
        self.quota.add(hop, len(raw))
        self.hops[(env.sender, env.id)] = (hop, len(raw))
        self.stats["held"] += 1
        self.stats["held_bytes"] += len(raw)
        self._held.append(Reply(req.ctx, bm.HoldReply(expires_ms=expires, already=False)))
        return []  # the reply leaves after the commit (flush)

    def _refuse(self, req: Request, why: str, code: ErrorCode, text: str) -> list[Action]:
        self.stats[f"refused_{why}"] += 1
        return [Fail(req.ctx, code, text)]

    # -- ending a copy ------------------------------------------------------------------------

    def _delivered(self, req: Request) -> list[Action]:
        if len(req.blobs) != 1:
            return self._refuse(req, "confirmation_malformed", ErrorCode.INVALID,
                                "expected one blob: the delivery ACK envelope")
        refused, deleted = self._confirm(req.blobs[0])
        if refused is not None:
            why, code, text = refused
            return self._refuse(req, why, code, text)
        self._held.append(Reply(req.ctx, bm.DeliveredReply(deleted=deleted is not None)))
        return []

    def _confirmed(self, raw: bytes) -> list[Action]:
        """A delivery ACK the router saw pass (its signer delivered it to this node): the
        copy it names ends, and the ACK goes on to the origin if it is connected (else it
        waits in ``receipts``)."""
        refused, origin = self._confirm(raw)
        if refused is not None:
            self.stats[f"refused_{refused[0]}"] += 1
            return []
        if origin is None:
            return []
        self._held.append(Call("router", rm.PassOn(to=origin), ("passed", origin, 1, False),
                               blobs=(raw,), timeout_s=5.0))
        return []

    def _confirm(self, raw: bytes) -> tuple[tuple[str, ErrorCode, str] | None, bytes | None]:
        """Check a delivery ACK and end the copy it names: (why it is refused, or None;
        the origin of the copy deleted now, or None)."""
        try:
            ack = decode(raw)
            payload = AckPayload.decode(ack.payload) if ack.msg_type == MessageType.ACK \
                else None
            if payload is None or payload.ack_type != AckType.RECIPIENT_RECEIVED:
                return ("confirmation_not_ack", ErrorCode.INVALID, "not a delivery ACK"), None
            ack.verify()
        except Unsigned:
            return ("confirmation_unsigned", ErrorCode.UNSIGNED, "the ACK is unsigned"), None
        except BadSignature:
            return ("confirmation_forged", ErrorCode.BAD_SIGNATURE,
                    "the ACK's signature is not its sender's"), None
        except EnvelopeError as e:
            return ("confirmation_malformed", ErrorCode.BAD_ENVELOPE, str(e)), None
        origin, msg_id = ack.to, payload.original_id
        h = self.store.get(origin, msg_id)
        if h is None:
            self.stats["confirmations_unknown"] += 1
            return None, None
        if ack.sender != h.recipient:
            return ("confirmation_not_recipient", ErrorCode.INVALID,
                    "only the message's recipient can confirm its delivery"), None
        self._drop(h.origin, h.id)
        self.store.put_receipt(origin, msg_id, h.recipient, h.expires_ms, raw)
        self.stats["delivered"] += 1
        return None, origin

    # -- redelivery ---------------------------------------------------------------------------

    def _push(self, node: bytes, now: float) -> list[Action]:
        """Give a directly connected node what is held for it, page by page, and the
        delivery ACKs kept for it as an origin (through ``router.pass_on``, unchanged)."""
        if now - self._pushed.get(node, -1e9) < PUSH_EVERY_S or node in self._cursor:
            return []
        self._pushed[node] = now
        acks = self.store.receipts(node, PUSH_BATCH)
        self.stats["pushed_receipts"] += len(acks)
        out = self._calls(node, acks, last=False)
        self._cursor[node] = 0
        return out + self._page(node)

    def _page(self, node: bytes) -> list[Action]:
        """The next page of a push in progress (none left: the push ends; what is still
        held when the node next connects, or at the next look, goes again)."""
        after = self._cursor.get(node)
        rows = self.store.page(node, after, PUSH_BATCH) if after is not None else []
        if not rows:
            self._cursor.pop(node, None)
            return []
        self._cursor[node] = rows[-1][0]
        self.stats["pushed_held"] += len(rows)
        return self._calls(node, [raw for _row, raw in rows], last=True)

    def _calls(self, node: bytes, blobs: list[bytes], last: bool) -> list[Action]:
        """``router.pass_on`` calls for ``blobs``, ``MAX_BLOBS`` each; with ``last``, the
        reply to the final one asks for the next page."""
        n = len(blobs)
        return [Call("router", rm.PassOn(to=node),
                     ("passed", node, len(blobs[i:i + MAX_BLOBS]), last and i + MAX_BLOBS >= n),
                     blobs=tuple(blobs[i:i + MAX_BLOBS]), timeout_s=5.0)
                for i in range(0, n, MAX_BLOBS)]

    def _drop(self, origin: bytes, msg_id: bytes) -> None:
        self.store.delete(origin, msg_id)
        hop, size = self.hops.pop((origin, msg_id), (origin, 0))
        self.quota.remove(hop, size)

    # -- replication ("virus") ----------------------------------------------------------------

    def _replicate(self, peers: list[rm.PeerEntry]) -> list[Action]:
        """Entries whose holder set has fewer than ``copies`` members reachable now (one
        died, or left) get one more holder: the directly connected peer closest to their
        recipient outside the set (not the recipient, not the origin). Every holder of the
        set computes the same one from the same view; a copy it has already is `already`."""
        me = self.node_id
        if me is None:
            return []
        reach = {p.node_id for p in peers if p.path != "none"}
        direct = {p.node_id for p in peers if p.connected}
        out: list[Action] = []
        for holders, recipient, origin in self.store.holder_sets(REPLICATE_SETS):
            hs = [holders[i:i + 32] for i in range(0, len(holders), 32)]
            alive = [h for h in hs if h == me or h in reach]
            if len(alive) >= self.settings.copies or recipient in direct:
                continue  # enough copies, or the recipient is here (the push gives it)
            kept = hs if len(hs) < MAX_HOLDERS else alive[:MAX_HOLDERS - 1]
            out += self._copy_set(holders, hs, recipient, origin, direct, kept, "replicated")
        return out

    def _copy_set(self, holders: bytes, hs: list[bytes], recipient: bytes, origin: bytes,
                  direct: set[bytes], kept: list[bytes], token: str) -> list[Action]:
        """Hand one holder set's copies (a page) to the directly connected peer closest to
        their recipient outside the set (not the recipient, not the origin), which joins
        the set: ``kept`` and it."""
        cands = sorted((n for n in direct if n not in hs and n not in (recipient, origin)),
                       key=lambda n: distance(n, recipient))
        if not cands:
            self.stats["replicate_no_peer"] += 1
            return []
        target = cands[0]
        new = [*kept, target]
        rows = self.store.of_set(holders, recipient, origin, PUSH_BATCH)
        payloads = [msgpack.packb([exp, env, new], use_bin_type=True) for exp, env, _row in rows]
        out: list[Action] = []
        for i in range(0, len(payloads), MAX_BLOBS):
            chunk = tuple(payloads[i:i + MAX_BLOBS])
            out.append(Call("router", rm.Replicate(to=target), (token, target, len(chunk)),
                            blobs=chunk, timeout_s=2.0))
        self.store.set_holders([row for _e, _v, row in rows], b"".join(new))
        return out

    # -- leaving ------------------------------------------------------------------------------

    def leave(self, now: float) -> list[Action]:
        """This service stops (the node goes down, or just this service) while the router
        still runs: every copy is handed to the closest peer outside its set, so that what
        this node held keeps ``copies`` holders. Bounded by the service's grace; copies not
        handed on by then stay here (and with the other holders, which restore the count)."""
        if not self.quota.total_messages:
            return []
        self._leaving = 1
        out: list[Action] = [] if self.node_id is not None else [
            Call("router", rm.NodeInfo(), "node_id", timeout_s=2.0)]
        return out + [Call("router", rm.Peers(), "leave_peers", timeout_s=2.0)]

    def left(self) -> bool:
        return self._leaving == 0

    def _hand_on(self, peers: list[rm.PeerEntry]) -> list[Action]:
        me = self.node_id or b""
        direct = {p.node_id for p in peers if p.connected}
        out: list[Action] = []
        for holders, recipient, origin in self.store.holder_sets(LEAVE_SETS):
            hs = [holders[i:i + 32] for i in range(0, len(holders), 32)]
            others = [h for h in hs if h != me][:MAX_HOLDERS - 1]
            out += self._copy_set(holders, [*hs, me], recipient, origin, direct, others,
                                  "handed_on")
        self._leaving = len(out)
        return out

    # -- time ---------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return min(self._next_purge, self._next_look)

    def on_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        if now >= self._next_look:
            self._next_look = now + LOOK_EVERY_S
            if self.quota.total_messages or self.store.receipt_count():
                out.append(Call("router", rm.Peers(), "peers", timeout_s=5.0))
                if self.node_id is None:
                    out.append(Call("router", rm.NodeInfo(), "node_id", timeout_s=5.0))
        if now < self._next_purge:
            return out
        self._next_purge = now + PURGE_EVERY_S
        for origin, msg_id, recipient in self.store.expired(self.now_ms()):
            hop, size = self.hops.pop((origin, msg_id), (origin, 0))
            self.quota.remove(hop, size)
            self.stats["expired"] += 1
            self._held.append(Publish(bm.Expired(id=msg_id, origin=origin,
                                                 recipient=recipient)))
        return out

    def flush(self, now: float) -> list[Action]:
        self.store.commit()
        held, self._held = self._held, []
        return held

    def close(self, now: float) -> list[Action]:
        self.store.close()
        return []

    # -- status -------------------------------------------------------------------------------

    def _summary(self) -> bm.SummaryReply:
        q = self.quota
        origins = sorted(q.messages, key=lambda o: -q.messages[o])[:50]
        return bm.SummaryReply(
            messages=q.total_messages, bytes=q.total_bytes,
            receipts=self.store.receipt_count(),
            capacity_bytes=q.capacity_bytes, capacity_messages=q.capacity_messages,
            origins=[bm.Usage(node_id=o, messages=q.messages[o], bytes=q.bytes[o])
                     for o in origins],
            recipients=[bm.Usage(node_id=r, messages=n, bytes=b)
                        for r, n, b in self.store.by_recipient(50)])

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    def queues(self) -> dict[str, int]:
        return {"held": self.quota.total_messages, "held_bytes": self.quota.total_bytes}
