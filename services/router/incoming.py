"""The incoming side: envelopes the transport delivers (``router.deliver``), the inbox, ACKs
and read receipts.

Every envelope is decoded and its signature verified in-process before anything else;
unsigned, forged, malformed and oversize envelopes are rejected and counted (``rejected_*``).
Then:

* addressed to us: the timestamp must lie in the replay window (``replay_window_s`` back,
  5 min ahead). A ``Chat`` that is already in the inbox (same sender and id) is not
  delivered again but acknowledged again, so a sender whose ACK was lost stops retrying; a
  new one goes to crypto.open, which also returns the signed ACK for it (``ack_via``), is
  stored in the inbox (SQLite) and only then acknowledged and the transport's call
  answered, so a crash loses nothing (the transport retries). The
  inbox is the dedup record, kept as long as the replay window: older copies fail the
  freshness check instead. ``Ack`` and ``ReadReceipt`` move the tracker, and only when they
  come from the node that can vouch for them (the recipient; a relay on the path for
  ``RelayForwarded``). ``PeerAnnounce`` carries gossip (services/router/discovery.py).
* we are in its ``via``: relayed (services/router/relay.py).
* neither: rejected (``rejected_not_for_us``): no open relay.
"""

from __future__ import annotations

from shared.core import Action, Call, Fail, PeerFailed, PeerReplied, Publish, Reply, Request
from shared.envelope import (
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
from .context import DELIVERED, READ, RELAYED, RETRYABLE, Context, groups_caller
from .discovery import Discovery
from .outgoing import Outgoing, backoff
from .relay import Relay
from .store import CHAT, GROUP, InRow

INBOX_REPLY_BYTES = 1024 * 1024
SIGNAL_RATE, SIGNAL_BURST = 20.0, 40.0
"""Group signals taken from one sender per second, and in a burst."""
SIGNAL_MAX_AGE_MS = 30_000
"""A group signal older (or further ahead) than this is stale: it only matters now."""
_MESSAGE_TYPES = frozenset({MessageType.CHAT, MessageType.GROUP})
"""Envelope types that are opened, stored in the inbox and acknowledged."""
_OPEN_REJECTS = {ErrorCode.BAD_SIGNATURE: "forged", ErrorCode.UNSIGNED: "unsigned",
                 ErrorCode.TOO_LARGE: "oversize", ErrorCode.BAD_ENVELOPE: "malformed"}
"""crypto.open's refusals, counted under the names the router's own checks use."""


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return "failed"


class Incoming:
    def __init__(self, ctx: Context, outgoing: Outgoing, relay: Relay,
                 discovery: Discovery) -> None:
        self.ctx = ctx
        self.outgoing = outgoing
        self.relay = relay
        self.discovery = discovery
        self.opening: dict[tuple[bytes, bytes], set[bytes]] = {}
        """(sender, id) of chats being opened by crypto → the exact bytes of each copy."""
        self.signal_limit = gossip.RateLimit(SIGNAL_RATE, SIGNAL_BURST)

    def deliver(self, req: Request, peer: bytes, now: float) -> list[Action]:
        ctx = self.ctx
        ok: list[Action] = [Reply(req.ctx, rm.DeliverReply())]
        if len(req.blobs) != 1:
            return [Fail(req.ctx, ErrorCode.INVALID, "expected one blob: the envelope")]
        raw = req.blobs[0]
        assert ctx.topo is not None and ctx.node_id is not None
        now_ms = ctx.now_ms()
        try:
            env = decode(raw)
            ctx.topo.seen(peer, now_ms)  # the authenticated last hop
            if env.to == ctx.node_id and env.msg_type in _MESSAGE_TYPES:
                # a chat for us goes to crypto.open, which verifies the signature before
                # anything else; nothing here uses it before that (see _receive_chat)
                return self._receive_chat(req, env, raw, peer, now)
            if env.to == ctx.node_id and env.msg_type == MessageType.PEER_ANNOUNCE \
                    and not self.discovery.gossip_allowed(env, peer, now):
                return ok  # refused before its signatures cost anything
            if env.to == ctx.node_id and env.msg_type == MessageType.ACK:
                return ok + self._on_ack(env, now)  # verified once it is known to be ours
            if env.to == ctx.node_id and env.msg_type == MessageType.READ_RECEIPT:
                return ok + self._on_receipt(env, now)
            if env.to == ctx.node_id and env.msg_type == MessageType.GROUP_SIGNAL:
                return ok + self._signal(env, raw, now)
            env.verify()
        except EnvelopeTooLarge:
            ctx.reject("oversize")
            return ok
        except Unsigned:
            ctx.reject("unsigned")
            return ok
        except BadSignature:
            ctx.reject("forged")
            return ok
        except EnvelopeError:
            ctx.reject("malformed")
            return ok
        if env.to == ctx.node_id:
            if not ctx.fresh(env, now_ms):
                return ok
            if env.msg_type == MessageType.PEER_ANNOUNCE:
                return ok + self.discovery.on_gossip(env, now)
            if env.msg_type in (MessageType.BACKUP_STORE, MessageType.BACKUP_REPLICATE):
                return ok + self.outgoing.handoff.store(env, peer)
            ctx.reject("unsupported_type")
            return ok
        if ctx.node_id in env.via:
            return ok + self.relay.forward(env, peer, now)
        if env.msg_type == MessageType.ACK and env.sender == peer:
            # the recipient of a message this node may hold, confirming it (signature
            # verified above; the backup service checks that it names a held copy)
            ctx.stats["confirmations_seen"] += 1
            return ok + [Publish(rm.Confirmation(sender=env.sender, to=env.to), (raw,))]
        ctx.reject("not_for_us")
        return ok

    def _signal(self, env: Envelope, raw: bytes, now: float) -> list[Action]:
        """A group signal for this node: fresh, within its sender's rate, then opened by
        crypto (which verifies it first) and passed on; nothing is stored or ACKed."""
        ctx = self.ctx
        if not ctx.fresh_unverified(env, ctx.now_ms()) or \
                abs(ctx.now_ms() - env.timestamp_ms) > SIGNAL_MAX_AGE_MS:
            ctx.reject("stale_signal")
            return []
        if not self.signal_limit.take(env.sender, now):
            ctx.reject("signal_rate")
            return []
        return [Call("crypto", cm.Open(), ("signal", env), blobs=(raw,))]

    def signal_opened(self, env: Envelope, event: PeerReplied | PeerFailed) -> list[Action]:
        """Crypto opened a group signal: passed on to the groups service, with no seq."""
        if isinstance(event, PeerReplied) and event.blobs:
            self.ctx.stats["signals_received"] += 1
            return [Publish(rm.GroupEnvelope(
                seq=0, id=env.id, sender=env.sender, timestamp_ms=env.timestamp_ms,
                encrypted=env.encrypted, relayed=bool(env.via)), event.blobs[:1])]
        if isinstance(event, PeerFailed) and event.code not in RETRYABLE:
            self.ctx.reject(_OPEN_REJECTS.get(event.code) or _code_name(event.code))
        return []

    def _receive_chat(self, req: Request, env: Envelope, raw: bytes, hop: bytes,
                      now: float) -> list[Action]:
        """A chat addressed to this node, not verified yet.

        A new one is verified once, by ``crypto.open`` (verify first, then decrypt, then
        sign the ACK), and everything else waits for its answer (:meth:`opened`); until
        then only its exact bytes are remembered, as being opened. Any other copy (the same
        id from the same sender while one is being opened, or after one was delivered) is
        verified here before it is counted, acknowledged or opened, so a forged copy is
        rejected as forged and can neither stand in for the genuine one nor block it. So
        is an envelope whose timestamp is outside the window: it is refused as stale (or
        from the future) without costing crypto an open. A new one over the inbox quotas
        of its sender or of ``hop`` (the peer that delivered it) is refused before it costs
        anything (services/router/quota.py); its sender retries it later.
        """
        ctx = self.ctx
        ok: list[Action] = [Reply(req.ctx, rm.DeliverReply())]
        key = (env.sender, env.id)
        inflight = self.opening.get(key)
        now_ms = ctx.now_ms()
        delivered = ctx.store.has_in(env.sender, env.id)
        if inflight is not None or delivered or not ctx.fresh_unverified(env, now_ms):
            if not ctx.verified(env) or not ctx.fresh(env, now_ms):
                return ok
            assert ctx.topo is not None
            ctx.topo.seen(env.sender, now_ms)
            if inflight is None or raw in inflight or delivered:
                ctx.stats["duplicates"] += 1
                # delivered before: acknowledge again, once more (one being opened will be)
                return ok + self._ack(env, _holder(env, hop)) if inflight is None else ok
            # other bytes than the copy being opened (its sender re-signed it for a new
            # path, or that copy is a forgery): open this one too; the inbox keeps one
        elif not self._room(env, hop, len(env.payload) + len(raw)):  # (plaintext ≤ payload)
            return ok
        self.opening.setdefault(key, set()).add(raw)
        # crypto signs the delivery ACK along with opening: no second call for it
        return [Call("crypto", cm.Open(ack_via=list(reversed(env.via))),
                     ("open", req.ctx, env, raw, hop), blobs=(raw,))]

    def _room(self, env: Envelope, hop: bytes, size: int, unless_stored: bool = False) -> bool:
        """Whether the inbox quotas let this chat in (counted when they do not);
        ``unless_stored``: or a copy of it is in the inbox already (asked only when the
        quotas refuse: an SQLite lookup spared per message)."""
        why = self.ctx.quota.refusal(env.sender, hop, size)
        if why is None or unless_stored and self.ctx.store.has_in(env.sender, env.id):
            return True
        self.ctx.stats[f"inbox_refused_{why}"] += 1
        return False

    def opened(self, req_ctx: object, env: Envelope, raw: bytes, hop: bytes,
               event: PeerReplied | PeerFailed, now: float) -> list[Action]:
        ctx = self.ctx
        key = (env.sender, env.id)
        inflight = self.opening.get(key, set())
        inflight.discard(raw)
        if not inflight:
            self.opening.pop(key, None)
        if isinstance(event, PeerFailed):
            if event.code in RETRYABLE:  # crypto is away: the transport retries later
                return [Fail(req_ctx, ErrorCode.UNAVAILABLE, event.message)]
            ctx.reject(_OPEN_REJECTS.get(event.code) or _code_name(event.code))
            return [Reply(req_ctx, rm.DeliverReply())]
        # verified by crypto: now the checks that trust its fields
        now_ms = ctx.now_ms()
        if not ctx.fresh(env, now_ms):
            return [Reply(req_ctx, rm.DeliverReply())]  # the ACK crypto signed is not sent
        assert ctx.topo is not None
        payload = event.blobs[0]
        if not self._room(env, hop, len(payload) + len(raw), unless_stored=True):
            return [Reply(req_ctx, rm.DeliverReply())]  # not stored, so not acknowledged
        kind = GROUP if env.msg_type == MessageType.GROUP else CHAT
        seq = ctx.store.put_in(env.id, env.sender, env.timestamp_ms, env.encrypted,
                               bool(env.via), payload, now_ms, raw, hop, kind)
        actions: list[Action] = []
        if seq is not None:
            ctx.quota.add(env.sender, hop, len(payload) + len(raw))
            ctx.topo.seen(env.sender, now_ms)
            ctx.stats["received"] += 1
            # after the commit, like the ACK: the app never sees a seq a crash could undo
            event_type = rm.GroupEnvelope if kind == GROUP else rm.MessageReceived
            ctx.held.append(Publish(event_type(
                seq=seq, id=env.id, sender=env.sender, timestamp_ms=env.timestamp_ms,
                encrypted=env.encrypted, relayed=bool(env.via)), (event.blobs[0],)))
        else:
            ctx.stats["duplicates"] += 1  # two copies were opened at once; one is kept
        holder = _holder(env, hop)
        if len(event.blobs) < 2:  # a crypto that does not sign ACKs with open
            actions += self._ack(env, holder)
        else:  # back along the path, after the commit, ahead of the transport's reply
            for to in (env.via[-1] if env.via else env.sender, holder):
                if to is not None:
                    ctx.held.append(Call("transport", tm.Send(peer=to), ("ctl_sent",),
                                         blobs=(event.blobs[1],)))
        ctx.held.append(Reply(req_ctx, rm.DeliverReply()))  # after the commit
        return actions

    def _ack(self, env: Envelope, holder: bytes | None = None) -> list[Action]:
        """The delivery ACK, back along the reversed path (and to the holder that delivered
        a held copy, which deletes its copy on it)."""
        payload = AckPayload(env.id, AckType.RECIPIENT_RECEIVED).encode()
        return self.ctx.control(env.sender, MessageType.ACK, payload,
                                tuple(reversed(env.via)), env.encode(), also=holder)

    def _on_ack(self, env: Envelope, now: float) -> list[Action]:
        """An ACK for us, not verified yet: one for no message of ours is dropped without
        costing a signature check (made-up senders send those by the thousand)."""
        ctx = self.ctx
        try:
            ack = AckPayload.decode(env.payload)
        except EnvelopeError:
            ctx.reject("malformed_ack")
            return []
        handed = self.outgoing.handoff.outer.get(ack.original_id)
        if handed is not None:  # a holder keeps a copy of one of our messages
            if not ctx.verified(env) or not ctx.fresh(env, ctx.now_ms()):
                return []
            return self.outgoing.handoff.confirmed(env, ack,
                                                   self.outgoing.outgoing(handed[0]))
        msg = self.outgoing.outgoing(ack.original_id)
        if msg is None:
            ctx.stats["unknown_acks"] += 1
            return []
        if ack.ack_type == AckType.HOLD_REFUSED:  # answers a BackupStore only
            ctx.reject("ack_misplaced")
            return []
        if not ctx.verified(env) or not ctx.fresh(env, ctx.now_ms()):
            return []
        if ack.ack_type == AckType.RECIPIENT_RECEIVED:
            if env.sender != msg.to:
                ctx.reject("ack_not_from_recipient")
                return []
            self._heard(env.sender)
            return self.outgoing.advance(msg, DELIVERED)
        if env.sender not in msg.env.via:
            ctx.reject("ack_not_from_relay")
            return []
        self._heard(env.sender)
        msg.next_try = max(msg.next_try, now + backoff(msg.attempts))  # now the recipient's
        return self.outgoing.advance(msg, RELAYED)

    def _heard(self, node: bytes) -> None:
        """A node we sent to answered (the only envelopes from non-neighbours that make
        the router remember a node, besides stored chats and announcements)."""
        assert self.ctx.topo is not None
        self.ctx.topo.seen(node, self.ctx.now_ms())

    def _on_receipt(self, env: Envelope, now: float) -> list[Action]:
        ctx = self.ctx
        try:
            rr = ReadReceiptPayload.decode(env.payload)
        except EnvelopeError:
            ctx.reject("malformed_receipt")
            return []
        msg = self.outgoing.outgoing(rr.original_id)
        if msg is None:
            ctx.reject("receipt_unknown")
            return []
        if not ctx.verified(env) or not ctx.fresh(env, ctx.now_ms()):
            return []
        if env.sender != msg.to:
            ctx.reject("receipt_unknown")
            return []
        self._heard(env.sender)
        return self.outgoing.advance(msg, READ)

    # -- the app's side of the inbox ------------------------------------------------------

    def read(self, req_ctx: object, msg_id: bytes, sender: bytes, now: float) -> list[Action]:
        """``router.read``: mark a message read and send its sender the read receipt, once:
        a message read before is answered with no second receipt."""
        ctx = self.ctx
        assert ctx.topo is not None
        if not ctx.store.mark_read(sender, msg_id):
            if not ctx.store.has_in(sender, msg_id, CHAT):
                return [Fail(req_ctx, ErrorCode.INVALID, "no such message in the inbox")]
            return [Reply(req_ctx, rm.ReadReply())]  # read before: one receipt is enough
        via = ctx.topo.route(sender) or ()
        ctx.held.append(Reply(req_ctx, rm.ReadReply()))
        proof = ctx.store.envelope_in(sender, msg_id)
        if not proof:  # stored before envelopes were kept: crypto would refuse the receipt
            ctx.stats["receipts_without_proof"] += 1
            return []
        return ctx.control(sender, MessageType.READ_RECEIPT,
                           ReadReceiptPayload(msg_id, ctx.now_ms()).encode(), via, proof)

    def inbox(self, req: Request, q: rm.Inbox) -> list[Action]:
        """``router.inbox``: the stored messages after ``q.after`` (all, or the unread ones;
        the oldest, or the newest), at most about 1 MiB."""
        if q.groups and not groups_caller(req.caller):
            return [Fail(req.ctx, ErrorCode.FORBIDDEN, "only the groups service "
                         "reads group envelopes")]
        store = self.ctx.store
        stored = GROUP if q.groups else CHAT
        found = store.inbox_after(q.after, q.limit, stored, q.unread, q.newest)
        rows: list[InRow] = []
        size = 0
        for r in reversed(found) if q.newest else found:  # what the size bound keeps first
            size += len(r.payload) + 100
            if rows and size > INBOX_REPLY_BYTES:
                break
            rows.append(r)
        if q.newest:
            rows.reverse()
        return [Reply(req.ctx, rm.InboxReply(messages=[rm.Stored(
            seq=r.seq, id=r.id, sender=r.sender, timestamp_ms=r.timestamp_ms,
            encrypted=r.encrypted, relayed=r.relayed, payload=r.payload, read=r.read)
            for r in rows], tail=store.inbox_tail(stored),
            unread=0 if q.groups else store.unread_count()))]

    def purge(self, cutoff: int) -> None:
        """What came before ``cutoff`` (Unix ms; the replay window) leaves the inbox (and
        the quotas)."""
        ctx = self.ctx
        gone = ctx.store.purge_in(cutoff)
        if gone:
            ctx.stats["inbox_purged"] += sum(n for _, _, n, _ in gone)
            ctx.quota.remove(gone)


def _holder(env: Envelope, hop: bytes) -> bytes | None:
    """The peer that delivered ``env`` when it is neither its sender nor on its signed path:
    a holder passing on a copy it kept for this node (backup)."""
    return None if hop == env.sender or hop in env.via else hop
