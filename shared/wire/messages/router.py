"""``router.*``: the router's requests (the app API grows here)."""

from __future__ import annotations

from pydantic import Field

from .base import Message, message


@message("router.node_info_reply", "reply")
class NodeInfoReply(Message):
    """Who this node is, as the router knows it."""

    node_id: bytes = Field(description="32-byte NodeId, obtained from the crypto service.")


@message("router.node_info", "request", reply=NodeInfoReply)
class NodeInfo(Message):
    """Ask the router who this node is. The router asks crypto, so this fails with
    `peer_timeout` while crypto is not running, and succeeds once it is."""
