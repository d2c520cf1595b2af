"""Router core.

Theory of operation (grows with the routing issues): the router answers app requests on its
ROUTER socket and asks other services for what it does not hold itself. It never holds the
identity secret, so "who am I" is a call to crypto, cached once answered. Requests that arrive
while that call is in flight wait for the same answer; if crypto fails or does not answer in
time, every waiting request fails with that reason (``peer_timeout`` while crypto is down)
and the next request tries again.
"""

from __future__ import annotations

from shared.core import Action, Call, Core, Fail, Input, PeerFailed, PeerReplied, Reply, Request
from shared.wire import ErrorCode
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.router import NodeInfo, NodeInfoReply

_NODE_ID = "node_id"  # token of the call to crypto


class RouterCore(Core):
    role = "router"
    handles = frozenset({NodeInfo})

    def __init__(self) -> None:
        self.node_id: bytes | None = None
        self._waiting: list[object] = []

    def handle(self, event: Input, now: float) -> list[Action]:
        match event:
            case Request(body=NodeInfo()):
                if self.node_id is not None:
                    return [Reply(event.ctx, NodeInfoReply(node_id=self.node_id))]
                self._waiting.append(event.ctx)
                if len(self._waiting) == 1:
                    return [Call("crypto", NodeId(), _NODE_ID)]
                return []
            case PeerReplied(token=token, body=NodeIdReply(node_id=node_id)) if token == _NODE_ID:
                self.node_id = node_id
                waiting, self._waiting = self._waiting, []
                return [Reply(ctx, NodeInfoReply(node_id=node_id)) for ctx in waiting]
            case PeerFailed(token=token, code=code, message=message) if token == _NODE_ID:
                waiting, self._waiting = self._waiting, []
                return [Fail(ctx, code, message) for ctx in waiting]
            case PeerReplied(token=token, body=body) if token == _NODE_ID:
                waiting, self._waiting = self._waiting, []
                return [Fail(ctx, ErrorCode.FAILED, f"crypto answered {body.msg_type}")
                        for ctx in waiting]
        return super().handle(event, now)

    def queues(self) -> dict[str, int]:
        return {"waiting_node_id": len(self._waiting)}
