"""The service base: a thin asyncio + ZeroMQ shell around a sans-I/O core.

A :class:`Service` ties three parts together: its sockets (:mod:`shared.sockets`: a ROUTER
for requests, a PUB for events, a DEALER per service it calls and a SUB per service it listens
to, or the local hub's equivalents all-in-one), its calls in flight and the liveness of the
services it depends on (:mod:`shared.calls`), and the core. Every wake-up *drains* the sockets
that may hold input with non-blocking receives until none has a message left (awaiting each
message is an order of magnitude slower, see docs/benchmarks.md), and what the core answers
leaves at the end of each batch. Because ZeroMQ descriptors are edge-triggered, every path
that sends outside a drain ends by draining again.

Per inbound request the base decodes the frame, answers ``sys.ping``, ``sys.status`` and
``sys.shutdown`` itself, and hands anything else the core declares in ``Core.handles`` to
``core.handle(input, now)``. Malformed input never reaches the core: it gets a ``sys.error``
reply and is counted under ``decode_errors``. An exception raised by the core is a bug of ours:
it is logged with its traceback, answered ``internal`` and counted, and the service keeps
serving its other clients.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import zmq

from . import IMPL
from . import config as cfg
from .calls import Calls
from .core import (
    Action,
    Call,
    Core,
    EventReceived,
    Fail,
    Input,
    PeerFailed,
    Publish,
    Reply,
    Request,
    ServiceAction,
    ServiceInput,
)
from .endpoints import Endpoints, EndpointsError
from .ids import MsgIds
from .localbus import Dealer, Hub, Sub
from .sockets import Sockets
from .sockets import StartupError as StartupError  # raised while binding; shells raise it too
from .wire import (
    Decoded,
    DecodeError,
    ErrorCode,
    Header,
    Message,
    decode,
    encode,
    split_routing,
)
from .wire.frame import pack_body
from .wire.messages.sys import (
    ErrorReply,
    Heartbeat,
    Ping,
    PingReply,
    Ready,
    Shutdown,
    ShutdownReply,
    Status,
    StatusReply,
)

EARLY_HEARTBEATS_S = (0.2, 0.5, 1.0, 2.0)
"""Heartbeats after start, before the regular ones: subscribers reconnecting to a restarted
service hear its new incarnation within about a second."""
SILENT_HEARTBEATS = 3
"""Heartbeat intervals without a word after which a service is taken for gone..."""
MIN_SILENCE_S = 5.0
"""...but never sooner: a service whose loop is busy for a moment (a test's 0.5 s heartbeats
on a loaded machine) is not taken for gone, which would drop every connection the router
knows of. Restarts are seen at once anyway, by the new incarnation."""
LEAVE_GRACE_S = 3.0
"""How long a core may take to hand its duties on (``Core.leave``) before the service stops
anyway: below supervisord's ``stopwaitsecs`` (5 s)."""
OUTBOX_FLUSH = 16
"""Replies (or calls) queued before they are sent without waiting for the end of the
batch."""


@dataclass
class ServiceContext:
    """What a service is started with: its data directory, config and endpoints."""

    data_dir: Path
    endpoints: Endpoints
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def section(self, name: str, model: type[cfg.S]) -> cfg.S:
        return cfg.section(self.config, name, model, self.env)

    @property
    def bus(self) -> cfg.BusSection:
        return self.section("bus", cfg.BusSection)


