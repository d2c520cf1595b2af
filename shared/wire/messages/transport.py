"""``transport.*``: the QUIC transport's requests and events (envelopes travel as blobs)."""

from __future__ import annotations

from pydantic import Field

from .base import U64, Message, message
from .crypto import NodeIdBytes


@message("transport.info_reply", "reply")
class InfoReply(Message):
    """Where the transport listens and whether it can authenticate peers yet."""

    node_id: bytes = Field(description="This node's id (empty until crypto signed the "
                           "transport binding).")
    host: str = Field(description="Local UDP address.")
    port: U64 = Field(description="Local UDP port.")
    ready: bool = Field(description="True once the transport binding is signed.")


@message("transport.info", "request", reply=InfoReply)
class Info(Message):
    """Ask for the transport's address and state."""


@message("transport.connect_reply", "reply")
class ConnectReply(Message):
    """The peer is connected and authenticated."""


@message("transport.connect", "request", reply=ConnectReply)
class Connect(Message):
    """Open (or reuse) an authenticated connection to `peer` at `host:port`. Answered once
    the peer has proven its node id; `failed` if it cannot, `peer_timeout` if it does not
    answer, `unavailable` while the transport has no signed binding yet."""

    peer: NodeIdBytes = Field(description="The node expected at that address.")
    host: str = Field(min_length=1, max_length=255, description="IP address.")
    port: int = Field(ge=1, le=65535, description="UDP port.")


@message("transport.send_reply", "reply")
class SendReply(Message):
    """The envelope is queued on the peer's connection; QUIC retransmits it until the peer
    acknowledges it or the connection ends (end-to-end delivery is the router's ACK)."""


@message("transport.send", "request", reply=SendReply, blobs="1: the envelope")
class Send(Message):
    """Send an envelope to a connected peer, over whichever side opened the connection.
    `unavailable` if there is no connection, `too_large` over the frame limit,
    `overloaded` while the peer's connection already holds 8 MiB not yet acknowledged
    (retry later; counted as `send_backpressure`)."""

    peer: NodeIdBytes = Field(description="Recipient of this hop.")


class PeerInfo(Message):
    """One connected peer."""

    node_id: NodeIdBytes = Field(description="The authenticated peer.")
    host: str = Field(description="Its address as seen from here.")
    port: U64 = Field(description="Its UDP port.")
    dialled: bool = Field(description="True if this node opened the connection.")
    path: str = Field(description="`direct` or `relayed`.")
    rtt_ms: float = Field(description="Smoothed round-trip time, milliseconds.")


@message("transport.peers_reply", "reply")
class PeersReply(Message):
    """The connected, authenticated peers."""

    peers: list[PeerInfo] = Field(default_factory=list, description="One entry per peer.")


@message("transport.peers", "request", reply=PeersReply)
class Peers(Message):
    """List connected peers with path and RTT (`tom peers`)."""


@message("transport.peer_connected", "event")
class PeerConnected(Message):
    """A peer proved its node id on a new connection."""

    peer: NodeIdBytes = Field(description="The peer.")
    host: str = Field(description="Its address.")
    port: U64 = Field(description="Its UDP port.")
    dialled: bool = Field(description="True if this node opened the connection.")


@message("transport.peer_disconnected", "event")
class PeerDisconnected(Message):
    """A peer's connection ended."""

    peer: NodeIdBytes = Field(description="The peer.")
    reason: str = Field(description="Why it ended.")


@message("transport.path", "event")
class Path(Message):
    """The path to a connected peer: sent when it is authenticated, then whenever its
    smoothed RTT moves by more than a quarter (at least 1 ms)."""

    peer: NodeIdBytes = Field(description="The peer.")
    host: str = Field(description="Its address.")
    port: U64 = Field(description="Its UDP port.")
    path: str = Field(description="`direct` or `relayed`.")
    rtt_ms: float = Field(description="Smoothed round-trip time, milliseconds.")
