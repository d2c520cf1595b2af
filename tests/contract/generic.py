"""What every role must do on the bus, whatever its implementation (docs/contract.md).

Each ``test_<role>_contract.py`` module subclasses :class:`RoleContract` with its role and
adds the role's own requests.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import pytest
import zmq

from shared.bus import socket
from shared.wire import TAG, BusTimeout, Header, decode, encode
from shared.wire.messages.sys import (
    ErrorReply,
    Heartbeat,
    Ping,
    PingReply,
    Shutdown,
    ShutdownReply,
    Status,
    StatusReply,
)

from .harness import Node

GARBAGE_FRAMES = 10_000
OVERSIZE_BYTES = 4 * 1024 * 1024 + 1


@contextmanager
def dealer(node: Node, role: str) -> Iterator[zmq.Socket]:
    ctx = zmq.Context.instance()
    s = socket(ctx, zmq.DEALER, hwm=100_000)
    node.connect(s, role, node.endpoints[role].rpc)
    try:
        yield s
    finally:
        s.close(0)


def header(msg_type: str, n: int = 1) -> bytes:
    return msgpack.packb({"msg_type": msg_type, "msg_id": n.to_bytes(16, "big"),
                          "parent_id": None, "src": "contract", "ts": time.time()})


def recv_reply(s: zmq.Socket, timeout_s: float = 5.0) -> tuple[Header, object]:
    assert s.poll(int(timeout_s * 1000)), "no reply"
    frames = s.recv_multipart()
    assert frames[0] == b"", "replies start with the empty delimiter frame"
    msg = decode(frames[1:])
    return msg.header, msg.body


def garbage(rng: random.Random, i: int) -> list[bytes]:
    """One malformed message of five kinds, in turn (without the delimiter)."""
    kind = i % 5
    if kind == 0:  # random bytes in random frames
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 5))]
    if kind == 1:  # truncated msgpack header / body
        h = header("sys.ping", i)
        return [TAG, h[: rng.randrange(0, len(h))], b"\x80"] if i % 2 else [TAG, h, b"\x85"]
    if kind == 2:  # oversize (rarely: each costs 4 MiB) or too many blobs
        if i % 1000 == 2:
            return [TAG, header("sys.ping", i), b"\x80", b"\0" * OVERSIZE_BYTES]
        return [TAG, header("sys.ping", i), b"\x80", *([b"x"] * 17)]
    if kind == 3:  # wrong tag or wrong version
        return [rng.choice([b"MDPC01", b"tom/9", b"", rng.randbytes(5)]),
                header("sys.ping", i), b"\x80"]
    return [TAG, header(f"nosuch.{rng.randrange(1000)}", i), b"\x80"]  # unknown msg_type


class RoleContract:
    role = ""

    def status(self, node: Node) -> StatusReply:
        with node.client() as c:
            reply = c.request(self.role, Status())
        assert isinstance(reply, StatusReply)
        return reply

    def test_ping(self, node: Node) -> None:
        with node.client() as c:
            msg = c.call(self.role, Ping())
        assert isinstance(msg.body, PingReply)
        assert msg.body.service == self.role
        assert msg.header.src, "replies name their source"
        assert msg.header.msg_type == "sys.ping_reply"

    def test_status_counts_frames(self, node: Node) -> None:
        before = self.status(node)
        after = self.status(node)
        assert after.service == self.role
        assert after.pid > 0 and after.uptime_s >= before.uptime_s >= 0
        assert after.frames_in >= before.frames_in + 1
        assert after.frames_out >= before.frames_out + 1

    @pytest.mark.parametrize("frames, code", [
        pytest.param([TAG, header("nosuch.thing"), b"\x80"], 404, id="unknown-msg-type"),
        pytest.param([TAG, header("sys.error"), msgpack.packb(
            {"code": 1, "name": "x", "message": "y"})], 404, id="reply-sent-as-request"),
        pytest.param([b"MDPC01", header("sys.ping"), b"\x80"], 401, id="foreign-tag"),
        pytest.param([b"tom/9", header("sys.ping"), b"\x80"], 426, id="other-version"),
        pytest.param([TAG, b"\x93\x01", b"\x80"], 400, id="truncated-header"),
        pytest.param([TAG, header("sys.ping")], 400, id="missing-body"),
        pytest.param([TAG, header("sys.ping"), b"\x91\x01"], 400, id="body-not-a-map"),
        pytest.param([TAG, header("sys.ping"), b"\x80", b"\0" * OVERSIZE_BYTES], 413,
                     id="oversize"),
    ])
    def test_malformed_request_gets_error_reply(self, node: Node, frames: list[bytes],
                                                code: int) -> None:
        before = self.status(node).decode_errors
        with dealer(node, self.role) as s:
            s.send_multipart([b"", *frames])
            h, body = recv_reply(s)
        assert isinstance(body, ErrorReply), body
        assert (body.code, h.msg_type) == (code, "sys.error")
        assert body.name and body.message
        assert self.status(node).decode_errors == before + 1

    def test_error_reply_names_the_request(self, node: Node) -> None:
        with dealer(node, self.role) as s:
            s.send_multipart([b"", TAG, header("nosuch.thing", 77), b"\x80"])
            h, body = recv_reply(s)
        assert isinstance(body, ErrorReply) and body.name == "unsupported"
        assert h.parent_id == (77).to_bytes(16, "big")

    def test_missing_delimiter_is_malformed(self, node: Node) -> None:
        with dealer(node, self.role) as s:
            s.send_multipart([TAG, header("sys.ping"), b"\x80"])
            _, body = recv_reply(s)
        assert isinstance(body, ErrorReply) and body.code == 400

    def test_unknown_fields_are_ignored(self, node: Node) -> None:
        with dealer(node, self.role) as s:
            s.send_multipart([b"", TAG, header("sys.ping"), msgpack.packb({"future": 1})])
            _, body = recv_reply(s)
        assert isinstance(body, PingReply)

    def test_survives_garbage_storm(self, node: Node) -> None:
        """10,000 malformed messages of five kinds; each is answered, counted, survived."""
        rng = random.Random(f"{self.role}-garbage")
        before = self.status(node).decode_errors
        codes: dict[int, int] = {}
        window = 500
        with dealer(node, self.role) as s:
            for start in range(0, GARBAGE_FRAMES, window):
                for i in range(start, min(start + window, GARBAGE_FRAMES)):
                    s.send_multipart([b"", *garbage(rng, i)])
                for _ in range(start, min(start + window, GARBAGE_FRAMES)):
                    _, body = recv_reply(s, timeout_s=10)
                    assert isinstance(body, ErrorReply)
                    codes[body.code] = codes.get(body.code, 0) + 1
        assert sum(codes.values()) == GARBAGE_FRAMES
        assert {400, 401, 404, 413} <= set(codes), codes
        after = self.status(node)
        assert after.decode_errors - before == GARBAGE_FRAMES
        with node.client() as c:
            assert isinstance(c.request(self.role, Ping()), PingReply)

    def test_publishes_heartbeats(self, node: Node) -> None:
        ctx = zmq.Context.instance()
        sub = socket(ctx, zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"sys.heartbeat")
        node.connect(sub, self.role, node.endpoints[self.role].events)
        wait_s = max(5.0, 2 * node.heartbeat_s + 1)
        try:
            assert sub.poll(int(wait_s * 1000)), (f"no sys.heartbeat within {wait_s:g} s "
                                                  f"(heartbeat_s = {node.heartbeat_s:g})")
            frames = sub.recv_multipart()
        finally:
            sub.close(0)
        assert frames[0] == b"sys.heartbeat"
        msg = decode(frames[1:])
        assert isinstance(msg.body, Heartbeat) and msg.body.service == self.role

    def test_shutdown_request_exits_zero(self, fresh_node: Node) -> None:
        with fresh_node.client() as c:
            assert isinstance(c.request(self.role, Shutdown()), ShutdownReply)
        assert fresh_node.proc(self.role).wait(2) == 0

    def test_sigterm_exits_zero_within_2s(self, fresh_node: Node) -> None:
        p = fresh_node.proc(self.role)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(2) == 0
        assert time.monotonic() - t0 < 2

    def test_request_after_stop_times_out_clearly(self, fresh_node: Node) -> None:
        fresh_node.stop()
        with fresh_node.client(timeout_s=0.3) as c, pytest.raises(BusTimeout) as info:
            c.request(self.role, Ping())
        assert f"no reply from {self.role}" in str(info.value)




def only_crypto_opened_the_key(node: Node) -> None:
    """Nothing opened identity.key since the node's crypto started (protocol.md §8.1)."""
    if node.key_watch is None:
        pytest.skip("one process serves every role (all-in-one): nothing to tell apart")
    opened = node.key_watch.opened()
    assert not opened, (
        f"identity.key was opened or read {len(opened)} times ({', '.join(opened)}) after "
        "the crypto service had started: only crypto opens the key file, once at its start "
        "(it keeps it open under its lock; protocol.md §8.1)")


__all__ = ["RoleContract", "dealer", "recv_reply", "header", "encode",
           "only_crypto_opened_the_key"]
