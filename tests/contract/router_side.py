"""The router's half of the transport ↔ router contract, played by a test.

For a node started without its router: binds the router's rpc endpoint and answers the
transport's ``router.deliver`` calls, keeping what arrived. ``refuse`` makes it answer with
an error instead, and ``silent`` makes it read without answering (a hung router).
"""

from __future__ import annotations

import time

import zmq

from shared.bus import socket
from shared.wire import ErrorCode, Header, decode, encode, split_routing
from shared.wire.messages.router import Deliver, DeliverReply
from shared.wire.messages.sys import ErrorReply

from .harness import Node


class RouterSide:
    def __init__(self, node: Node) -> None:
        self.sock = socket(zmq.Context.instance(), zmq.ROUTER, hwm=100_000)
        self.sock.bind(node.endpoints["router"].rpc)
        self.got: list[tuple[bytes, bytes]] = []
        """(peer, envelope) of every ``router.deliver`` answered with success."""
        self.refuse: ErrorCode | None = None
        self.silent = False
        self.calls = 0
        self._n = 0

    def envelopes(self) -> list[bytes]:
        return [data for _, data in self.got]

    def pump(self, wait_ms: int = 0) -> None:
        """Answer every call waiting now, first waiting up to ``wait_ms`` for one."""
        while self.sock.poll(wait_ms):
            wait_ms = 0
            route, rest = split_routing(self.sock.recv_multipart())
            msg = decode(rest)
            assert isinstance(msg.body, Deliver), msg.header.msg_type
            assert len(msg.blobs) == 1
            self.calls += 1
            expired = msg.header.deadline is not None and msg.header.deadline < time.time()
            if self.silent or expired:  # like a service: the caller has given up on it
                continue
            if self.refuse is None:
                self.got.append((msg.body.peer, msg.blobs[0]))
                body: DeliverReply | ErrorReply = DeliverReply()
            else:
                code = self.refuse
                body = ErrorReply(code=int(code), name=code.name.lower(), message="refused")
            self._n += 1
            header = Header(body.msg_type, self._n.to_bytes(16, "big"), msg.header.msg_id,
                            "router", time.time())
            self.sock.send_multipart([*route, *encode(body, header)])

    def wait_for(self, count: int, timeout_s: float) -> None:
        """Pump until ``count`` envelopes have arrived, or the time is up."""
        deadline = time.monotonic() + timeout_s
        while len(self.got) < count and time.monotonic() < deadline:
            self.pump(100)

    def close(self) -> None:
        self.sock.close(0)
