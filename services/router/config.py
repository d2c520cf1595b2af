from __future__ import annotations

from pydantic import Field, field_validator

from shared.config import Section


class RouterConfig(Section):
    """The router: this node's name and first peers, delivery, discovery, and the bounds on
    what other nodes can make it store (docs/security.md)."""

    username: str = Field("anonymous", max_length=64, description="Name shown to other "
                          "nodes in this node's signed announcements (`tom peers`, the "
                          "chat); at most 64 characters.")
    bootstrap: list[str] = Field(default_factory=list, description="Peers to connect to at "
                                 "start and whenever they are not connected, as "
                                 "`NODEID_HEX@host:port` (`tom id` prints a node's id, `tom "
                                 "node status` its port). When that address stops answering, "
                                 "the addresses the peer announced are tried too.",
                                 examples=[["<64 hex characters>@192.0.2.10:4433"]])
    replay_window_s: float = Field(86_400 + 600, gt=0, description="Envelopes addressed "
                                   "here older than this are refused as replays; received "
                                   "ids are remembered this long. Covers the 24 h backup.")
    message_lifetime_s: float = Field(86_400, gt=0, description="A sent message not "
                                      "acknowledged within this fails.")
    gossip_interval_s: float = Field(5.0, gt=0, description="How often announcements are "
                                     "exchanged with each connected peer.")
    max_open_messages: int = Field(100_000, ge=1, description="Undelivered messages above "
                                   "which router.send answers `overloaded`.")
    # -- what strangers can make the node store or remember (docs/security.md, Router) ----
    inbox_max_bytes: int = Field(256 * 1024 * 1024, ge=1, description="The inbox's size "
                                 "(payloads + 128 B per message): received messages over it "
                                 "are refused, not acknowledged, so their senders retry "
                                 "later (`inbox_refused_full`).")
    inbox_max_messages: int = Field(100_000, ge=1, description="The inbox's message count "
                                    "(`inbox_refused_full`).")
    inbox_strangers_share: float = Field(0.5, gt=0, le=1, description="Share of the inbox "
                                         "that senders without history (not a bootstrap "
                                         "peer, never sent to) may fill together "
                                         "(`inbox_refused_strangers`).")
    inbox_sender_max_bytes: int = Field(8 * 1024 * 1024, ge=1, description="Inbox bytes "
                                        "one sender may fill (`inbox_refused_sender`).")
    inbox_sender_max_messages: int = Field(5_000, ge=1, description="Inbox messages from "
                                           "one sender (`inbox_refused_sender`).")
    inbox_hop_max_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Inbox bytes that "
                                     "arrive through one peer (the connection that "
                                     "delivered them: sender ids cost nothing, connections "
                                     "do) (`inbox_refused_hop`).")
    inbox_hop_max_messages: int = Field(20_000, ge=1, description="Inbox messages through "
                                        "one peer (`inbox_refused_hop`).")
    inbox_history_factor: int = Field(8, ge=1, description="The per-sender and per-peer "
                                      "inbox quotas are this many times larger for a peer "
                                      "with history (bootstrap peer, or sent to).")
    max_peers: int = Field(2_000, ge=16, description="Nodes the router remembers; beyond, "
                           "those with the least history are evicted (`peers_evicted`, "
                           "`peers_refused`).")
    max_saved_peers: int = Field(1_000, ge=1, description="Contacts kept in router.db (only "
                                 "bootstrap peers and nodes this node sent to are saved).")
    forget_after_s: float = Field(3_600, gt=0, description="An offline node without history "
                                  "is forgotten after this long (`peers_forgotten`).")
    gossip_rate: float = Field(1.0, gt=0, description="Gossip envelopes taken per second "
                               "from one peer (`rejected_gossip_rate`).")
    gossip_burst: int = Field(10, ge=1, description="Gossip envelopes one peer may send at "
                              "once before `gossip_rate` applies.")
    backup_after_s: float = Field(30.0, ge=0, description="A message its recipient has not "
                                  "acknowledged for this long is handed to `backup_copies` "
                                  "holders (directly connected peers closest to the "
                                  "recipient), so it reaches the recipient even while this "
                                  "node is away; 0: never.")
    backup_copies: int = Field(3, ge=0, le=8, description="Holders per message.")

    @field_validator("bootstrap")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_peer(text)
        return value


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
