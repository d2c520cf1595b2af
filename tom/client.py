"""A small Python client of the node's app API (the router's ``router.*`` requests and events).

    with Client(DataDir(Path("~/.tom").expanduser())) as c:
        msg_id = c.send(peer, "hello")            # stored by the router once this returns
        for ev in c.events(timeout_s=5):          # messages, status changes, peer changes
            ...

``send`` picks the envelope id itself and re-sends with the same id when a reply is lost
(router restarting), so a message is stored once however often it is retried. ``events``
yields every received message exactly once and in inbox order: it remembers the last
``seq`` it yielded and fetches from the inbox whatever the event stream skipped (events are
not queued while nobody listens; the inbox is).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import zmq

from shared import endpoints as ep
from shared.bus import BusClient, socket
from shared.buskeys import OWNER, BusKeys
from shared.paths import DataDir
from shared.wire import BusTimeout, DecodeError, RemoteError, decode
from shared.wire.errors import ErrorCode
from shared.wire.messages import router as rm
from shared.wire.messages.sys import Status, StatusReply

RETRYABLE = (ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED)


@dataclass(frozen=True)
class Message:
    """A received message and its plaintext."""

    info: rm.Received
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")


Event = Message | rm.StatusChanged | rm.PeerChanged | rm.PathChanged


CATCH_UP_S = 1.0
"""``events`` asks the router for missed messages at most this often (and on a gap)."""


class Client:
    def __init__(self, data: DataDir, timeout_s: float = 5.0, after: int | None = None,
                 key: str = OWNER) -> None:
        """``after``: the last inbox seq this app already handled (None: only messages
        that arrive from now on). ``key``: the bus key pair used over a tcp bus, the
        owner's or an app's listed in ``DATA/bus/apps/`` (docs/security.md)."""
        self.endpoints = ep.load(data.endpoints)
        self.bus = BusClient(self.endpoints, src="tom-app", timeout_s=timeout_s,
                             keys=BusKeys(data.bus_keys), key_name=key)
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sub: zmq.Socket | None = None
        self.after = after
        self._next_catch_up = 0.0

    # -- requests -------------------------------------------------------------------------

    def node_id(self) -> bytes:
        reply = self.bus.request("router", rm.NodeInfo())
        assert isinstance(reply, rm.NodeInfoReply)
        return reply.node_id

    def send(self, to: bytes, payload: bytes | str, encrypt: bool = True,
             deadline_s: float = 30.0) -> bytes:
        """Hand a message to the router; returns its id once the router has stored it.
        Retries (same id) while the router is restarting or busy, up to ``deadline_s``."""
        data = payload.encode() if isinstance(payload, str) else payload
        msg_id = os.urandom(16)
        end = time.monotonic() + deadline_s
        while True:
            try:
                reply = self.bus.call("router", rm.Send(to=to, id=msg_id, encrypt=encrypt),
                                      (data,)).body
                assert isinstance(reply, rm.SendReply)
                return reply.id
            except BusTimeout:
                if time.monotonic() > end:
                    raise
            except RemoteError as e:
                if e.code not in RETRYABLE or time.monotonic() > end:
                    raise
                time.sleep(0.2)  # the router said busy or was restarting

    def read(self, msg: Message) -> None:
        self.bus.request("router", rm.Read(id=msg.info.id, sender=msg.info.sender))

    def outbox(self, ids: list[bytes] | None = None, limit: int = 100) -> list[rm.MessageState]:
        states: list[rm.MessageState] = []
        ids = ids or []
        for i in range(0, max(len(ids), 1), 1000):
            reply = self.bus.request("router", rm.Outbox(ids=ids[i:i + 1000], limit=limit))
            assert isinstance(reply, rm.OutboxReply)
            states += reply.messages
        return states

    def inbox(self, after: int = 0, limit: int = 100) -> list[Message]:
        reply = self.bus.request("router", rm.Inbox(after=after, limit=limit))
        assert isinstance(reply, rm.InboxReply)
        return [Message(rm.Received(**r.model_dump(exclude={"payload"})), r.payload)
                for r in reply.messages]

    def peers(self) -> list[rm.PeerEntry]:
        reply = self.bus.request("router", rm.Peers())
        assert isinstance(reply, rm.PeersReply)
        return reply.peers

    def add_peer(self, node_id: bytes, host: str, port: int) -> None:
        self.bus.request("router", rm.AddPeer(node_id=node_id, host=host, port=port))

    def stats(self) -> StatusReply:
        reply = self.bus.request("router", Status())
        assert isinstance(reply, StatusReply)
        return reply

    # -- events ---------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Start listening (``events`` does it on first use); messages received from here
        on, and after ``after`` if it was given, will be yielded."""
        if self._sub is None:
            sub = socket(self._ctx, zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.bus.connect(sub, "router", self.endpoints["router"].events)
            try:
                if self.after is None:
                    self.after = self.inbox_tail()
            except Exception:
                sub.close(0)  # router not answering: stay unsubscribed, try again later
                raise
            self._sub = sub

    def inbox_tail(self) -> int:
        """The seq of the newest message in the inbox (0 if none)."""
        reply = self.bus.request("router", rm.Inbox(after=2**63 - 1, limit=1))  # no rows
        assert isinstance(reply, rm.InboxReply)
        return reply.tail

    def events(self, timeout_s: float = 0.0) -> Iterator[Event]:
        """Events waiting now or within ``timeout_s``; received messages without gaps or
        repeats."""
        self.subscribe()
        assert self._sub is not None
        if time.monotonic() >= self._next_catch_up:
            # the inbox, not only the events: an event dropped with no later one to reveal
            # the gap is found here (at most once a second, not on every poll)
            yield from self._catch_up()
        end = time.monotonic() + timeout_s
        while True:
            left = end - time.monotonic()
            if not self._sub.poll(max(0, int(left * 1000))):
                return
            frames = self._sub.recv_multipart()
            try:
                msg = decode(frames[1:])
            except DecodeError:
                continue
            body = msg.body
            if isinstance(body, rm.MessageReceived):
                assert self.after is not None
                if body.seq <= self.after:
                    continue  # already fetched from the inbox
                if body.seq > self.after + 1:
                    yield from self._catch_up()  # events were missed
                    continue
                self.after = body.seq
                yield Message(rm.Received(**body.model_dump()), msg.blobs[0])
            elif isinstance(body, rm.StatusChanged | rm.PeerChanged | rm.PathChanged):
                yield body

    def _catch_up(self) -> Iterator[Message]:
        assert self.after is not None
        self._next_catch_up = time.monotonic() + CATCH_UP_S
        while batch := self.inbox(self.after, 1000):
            for m in batch:
                self.after = m.info.seq
                yield m

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
        self.bus.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
