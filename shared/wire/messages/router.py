"""``router.*``: the app API, and the transport's hand-over of envelopes."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from .base import U64, Message, message
from .crypto import NodeIdBytes

EnvelopeId = Annotated[bytes, Meta(min_length=16, max_length=16)]
MAX_LIFETIME_S = 86_400
"""The longest `lifetime_s` a sender may give a message: the 24 h a backup holds it."""
Status = Literal["pending", "sent", "relayed", "delivered", "read", "failed"]
"""Message status as the sender sees it: `pending` (accepted and stored, not yet handed to a
peer), `sent` (handed to the first hop), `relayed` (a relay forwarded it), `delivered` (the
recipient acknowledged it), `read` (the recipient's app read it), or `failed` (terminal,
with a reason). It only moves forward; `failed` only from before `delivered`. A message
not delivered yet may carry a reason too (why it waits: docs/protocol.md §8.7)."""


@message("router.node_info_reply", "reply")
class NodeInfoReply(Message):
    """Who this node is, as the router knows it."""

    node_id: bytes
    """32-byte NodeId, obtained from the crypto service."""


@message("router.node_info", "request", reply=NodeInfoReply)
class NodeInfo(Message):
    """Ask the router who this node is. The router asks crypto, so this fails with
    `peer_timeout` while crypto is not running, and succeeds once it is."""


@message("router.deliver_reply", "reply")
class DeliverReply(Message):
    """The router has taken the envelope: the transport forgets it."""


@message("router.deliver", "request", reply=DeliverReply, blobs="1: the envelope")
class Deliver(Message):
    """The transport hands the router an envelope that arrived from an authenticated peer.
    A call, not an event, so nothing is lost while the router is slow or restarting: the
    transport keeps a bounded queue, retries after `peer_timeout`, `unavailable` or
    `overloaded`, and stops reading from its peers (QUIC flow control pushes back to them)
    while the queue is full. Any other error drops the envelope, counted as
    `deliveries_refused`. The router answers once it has taken the envelope (verified,
    rejected, queued for forwarding or stored); rejections are counted, not returned."""

    peer: NodeIdBytes
    """The peer it came from (the last hop)."""
    path: str
    """`direct` or `relayed`."""


# -- the app API ------------------------------------------------------------------------------

@message("router.send_reply", "reply")
class SendReply(Message):
    """The message is stored (it survives a router restart) and will be retried until it
    is delivered or fails; its status changes arrive as `router.status` events."""

    id: EnvelopeId
    """The message's envelope id."""


@message("router.send", "request", reply=SendReply, blobs="1: the payload (plaintext)")
class Send(Message):
    """Send a chat message to a node: encrypted end to end (unless `encrypt` is false),
    signed, routed directly or through relays, retried until acknowledged. Fails with
    `invalid` (sending to ourselves, no blob), `too_large` (payload over 200 KiB) or
    `overloaded` (too many undelivered messages)."""

    to: NodeIdBytes
    """Recipient node id."""
    id: EnvelopeId | None = None
    """Envelope id chosen by the app (16 bytes), so that re-sending after a lost reply is
    idempotent; default: a fresh random id."""
    encrypt: bool = True
    """Encrypt end to end."""
    groups: bool = False
    """For the recipient's groups service (envelope type `Group`) instead of its apps (`Chat`); only
    the groups service may send these (`forbidden` to other bus keys)."""
    lifetime_s: Annotated[float, Meta(gt=0, le=MAX_LIFETIME_S)] | None = None
    """Fail it if it is not acknowledged within this many seconds; default `[router]
    message_lifetime_s`."""
    signal: bool = False
    """With `groups`: send it once, now, along the path of the moment (envelope type `GroupSignal`):
    not stored, not retried, not acknowledged, not kept in the recipient's inbox (liveness beats and
    probes). No status events."""
    relay: NodeIdBytes | None = None
    """A node to relay through while this router knows no path to `to` of its own (the groups
    service names a group's hub, which every member reaches): the path the router finds is used
    first, always."""


@message("router.read_reply", "reply")
class ReadReply(Message):
    """The message is marked read (on disk) and, the first time, its read receipt is on its
    way (best effort: receipts are not retried)."""


