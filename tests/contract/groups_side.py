"""The router and crypto as the groups role sees them, played by the suite.

For a node started with only its groups service: :class:`Peers` binds the router's and
crypto's endpoints and answers in a background thread, keeping what the service asked:

- crypto: ``crypto.node_id`` (the node id of the harness seed), ``crypto.group_seal`` and
  ``crypto.group_open`` done for real (shared/envelope.py ``GroupCiphertext``, with the
  harness identity), so ciphertexts the service hands on can be opened by the test;
- router: ``router.send`` (every payload recorded: to, ``groups``, ``encrypt``, bytes),
  ``router.inbox`` over the suite's own inbox, and the ``router.group_envelope`` events
  of what :meth:`Peers.deliver` puts in it, on an XPUB socket so the suite knows when the
  service has subscribed.

Other nodes (the members, the hub, strangers) are played with the payloads of
services/groups/wire.py, sealed by their own test identities.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from services.crypto.core import Identity
from services.groups import wire
from shared import primitives as p
from shared.bus import socket
from shared.endpoints import prepare_bind
from shared.envelope import EnvelopeError, EnvelopeTooLarge
from shared.wire import ErrorCode, Header, decode, encode, split_routing
from shared.wire.messages import Message
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages.sys import ErrorReply, Heartbeat

from .harness import SEED, Node

NODE = p.SigningKey(SEED).public
ENVELOPE_TOPIC = b"router.group_envelope"

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll ``check`` until it returns something true; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"within {timeout_s:g} s: {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Sent:
    """One ``router.send`` the service made."""

    to: bytes
    groups: bool
    encrypt: bool
    lifetime_s: float | None
    raw: bytes

    @property
    def payload(self) -> wire.Payload:
        return wire.decode(self.raw)

    def kind(self) -> str:
        try:
            return self.payload.kind
        except wire.BadPayload:
            return "?"


@dataclass(frozen=True)
class InboxRow:
    seq: int
    id: bytes
    sender: bytes
    timestamp_ms: int
    payload: bytes


class Peers:
    """The router and crypto of a node whose groups service is under test."""

    def __init__(self, node: Node) -> None:
        zctx: zmq.Context = zmq.Context.instance()
        eps = node.endpoints
        self.router = socket(zctx, zmq.ROUTER, hwm=100_000)
        self.events = socket(zctx, zmq.XPUB, hwm=100_000)
        self.events.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, also repeated ones
        self.crypto = socket(zctx, zmq.ROUTER, hwm=100_000)
        for sock, url in ((self.router, eps["router"].rpc), (self.events, eps["router"].events),
                          (self.crypto, eps["crypto"].rpc)):
            prepare_bind(url)
            sock.bind(url)
        self._wake_addr = f"inproc://groups-side-{id(self)}"
        self._wake_in = socket(zctx, zmq.PAIR)
        self._wake_in.bind(self._wake_addr)
        self._wake_out = socket(zctx, zmq.PAIR)
        self._wake_out.connect(self._wake_addr)
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._lock = threading.Lock()
        self.identity = Identity(SEED, os.urandom)

        # what the service did (appended by the thread; read by the test)
        self.sent: list[Sent] = []
        self.inbox_asks: list[rm.Inbox] = []
        self.crypto_asks: list[tuple[Message, tuple[bytes, ...]]] = []
        self.subscriptions: list[bytes] = []
        self.errors: list[str] = []
        """Requests the fakes could not decode or do not know (the suite fails on them)."""

        # how the fakes behave (set by the test)
        self.hold_seals = False
        """Keep ``crypto.group_seal`` requests unanswered until :meth:`release_seals`."""
        self.hold_inbox = False
        """Compute ``router.inbox`` replies at once but send them only at
        :meth:`release_inbox` (a reply overtaken by an envelope that arrived after it)."""
        self._held_seals: list[tuple[list[bytes], bytes, Message, tuple[bytes, ...]]] = []
        self._held_inbox: list[tuple[list[bytes], bytes, Message]] = []
        self.inbox: list[InboxRow] = []
        self._seq = 0
        self._n = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="groups-side", daemon=True)
        self._thread.start()

    # -- the test's side --------------------------------------------------------------------

    def do(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the fakes' thread (which owns the sockets)."""
        self._commands.put(fn)
        self._wake_out.send(b"")

    def deliver(self, sender: bytes, payload: bytes, seq: int | None = None) -> int:
        """A ``Group`` envelope from ``sender`` reaches this node: stored in the inbox, then
        announced with ``router.group_envelope``. Returns its seq."""
        with self._lock:
            self._seq = seq if seq is not None else self._seq + 1
            row = InboxRow(self._seq, os.urandom(16), sender, int(time.time() * 1000), payload)
            self.inbox.append(row)
        self.do(lambda: self._announce(row))
        return row.seq

    def store_only(self, sender: bytes, payload: bytes) -> int:
        """Put an envelope in the inbox without announcing it (an event the service missed)."""
        with self._lock:
            self._seq += 1
            self.inbox.append(InboxRow(self._seq, os.urandom(16), sender,
                                       int(time.time() * 1000), payload))
            return self._seq

    def skip_seq(self, n: int = 1) -> None:
        """Seqs taken by the apps' messages (the inbox shares one seq)."""
        with self._lock:
            self._seq += n

    def heartbeat(self, incarnation: bytes) -> None:
        """A ``sys.heartbeat`` of the router (a new ``incarnation``: it restarted)."""
        self.do(lambda: self._publish(Heartbeat(service="router", uptime_s=1.0,
                                                incarnation=incarnation)))

    def release_seals(self) -> None:
        self.hold_seals = False
        self.do(self._release_seals)

    def release_inbox(self) -> None:
        self.hold_inbox = False
        self.do(self._release_inbox)

    def subscribed(self) -> int:
        """How many times the service subscribed to ``router.group_envelope``."""
        return sum(s == b"\x01" + ENVELOPE_TOPIC for s in list(self.subscriptions))

    def payloads(self, kind: str | None = None, to: bytes | None = None
                 ) -> list[tuple[bytes, wire.Payload]]:
        """(recipient, payload) of what was sent to other nodes' groups services, in order."""
        out = []
        for s in list(self.sent):
            if to is not None and s.to != to:
                continue
            try:
                pl = s.payload
            except wire.BadPayload:
                continue
            if kind is None or pl.kind == kind:
                out.append((s.to, pl))
        return out

    def entries(self, to: bytes, gid: str) -> list[wire.Entry]:
        """The log entries sent to ``to`` for ``gid`` (in ``entries`` payloads), in order."""
        return [e for _, pl in self.payloads("entries", to) if pl.group_id == gid
                for e in pl.args[2]]

    def seal_asks(self) -> list[tuple[cm.GroupSeal, bytes]]:
        return [(b, blobs[0]) for b, blobs in list(self.crypto_asks)
                if isinstance(b, cm.GroupSeal)]

    def close(self) -> None:
        self._stop = True
        self.do(lambda: None)
        self._thread.join(5)
        for s in (self.router, self.events, self.crypto, self._wake_in, self._wake_out):
            s.close(0)

    # -- the fakes' thread ------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        for s in (self.router, self.events, self.crypto, self._wake_in):
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
            for sock, handler in ((self.router, self._on_router), (self.crypto, self._on_crypto)):
                if sock in ready:
                    while sock.poll(0):
                        route, rest = split_routing(sock.recv_multipart())
                        try:
                            msg = decode(rest)
                        except Exception as e:  # noqa: BLE001 - recorded, the test fails on it
                            self.errors.append(f"undecodable request: {e}")
                            continue
                        try:
                            handler(route, msg.header.msg_id, msg.body, msg.blobs)
                        except Exception as e:  # noqa: BLE001
                            self.errors.append(f"{msg.header.msg_type}: {e!r}")

    def _answer(self, sock: zmq.Socket, route: list[bytes], parent: bytes, body: Message,
                blobs: tuple[bytes, ...] = (), src: str = "router") -> None:
        self._n += 1
        header = Header(body.msg_type, self._n.to_bytes(16, "big"), parent, src, time.time())
        sock.send_multipart([*route, *encode(body, header, blobs)])

    def _fail(self, sock: zmq.Socket, route: list[bytes], parent: bytes, code: ErrorCode,
              message: str, src: str) -> None:
        self._answer(sock, route, parent, ErrorReply(code=int(code), name=code.name.lower(),
                                                     message=message), src=src)

    def _publish(self, body: Message, blobs: tuple[bytes, ...] = ()) -> None:
        self._n += 1
        header = Header(body.msg_type, self._n.to_bytes(16, "big"), None, "router",
                        time.time())
        self.events.send_multipart([body.msg_type.encode(), *encode(body, header, blobs)])

    def _announce(self, row: InboxRow) -> None:
        self._publish(rm.GroupEnvelope(seq=row.seq, id=row.id, sender=row.sender,
                                       timestamp_ms=row.timestamp_ms, encrypted=True,
                                       relayed=False), (row.payload,))

    def _on_router(self, route: list[bytes], parent: bytes, body: Message,
                   blobs: tuple[bytes, ...]) -> None:
        match body:
            case rm.Send():
                if len(blobs) != 1:
                    self.errors.append("router.send without exactly one blob")
                    return self._fail(self.router, route, parent, ErrorCode.INVALID,
                                      "one blob", "router")
                self.sent.append(Sent(body.to, body.groups, body.encrypt, body.lifetime_s,
                                      blobs[0]))
                self._answer(self.router, route, parent, rm.SendReply(id=os.urandom(16)))
            case rm.Inbox():
                self.inbox_asks.append(body)
                reply = self._inbox_reply(body)
                if self.hold_inbox:
                    self._held_inbox.append((route, parent, reply))
                else:
                    self._answer(self.router, route, parent, reply)
            case _:
                self.errors.append(f"the router was asked {body.msg_type}")
                self._fail(self.router, route, parent, ErrorCode.UNSUPPORTED,
                           f"the suite's router does not handle {body.msg_type}", "router")

    def _inbox_reply(self, ask: rm.Inbox) -> rm.InboxReply:
        with self._lock:
            rows = [r for r in self.inbox if r.seq > ask.after][:ask.limit]
            tail = max((r.seq for r in self.inbox), default=0)
        if not ask.groups:
            return rm.InboxReply(messages=[], tail=0)
        return rm.InboxReply(messages=[rm.Stored(
            seq=r.seq, id=r.id, sender=r.sender, timestamp_ms=r.timestamp_ms, encrypted=True,
            relayed=False, payload=r.payload) for r in rows], tail=tail)

    def _release_inbox(self) -> None:
        held, self._held_inbox = self._held_inbox, []
        for route, parent, reply in held:
            self._answer(self.router, route, parent, reply)

    def _on_crypto(self, route: list[bytes], parent: bytes, body: Message,
                   blobs: tuple[bytes, ...]) -> None:
        self.crypto_asks.append((body, blobs))
        if isinstance(body, cm.GroupSeal) and self.hold_seals:
            self._held_seals.append((route, parent, body, blobs))
            return
        self._crypto_answer(route, parent, body, blobs)

    def _crypto_answer(self, route: list[bytes], parent: bytes, body: Message,
                       blobs: tuple[bytes, ...]) -> None:
        reply: Message
        out: tuple[bytes, ...] = ()
        try:
            match body:
                case cm.NodeId():
                    reply = cm.NodeIdReply(node_id=NODE)
                case cm.GroupSeal():
                    g = self.identity.group_seal(body.group_id, body.key, blobs[0])
                    reply, out = cm.GroupSealReply(), (g.encode(),)
                case cm.GroupOpen():
                    g, plaintext = Identity.group_open(body.key, blobs[0], body.group_id,
                                                       body.sender)
                    reply = cm.GroupOpenReply(group_id=g.group_id, sender=g.sender)
                    out = (plaintext,)
                case _:
                    self.errors.append(f"crypto was asked {body.msg_type}")
                    return self._fail(self.crypto, route, parent, ErrorCode.UNSUPPORTED,
                                      f"the suite's crypto does not handle {body.msg_type}",
                                      "crypto")
        except EnvelopeTooLarge as e:
            return self._fail(self.crypto, route, parent, ErrorCode.TOO_LARGE, str(e), "crypto")
        except EnvelopeError as e:
            return self._fail(self.crypto, route, parent, ErrorCode.BAD_ENVELOPE, str(e),
                              "crypto")
        except p.BadSignature as e:
            return self._fail(self.crypto, route, parent, ErrorCode.BAD_SIGNATURE, str(e),
                              "crypto")
        except p.DecryptFailed as e:
            return self._fail(self.crypto, route, parent, ErrorCode.DECRYPT_FAILED, str(e),
                              "crypto")
        self._answer(self.crypto, route, parent, reply, out, src="crypto")

    def _release_seals(self) -> None:
        held, self._held_seals = self._held_seals, []
        for route, parent, body, blobs in held:
            self._crypto_answer(route, parent, body, blobs)


def payload(kind: str, gid: str, *args: Any) -> bytes:
    return wire.encode(kind, gid, *args)
