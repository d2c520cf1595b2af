"""``backup.*``: sealed envelopes held for offline recipients on behalf of other nodes.

The backup service holds envelopes exactly as their sender's router sealed and signed them
(end-to-end encrypted to the recipient: never plaintext), until the recipient's signed
delivery ACK says they arrived, or until their absolute expiry (at most 24 h after the
sender created them). docs/architecture.md, "Backup decisions", has the rules.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import U64, Message, message
from .crypto import NodeIdBytes
from .router import EnvelopeId


@message("backup.hold_reply", "reply")
class HoldReply(Message):
    """The envelope is stored (committed) here, or was already."""

    expires_ms: U64
    """When this node deletes it, Unix ms."""
    already: bool
    """It was held before (the request changed nothing)."""


@message("backup.hold", "request", reply=HoldReply,
         blobs="1: the sealed envelope, as its sender signed it")
class Hold(Message):
    """Hold one sealed envelope (blob 0, as its sender's router signed it) for its offline
    recipient. Refused with `invalid` (not a signed chat envelope, addressed to this node,
    or no expiry left), `bad_signature`, `expired`, `too_large`, or `overloaded` (its
    origin's share or the store is full: the origin may try another holder)."""

    expires_ms: U64
    """The message's absolute expiry, Unix ms; cut to 24 h after the envelope's signed timestamp (a
    copy never lives longer than the original)."""
    hop: NodeIdBytes | None = None
    """The peer that handed it over, which its quota share is charged to (connections cost, node ids
    do not); default: the envelope's sender."""
    holders: Annotated[list[NodeIdBytes], Meta(max_length=8)] = []
    """The nodes meant to hold it (this one among them): when fewer of them stay reachable than
    there are copies to keep, this holder hands a copy to the next one."""


class HeldEnvelope(Message):
    """One envelope held for a recipient (its bytes are the blob of the same index)."""

    id: EnvelopeId
    """Envelope id."""
    origin: NodeIdBytes
    """Who sent (and signed) it."""
    expires_ms: U64


@message("backup.pending_reply", "reply", blobs="one per entry: the sealed envelope")
class PendingReply(Message):
    """The envelopes held for the recipient, oldest first; one blob per entry."""

    envelopes: list[HeldEnvelope]
    more: bool
    """More are held than `limit`."""


@message("backup.pending", "request", reply=PendingReply)
class Pending(Message):
    """What this node holds for ``recipient`` (to deliver when it is back)."""

    recipient: NodeIdBytes
    limit: Annotated[int, Meta(ge=1, le=16)] = 16
    """At most this many (one blob each: a bus message carries 16)."""


@message("backup.delivered_reply", "reply")
class DeliveredReply(Message):
    """The copy is deleted (or was not held); the ACK is kept for its origin."""

    deleted: bool
    """A held copy was deleted now."""


@message("backup.delivered", "request", reply=DeliveredReply,
         blobs="1: the recipient's signed delivery ACK envelope")
class Delivered(Message):
    """The recipient's signed delivery ACK (blob 0, the `Ack` envelope it sent the origin):
    delete the copy it acknowledges and keep the ACK for the origin until the message's
    expiry. Refused (`unsigned`, `bad_signature`, `invalid`: not a delivery ACK, or not
    signed by the recipient of the copy it names) and counted: only the recipient can end
    a copy before its expiry."""


@message("backup.receipts_reply", "reply", blobs="one per ACK envelope")
class ReceiptsReply(Message):
    """Delivery ACKs kept for the origin, one blob each (signed by their recipients)."""

    count: int


@message("backup.receipts", "request", reply=ReceiptsReply)
class Receipts(Message):
    """The delivery ACKs this node keeps for ``origin`` (to hand to it when it is back)."""

    origin: NodeIdBytes
    limit: Annotated[int, Meta(ge=1, le=16)] = 16
    """At most this many (one blob each: a bus message carries 16)."""


class Usage(Message):
    """What one node has this node hold: counts and bytes only."""

    node_id: NodeIdBytes
    messages: int
    bytes: int


@message("backup.summary_reply", "reply")
class SummaryReply(Message):
    """Counts only: never ids, never contents."""

    messages: int
    bytes: int
    receipts: int
    capacity_bytes: int
    capacity_messages: int
    origins: list[Usage]
    """Who stores here, most first (at most 50)."""
    recipients: list[Usage]
    """For whom, most first (at most 50)."""


@message("backup.summary", "request", reply=SummaryReply)
class Summary(Message):
    """What this node holds for others (for `tom backup` and `tom node status`)."""


@message("backup.expired", "event")
class Expired(Message):
    """A held envelope reached its expiry undelivered and was deleted here."""

    id: EnvelopeId
    origin: NodeIdBytes
    recipient: NodeIdBytes
