"""``crypto.*``: requests to the only process that holds the identity secret."""

from __future__ import annotations

from pydantic import Field

from .base import Message, message


@message("crypto.node_id_reply", "reply")
class NodeIdReply(Message):
    """The node's identity."""

    node_id: bytes = Field(description="32-byte Ed25519 public key: the NodeId.")


@message("crypto.node_id", "request", reply=NodeIdReply)
class NodeId(Message):
    """Ask for the node's id (its Ed25519 public key)."""
