"""The transport as the router sees it, played by the suite.

For a node started with its crypto and router only: :class:`TransportSide` binds the
transport's endpoints and answers in a background thread, keeping what the router asked:

- ``transport.send``: every envelope the router hands over, with the peer it is for and
  when (:attr:`TransportSide.sent`); answered like the transport, ``unavailable`` for a peer
  that is not connected;
- ``transport.peers`` (the peers the test connected), ``transport.info`` (a loopback
  address), ``transport.connect`` and ``transport.punch`` (``failed``: nobody is there);
- the events: ``transport.peer_connected`` / ``transport.peer_disconnected`` when the test
  connects or drops a peer, on an XPUB socket so the suite knows when the router has
  subscribed.

What arrives from other nodes is handed to the router by the test itself, with
``router.deliver`` as the transport does (:meth:`TransportSide.deliver`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from shared import envelope as e
from shared.bus import BusClient, socket
from shared.endpoints import prepare_bind
from shared.wire import ErrorCode, Header, decode, encode, split_routing
from shared.wire.messages import Message
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm
from shared.wire.messages.sys import ErrorReply

from .harness import Node

TRANSPORT_PORT = 4433


@dataclass(frozen=True)
class Sent:
    """One envelope the router gave the transport: for ``peer`` (the next hop)."""

    peer: bytes
    raw: bytes
    at: float
    """time.monotonic() when the fake transport read it."""
    taken: bool
    """Whether the peer was connected (else it was answered ``unavailable``)."""

    @property
    def env(self) -> e.Envelope:
        return e.decode(self.raw)


class TransportSide:
    def __init__(self, node: Node, node_id: bytes) -> None:
        zctx: zmq.Context = zmq.Context.instance()
        eps = node.endpoints
        self.node_id = node_id
        self.rpc = socket(zctx, zmq.ROUTER, hwm=100_000)
        self.events = socket(zctx, zmq.XPUB, hwm=100_000)
        self.events.setsockopt(zmq.XPUB_VERBOSE, 1)
        for sock, url in ((self.rpc, eps["transport"].rpc),
                          (self.events, eps["transport"].events)):
            prepare_bind(url)
            sock.bind(url)
        self._wake_addr = f"inproc://transport-side-{id(self)}"
        self._wake_in = socket(zctx, zmq.PAIR)
        self._wake_in.bind(self._wake_addr)
        self._wake_out = socket(zctx, zmq.PAIR)
        self._wake_out.connect(self._wake_addr)
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._lock = threading.Lock()
        self.node = node

        self.connected: dict[bytes, int] = {}
        """Peers connected now -> their (made-up) UDP port."""
        self.sent: list[Sent] = []
        self.asked: list[str] = []
        """msg_type of every request the router made, in order."""
        self.subscriptions: list[bytes] = []
        self.errors: list[str] = []
        self._n = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="transport-side", daemon=True)
        self._thread.start()

    # -- the test's side --------------------------------------------------------------------

    def do(self, fn: Callable[[], None]) -> None:
        self._commands.put(fn)
        self._wake_out.send(b"")

    def subscribed(self) -> bool:
        return any(s.startswith(b"\x01transport.") for s in list(self.subscriptions))

    def connect(self, peer: bytes) -> None:
        """``peer`` has proven its node id on a new connection (as the transport says)."""
        with self._lock:
            port = self.connected.setdefault(peer, 40_000 + len(self.connected))
        self.do(lambda: self._publish(tm.PeerConnected(peer=peer, host="127.0.0.1", port=port,
                                                       dialled=False)))

    def disconnect(self, peer: bytes) -> None:
        with self._lock:
            self.connected.pop(peer, None)
        self.do(lambda: self._publish(tm.PeerDisconnected(peer=peer, reason="closed")))

    def deliver(self, peer: bytes, raw: bytes | None, timeout_s: float = 10.0) -> Message:
        """``router.deliver`` of ``raw`` from ``peer``, as the transport calls it: returns the
        reply (raises RemoteError for an error reply)."""
        with BusClient(self.node.endpoints, src="transport", timeout_s=timeout_s) as c:
            return c.call("router", rm.Deliver(peer=peer, path="direct"),
                          () if raw is None else (raw,)).body

    def envelopes(self, peer: bytes | None = None, kind: str | None = None,
                  msg_id: bytes | None = None) -> list[Sent]:
        """What the router gave the transport, in order, filtered."""
        out = []
        for s in list(self.sent):
            try:
                env = s.env
            except e.EnvelopeError:
                continue
            if (peer is None or s.peer == peer) and (kind is None or env.msg_type == kind) \
                    and (msg_id is None or env.id == msg_id):
                out.append(s)
        return out

    def acks(self, of: bytes, ack_type: str = e.AckType.RECIPIENT_RECEIVED) -> list[Sent]:
        """The ACKs of type ``ack_type`` for envelope id ``of`` the router sent."""
        out = []
        for s in self.envelopes(kind=e.MessageType.ACK):
            try:
                ack = e.AckPayload.decode(s.env.payload)
            except e.EnvelopeError:
                continue
            if ack.original_id == of and ack.ack_type == ack_type:
                out.append(s)
        return out

    def close(self) -> None:
        self._stop = True
        self.do(lambda: None)
        self._thread.join(5)
        for s in (self.rpc, self.events, self._wake_in, self._wake_out):
            s.close(0)

    # -- the fake's thread ------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        for s in (self.rpc, self.events, self._wake_in):
            poller.register(s, zmq.POLLIN)
        while not self._stop:
            ready = dict(poller.poll(200))
            if self._wake_in in ready:
                while self._wake_in.poll(0):
                    self._wake_in.recv()
                while not self._commands.empty():
                    self._commands.get()()
            if self.events in ready:
                while self.events.poll(0):
                    self.subscriptions.append(self.events.recv())
            if self.rpc in ready:
                while self.rpc.poll(0):
                    route, rest = split_routing(self.rpc.recv_multipart())
                    try:
                        msg = decode(rest)
                        self._on_request(route, msg.header.msg_id, msg.body, msg.blobs)
                    except Exception as exc:  # noqa: BLE001 - recorded, the suite fails on it
                        self.errors.append(f"{exc!r}")

    def _answer(self, route: list[bytes], parent: bytes, body: Message) -> None:
        self._n += 1
        header = Header(body.msg_type, self._n.to_bytes(16, "big"), parent, "transport",
                        time.time())
        self.rpc.send_multipart([*route, *encode(body, header)])

    def _fail(self, route: list[bytes], parent: bytes, code: ErrorCode, message: str) -> None:
        self._answer(route, parent, ErrorReply(code=int(code), name=code.name.lower(),
                                               message=message))

    def _publish(self, body: Message) -> None:
        self._n += 1
        header = Header(body.msg_type, self._n.to_bytes(16, "big"), None, "transport",
                        time.time())
        self.events.send_multipart([body.msg_type.encode(), *encode(body, header)])

    def _on_request(self, route: list[bytes], parent: bytes, body: Message,
                    blobs: tuple[bytes, ...]) -> None:
        self.asked.append(body.msg_type)
        with self._lock:
            connected = dict(self.connected)
        match body:
            case tm.Send(peer=peer):
                if len(blobs) != 1:
                    self.errors.append("transport.send without exactly one blob")
                    return self._fail(route, parent, ErrorCode.INVALID, "one blob")
                taken = peer in connected
                self.sent.append(Sent(peer, blobs[0], time.monotonic(), taken))
                if taken:
                    return self._answer(route, parent, tm.SendReply())
                return self._fail(route, parent, ErrorCode.UNAVAILABLE,
                                  "no connection to that peer")
            case tm.Peers():
                return self._answer(route, parent, tm.PeersReply(peers=[
                    tm.PeerInfo(node_id=p, host="127.0.0.1", port=port, dialled=False,
                                path="direct", rtt_ms=1.0) for p, port in connected.items()]))
            case tm.Info():
                return self._answer(route, parent, tm.InfoReply(
                    node_id=self.node_id, host="127.0.0.1", port=TRANSPORT_PORT, ready=True))
            case tm.Connect() | tm.Punch():
                return self._fail(route, parent, ErrorCode.FAILED, "nobody answers there")
        self.errors.append(f"the transport was asked {body.msg_type}")
        self._fail(route, parent, ErrorCode.UNSUPPORTED,
                   f"the suite's transport does not handle {body.msg_type}")
