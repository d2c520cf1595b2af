"""ZeroMQ plumbing shared by services and clients: socket factories and a blocking client."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterable

import zmq

from .buskeys import OWNER, BusKeys, user_id
from .endpoints import Endpoints
from .ids import MsgIds
from .wire import BusTimeout, Decoded, DecodeError, Header, Message, RemoteError, decode, encode
from .wire.frame import DEFAULT_MAX_MESSAGE_BYTES
from .wire.messages.sys import ErrorReply

HARD_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""ZeroMQ's own per-frame cap (ZMQ_MAXMSGSIZE): a peer sending more is disconnected by
libzmq before the frame is read into memory. Frames under it but over ``bus.max_message_bytes``
are answered with ``too_large``."""
MAX_EARLY_BYTES = 64 * 1024 * 1024
"""What a client keeps of replies that arrived before the one it awaits."""


_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# pyzmq's send_multipart/recv_multipart convert flag enums and query RCVMORE per frame;
# calling the backend directly with int flags is 2-5x cheaper per message (see
# docs/benchmarks.md). Semantics are unchanged: multipart sends are atomic once the first
# frame is accepted.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get


def send_frames(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send a multipart message without blocking (raises zmq.Again when the queue is full)."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _send(sock, f, _MORE_NOBLOCK if i < last else _NOBLOCK, True, False)


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """Receive one multipart message without blocking (raises zmq.Again when none)."""
    f = _recv(sock, _NOBLOCK, False, False)
    frames = [f.bytes]
    while f.more:
        f = _recv(sock, _NOBLOCK, False, False)
        frames.append(f.bytes)
    return frames


def recv_frames_user(sock: zmq.Socket) -> tuple[list[bytes], str | None]:
    """:func:`recv_frames`, plus the ``User-Id`` the ZAP handler gave the sender's key."""
    f = _recv(sock, _NOBLOCK, False, False)
    frames = [f.bytes]
    user = user_id(f)
    while f.more:
        f = _recv(sock, _NOBLOCK, False, False)
        frames.append(f.bytes)
    return frames, user


def readable(sock: zmq.Socket) -> bool:
    """Whether a message is waiting (cheaper than a receive that raises zmq.Again)."""
    events: int = _get(sock, _EVENTS)  # type: ignore[assignment]
    return bool(events & _POLLIN)


def socket(ctx: zmq.Context, kind: int, hwm: int = 10_000) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.MAXMSGSIZE, HARD_MAX_FRAME_BYTES)
    # ZMTP heartbeats: a tcp peer that vanished (container moved) is noticed and reconnected
    s.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
    return s


