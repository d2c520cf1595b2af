"""The router as the backup role sees it, played by the suite.

For a node started with its backup service only: :class:`RouterForBackup` binds the router's
endpoints and answers in a background thread: ``router.pass_on`` and ``router.replicate``
(recorded: to whom, which envelopes), ``router.peers`` (none) and ``router.node_info`` (the
harness node id); it publishes ``router.path`` and ``router.confirmation`` when the test says
so, on an XPUB socket so the suite knows when the service has subscribed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import zmq

from shared.bus import socket
from shared.endpoints import prepare_bind
from shared.wire import ErrorCode, Header, decode, encode, split_routing
from shared.wire.messages import Message
from shared.wire.messages import router as rm
from shared.wire.messages.sys import ErrorReply

from .harness import Node


@dataclass(frozen=True)
class PassedOn:
    to: bytes
    envelopes: tuple[bytes, ...]


class RouterForBackup:
    def __init__(self, node: Node, node_id: bytes) -> None:
        zctx: zmq.Context = zmq.Context.instance()
        eps = node.endpoints
        self.node_id = node_id
        self.rpc = socket(zctx, zmq.ROUTER)
        self.events = socket(zctx, zmq.XPUB)
        self.events.setsockopt(zmq.XPUB_VERBOSE, 1)
        for sock, url in ((self.rpc, eps["router"].rpc), (self.events, eps["router"].events)):
            prepare_bind(url)
            sock.bind(url)
        self._lock = threading.Lock()
        self._out: list[tuple[bytes, Message, tuple[bytes, ...]]] = []
        self.passed_on: list[PassedOn] = []
        self.subscriptions: list[bytes] = []
        self.errors: list[str] = []
        self._n = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="router-for-backup", daemon=True)
        self._thread.start()

    def subscribed(self, topic: bytes) -> bool:
        return b"\x01" + topic in list(self.subscriptions)

    def publish(self, body: Message, *blobs: bytes) -> None:
        with self._lock:
            self._out.append((body.msg_type.encode(), body, blobs))

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.rpc.close(0)
        self.events.close(0)

    def _header(self, body: Message, parent: bytes | None) -> Header:
        self._n += 1
        return Header(body.msg_type, self._n.to_bytes(16, "big"), parent, "router", time.time())

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.rpc, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        while not self._stop:
            ready = dict(poller.poll(20))
            with self._lock:
                out, self._out = self._out, []
            for topic, body, blobs in out:
                self.events.send_multipart([topic, *encode(body, self._header(body, None),
                                                           blobs)])
            if self.events in ready:
                while self.events.poll(0):
                    self.subscriptions.append(self.events.recv())
            if self.rpc in ready:
                while self.rpc.poll(0):
                    route, rest = split_routing(self.rpc.recv_multipart())
                    try:
                        msg = decode(rest)
                        reply = self._on_request(msg.body, msg.blobs)
                    except Exception as exc:  # noqa: BLE001 - recorded, the suite fails on it
                        self.errors.append(repr(exc))
                        continue
                    self.rpc.send_multipart([*route, *encode(
                        reply, self._header(reply, msg.header.msg_id))])

    def _on_request(self, body: Message, blobs: tuple[bytes, ...]) -> Message:
        match body:
            case rm.PassOn(to=to):
                self.passed_on.append(PassedOn(to, blobs))
                return rm.PassOnReply(count=len(blobs))
            case rm.Replicate():
                return rm.ReplicateReply(count=len(blobs))
            case rm.Peers():
                return rm.PeersReply(peers=[])
            case rm.NodeInfo():
                return rm.NodeInfoReply(node_id=self.node_id)
        self.errors.append(f"the router was asked {body.msg_type}")
        code = ErrorCode.UNSUPPORTED
        return ErrorReply(code=int(code), name=code.name.lower(),
                          message=f"the suite's router does not handle {body.msg_type}")