class Service:
    """Base of every service shell. Subclasses set ``role`` and implement ``build_core``."""

    role: ClassVar[str] = ""

    def __init__(self, context: ServiceContext, *, zctx: zmq.Context | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, hub: Hub | None = None) -> None:
        self.context = context
        self.bus = context.bus
        self.log = logging.getLogger(f"tom.{self.role}")
        self.clock = clock
        self.wall = wall
        self.core = self.build_core(context)
        self.ids = MsgIds(os.urandom(8))
        self.incarnation = os.urandom(8)
        """Drawn at each start: in ``sys.ready`` and every heartbeat."""
        self.started = clock()
        self.stats: Counter[str] = Counter()
        self.errors_sent: Counter[str] = Counter()
        self.calls = Calls(self.stats, max(SILENT_HEARTBEATS * self.bus.heartbeat_s,
                                           MIN_SILENCE_S), self.log)
        """Calls in flight, and the services this one calls or listens to."""
        self.hub = hub
        """The other services of this process (all-in-one), reached without ZeroMQ."""
        self.sockets = Sockets(self.role, self.bus, context.data_dir,
                               zctx or zmq.Context.instance(), context.endpoints, hub, self.stats,
                               self.log, self._drain)
        self._outbox: list[tuple[zmq.Socket | Dealer | None, list[Any], bytes,
                                 Call | None]] = []
        """Replies (socket None: the ROUTER) and calls (socket, frames, msg_id, call) to
        send at the next :meth:`_flush`: the calls first, each kind in the order the core
        made it."""
        self._events: list[tuple[list[bytes], Decoded | None]] = []
        """Events to publish at the next :meth:`_flush`, after its calls, before its
        replies (with the message as built for the services of this process, all-in-one)."""
        self._stopped = asyncio.Event()
        self._left: asyncio.Event | None = None
        """Set once the core has handed its duties on (while leaving)."""
        self._stopping: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._again: asyncio.Handle | None = None
        self._next_heartbeat = self.started + EARLY_HEARTBEATS_S[0]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pong = PingReply(service=self.role, impl=IMPL, pid=os.getpid())
        self._pong_packed = pack_body(self._pong)

    def build_core(self, context: ServiceContext) -> Core:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Bind, announce readiness, serve until stopped, then close everything."""
        self._loop = asyncio.get_running_loop()
        sockets = self.sockets
        authed = sockets.bind(self._loop)
        assert sockets.rpc is not None
        sockets.watch(sockets.rpc, self._on_request, authed)
        if sockets.local_rpc is not None:
            sockets.watch(sockets.local_rpc, self._on_local_request)
        self.log.info("serving on %s", sockets.own.rpc)
        self._publish(Ready(service=self.role, impl=IMPL, pid=os.getpid(),
                            incarnation=self.incarnation))
        self._flush()
        if ready:
            ready()
        self._drain()
        try:
            await self._stopped.wait()
        finally:
            self._close()

    async def leave(self) -> None:
        """Let the core hand its duties on (``Core.leave``) while the node's other services
        still run, for at most ``LEAVE_GRACE_S``; the caller stops the service after."""
        if self._loop is None or self._stopped.is_set():
            return
        if self._left is None:
            self._left = asyncio.Event()
            self._run_core(lambda: self.core.leave(self.clock()), None)
            self._drain()
        try:
            await asyncio.wait_for(self._left.wait(), LEAVE_GRACE_S)
        except TimeoutError:
            self.stats["leave_unfinished"] += 1
            self.log.warning("stopping before everything was handed on (%.0f s)",
                             LEAVE_GRACE_S)

    def leave_then_stop(self) -> None:
        """``sys.shutdown``: :meth:`leave`, then stop."""
        async def go() -> None:
            await self.leave()
            self.request_stop()
        if self._stopping is None and self._loop is not None:
            self._stopping = self._loop.create_task(go())

    def request_stop(self) -> None:
        if not self._stopped.is_set():
            self.log.info("stopping")
            self._stopped.set()

    def _close(self) -> None:
        assert self._loop is not None
        self._perform(self.core.close(self.clock()))
        self._flush()
        if self._timer:
            self._timer.cancel()
        if self._again:
            self._again.cancel()
        self.sockets.close()

    # -- the drain loop ----------------------------------------------------------------------

    def _drain(self) -> None:
        """Handle messages until no socket may hold one or the batch budget is spent.

        Only the sockets that may hold input are asked (``readable``, which costs libzmq a
        system call): those whose descriptor fired and those this service used since they
        were last found empty, because any operation on a ZeroMQ socket may consume the
        notice of a message arriving (its descriptor is edge-triggered). A socket is read
        while it reports input, without the exception an empty read costs. Queued sends
        leave after each socket's batch and at the start of each pass; passes repeat while a
        socket may hold input, so the last operation on every used socket is a check that
        found it empty.
        """
        self._again = None
        budget = self.bus.max_batch
        sockets, dirty = self.sockets, self.sockets.dirty
        while not self._stopped.is_set():
            self._perform(self.core.flush(self.clock()))
            self._flush()  # sends made outside a read batch (timer); reads follow
            if not dirty or budget <= 0:
                break
            for sock, handler, authed in tuple(sockets.inputs):
                if sock not in dirty:
                    continue
                start = budget
                budget = sockets.read(sock, handler, authed, budget, self._stopped)
                if budget < start:
                    self._perform(self.core.flush(self.clock()))
                    self._flush()
        self.stats["frames_in"] += self.bus.max_batch - budget
        if self._left is not None and not self._left.is_set() and self.core.left():
            self._left.set()
        if dirty and budget <= 0 and self._again is None and self._loop is not None:
            self._again = self._loop.call_soon(self._drain)  # more queued: yield, then go on
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._stopped.is_set() or self._loop is None:
            return
        when = min(t for t in (self._next_heartbeat, self.calls.next_deadline(),
                               self.core.next_deadline()) if t is not None)
        if when == self._timer_at:
            return
        if self._timer:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock()
        for event in self.calls.expire(now):
            self._feed(event)
        if now >= self._next_heartbeat:
            self._publish(Heartbeat(service=self.role, uptime_s=now - self.started,
                                    incarnation=self.incarnation))
            early = [t for t in EARLY_HEARTBEATS_S if self.started + t > now]
            self._next_heartbeat = self.started + early[0] if early \
                else now + self.bus.heartbeat_s
        for role in self.calls.silent(now):
            for event in self.calls.gone(role, lost=True):
                self._feed(event)
        core_at = self.core.next_deadline()
        if core_at is not None and core_at <= now:
            self._run_core(lambda: self.core.on_timer(now), None)
        self._drain()

    # -- inbound -----------------------------------------------------------------------------

    def _on_request(self, frames: list[bytes]) -> None:
        route, rest = split_routing(frames)
        try:
            msg = decode(rest, self.bus.max_message_bytes)
        except DecodeError as e:
            self._reject(route, e.parent_id, e.code, e.message)
            return
        self._handle_request(route, msg)

    def _on_local_request(self, item: tuple[Dealer, Decoded]) -> None:
        """A request from a service of this process: built by it, not encoded."""
        self._handle_request([item[0]], item[1])

    def _handle_request(self, route: list[Any], msg: Decoded) -> None:
        body, msg_id = msg.body, msg.header.msg_id
        if msg.header.deadline is not None and msg.header.deadline < self.wall():
            self.stats["expired_requests"] += 1  # the caller gave up: nobody waits for it
            return
        ctx = (route, msg_id)
        if body.kind != "request":
            self._reject(route, msg_id, ErrorCode.UNSUPPORTED,
                         f"{body.msg_type} is a {body.kind}, not a request")
        elif isinstance(body, Ping):
            self._reply(ctx, self._pong, packed=self._pong_packed)
        elif isinstance(body, Status):
            self._reply(ctx, self.status())
        elif isinstance(body, Shutdown):
            caller = self.sockets.caller
            if caller is not None and caller.startswith("app:"):
                self.stats["refused_callers"] += 1
                self._send_error(route, msg_id, ErrorCode.FORBIDDEN,
                                 "an app cannot stop the node's services")
                return
            self._reply(ctx, ShutdownReply())
            self.leave_then_stop()
        elif type(body) in self.core.handles:
            req = Request(ctx, body, msg.blobs, msg.header.src, self.sockets.caller)
            self._run_core(lambda: self.core.handle(req, self.clock()), ctx)
        else:
            self._reject(route, msg_id, ErrorCode.UNSUPPORTED,
                         f"{self.role} does not handle {body.msg_type}")

    def _reject(self, route: list[bytes], parent_id: bytes | None, code: ErrorCode,
                message: str) -> None:
        self.stats["decode_errors"] += 1
        self.log.debug("rejected frame: %s", message)
        self._send_error(route, parent_id, code, message)

    def _on_reply(self, role: str, frames: list[bytes]) -> None:
        if frames and frames[0] == b"":
            frames = frames[1:]
        try:
            msg = decode(frames, self.bus.max_message_bytes)
        except DecodeError as e:
            self.stats["decode_errors"] += 1
            self.log.warning("unreadable reply from %s: %s", role, e.message)
            return
        self._handle_reply(role, msg)

    def _handle_reply(self, role: str, msg: Decoded) -> None:
        event = self.calls.answer(role, msg)
        if event is not None:
            self._feed(event)

    def _on_event(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames[1:], self.bus.max_message_bytes)
        except DecodeError as e:
            self.stats["decode_errors"] += 1
            self.log.warning("unreadable event: %s", e.message)
            return
        self._handle_event(msg)

    def _handle_event(self, msg: Decoded) -> None:
        body = msg.body
        if isinstance(body, (Ready, Heartbeat)):
            role = body.service
            known = role in self.sockets.dealers or role in self.sockets.subs
            for event in self.calls.heard(role, body.incarnation, self.clock(), known):
                self._feed(event)
            return
        self._feed(EventReceived(body, msg.blobs, msg.header.src))

    def _feed(self, event: Input) -> None:
        self._run_core(lambda: self.core.handle(event, self.clock()), None)

    def _run_core(self, step: Callable[[], list[Action]], ctx: Any) -> None:
        try:
            actions = step()
        except Exception:
            self.stats["internal_errors"] += 1
            self.log.exception("core failed")
            if ctx is not None:
                self._send_error(ctx[0], ctx[1], ErrorCode.INTERNAL,
                                 f"{self.role} failed on this request; see its log")
            return
        self._perform(actions)

    # -- outbound ----------------------------------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Reply):
                self._reply(a.ctx, a.body, a.blobs)
            elif isinstance(a, Fail):
                self._send_error(a.ctx[0], a.ctx[1], a.code, a.message)
            elif isinstance(a, Publish):
                self._publish(a.body, a.blobs)
            elif isinstance(a, Call):
                failure = self._call(a)
                if failure is not None:
                    self._feed(failure)
            else:
                self.perform_extra(a)

    def perform_extra(self, action: ServiceAction) -> None:
        """Carry out an action of a service's own (the transport sends datagrams)."""
        raise TypeError(f"{self.role} cannot perform {action!r}")

    def feed_external(self, event: ServiceInput) -> None:
        """Hand the core an input from outside the bus (a datagram), then drain as usual."""
        if self._stopped.is_set():
            return
        self._run_core(lambda: self.core.handle(event, self.clock()), None)
        self._drain()

    def _header(self, body: Message, parent_id: bytes | None) -> Header:
        return Header(body.msg_type, self.ids.next(), parent_id, self.role, self.wall())

    def _reply(self, ctx: Any, body: Message, blobs: tuple[bytes, ...] = (),
               packed: bytes | None = None) -> None:
        """Queue a reply; replies leave together after each batch read from a socket.

        Sending them back to back wakes ZeroMQ's I/O thread once per batch instead of once
        per reply, which matters when each request takes long (crypto) on 2 cores.
        """
        route, parent_id = ctx
        header = self._header(body, parent_id)
        if isinstance(route[0], Dealer):  # a service of this process: trusted, not encoded
            frames = [route[0], Decoded(header, body, blobs)]
        else:
            frames = [*route, *encode(body, header, blobs, packed)]
        self._outbox.append((None, frames, b"", None))
        if len(self._outbox) >= OUTBOX_FLUSH:
            self._flush()

    def _flush(self) -> None:
        """Send the queued calls, then what the shell queued (the transport's datagrams),
        then the events, then the replies.

        At low load each send that wakes ZeroMQ's I/O thread (or the peer's process) costs
        tens of µs on 2 vCPUs, so what a message waits for goes out before what only reports
        on it: its next step is a call (the router's ``transport.send`` after a seal, the
        transport's ``router.deliver`` when an envelope arrives) or a datagram, and an app
        waits for an event (``delivered``, a new message); replies (``transport.send_reply``,
        ``router.deliver_reply``...) mostly close bookkeeping. Each kind keeps the order the
        core made it in. A call that ZeroMQ cannot queue (its peer's queue is full) is failed
        to the core as ``overloaded``; whatever the core does about it is sent in the same
        flush.
        """
        pub, rpc = self.sockets.pub, self.sockets.rpc
        while rpc is not None and pub is not None:
            out, self._outbox = self._outbox, []
            for sock, frames, msg_id, call in out:
                if call is not None and sock is not None and not self.sockets.send(sock, frames) \
                        and self.calls.cancel(msg_id):
                    self._feed(PeerFailed(call.token, ErrorCode.OVERLOADED,
                                          f"queue to {call.role} is full"))
            self.flush_extra()
            events, self._events = self._events, []
            for frames, msg in events:
                self.sockets.send(pub, frames)
                if self.hub is not None and msg is not None:
                    self.stats["drops"] += self.hub.publish(self.role, frames[0], msg)
            for sock, frames, _, call in out:
                if call is None or sock is None:
                    self.sockets.send(rpc, frames)
            if not (self._outbox or self._events):
                break

    def flush_extra(self) -> None:
        """Send what the shell queued in :meth:`perform_extra` (after the calls)."""

    def _send_error(self, route: list[bytes], parent_id: bytes | None, code: ErrorCode,
                    message: str) -> None:
        name = code.name.lower()
        self.errors_sent[name] += 1
        self._reply((route, parent_id), ErrorReply(code=int(code), name=name, message=message))

    def _publish(self, body: Message, blobs: tuple[bytes, ...] = ()) -> None:
        """Queue an event; events leave at the next :meth:`_flush`, after its calls, before
        its replies."""
        assert self.sockets.pub is not None  # events are published once the service runs
        header = self._header(body, None)
        self._events.append(([body.msg_type.encode(), *encode(body, header, blobs)],
                             Decoded(header, body, blobs) if self.hub is not None else None))
        if len(self._events) >= OUTBOX_FLUSH:
            self._flush()

    def _call(self, a: Call) -> PeerFailed | None:
        """Queue a call; calls leave with the replies, after each batch read from a socket
        (or every ``OUTBOX_FLUSH``), for the same reason replies do."""
        try:
            sock = self._dealer(a.role)
        except EndpointsError as e:
            return PeerFailed(a.token, ErrorCode.UNAVAILABLE, str(e))
        msg_id = self.ids.next()
        timeout = a.timeout_s or self.bus.request_timeout_s
        now = self.wall()
        header = Header(a.body.msg_type, msg_id, None, self.role, now, now + timeout)
        self.calls.add(msg_id, a.token, a.role, type(a.body), timeout, self.clock())
        frames = [sock, Decoded(header, a.body, a.blobs)] if isinstance(sock, Dealer) \
            else [b"", *encode(a.body, header, a.blobs)]
        self._outbox.append((sock, frames, msg_id, a))
        if len(self._outbox) >= OUTBOX_FLUSH:
            self._flush()
        return None

    def _dealer(self, role: str) -> zmq.Socket | Dealer:
        sock, new = self.sockets.dealer(role)
        if new:
            if isinstance(sock, Dealer):
                self.sockets.watch(sock, lambda msg: self._handle_reply(role, msg))
                self._listen(role)
            else:
                self.sockets.watch(sock, lambda frames: self._on_reply(role, frames))
                try:
                    self._listen(role)  # its heartbeats: calls in flight fail when it restarts
                except (KeyError, EndpointsError) as e:
                    self.log.warning("cannot listen to %s's events: %s", role, e)
        return sock

    def subscribe(self, role: str, prefix: str = "") -> None:
        """Receive ``role``'s events whose msg_type starts with ``prefix``."""
        self.sockets.subscribe(self._listen(role), prefix.encode())

    def _listen(self, role: str) -> zmq.Socket | Sub:
        sock, new = self.sockets.sub(role)
        if new:
            self.sockets.watch(sock, self._handle_event if isinstance(sock, Sub)
                               else self._on_event)
        return sock

    # -- status ------------------------------------------------------------------------------

    def status(self) -> StatusReply:
        s = self.stats
        return StatusReply(
            service=self.role, impl=IMPL, pid=os.getpid(),
            uptime_s=round(self.clock() - self.started, 3),
            frames_in=s["frames_in"], frames_out=s["frames_out"],
            decode_errors=s["decode_errors"], drops=s["drops"],
            errors=dict(self.errors_sent),
            queues={"pending_calls": len(self.calls), **self.core.queues()},
            counters={k: v for k, v in s.items() if k not in (
                "frames_in", "frames_out", "decode_errors", "drops")} | self.sockets.auth_counters()
            | self.core.counters(),
        )
