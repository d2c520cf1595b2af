"""Crypto core: answers with the node's identity. No I/O: it is given the seed bytes."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.core import Action, Core, Input, Reply, Request
from shared.wire.messages.crypto import NodeId, NodeIdReply


class CryptoCore(Core):
    role = "crypto"
    handles = frozenset({NodeId})

    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.node_id = self._key.public_key().public_bytes_raw()

    def handle(self, event: Input, now: float) -> list[Action]:
        if isinstance(event, Request) and isinstance(event.body, NodeId):
            return [Reply(event.ctx, NodeIdReply(node_id=self.node_id))]
        return super().handle(event, now)
