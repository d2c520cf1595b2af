"""Contract of the router role."""

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.wire.messages.router import NodeInfo, NodeInfoReply

from .generic import RoleContract
from .harness import SEED, Node

ROLE = "router"
NEEDS = ("crypto",)


class TestRouterContract(RoleContract):
    role = ROLE

    def test_node_info_names_the_node(self, node: Node) -> None:
        expected = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
        with node.client() as c:
            reply = c.request(ROLE, NodeInfo())
        assert isinstance(reply, NodeInfoReply) and reply.node_id == expected