class BusClient:
    """Blocking request/reply client over DEALER sockets (CLI, tests, simple apps).

    One DEALER per role, connected lazily. Replies are matched on ``parent_id``; late replies
    to requests that already timed out are discarded.
    """

    def __init__(self, endpoints: Endpoints, src: str = "client",
                 ctx: zmq.Context | None = None, timeout_s: float = 2.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 keys: BusKeys | None = None, key_name: str = OWNER) -> None:
        self.endpoints = endpoints
        self.keys = keys
        """The node's bus keys: used (with the key pair ``key_name``) for tcp endpoints."""
        self.key_name = key_name
        self.src = src
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._own_ctx = ctx is None
        self._ctx = ctx or zmq.Context()
        self._socks: dict[str, zmq.Socket] = {}
        self._ids = MsgIds(os.urandom(8))
        self._outstanding: set[bytes] = set()
        """Requests sent and not yet received (a ``recv`` that times out gives up its id)."""
        self._early: OrderedDict[bytes, tuple[Decoded, int]] = OrderedDict()
        """Replies to outstanding requests that arrived while another was awaited (services
        may answer out of order), kept for the ``recv`` of their id; beyond
        ``MAX_EARLY_BYTES`` the oldest are dropped (their ``recv`` then times out)."""
        self._early_bytes = 0

    def sock(self, role: str) -> zmq.Socket:
        s = self._socks.get(role)
        if s is None:
            s = socket(self._ctx, zmq.DEALER)
            try:
                self.connect(s, role, self.endpoints[role].rpc)
            except Exception:
                s.close(0)
                raise
            self._socks[role] = s
        return s

    def connect(self, sock: zmq.Socket, role: str, url: str) -> None:
        """Connect ``sock`` to ``role`` at ``url`` (with CURVE when it is tcp)."""
        if url.startswith("tcp://") and self.keys is not None:
            self.keys.dial(sock, self.key_name, role)
        sock.connect(url)

    def send(self, role: str, body: Message, blobs: Iterable[bytes] = (),
             timeout_s: float | None = None) -> bytes:
        """Send a request without waiting; returns its msg_id.

        The header carries a deadline (now + the timeout): a service that receives the
        request later, e.g. because it was down and ZeroMQ kept it queued, drops it.
        """
        msg_id = self._ids.next()
        now = time.time()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        header = Header(body.msg_type, msg_id, None, self.src, now, now + timeout)
        sock = self.sock(role)
        frames = [b"", *encode(body, header, tuple(blobs))]
        try:
            send_frames(sock, frames)
        except zmq.Again:  # queue full, or no connection (refused by CURVE): wait for room
            if not sock.poll(int(timeout * 1000) + 1, zmq.POLLOUT):
                raise BusTimeout(f"cannot send to {role} at {self.endpoints[role].rpc} "
                                 f"within {timeout:g} s (no connection: is the service "
                                 "running, and does this client hold the node's bus key?)"
                                 ) from None
            sock.send_multipart(frames)
        self._outstanding.add(msg_id)
        return msg_id

    def recv(self, role: str, msg_id: bytes, timeout_s: float | None = None) -> Decoded:
        """Wait for the reply to ``msg_id``; raise BusTimeout or RemoteError."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        sock = self.sock(role)
        deadline = time.monotonic() + timeout
        early = self._early.pop(msg_id, None)
        msg = None
        if early is not None:
            msg, size = early
            self._early_bytes -= size
        while msg is None:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                self._outstanding.discard(msg_id)  # a late reply is discarded
                raise BusTimeout(
                    f"no reply from {role} at {self.endpoints[role].rpc} within {timeout:g} s"
                    " (is the service running? see `tom node status`)"
                    + ("" if self.keys is not None or not self.endpoints[role].rpc.startswith(
                        "tcp://") else "; the bus is tcp and this client has no bus key"))
            frames = sock.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]
            try:
                msg = decode(frames, self.max_message_bytes)
            except DecodeError:
                continue  # not a reply we can read; it cannot be ours
            if msg.header.parent_id != msg_id:
                self._keep_early(msg, sum(map(len, frames)))
                msg = None
        self._outstanding.discard(msg_id)
        if isinstance(msg.body, ErrorReply):
            raise RemoteError(msg.body.code, msg.body.name, msg.body.message, role)
        return msg

    def _keep_early(self, msg: Decoded, size: int) -> None:
        parent = msg.header.parent_id
        if parent is None or parent not in self._outstanding or parent in self._early:
            return  # not a reply to a request still awaited (a late one): discarded
        self._early[parent] = (msg, size)
        self._early_bytes += size
        while self._early_bytes > MAX_EARLY_BYTES:
            _, (_, dropped) = self._early.popitem(last=False)
            self._early_bytes -= dropped

    def call(self, role: str, body: Message, blobs: Iterable[bytes] = (),
             timeout_s: float | None = None) -> Decoded:
        return self.recv(role, self.send(role, body, blobs, timeout_s), timeout_s)

    def request(self, role: str, body: Message, timeout_s: float | None = None) -> Message:
        """Send ``body`` to ``role`` and return the reply body (or raise)."""
        return self.call(role, body, timeout_s=timeout_s).body

    def close(self) -> None:
        for s in self._socks.values():
            s.close(0)
        self._socks.clear()
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
