"""Router cores with real crypto cores, joined by an in-memory transport (sans-I/O).

Each node is a RouterCore (SQLite in memory) and a CryptoCore; ``transport.*`` calls are
carried out here: ``connect`` succeeds when the two nodes are ``reachable`` from each other
and the port dialled is the one the other listens on (``SimNode.port``),
``punch`` when they are reachable or ``punchable`` (behind NATs a hole punch opens),
``send`` hands the envelope to the other router as a ``router.deliver`` request when they
are connected. Each node also runs a BackupCore (SQLite in memory): the router's calls to
``backup`` and the backup core's calls to ``router`` are carried out here, and the router's
``router.path`` and ``router.confirmation`` events reach it, as over the bus. The end-to-end
tests run the same cores in real processes over QUIC.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.backup.core import BackupCore
from services.backup.store import Store as BackupStore
from services.crypto.core import CryptoCore
from services.router.core import RouterCore, RouterSettings
from services.router.store import Store
from shared.core import (
    Action,
    Call,
    EventReceived,
    Fail,
    PeerFailed,
    PeerReplied,
    Publish,
    Reply,
    Request,
)
from shared.wire import ErrorCode, Header, decode, encode
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm


@dataclass
class SimNode:
    name: str
    router: RouterCore
    crypto: CryptoCore
    port: int
    backup: BackupCore | None = None
    events: list[Any] = field(default_factory=list)
    delivered: list[tuple[Any, tuple[bytes, ...]]] = field(default_factory=list)
    replies: dict[Any, Any] = field(default_factory=dict)

    @property
    def id(self) -> bytes:
        return self.crypto.node_id

    def received(self) -> list[bytes]:
        return [blobs[0] for ev, blobs in self.delivered]

    def statuses(self, msg_id: bytes) -> list[str]:
        return [e.status for e in self.events
                if isinstance(e, rm.StatusChanged) and e.id == msg_id]

    def steps(self, msg_id: bytes) -> list[str]:
        """The statuses of ``msg_id`` as they moved (an event with the same status and a
        new reason or more holders is not a step)."""
        out: list[str] = []
        for status in self.statuses(msg_id):
            if not out or out[-1] != status:
                out.append(status)
        return out

    def reasons(self, msg_id: bytes) -> list[str]:
        """The reason of each status event of ``msg_id``, in order."""
        return [e.reason for e in self.events
                if isinstance(e, rm.StatusChanged) and e.id == msg_id]


class Sim:
    def __init__(self, *names: str, db: dict[str, str] | None = None,
                 **settings: Any) -> None:
        self.now = 1000.0
        self.wall = 1_800_000_000.0
        self.nodes: dict[str, SimNode] = {}
        self.reachable: set[frozenset[str]] = set()
        self.punchable: set[frozenset[str]] = set()
        self.punches: list[tuple[str, str]] = []
        self.links: set[frozenset[str]] = set()
        self.queue: deque[tuple[str, Action]] = deque()
        self.drop_sends: set[frozenset[str]] = set()
        self.lose: Any = None
        """``lose(name, envelope) -> bool``: a ``transport.send`` from ``name`` that
        vanishes on the way (answered ok, never delivered)."""
        self.sent: list[tuple[str, bytes]] = []
        """Every envelope handed to ``transport.send``: (sending node, envelope)."""
        self.dials: list[tuple[str, bytes]] = []
        """Every ``transport.connect``: (dialling node, node dialled)."""
        self.reflexive: dict[str, list[tuple[str, int]]] = {}
        """Addresses peers see a node at (its transport's ``reflexive``), announced before
        its local one."""
        self.mapped: dict[str, list[tuple[str, int]]] = {}
        """The port a node's home router maps for it (its transport's ``mapped``)."""
        self.transport_down: set[str] = set()
        """Nodes whose transport cannot dial or send yet (it restarted and has no binding):
        ``connect`` and ``send`` fail ``unavailable``."""
        self.dial_errors: dict[bytes, tuple[ErrorCode, str]] = {}
        """How a ``transport.connect`` to a node id fails, when it is not reachable: (code,
        message) as the transport says it (default: no answer)."""
        self.tried: list[tuple[str, bytes]] = []
        """Every envelope given to ``transport.send``, also to peers it is not connected
        to (those fail)."""
        self.settings = settings
        self._ctx = 0
        for i, name in enumerate(names):
            self.add(name, i, (db or {}).get(name, ":memory:"))
        self.run()  # each router learns its node id

    def add(self, name: str, i: int, db: str = ":memory:") -> SimNode:
        seed = bytes([i + 1]) * 32
        crypto = CryptoCore(seed, os.urandom, lambda: int(self.wall * 1000))
        router = RouterCore(Store(db), lambda: self.wall, RouterSettings(**self.settings))
        backup = BackupCore(BackupStore(":memory:"), lambda: self.wall)
        node = self.nodes[name] = SimNode(name, router, crypto, 5000 + i, backup)
        self.feed(name, lambda: router.on_timer(self.now))
        return node

    def by_id(self, node_id: bytes) -> SimNode | None:
        return next((n for n in self.nodes.values() if n.id == node_id), None)

    # -- driving --------------------------------------------------------------------------

    def feed(self, name: str, step: Any) -> None:
        for a in step():
            self.queue.append((name, a))

    def request(self, name: str, body: Any, blobs: tuple[bytes, ...] = ()) -> Any:
        """An app request; returns its ctx (the answer lands in node.replies[ctx])."""
        self._ctx += 1
        ctx = ("app", self._ctx)
        node = self.nodes[name]
        self.feed(name, lambda: node.router.handle(Request(ctx, body, blobs), self.now))
        return ctx

    def call(self, name: str, body: Any, blobs: tuple[bytes, ...] = ()) -> Any:
        ctx = self.request(name, body, blobs)
        self.run()
        return self.nodes[name].replies.pop(ctx)

    def run(self, seconds: float = 0.0, step: float = 0.5) -> None:
        """Carry out actions until quiet, then advance time in steps, firing timers."""
        end = self.now + seconds
        while True:
            self._drain()
            if self.now >= end:
                return
            self.now = min(end, self.now + step)
            self.wall += step
            for name, node in self.nodes.items():
                due = node.router.next_deadline()
                if due is not None and due <= self.now:
                    self.feed(name, lambda r=node.router: r.on_timer(self.now))
                bdue = node.backup.next_deadline() if node.backup else None
                if bdue is not None and bdue <= self.now:
                    self._backup(name, lambda b: b.on_timer(self.now))

    def _drain(self) -> None:
        while self.queue:
            while self.queue:
                name, action = self.queue.popleft()
                self._do(name, action)
            for name, node in self.nodes.items():
                self.feed(name, lambda r=node.router: r.flush(self.now))

    def connect(self, a: str, b: str) -> None:
        self.reachable.add(frozenset((a, b)))
        self._link(a, b)
        self.run()

    def disconnect(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))
        for x, y in ((a, b), (b, a)):
            ev = tm.PeerDisconnected(peer=self.nodes[y].id, reason="test")
            node = self.nodes[x]
            self.feed(x, lambda n=node, e=ev: n.router.handle(EventReceived(e), self.now))
        self.run()

    def _link(self, a: str, b: str) -> None:
        if frozenset((a, b)) in self.links:
            return
        self.links.add(frozenset((a, b)))
        for x, y, dialled in ((a, b, True), (b, a, False)):
            peer = self.nodes[y]
            ev = tm.PeerConnected(peer=peer.id, host="10.0.0.1", port=peer.port,
                                  dialled=dialled)
            node = self.nodes[x]
            self.feed(x, lambda n=node, e=ev: n.router.handle(EventReceived(e), self.now))

    # -- the actions ----------------------------------------------------------------------

    def _answer(self, name: str, token: Any, result: Any) -> None:
        router = self.nodes[name].router
        self.feed(name, lambda: router.handle(result, self.now))

    def _backup(self, name: str, step: Any) -> None:
        """Run a step of ``name``'s backup core (and its flush: replies wait for the commit)."""
        b = self.nodes[name].backup
        assert b is not None
        self.feed(name, lambda: step(b) + b.flush(self.now))

    def _do(self, name: str, a: Action) -> None:
        node = self.nodes[name]
        if isinstance(a, Publish | Reply | Call):  # as the receiver would take it off the bus:
            # bodies are not checked where they are built (only where they arrive)
            decode(encode(a.body, Header(a.body.msg_type, b"\x01", None, "sim", 0.0), a.blobs))
        if isinstance(a, Publish):
            node.events.append(a.body)
            if isinstance(a.body, rm.MessageReceived):
                node.delivered.append((a.body, a.blobs))
            if isinstance(a.body, rm.PathChanged | rm.Confirmation) and node.backup:
                ev = EventReceived(a.body, a.blobs, "router")
                self._backup(name, lambda b, e=ev: b.handle(e, self.now))
        elif isinstance(a, Reply | Fail) and isinstance(a.ctx, tuple) and a.ctx[:1] == ("bk",):
            tok = a.ctx[1]  # the router answers the backup core
            ev2: Any = PeerReplied(tok, a.body, a.blobs) if isinstance(a, Reply) \
                else PeerFailed(tok, a.code, a.message)
            self._backup(name, lambda b, e=ev2: b.handle(e, self.now))
        elif isinstance(a, Reply | Fail) and isinstance(a.ctx, tuple) and a.ctx[:1] == ("rt",):
            tok = a.ctx[1]  # the backup core answers the router
            res: Any = PeerReplied(tok, a.body, a.blobs) if isinstance(a, Reply) \
                else PeerFailed(tok, a.code, a.message)
            self._answer(name, tok, res)
        elif isinstance(a, Reply | Fail):
            node.replies[a.ctx] = a
        elif isinstance(a, Call) and a.role == "backup":
            req = Request(("rt", a.token), a.body, a.blobs, caller="service:router")
            self._backup(name, lambda b, r=req: b.handle(r, self.now))
        elif isinstance(a, Call) and a.role == "router":
            req2 = Request(("bk", a.token), a.body, a.blobs, caller="service:backup")
            self.feed(name, lambda r=req2: node.router.handle(r, self.now))
        elif isinstance(a, Call) and a.role == "crypto":
            [r] = node.crypto.handle(Request("c", a.body, a.blobs), self.now)
            self._answer(name, a.token, PeerReplied(a.token, r.body, r.blobs)
                         if isinstance(r, Reply) else PeerFailed(a.token, r.code, r.message))
        elif isinstance(a, Call) and a.role == "transport":
            self._transport(name, a)
        else:
            raise AssertionError(f"unexpected action {a!r}")

    def _transport(self, name: str, a: Call) -> None:
        node = self.nodes[name]
        body = a.body
        if isinstance(body, tm.Peers):
            peers = [tm.PeerInfo(node_id=self.nodes[o].id, host="10.0.0.1",
                                 port=self.nodes[o].port, dialled=True, path="direct",
                                 rtt_ms=1.0)
                     for link in self.links if name in link for o in link - {name}]
            self._answer(name, a.token, PeerReplied(a.token, tm.PeersReply(peers=peers)))
        elif isinstance(body, tm.Info):
            self._answer(name, a.token, PeerReplied(a.token, tm.InfoReply(
                node_id=node.id, host="0.0.0.0", port=node.port, ready=True,
                reflexive=[tm.SocketAddr(host=h, port=p)
                           for h, p in self.reflexive.get(name, [])],
                local=[tm.SocketAddr(host="10.0.0.1", port=node.port)],
                mapped=[tm.SocketAddr(host=h, port=p) for h, p in self.mapped.get(name, [])])))
        elif isinstance(body, tm.Punch):  # a NAT between them unless reachable
            relay, other = self.by_id(body.via), self.by_id(body.peer)
            self.punches.append((name, other.name if other else "?"))
            pair = frozenset((name, other.name)) if other else frozenset()
            if relay is None or pair not in self.reachable | self.punchable \
                    or frozenset((name, relay.name)) not in self.links:
                self._answer(name, a.token, PeerFailed(a.token, ErrorCode.FAILED,
                                                       "no direct path"))
                return
            assert other is not None
            self._link(name, other.name)
            self._answer(name, a.token, PeerReplied(a.token, tm.PunchReply(
                host="10.0.0.1", port=other.port, elapsed_ms=1.0)))
        elif isinstance(body, tm.Connect):
            self.dials.append((name, body.peer))
            if name in self.transport_down:
                self._answer(name, a.token, PeerFailed(a.token, ErrorCode.UNAVAILABLE,
                                                       "no binding yet"))
                return
            other = self.by_id(body.peer)
            if other is None or frozenset((name, other.name)) not in self.reachable \
                    or body.port != other.port:  # not where it listens (now)
                code, text = self.dial_errors.get(body.peer, (
                    ErrorCode.PEER_TIMEOUT,
                    f"unreachable: no answer from {body.host}:{body.port} within 10 s"))
                # (the bus names the service that answered, as shared/service.py does)
                self._answer(name, a.token, PeerFailed(a.token, code, f"transport: {text}"))
                return
            self._link(name, other.name)
            self._answer(name, a.token, PeerReplied(a.token, tm.ConnectReply()))
        elif isinstance(body, tm.Send):
            self.tried.append((name, a.blobs[0]))
            other = self.by_id(body.peer)
            pair = frozenset((name, other.name)) if other else frozenset()
            if other is None or pair not in self.links:
                self._answer(name, a.token, PeerFailed(a.token, ErrorCode.UNAVAILABLE,
                                                       "no connection"))
                return
            self._answer(name, a.token, PeerReplied(a.token, tm.SendReply()))
            self.sent.append((name, a.blobs[0]))
            if pair in self.drop_sends or (self.lose and self.lose(name, a.blobs[0])):
                return
            req = Request(("deliver", name), rm.Deliver(peer=node.id, path="direct"),
                          a.blobs)
            self.feed(other.name, lambda: other.router.handle(req, self.now))
        else:
            raise AssertionError(f"unexpected transport call {body!r}")