@message("router.read", "request", reply=ReadReply)
class Read(Message):
    """The app has shown a received message to its user: mark it read in the inbox (kept
    across restarts; `router.inbox` `unread` leaves it out from then on) and send a read
    receipt to the sender. Idempotent: a message marked read before is answered again with
    no second receipt. Fails with `invalid` for a message that is not in the inbox."""

    id: EnvelopeId
    """The received message's envelope id."""
    sender: NodeIdBytes
    """Who sent it."""


class MessageState(Message):
    """Where one sent message stands."""

    id: EnvelopeId
    """Envelope id."""
    to: NodeIdBytes
    """Recipient."""
    status: Status
    """See `router.status`."""
    reason: str = ""
    """Why it failed; or, not delivered yet, why it waits (no route, the last dial's failure, the
    recipient offline and where the message is held until when); empty otherwise."""
    updated_ms: U64
    """When the status last changed, Unix milliseconds."""
    held_by: int = 0
    """Holders that confirmed they keep a copy for the recipient (backup hand-off), until it is
    delivered or expires."""


@message("router.outbox_reply", "reply")
class OutboxReply(Message):
    """The statuses asked for (unknown ids are left out)."""

    messages: list[MessageState]
    """One per known id."""


@message("router.outbox", "request", reply=OutboxReply)
class Outbox(Message):
    """Statuses of sent messages: those listed, or (no ids) the most recent ones."""

    ids: Annotated[list[EnvelopeId], Meta(max_length=1000)] = []
    """Message ids; empty: the latest `limit`."""
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    """How many, when no ids are given."""


class Received(Message):
    """A message received, verified and decrypted (the payload travels as a blob)."""

    seq: U64
    """Position in this node's inbox, increasing: an app that remembers the last one it handled
    fetches from there after a gap."""
    id: EnvelopeId
    """Envelope id."""
    sender: NodeIdBytes
    """Who sent it (its signature verified)."""
    timestamp_ms: U64
    """The sender's creation time, Unix milliseconds."""
    encrypted: bool
    """Whether it was end-to-end encrypted."""
    relayed: bool
    """Whether it came through one or more relays."""
    verified: bool = True
    """Always true: unsigned or forged envelopes never reach an app."""


class Stored(Received):
    """A received message with its payload (plaintext)."""

    payload: bytes
    read: bool = False
    """Whether an app marked it read (`router.read`)."""


@message("router.inbox_reply", "reply")
class InboxReply(Message):
    """Received messages after `after`, oldest first: at most `limit`, and no more than
    about 1 MiB of payload per reply (always at least one)."""

    messages: list[Stored]
    tail: U64 = 0
    """The seq of the newest message in the inbox (0 if none): where an app that wants only new
    messages starts."""
    unread: U64 = 0
    """How many messages in the inbox are not marked read (all of them, not only those after
    `after`; 0 with `groups`)."""


@message("router.inbox", "request", reply=InboxReply)
class Inbox(Message):
    """Received messages with `seq` above `after` (the inbox keeps 24 h)."""

    after: U64 = 0
    """Last seq already handled; 0: from the start."""
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    """At most this many."""
    groups: bool = False
    """Read the groups service's envelopes instead of the apps' messages (`forbidden` to other bus
    keys); both share one seq."""
    unread: bool = False
    """Only messages not marked read (`router.read`): what arrived while no app showed it."""
    newest: bool = False
    """The newest `limit` messages after `after` instead of the oldest (still in seq order; the 1
    MiB bound then drops the oldest): an app that shows only the latest page of a long backlog."""


class PeerEntry(Message):
    """A node this router knows about."""

    node_id: NodeIdBytes
    username: str = ""
    """From its signed announcement."""
    status: Literal["online", "stale", "offline"]
    """`online`: connected or heard from in the last 20 s; `stale`: silent 20-45 s; `offline`:
    longer (forgotten after an hour, unless it is a bootstrap peer or a node this node has sent to).
    """
    connected: bool
    """A transport connection to it is up."""
    path: Literal["direct", "relayed", "none"] = "none"
    """How a message to it would travel now: over a direct connection, through relays (`route`), or
    not at all yet."""
    route: list[NodeIdBytes] = []
    """Relays a message to it would go through now (empty: direct or none)."""
    host: str = ""
    """Last known address."""
    port: int = 0
    """Last known port."""
    rtt_ms: float | None = None
    """Transport RTT when connected."""
    last_seen_ms: U64 = 0
    """Last time we heard from or about it."""


@message("router.peers_reply", "reply")
class PeersReply(Message):
    peers: list[PeerEntry]


