"""Router core, driven directly: no event loop, no sockets."""

from services.router.core import RouterCore
from shared.core import Call, Fail, PeerFailed, PeerReplied, Reply, Request
from shared.wire import ErrorCode
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.router import NodeInfo, NodeInfoReply

NODE = b"\x07" * 32


def test_node_info_asks_crypto_once_and_answers_everyone_waiting() -> None:
    core = RouterCore()
    first = core.handle(Request("a", NodeInfo()), 0.0)
    assert len(first) == 1 and isinstance(first[0], Call)
    call = first[0]
    assert call.role == "crypto" and call.body == NodeId()
    assert core.handle(Request("b", NodeInfo()), 0.1) == []
    assert core.queues() == {"waiting_node_id": 2}
    out = core.handle(PeerReplied(call.token, NodeIdReply(node_id=NODE)), 0.2)
    assert out == [Reply("a", NodeInfoReply(node_id=NODE)), Reply("b", NodeInfoReply(node_id=NODE))]
    assert core.handle(Request("c", NodeInfo()), 0.3) == [Reply("c", NodeInfoReply(node_id=NODE))]


def test_crypto_failure_fails_the_waiting_requests_and_the_next_one_retries() -> None:
    core = RouterCore()
    [call] = core.handle(Request("a", NodeInfo()), 0.0)
    assert isinstance(call, Call)
    out = core.handle(PeerFailed(call.token, ErrorCode.PEER_TIMEOUT, "crypto did not answer"),
                      2.0)
    assert out == [Fail("a", ErrorCode.PEER_TIMEOUT, "crypto did not answer")]
    again = core.handle(Request("b", NodeInfo()), 3.0)
    assert len(again) == 1 and isinstance(again[0], Call)


def test_unhandled_request_is_unsupported() -> None:
    [fail] = RouterCore().handle(Request("x", NodeId()), 0.0)
    assert isinstance(fail, Fail) and fail.code is ErrorCode.UNSUPPORTED


def test_a_wrong_reply_fails_the_waiters_instead_of_wedging() -> None:
    from shared.wire.messages.sys import PingReply

    core = RouterCore()
    [call] = core.handle(Request("a", NodeInfo()), 0.0)
    assert isinstance(call, Call)
    out = core.handle(PeerReplied(call.token, PingReply(service="x", impl="y", pid=1)), 0.1)
    assert len(out) == 1 and isinstance(out[0], Fail) and out[0].code is ErrorCode.FAILED
    assert core.queues() == {"waiting_node_id": 0}
    assert isinstance(core.handle(Request("b", NodeInfo()), 0.2)[0], Call)
