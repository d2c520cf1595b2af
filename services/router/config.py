from __future__ import annotations

from pydantic import Field

from shared.config import Section


class RouterConfig(Section):
    username: str = Field("anonymous", max_length=64, description="Name shown to other "
                          "nodes in this node's signed announcements.")
    bootstrap: list[str] = Field(default_factory=list, description="Peers to connect to at "
                                 "start, as `NODEID_HEX@host:port`.")
    replay_window_s: float = Field(86_400 + 600, gt=0, description="Envelopes addressed "
                                   "here older than this are refused as replays; received "
                                   "ids are remembered this long. Covers the 24 h backup.")
    message_lifetime_s: float = Field(86_400, gt=0, description="A sent message not "
                                      "acknowledged within this fails.")
    gossip_interval_s: float = Field(5.0, gt=0, description="How often announcements are "
                                     "exchanged with each connected peer.")
    max_open_messages: int = Field(100_000, ge=1, description="Undelivered messages above "
                                   "which router.send answers `overloaded`.")


def parse_peer(text: str) -> tuple[bytes, str, int]:
    """``NODEID_HEX@host:port`` → (node id, host, port); ValueError otherwise."""
    node, _, addr = text.partition("@")
    host, _, port = addr.rpartition(":")
    node_id = bytes.fromhex(node)
    if len(node_id) != 32 or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not NODEID_HEX@host:port")
    return node_id, host.strip("[]"), int(port)
