"""``transport.*``: the QUIC transport's requests and events (envelopes travel as blobs)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import U64, Message, message
from .crypto import NodeIdBytes


class SocketAddr(Message):
    """An IP address and UDP port."""

    host: str
    """IP address."""
    port: U64
    """UDP port."""


@message("transport.info_reply", "reply")
class InfoReply(Message):
    """Where the transport listens and whether it can authenticate peers yet."""

    node_id: bytes
    """This node's id (empty until crypto signed the transport binding)."""
    host: str
    """Local UDP address."""
    port: U64
    """Local UDP port."""
    ready: bool
    """True once the transport binding is signed."""
    local: list[SocketAddr] = []
    """The candidates this node tells peers, in order: a port mapping's address (PCP/NAT-PMP), the
    configured advertised addresses, then this socket's interface addresses."""
    reflexive: list[SocketAddr] = []
    """The addresses connected peers see this node at (behind a NAT: its public mappings), most
    reported first."""
    mapped: list[SocketAddr] = []
    """The public address and port the home router forwards to this socket at the transport's
    request (PCP or NAT-PMP, `[transport] port_mapping`): where a peer outside reaches it even
    behind a symmetric NAT. Empty without one."""


@message("transport.info", "request", reply=InfoReply)
class Info(Message):
    """Ask for the transport's address and state."""


@message("transport.connect_reply", "reply")
class ConnectReply(Message):
    """The peer is connected and authenticated."""


@message("transport.connect", "request", reply=ConnectReply)
class Connect(Message):
    """Open (or reuse) an authenticated connection to `peer` at `host:port`. Answered once
    the peer has proven its node id; `unavailable` while the transport has no signed
    binding yet. A failure's message starts with what went wrong, for the person who
    asked: `refused:` (`failed`: something else answers there, a different node, named,
    or one that proves no node id), `unreachable:` (`failed` when the network says
    nothing listens there or the host is unreachable, an ICMP error, known at once;
    `peer_timeout` when nothing answered within 10 s or the connection broke before it
    was authenticated) or `dns:` (`failed`: the name does not exist; `peer_timeout`: the
    resolver did not answer within `[transport] resolve_timeout_s` or said to try again).
    A host name is resolved off the transport's event loop (`overloaded` while 8 names are
    being resolved); a malformed host (control characters, a label over 63 bytes, another
    address family) is `invalid`."""

    peer: NodeIdBytes
    """The node expected at that address."""
    host: Annotated[str, Meta(min_length=1, max_length=255)]
    """IP address, or a host name (resolved off the event loop, with a timeout)."""
    port: Annotated[int, Meta(ge=1, le=65535)]
    """UDP port."""


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

    peer: NodeIdBytes
    """Recipient of this hop."""


class PeerInfo(Message):
    """One connected peer."""

    node_id: NodeIdBytes
    """The authenticated peer."""
    host: str
    """Its address as seen from here."""
    port: U64
    """Its UDP port."""
    dialled: bool
    """True if this node opened the connection."""
    path: str
    """`direct` or `relayed`."""
    rtt_ms: float
    """Smoothed round-trip time, milliseconds."""


@message("transport.peers_reply", "reply")
class PeersReply(Message):
    """The connected, authenticated peers."""

    peers: list[PeerInfo] = []
    """One entry per peer."""


@message("transport.peers", "request", reply=PeersReply)
class Peers(Message):
    """List connected peers with path and RTT (`tom peers`)."""


@message("transport.peer_connected", "event")
class PeerConnected(Message):
    """A peer proved its node id on a new connection."""

    peer: NodeIdBytes
    """The peer."""
    host: str
    """Its address."""
    port: U64
    """Its UDP port."""
    dialled: bool
    """True if this node opened the connection."""


@message("transport.peer_disconnected", "event")
class PeerDisconnected(Message):
    """A peer's connection ended."""

    peer: NodeIdBytes
    """The peer."""
    reason: str
    """Why it ended."""


@message("transport.path", "event")
class Path(Message):
    """The path to a connected peer: sent when it is authenticated, whenever its smoothed RTT
    moves by more than a quarter (at least 1 ms), when it stalls (no keep-alive acknowledged
    for 1.5 s and 4 smoothed RTTs, seen at the next keep-alive: about 2 s; it is dropped
    after 4 s and 8 RTTs) and when it answers again."""

    peer: NodeIdBytes
    """The peer."""
    host: str
    """Its address."""
    port: U64
    """Its UDP port."""
    path: str
    """`direct`, or `stalled` while keep-alives go unanswered."""
    rtt_ms: float
    """Smoothed round-trip time, milliseconds."""


@message("transport.punch_reply", "reply")
class PunchReply(Message):
    """A direct, authenticated connection to the peer is up."""

    host: str
    """The peer's address on the direct path."""
    port: U64
    """Its UDP port."""
    elapsed_ms: float
    """From the relay's introduction to the authenticated connection (0 if it was already up)."""
    opened_ms: float = -1.0
    """From the relay's introduction to the first of the peer's probes heard here: the hole open
    (-1: the connection came up before any probe was heard)."""


@message("transport.punch", "request", reply=PunchReply)
class Punch(Message):
    """Open a direct path to `peer` through NATs: `via`, a connected peer that is also
    connected to `peer`, introduces the two with their candidate addresses (the address it
    sees each at, and each one's own); both probe each other's candidates from their QUIC
    socket at once, and this node (the one that asked) dials where a probe came from.
    `unavailable` if `via` is not connected; `failed` if `via` cannot introduce or no direct
    path comes up in time (at least 5 s from the introduction, longer over slow paths;
    symmetric NATs: keep using the relay)."""

    peer: NodeIdBytes
    """The node to reach directly."""
    via: NodeIdBytes
    """The connected peer that introduces."""


@message("transport.punched", "event")
class Punched(Message):
    """A hole punch ended, on either side (the introduced peer's side too)."""

    peer: NodeIdBytes
    """The other node."""
    ok: bool
    """True if a direct connection came up."""
    host: str = ""
    """Its address on the direct path."""
    port: U64 = 0
    """Its UDP port."""
    elapsed_ms: float
    """From the introduction to the end."""
    initiator: bool
    """True if this node asked for the introduction."""
    reason: str = ""
    """Why it failed."""


@message("transport.mapped", "event")
class Mapped(Message):
    """The home router now forwards a public port to this node's socket (PCP or NAT-PMP,
    `[transport] port_mapping`), or no longer does: the node's addresses changed."""

    host: str
    """The public address (empty: the mapping is gone)."""
    port: U64
    """The public UDP port (0: the mapping is gone)."""
    protocol: str
    """"pcp" or "nat-pmp"."""
    reason: str = ""
    """Why there is no mapping, when there is none."""


@message("transport.reflexive", "event")
class Reflexive(Message):
    """A connected peer now sees this node at another address than it reported before
    (this node's NAT mapping changed): a reason to punch again. Not sent for the first
    report of each peer (behind a symmetric NAT every peer sees another port)."""

    host: str
    """The address as the peer sees it."""
    port: U64
    """Its UDP port."""
    peer: NodeIdBytes
    """The peer that reported it."""
