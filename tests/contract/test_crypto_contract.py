"""Contract of the crypto role."""

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.wire.messages.crypto import NodeId, NodeIdReply

from .generic import RoleContract
from .harness import SEED, Node

ROLE = "crypto"


class TestCryptoContract(RoleContract):
    role = ROLE

    def test_node_id_is_the_public_key_of_the_seed(self, node: Node) -> None:
        expected = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
        with node.client() as c:
            reply = c.request(ROLE, NodeId())
        assert isinstance(reply, NodeIdReply) and reply.node_id == expected
