"""Groups cores with real crypto cores, joined by an in-memory router (sans-I/O).

Each node is a GroupsCore (SQLite in memory, or a file for restart tests) and a CryptoCore
(``crypto.node_id``, ``crypto.group_seal`` and ``crypto.group_open`` done for real: XChaCha20
with the sender key, Ed25519 signatures by the node's seed). The router is faked here:
``router.send`` is accepted at once and the payload is appended to the recipient's inbox
(``seq`` increasing per recipient) and announced to its groups core as a
``router.group_envelope``; ``router.inbox`` answers from that inbox. Nodes on different
sides of a partition cannot reach each other: what one sends the other waits in the router
(``held``) until the partition heals, as the real router retries until acknowledged, or
until its ``lifetime_s`` passes (beats, claims); router signals (``signal``, where the
router has them) go once, with ``seq`` 0, or not at all. Everything runs on a virtual clock: inputs
are handled in FIFO order, each followed by the core's flush (a batch of one), and
:meth:`GroupsSim.run` advances time in steps, firing the cores' timers.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.crypto.core import CryptoCore
from services.groups import context as groups_context
from services.groups import wire
from services.groups.context import GroupsSettings
from services.groups.core import GroupsCore
from services.groups.state import GroupState
from services.groups.store import Store
from services.router.core import MAX_PAYLOAD as ROUTER_MAX_PAYLOAD
from shared.core import (
    Action,
    Call,
    EventReceived,
    Fail,
    Input,
    PeerFailed,
    PeerReplied,
    PeerRestarted,
    Publish,
    Reply,
    Request,
)
from shared.wire import ErrorCode, Header, decode, encode
from shared.wire.messages import Message, as_dict
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm

SIGNALS: frozenset[str] = getattr(groups_context, "SIGNALS", frozenset())
"""Payload kinds the groups service sends as router signals (none before it had them)."""
START = 1000.0
WALL = 1_800_000_000.0


@dataclass
class Held:
    """A payload the router holds because the recipient cannot be reached."""

    src: str
    dst: str
    raw: bytes
    expires: float


@dataclass
class GNode:
    name: str
    index: int
    crypto: CryptoCore
    core: GroupsCore | None
    db: str
    inbox: list[rm.Stored] = field(default_factory=list)
    """The router's inbox of Group envelopes for this node (it outlives the groups core)."""
    tail: int = 0
    """The seq of the last envelope the inbox took (its rows may have been purged)."""
    events: list[Message] = field(default_factory=list)
    received: list[tuple[gm.MessageReceived, bytes]] = field(default_factory=list)
    replies: dict[Any, Reply | Fail] = field(default_factory=dict)
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)
    """Every payload this node's groups core gave to router.send: (to, raw)."""

    @property
    def id(self) -> bytes:
        return self.crypto.node_id

    @property
    def c(self) -> GroupsCore:
        assert self.core is not None, f"{self.name} is down"
        return self.core

    @property
    def stats(self) -> dict[str, int]:
        return self.c.counters()

    def group(self, gid: str) -> GroupState | None:
        return self.c.ctx.groups.get(gid)

    def texts(self, gid: str) -> list[bytes]:
        """The texts shown to this node's apps for ``gid``, in the order shown."""
        return [b for ev, b in self.received if ev.group_id == gid]

    def shown(self, gid: str) -> list[tuple[int, bytes]]:
        """(seq, text) of every message shown for ``gid``."""
        return [(ev.seq, b) for ev, b in self.received if ev.group_id == gid]

    def of(self, kind: type[Message]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class GroupsSim:
    def __init__(self, *names: str, db: dict[str, str] | None = None,
                 **settings: Any) -> None:
        self.now = START
        self.wall = WALL
        self.settings = GroupsSettings(**settings)
        self.nodes: dict[str, GNode] = {}
        self.queue: deque[tuple[str, Any]] = deque()
        self.side: dict[str, int] = {}
        """Partition sides: nodes reach each other only on the same side."""
        self.links: set[frozenset[str]] | None = None
        """Direct paths, when set: only these pairs reach each other directly, others only
        through the relay the sender's ``router.send`` names (as in a star of members
        connected to the hub alone, which announces at most 32 of them)."""
        self.relayed = 0
        self.held: list[Held] = []
        self.lose: Callable[[str, str, bytes], bool] | None = None
        """``lose(src, dst, raw)``: a payload the router loses for good (it gave up)."""
        self.refuse_send: Callable[[str, str, bytes], ErrorCode | None] | None = None
        """``refuse_send(src, dst, raw)``: the router refuses ``router.send`` with a code."""
        self.lose_events: Callable[[str, rm.GroupEnvelope], bool] | None = None
        """Events the groups core misses (the envelope is in the inbox all the same)."""
        self.crypto_down: set[str] = set()
        """Nodes whose crypto calls get no answer (kept in ``unanswered``)."""
        self.unanswered: list[tuple[str, Call]] = []
        self.die_before_flush: set[str] = set()
        """Nodes whose groups process dies after handling their next input, before the
        flush (so before the store commits and before any action leaves)."""
        self.log: list[tuple[str, str, wire.Payload]] = []
        """Every payload delivered: (src, dst, decoded)."""
        self._ctx = 0
        self._env = 0
        for i, name in enumerate(names):
            self.add(name, i, (db or {}).get(name, ":memory:"))
        self.run()  # every core learns its node id

    def add(self, name: str, i: int, db: str = ":memory:") -> GNode:
        seed = bytes([i + 1]) * 32
        crypto = CryptoCore(seed, random.Random(f"crypto{i}").randbytes,
                            lambda: int(self.wall * 1000))
        node = self.nodes[name] = GNode(name, i, crypto, None, db)
        self.side[name] = 0
        self.start(name)
        return node

    def start(self, name: str) -> None:
        """Start (or restart) a node's groups core on its store."""
        node = self.nodes[name]
        assert node.core is None
        node.core = GroupsCore(Store(node.db), lambda: self.wall, self.settings,
                               random.Random(f"groups{node.index}/{self.now}").randbytes)
        self._step(name, lambda c: c.on_timer(self.now))

    def crash(self, name: str) -> None:
        """The groups process dies: what it had not committed is lost; the router's inbox
        and what the router holds for it stay."""
        node = self.nodes[name]
        core = node.c
        core.store.db.rollback()
        core.store.db.close()
        node.core = None
        self.queue = deque((n, x) for n, x in self.queue if n != name)

    def restart(self, name: str) -> None:
        self.crash(name)
        self.start(name)

    def by_id(self, node_id: bytes) -> GNode:
        return next(n for n in self.nodes.values() if n.id == node_id)

    def name_of(self, node_id: bytes) -> str:
        n = next((n for n in self.nodes.values() if n.id == node_id), None)
        return n.name if n else node_id.hex()[:8]

    # -- driving --------------------------------------------------------------------------

    def _step(self, name: str, step: Callable[[GroupsCore], list[Action]]) -> None:
        """Give one input to a core, then flush it (a batch of one), queueing the actions."""
        node = self.nodes[name]
        if node.core is None:
            return
        for a in step(node.core):
            self.queue.append((name, a))
        for a in node.core.flush(self.now):
            self.queue.append((name, a))

    def feed(self, name: str, event: Input) -> None:
        self.queue.append((name, ("input", event)))

    def request(self, name: str, body: Message, blobs: tuple[bytes, ...] = ()) -> Any:
        """An app request; returns its ctx (the answer lands in node.replies[ctx])."""
        self._ctx += 1
        ctx = ("app", self._ctx)
        self.feed(name, Request(ctx, body, blobs))
        return ctx

    def call(self, name: str, body: Message, blobs: tuple[bytes, ...] = ()) -> Reply | Fail:
        ctx = self.request(name, body, blobs)
        self.run()
        return self.nodes[name].replies.pop(ctx)

    def ok(self, name: str, body: Message, blobs: tuple[bytes, ...] = ()) -> Any:
        r = self.call(name, body, blobs)
        assert isinstance(r, Reply), r
        return r.body

    def run(self, seconds: float = 0.0, step: float = 0.5) -> None:
        """Carry out actions until quiet, then advance time in steps, firing timers."""
        end = self.now + seconds
        while True:
            self._drain()
            if self.now >= end - 1e-9:
                return
            self.tick(min(step, end - self.now))

    def tick(self, dt: float) -> None:
        self.now += dt
        self.wall += dt
        self._expire()
        for name, node in self.nodes.items():
            if node.core is None:
                continue
            due = node.core.next_deadline()
            if due is not None and due <= self.now:
                self._step(name, lambda c: c.on_timer(self.now))

    def until(self, pred: Callable[[], bool], timeout: float, step: float = 0.5) -> float:
        """Run until ``pred()`` holds; returns the virtual seconds it took."""
        t0 = self.now
        self._drain()
        while not pred():
            assert self.now - t0 < timeout, f"not within {timeout} s"
            self.tick(step)
            self._drain()
        return self.now - t0

    def settled(self) -> bool:
        """On each side of a partition, every node that knows a group follows the hub of
        the highest term there among its hub and the successors hosting a newer term (its
        hub, term and last seq), and no core that reaches its hub has unsent messages or
        waits for a key."""
        up = [n for n in self.nodes.values() if n.core is not None]
        for n in up:
            assert n.core is not None
            for g in n.core.ctx.groups.values():
                hubs = [(hg.term, h.name) for h in up
                        if h.core is not None and self.reachable(h.name, n.name)
                        and (hg := h.core.ctx.groups.get(g.group_id)) is not None
                        and hg.hub == h.id  # its hub, or a successor of a newer term
                        and (h.id == g.hub or (hg.term > g.term and h.id in g.successors()))]
                if hubs:
                    hub = self.nodes[max(hubs)[1]]
                    assert hub.core is not None
                    hg = hub.core.ctx.groups[g.group_id]
                    if (g.hub, g.term, g.seq) != (hg.hub, hg.term, hg.seq):
                        return False
                    if n.id in g.members and n.core.store.outbox(g.group_id):
                        return False
            if n.core.queues()["waiting_for_key"]:
                return False
        return True

    def quiet(self, timeout: float = 120.0) -> float:
        """Run until :meth:`settled`; returns the virtual seconds it took."""
        return self.until(self.settled, timeout)

    def _drain(self) -> None:
        while self.queue:
            name, item = self.queue.popleft()
            self._do(name, item)

    # -- the network ----------------------------------------------------------------------

    def partition(self, *names: str) -> None:
        """Cut ``names`` off from the others (they still reach each other)."""
        side = max(self.side.values()) + 1
        for n in names:
            self.side[n] = side

    def heal(self, deliver: bool = True) -> None:
        """Join every side again; what the routers held goes now (``deliver`` False: the
        routers gave up on it)."""
        for n in self.side:
            self.side[n] = 0
        held, self.held = self.held, []
        if deliver:
            for h in held:
                self._deliver(h.src, h.dst, h.raw)
        self.run()

    def reachable(self, a: str, b: str, relay: bytes | None = None) -> bool:
        if self.side[a] != self.side[b]:
            return False
        if self.links is None or frozenset((a, b)) in self.links:
            return True
        r = next((n.name for n in self.nodes.values() if n.id == relay), None)
        if r is None or not {frozenset((a, r)), frozenset((r, b))} <= self.links \
                or self.side[r] != self.side[a]:
            return False
        self.relayed += 1
        return True

    def _expire(self) -> None:
        self.held = [h for h in self.held if h.expires > self.now]

    def inject(self, src: str, dst: str, kind: str, gid: str, *args: Any) -> None:
        """A payload ``src`` builds by hand (hostile or broken), delivered to ``dst`` (as a
        router signal when the groups service sends that kind as one)."""
        self.inject_raw(src, dst, wire.encode(kind, gid, *args), kind in SIGNALS)

    def inject_raw(self, src: str, dst: str, raw: bytes, signal: bool = False) -> None:
        self._deliver(src, dst, raw, signal)
        self.run()

    def _deliver(self, src: str, dst: str, raw: bytes, signal: bool = False) -> None:
        node = self.nodes[dst]
        self._env += 1
        if not signal:
            node.tail += 1
        row = rm.Stored(seq=0 if signal else node.tail, id=self._env.to_bytes(16, "big"),
                        sender=self.nodes[src].id, timestamp_ms=int(self.wall * 1000),
                        encrypted=True, relayed=False, payload=raw)
        if not signal:
            node.inbox.append(row)
        try:
            self.log.append((src, dst, wire.decode(raw)))
        except wire.BadPayload:
            pass
        ev = rm.GroupEnvelope(**as_dict(row, exclude={"payload", "read"}))
        if self.lose_events and self.lose_events(dst, ev):
            return
        self.feed(dst, EventReceived(ev, (raw,), "router"))

    # -- the actions ----------------------------------------------------------------------

    def _do(self, name: str, item: Any) -> None:
        node = self.nodes[name]
        if node.core is None:
            return
        if isinstance(item, tuple) and item[0] == "input":
            if name in self.die_before_flush:
                self.die_before_flush.discard(name)
                node.c.handle(item[1], self.now)
                self.crash(name)
                return
            self._step(name, lambda c: c.handle(item[1], self.now))
            return
        a: Action = item
        if isinstance(a, Publish):
            node.events.append(a.body)
            if isinstance(a.body, gm.MessageReceived):
                node.received.append((a.body, a.blobs[0]))
        elif isinstance(a, Reply | Fail):
            node.replies[a.ctx] = a
        elif isinstance(a, Call) and a.role == "crypto" and name in self.crypto_down:
            self.unanswered.append((name, a))
        elif isinstance(a, Call) and a.role == "crypto":
            [r] = node.crypto.handle(Request("c", a.body, a.blobs, caller="service:groups"),
                                     self.now)
            self.feed(name, PeerReplied(a.token, r.body, r.blobs) if isinstance(r, Reply)
                      else PeerFailed(a.token, r.code, r.message))  # type: ignore[union-attr]
        elif isinstance(a, Call) and a.role == "router":
            self._router(name, a)
        else:
            raise AssertionError(f"unexpected action {a!r}")

    def _router(self, name: str, a: Call) -> None:
        node = self.nodes[name]
        body = a.body
        # what the real router would take off the bus: the core's bodies are not checked
        # where they are built (between two processes, the router refuses them `invalid`)
        decode(encode(body, Header(body.msg_type, b"\x01", None, "groups", 0.0), a.blobs))
        if isinstance(body, rm.Send):
            assert body.groups and len(a.blobs) == 1
            raw = a.blobs[0]
            node.sent.append((body.to, raw))
            other = next((n for n in self.nodes.values() if n.id == body.to), None)
            if other is None:  # a node nobody runs: accepted, never delivered
                self._env += 1
                self.feed(name, PeerReplied(a.token, rm.SendReply(
                    id=self._env.to_bytes(16, "big"))))
                return
            dst = other.name
            code = self.refuse_send(name, dst, raw) if self.refuse_send else None
            if len(raw) > ROUTER_MAX_PAYLOAD:
                code = ErrorCode.TOO_LARGE
            if code is not None:
                self.feed(name, PeerFailed(a.token, code, "refused by the test"))
                return
            self._env += 1
            self.feed(name, PeerReplied(a.token, rm.SendReply(id=self._env.to_bytes(16, "big"))))
            if self.lose and self.lose(name, dst, raw):
                return
            signal = getattr(body, "signal", False)  # router signals: once, in no inbox
            if not self.reachable(name, dst, body.relay):
                if not signal:
                    lifetime = body.lifetime_s if body.lifetime_s is not None else 86_400
                    self.held.append(Held(name, dst, raw, self.now + lifetime))
                return
            self._deliver(name, dst, raw, signal)
        elif isinstance(body, rm.Inbox):
            assert body.groups
            rows = [r for r in node.inbox if r.seq > body.after][:body.limit]
            tail = node.tail
            self.feed(name, PeerReplied(a.token, rm.InboxReply(messages=rows, tail=tail)))
        else:
            raise AssertionError(f"unexpected router call {body!r}")

    def sent_by(self, src: str, gid: str | None = None) -> list[tuple[str, str]]:
        """(recipient, kind) of every payload ``src`` sent (in ``gid``), in order."""
        out = []
        for to, raw in self.nodes[src].sent:
            p = wire.decode(raw)
            if gid is None or p.group_id == gid:
                out.append((self.name_of(to), p.kind))
        return out

    def delivered(self, dst: str, kind: str | None = None,
                  gid: str | None = None) -> list[tuple[str, wire.Payload]]:
        """(sender, payload) of what reached ``dst``'s inbox (of ``kind``, in ``gid``)."""
        return [(s, p) for s, d, p in self.log if d == dst and kind in (None, p.kind)
                and gid in (None, p.group_id)]

    def router_restarted(self, name: str) -> None:
        self.feed(name, PeerRestarted("router"))
        self.run()

    # -- the app's side -------------------------------------------------------------------

    def create(self, name: str, group: str = "g", members: tuple[str, ...] = (),
               hub: str | None = None, invite_only: bool = True, join: bool = True) -> str:
        """Create a group hosted by ``hub`` (default ``name``); ``members`` are invited
        and (``join``) accept."""
        body = gm.Create(name=group, members=[self.nodes[m].id for m in members],
                         hub=self.nodes[hub].id if hub else None, invite_only=invite_only)
        gid: str = self.ok(name, body).group_id
        self.run()
        if join:
            for m in members:
                self.ok(m, gm.Join(group_id=gid))
            self.run()
        return gid

    def send(self, name: str, gid: str, text: bytes, mid: bytes | None = None) -> bytes:
        reply: bytes = self.ok(name, gm.Send(group_id=gid, id=mid), (text,)).id
        return reply

    def send_nowait(self, name: str, gid: str, text: bytes) -> Any:
        return self.request(name, gm.Send(group_id=gid), (text,))

    def names(self, gid: str, viewer: str) -> set[str]:
        g = self.nodes[viewer].group(gid)
        assert g is not None
        return {self.name_of(n) for n in g.members}


# -- questions the tests ask --------------------------------------------------------------

def group(sim: GroupsSim, name: str, gid: str) -> GroupState:
    g = sim.nodes[name].group(gid)
    assert g is not None, name
    return g


def log_of(sim: GroupsSim, name: str, gid: str) -> list[tuple[int, int, str]]:
    """(seq, term, kind) of the entries ``name`` holds, in order."""
    return [(e.seq, e.term, e.kind)
            for e in sim.nodes[name].c.store.entries_after(gid, 0, 10_000)]


def texts_once(sim: GroupsSim, name: str, gid: str) -> list[bytes]:
    texts = sim.nodes[name].texts(gid)
    assert len(texts) == len(set(texts)), (name, texts)
    return texts


def successors(sim: GroupsSim, gid: str, viewer: str = "a") -> list[str]:
    return [sim.name_of(n) for n in group(sim, viewer, gid).successors()]


def hub_of(sim: GroupsSim, name: str, gid: str) -> tuple[str, int]:
    g = group(sim, name, gid)
    return sim.name_of(g.hub), g.term
