from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from shared.config import Section


class RouterConfig(Section):
    """The router: this node's name and first peers, delivery, discovery, and the bounds on
    what other nodes can make it store (docs/security.md)."""

    username: Annotated[str, Meta(max_length=64)] = "anonymous"
    """Name shown to other nodes in this node's signed announcements (`tom peers`, the chat); at
    most 64 characters."""
    bootstrap: Annotated[list[str], Meta(examples=[["<64 hex characters>@192.0.2.10:4433"]])] = []
    """Peers to connect to at start and whenever they are not connected, as `NODEID_HEX@host:port`
    (`tom id` prints a node's id, `tom node status` its port). When that address stops answering,
    the addresses the peer announced are tried too."""
    replay_window_s: Annotated[float, Meta(gt=0)] = 86_400 + 600
    """Envelopes addressed here older than this are refused as replays; received ids are remembered
    this long. Covers the 24 h backup."""
    message_lifetime_s: Annotated[float, Meta(gt=0)] = 86_400
    """A sent message not acknowledged within this fails."""
    gossip_interval_s: Annotated[float, Meta(gt=0)] = 5.0
    """How often announcements are exchanged with each connected peer."""
    max_open_messages: Annotated[int, Meta(ge=1)] = 100_000
    """Undelivered messages above which router.send answers `overloaded`."""
    # -- what strangers can make the node store or remember (docs/security.md, Router) ----
    inbox_max_bytes: Annotated[int, Meta(ge=1)] = 256 * 1024 * 1024
    """The inbox's size (payloads + 128 B per message): received messages over it are refused, not
    acknowledged, so their senders retry later (`inbox_refused_full`)."""
    inbox_max_messages: Annotated[int, Meta(ge=1)] = 100_000
    """The inbox's message count (`inbox_refused_full`)."""
    inbox_strangers_share: Annotated[float, Meta(gt=0, le=1)] = 0.5
    """Share of the inbox that senders without history (not a bootstrap peer, never sent to) may
    fill together (`inbox_refused_strangers`)."""
    inbox_sender_max_bytes: Annotated[int, Meta(ge=1)] = 8 * 1024 * 1024
    """Inbox bytes one sender may fill (`inbox_refused_sender`)."""
    inbox_sender_max_messages: Annotated[int, Meta(ge=1)] = 5_000
    """Inbox messages from one sender (`inbox_refused_sender`)."""
    inbox_hop_max_bytes: Annotated[int, Meta(ge=1)] = 32 * 1024 * 1024
    """Inbox bytes that arrive through one peer (the connection that delivered them: sender ids cost
    nothing, connections do) (`inbox_refused_hop`)."""
    inbox_hop_max_messages: Annotated[int, Meta(ge=1)] = 20_000
    """Inbox messages through one peer (`inbox_refused_hop`)."""
    inbox_history_factor: Annotated[int, Meta(ge=1)] = 8
    """The per-sender and per-peer inbox quotas are this many times larger for a peer with history
    (bootstrap peer, or sent to)."""
    max_peers: Annotated[int, Meta(ge=16)] = 2_000
    """Nodes the router remembers; beyond, those with the least history are evicted
    (`peers_evicted`, `peers_refused`)."""
    max_saved_peers: Annotated[int, Meta(ge=1)] = 1_000
    """Contacts kept in router.db (only bootstrap peers and nodes this node sent to are saved)."""
    forget_after_s: Annotated[float, Meta(gt=0)] = 3_600
    """An offline node without history is forgotten after this long (`peers_forgotten`)."""
    gossip_rate: Annotated[float, Meta(gt=0)] = 1.0
    """Gossip envelopes taken per second from one peer (`rejected_gossip_rate`)."""
    gossip_burst: Annotated[int, Meta(ge=1)] = 10
    """Gossip envelopes one peer may send at once before `gossip_rate` applies."""
    backup_after_s: Annotated[float, Meta(ge=0)] = 30.0
    """A message its recipient has not acknowledged for this long is handed to `backup_copies`
    holders (directly connected peers closest to the recipient), so it reaches the recipient even
    while this node is away; 0: never."""
    backup_copies: Annotated[int, Meta(ge=0, le=8)] = 3
    """Holders per message."""

    def __post_init__(self) -> None:
        for text in self.bootstrap:
            try:
                parse_peer(text)
            except ValueError as e:
                raise ValueError(f"bootstrap: {e}") from None


def parse_peer(text: str) -> tuple[bytes, str, int]:
    """``NODEID_HEX@host:port`` → (node id, host, port); ValueError otherwise."""
    node, _, addr = text.partition("@")
    host, _, port = addr.rpartition(":")
    try:
        node_id = bytes.fromhex(node)
    except ValueError:
        node_id = b""
    if len(node_id) != 32 or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not NODEID_HEX@host:port")
    return node_id, host.strip("[]"), int(port)