@message("router.peers", "request", reply=PeersReply)
class Peers(Message):
    """Every node the router knows: connected ones, and those learned from announcements
    (at most `[router] max_peers`)."""


@message("router.add_peer_reply", "reply")
class AddPeerReply(Message):
    """The peer is remembered; the connection is made in the background (watch
    `router.peer`)."""


@message("router.add_peer", "request", reply=AddPeerReply)
class AddPeer(Message):
    """Introduce a node (a bootstrap peer): the router connects to it, keeps it, and learns
    the rest of the network through it."""

    node_id: NodeIdBytes
    host: Annotated[str, Meta(min_length=1, max_length=255)]
    port: Annotated[int, Meta(ge=1, le=65535)]


@message("router.message", "event", blobs="1: the payload (plaintext)")
class MessageReceived(Received):
    """A message arrived for the app. Events can be missed (an app that was not
    subscribed); `router.inbox` returns them by `seq`."""


@message("router.group_envelope", "event", blobs="1: the payload (plaintext)")
class GroupEnvelope(Received):
    """A `Group` envelope arrived for the groups service, stored in the inbox (kind
    `group`) before it was acknowledged. The groups service handles it when `seq` follows
    the last one it handled, and otherwise reads what it missed with `router.inbox`. A
    `GroupSignal` (sent with `signal`) arrives with `seq` 0: it is in no inbox."""


@message("router.confirmation", "event", blobs="1: the ACK envelope, as signed")
class Confirmation(Message):
    """A delivery ACK that is not for this node came from its own signer: the recipient of a
    message this node may hold for someone (backup), confirming that it arrived. Its
    signature is verified; the backup service checks that it names a copy it holds."""

    sender: NodeIdBytes
    """Who signed it (the recipient of the message)."""
    to: NodeIdBytes
    """Whom it is addressed to (the message's sender)."""


@message("router.pass_on_reply", "reply")
class PassOnReply(Message):
    """The envelopes are with the transport, on the connection to `to`."""

    count: int


@message("router.pass_on", "request", reply=PassOnReply,
         blobs="1-16: signed envelopes, as their signers made them")
class PassOn(Message):
    """Send envelopes this node holds for others, unchanged, to a directly connected peer:
    held messages to their recipient, delivery ACKs to their origin (the backup service's
    redelivery). Only the backup service may use it (`forbidden`); `unavailable` when `to`
    is not directly connected now."""

    to: NodeIdBytes


@message("router.replicate_reply", "reply")
class ReplicateReply(Message):
    """The copies are on their way (best effort: the next look sends them again if the
    holder set still lacks them)."""

    count: int


@message("router.replicate", "request", reply=ReplicateReply,
         blobs="1-16: msgpack [expires_ms, envelope, [holder ids]], one per copy")
class Replicate(Message):
    """Hand copies this node holds to another holder, each in a signed `BackupReplicate`
    envelope (protocol.md §8.9). Only the backup service may use it (`forbidden`);
    `unavailable` when `to` is not directly connected now."""

    to: NodeIdBytes


@message("router.status", "event")
class StatusChanged(Message):
    """A sent message's status moved (see `router.send`), or, with the same status, its
    reason changed or more holders keep it."""

    id: EnvelopeId
    to: NodeIdBytes
    status: Status
    reason: str = ""
    """`failed`: why (final). Before `delivered`: why it waits, as soon as the router knows
    (`unreachable: no route ...`, `unreachable: nothing listening at ...`, `dns: ...`, `recipient
    offline: held for delivery until ..., on this node and by N holders`); empty once it moved on.
    docs/protocol.md §8.7."""
    held_by: int = 0
    """Holders keeping a copy for the recipient (backup hand-off); a status event with the same
    status says it grew."""


@message("router.peer", "event")
class PeerChanged(Message):
    """A node came online, went stale or offline, or was discovered."""

    node_id: NodeIdBytes
    status: Literal["online", "stale", "offline", "discovered"]
    username: str = ""


@message("router.path", "event")
class PathChanged(Message):
    """The path to a node changed: a direct connection came up (a hole punch, a dial, the
    peer dialled), or went down and messages now go through relays (or nowhere)."""

    node_id: NodeIdBytes
    path: Literal["direct", "relayed", "none"]
    route: list[NodeIdBytes] = []
    """The relays, when relayed."""
    rtt_ms: float | None = None
    """Transport RTT of a direct path."""
