"""Hand-off to holders (backup, issue 16): a message its recipient has not acknowledged for
``backup_after_s`` is handed, as sealed, to ``backup_copies`` holders, so that it outlives
its sender being away too.

Sender side: the holders are the directly connected peers closest to the recipient's id
(XOR of the ids, so every sender with the same peers picks the same ones), the recipient
excluded. Each gets a ``BackupStore`` envelope (signed, not encrypted: its payload is
``[expires_ms, the sealed envelope]``, already encrypted to the recipient); a holder's
delivery ACK of that envelope means the copy is stored (committed) there, and the
message's ``held_by`` counts it. A holder that does not confirm is asked again after
``OFFER_AGAIN_S``; after ``MAX_OFFERS`` (or at once when it answers ``HoldRefused``: no room
there) the next closest peer is asked instead. The
message's own retries go on meanwhile: the first delivery ACK from the recipient ends it.

Holder side: a ``BackupStore`` addressed to this node goes to the backup service
(``backup.hold``, charged to the peer that handed it over); only once it is stored does the
router acknowledge it. What the backup service does next (give it to the recipient when it
is back, delete it on the recipient's ACK or at its expiry) is services/backup/core.py.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from shared.core import Action, Call, Fail, PeerFailed, PeerReplied, Publish, Reply, Request
from shared.envelope import AckPayload, AckType, Envelope, MessageType, decode
from shared.nodeid import distance
from shared.wire import ErrorCode
from shared.wire.messages import backup as bm
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm

from .context import DELIVERED, STATUS, Context, OutMsg, backup_caller

OFFER_AGAIN_S = 10.0
MAX_OFFERS = 3
MAX_HOLDERS = 8


class Handoff:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.outer: dict[bytes, tuple[bytes, bytes]] = {}
        """Id of a ``BackupStore`` envelope we sent -> (the message's id, the holder)."""
        self.offers: dict[tuple[bytes, bytes], tuple[float, int]] = {}
        """(message id, holder) -> (when last offered, how many times)."""
        self.on_held: Callable[[OutMsg], list[Action]] = lambda msg: [rm_status(msg)]
        """What to publish when a holder took a copy (the outgoing side: the status, with
        a reason that counts the holders)."""

    # -- the sender's side ----------------------------------------------------------------

    def offer(self, msg: OutMsg, now: float) -> list[Action]:
        """Hand ``msg`` to holders, if it is due and not held by enough of them."""
        ctx, s = self.ctx, self.ctx.settings
        if s.backup_after_s <= 0 or s.backup_copies <= 0 or msg.status >= DELIVERED \
                or ctx.topo is None or msg.env.msg_type != MessageType.CHAT:
            return []  # (group payloads have their own way back: the hub and resends)
        now_ms = ctx.now_ms()
        if now_ms - msg.created_ms < s.backup_after_s * 1000:
            return []
        held = set(msg.holders)
        want = s.backup_copies - len(held)
        if want <= 0:
            return []
        expires_ms = min(msg.expires_ms or msg.created_ms + int(s.message_lifetime_s * 1000),
                         msg.env.timestamp_ms + 86_400_000)
        if expires_ms <= now_ms:
            return []
        chosen: list[bytes] = []
        for node in sorted((n for n in ctx.topo.connected() if n != msg.to),
                           key=lambda n: distance(n, msg.to)):
            if len(chosen) >= want:
                break
            if node not in held and self.offers.get((msg.id, node), (0, 0))[1] < MAX_OFFERS:
                chosen.append(node)  # (one that did not take it thrice: the next closest)
        holders = [*msg.holders, *chosen][:MAX_HOLDERS]  # each copy knows the others
        payload = msgpack.packb([expires_ms, msg.env.encode(), holders], use_bin_type=True)
        out: list[Action] = []
        for node in chosen:
            last, times = self.offers.get((msg.id, node), (-1e9, 0))
            if now - last < OFFER_AGAIN_S:
                continue
            self.offers[(msg.id, node)] = (now, times + 1)
            ctx.stats["backup_offers"] += 1
            out.append(Call("crypto", cm.Seal(to=node, envelope_type=MessageType.BACKUP_STORE,
                                              encrypt=False),
                            ("bk_sealed", msg.id, node), blobs=(payload,)))
        return out

    def sealed(self, msg_id: bytes, holder: bytes,
               event: PeerReplied | PeerFailed) -> list[Action]:
        if isinstance(event, PeerFailed):
            self.ctx.stats["backup_seal_failures"] += 1
            return []
        env = decode(event.blobs[0])
        self.outer[env.id] = (msg_id, holder)
        return [Call("transport", tm.Send(peer=holder), ("ctl_sent",), blobs=event.blobs)]

    def confirmed(self, env: Envelope, ack: AckPayload, msg: OutMsg | None) -> list[Action]:
        """A holder's delivery ACK of a ``BackupStore`` (verified by the caller): the copy
        is stored there."""
        ctx = self.ctx
        mid, holder = self.outer.pop(ack.original_id, (b"", b""))
        if msg is None or mid != msg.id or env.sender != holder \
                or ack.ack_type == AckType.RELAY_FORWARDED:
            ctx.stats["backup_confirmations_ignored"] += 1
            return []
        if ack.ack_type == AckType.HOLD_REFUSED:  # no room there: the next closest, now
            last, _times = self.offers.get((msg.id, holder), (0.0, 0))
            self.offers[(msg.id, holder)] = (last, MAX_OFFERS)
            ctx.stats["backup_offers_refused"] += 1
            return []
        if holder in msg.holders:
            return []
        msg.holders = (*msg.holders, holder)
        self.offers.pop((msg.id, holder), None)
        ctx.store.set_holders(msg.id, b"".join(msg.holders))
        ctx.stats["backup_held"] += 1
        return self.on_held(msg)

    def forget(self, msg_id: bytes) -> None:
        """The message is delivered (or failed): no more offers, no more confirmations."""
        for key in [k for k in self.offers if k[0] == msg_id]:
            del self.offers[key]
        for outer in [o for o, (m, _h) in self.outer.items() if m == msg_id]:
            del self.outer[outer]

    # -- the holder's side ----------------------------------------------------------------

    def store(self, env: Envelope, peer: bytes) -> list[Action]:
        """A ``BackupStore`` (from the message's sender) or ``BackupReplicate`` (from
        another holder) for this node, signature verified: to the backup service."""
        ctx = self.ctx
        try:
            expires_ms, inner, *rest = msgpack.unpackb(env.payload, raw=False)
            holders = rest[0] if rest else []
            if type(expires_ms) is not int or not isinstance(inner, bytes) or len(rest) > 1 \
                    or not isinstance(holders, list) or len(holders) > MAX_HOLDERS or not all(
                        isinstance(h, bytes) and len(h) == 32 for h in holders):
                raise ValueError("not [expires_ms, envelope, [holders]]")
        except (ValueError, TypeError, msgpack.UnpackException):
            ctx.reject("malformed_backup")
            return []
        if env.msg_type == MessageType.BACKUP_STORE and decode_sender(inner) != env.sender:
            ctx.reject("backup_not_own")  # a sender hands over its own messages only
            return []
        return [Call("backup", bm.Hold(expires_ms=max(0, expires_ms), hop=peer,
                                       holders=holders),
                     ("bk_hold", env), blobs=(inner,), timeout_s=5.0)]

    def stored(self, env: Envelope, event: PeerReplied | PeerFailed) -> list[Action]:
        ctx = self.ctx
        if isinstance(event, PeerFailed):
            ctx.stats["backup_hold_refused"] += 1
            if event.code != ErrorCode.OVERLOADED or env.msg_type != MessageType.BACKUP_STORE:
                return []
            # no room (its share, or the store, is full): say so, so that the sender asks
            # the next holder now rather than this one again and again
            payload = AckPayload(env.id, AckType.HOLD_REFUSED).encode()
            return ctx.control(env.sender, MessageType.ACK, payload, (), env.encode())
        if env.msg_type == MessageType.BACKUP_REPLICATE:
            ctx.stats["backup_replicas"] += 1
            return []  # (the holder that sent it counts on its next look, not on an ACK)
        ctx.stats["backup_holding"] += 1
        payload = AckPayload(env.id, AckType.RECIPIENT_RECEIVED).encode()
        return ctx.control(env.sender, MessageType.ACK, payload, (), env.encode())

    def replicate(self, req: Request) -> list[Action]:
        """``router.replicate``: copies the backup service holds, to another holder."""
        body = req.body
        assert isinstance(body, rm.Replicate) and self.ctx.topo is not None
        if not backup_caller(req.caller):
            return [Fail(req.ctx, ErrorCode.FORBIDDEN, "only the backup service replicates")]
        if not req.blobs:
            return [Fail(req.ctx, ErrorCode.INVALID, "expected 1 to 16 copies")]
        p = self.ctx.topo.peers.get(body.to)
        if p is None or not p.connected:
            return [Fail(req.ctx, ErrorCode.UNAVAILABLE, "not directly connected to that node")]
        self.ctx.stats["backup_replicated"] += len(req.blobs)
        out: list[Action] = [Reply(req.ctx, rm.ReplicateReply(count=len(req.blobs)))]
        return out + [Call("crypto", cm.Seal(to=body.to, envelope_type=MessageType.BACKUP_REPLICATE,
                                             encrypt=False), ("ctl", body.to, None),
                           blobs=(payload,)) for payload in req.blobs]


def decode_sender(raw: bytes) -> bytes | None:
    try:
        return decode(raw).sender
    except ValueError:
        return None


def rm_status(msg: OutMsg) -> Publish:
    return Publish(rm.StatusChanged(id=msg.id, to=msg.to, status=STATUS[msg.status],  # type: ignore[arg-type]
                                    held_by=len(msg.holders)))
