"""``router.*``: the router's requests (the app API grows here)."""

from __future__ import annotations

from pydantic import Field

from .base import Message, message
from .crypto import NodeIdBytes


@message("router.node_info_reply", "reply")
class NodeInfoReply(Message):
    """Who this node is, as the router knows it."""

    node_id: bytes = Field(description="32-byte NodeId, obtained from the crypto service.")


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
    `deliveries_refused`."""

    peer: NodeIdBytes = Field(description="The peer it came from (the last hop).")
    path: str = Field(description="`direct` or `relayed`.")
