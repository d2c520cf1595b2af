"""Transport core: the QUIC endpoint (endpoint.py) behind the bus contract.

Theory of operation. At start, and again at each binding's half-life, the core asks crypto
to sign a binding of this process's transport key (``crypto.bind_transport``); until the
first one arrives, requests that need peers fail with ``unavailable`` and retries follow
every 2 s. Datagrams from the shell's UDP socket are fed to the endpoint; its datagrams
become :class:`SendDatagram` actions and its events become bus events
(``transport.peer_connected``, ``transport.peer_disconnected``, ``transport.path``).
``transport.connect`` is answered when the peer has proven its node id, or fails with the
reason the connection ended, said for the person who asked and starting with what went
wrong (docs/protocol.md): ``refused:`` (something else answers at that address: a different
node, or one that proves no node id), ``unreachable:`` (nothing answered; or the network
says nothing listens there: an ICMP error the shell reads from the socket's error queue,
:class:`Unreachable`) or ``dns:`` (the host name does not resolve). Its host is checked as
text first (addresses.py; ``invalid`` otherwise, counted); a host name is never given to
the endpoint: the core asks the shell to resolve it (:class:`Resolve`), which does so in a
resolver thread with a timeout and answers with :class:`Resolved`, and only then dials.

Envelopes from peers go to the router as ``router.deliver`` calls, at most
``DELIVER_WINDOW`` in flight. What the transport holds for the router, queued or in flight,
may cost ``DELIVER_QUEUE_COST`` (each envelope its size, at least the endpoint's
``FRAME_COST``): that is the endpoint's budget, for all connections of all peers, and once it
is spent the endpoint stops reading its peers, so QUIC flow control makes them wait instead
of anything being dropped; it reads again when the cost is down to half. Only complete
frames of connections that end go past it, at most the endpoint's ``OVERDRAFT`` (8 MiB).
A call that times out or finds the router unavailable or overloaded is retried, in the order
the envelopes arrived (the router drops duplicates by envelope id); any other error drops the
envelope, counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.core import (
    Action,
    Call,
    Core,
    Fail,
    Input,
    PeerFailed,
    PeerReplied,
    Publish,
    Reply,
    Request,
    ServiceAction,
    ServiceInput,
)
from shared.wire import ErrorCode
from shared.wire.messages import crypto as cm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as m

from .addresses import parse_host
from .admission import Limits
from .endpoint import (
    FRAME_COST,
    Addr,
    AddressObserved,
    Backpressure,
    DialFailed,
    Endpoint,
    FrameTooLarge,
    NotAnEnvelope,
    PathUpdated,
    PeerAuthenticated,
    PeerClosed,
    PunchEnded,
    Received,
    SendError,
    transport_public,
)
from .events import SocketAction
from .fairqueue import FairQueue
from .portmap import MappingChanged, PortMapper

_BIND = "bind"
BIND_RETRY_S = 2.0
REDIAL_FIRST_S = 1.0
REDIAL_MAX_S = 30.0
REDIAL_ATTEMPTS = 8
DELIVER = "deliver"
DELIVER_WINDOW = 64
DELIVER_QUEUE_COST = 8 * 1024 * 1024
DELIVER_TIMEOUT_S = 5.0
DELIVER_RETRY_S = 0.5
RETRYABLE = frozenset({ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED})
MAX_RESOLVING = 8
"""Host names being resolved at once (``transport.connect`` with a name); more are refused
with ``overloaded`` (counted ``resolves_refused``)."""


@dataclass(frozen=True, slots=True)
class DatagramsReceived(ServiceInput):
    """Datagrams read from the UDP socket in one go."""

    batch: list[tuple[bytes, Addr]]


@dataclass(frozen=True, slots=True)
class SendDatagram(ServiceAction):
    data: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class ExtraSockets(ServiceAction):
    """Open or close birthday-probing sockets (:class:`~.events.OpenSockets`,
    :class:`~.events.CloseSockets`)."""

    action: SocketAction


@dataclass(frozen=True, slots=True)
class PortmapStart(ServiceInput):
    """The shell found the gateway and made ``core.portmap``: start mapping."""


@dataclass(frozen=True, slots=True)
class PortmapReceived(ServiceInput):
    """A datagram from the gateway's PCP/NAT-PMP port."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendPortmap(ServiceAction):
    """A datagram for the gateway's PCP/NAT-PMP port (the shell's port-mapping socket)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Resolve(ServiceAction):
    """Resolve a host name off the event loop (the shell answers with :class:`Resolved`,
    within its timeout)."""

    token: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Resolved(ServiceInput):
    """The answer to :class:`Resolve`: a literal address, or why there is none."""

    token: int
    addr: Addr | None
    error: str = ""
    timed_out: bool = False
    """The failure may pass: the resolver did not answer in time, or said to try again
    (False: the name does not exist)."""


@dataclass(frozen=True, slots=True)
class Unreachable(ServiceInput):
    """The network refused a datagram the socket sent (an ICMP error from the socket's
    error queue): where it went, the start of the datagram as the error quotes it, and
    what the error says."""

    addr: Addr
    quoted: bytes
    why: str


class TransportCore(Core):
    role = "transport"
    handles = frozenset({m.Info, m.Connect, m.Send, m.Peers, m.Punch})

    def __init__(self, key: Ed25519PrivateKey, wall: Callable[[], float], local: Addr,
                 binding_s: float = 86400.0, idle_timeout_s: float = 30.0,
                 limits: Limits | None = None) -> None:
        self._key = key
        self.limits = limits or Limits()
        self._wall = wall
        self.local = local
        self.binding_s = binding_s
        self.idle_timeout_s = idle_timeout_s
        self.endpoint: Endpoint | None = None
        self._next_bind: float | None = 0.0
        self._connects: dict[bytes, list[object]] = {}
        self._punches: dict[bytes, list[object]] = {}
        self.local_candidates: list[Addr] = []
        self._observed: dict[bytes, Addr] = {}
        """What each connected peer reports as this node's address."""
        self._known: dict[bytes, Addr] = {}
        """Last address of each connected peer the router asked for (``transport.connect`` or
        ``punch``): re-dialled when it is lost, forgotten when the re-dials give up. Strangers
        (peers that connected unasked, or that a relay introduced) are neither."""
        self._redial: dict[bytes, tuple[float, int]] = {}
        """node id -> (when, attempt) of the next re-dial (when = inf while one is in flight)."""
        self._inbox = FairQueue()
        """(arrival number, peer, envelope) waiting for a ``router.deliver`` slot, served
        peer by peer so one peer's backlog does not hold up the others."""
        self._inbox_cost = 0
        self._arrivals = 0
        self._failed: list[tuple[int, bytes, bytes]] = []
        """Deliveries to retry, put back at the head of the queue in arrival order."""
        self._paused = False
        self._delivering = 0
        self._deliver_after = 0.0
        """After a retryable failure, no new calls before this time."""
        self.stats: Counter[str] = Counter()
        self._send_replies: list[Action] = []
        self._resolving: dict[int, tuple[bytes, str, int]] = {}
        """token -> (peer, host, port) of each name being resolved for a connect."""
        self._resolve_seq = 0
        self.portmap: PortMapper | None = None
        """The port-mapping client (portmap.py), set by the shell when a gateway is known."""
        self.mapped: list[Addr] = []
        """The public address the gateway maps to our socket: first among our candidates."""

    # -- inputs ----------------------------------------------------------------------------

    def handle(self, event: Input, now: float) -> list[Action]:
        ep = self.endpoint
        match event:
            case DatagramsReceived(batch=batch):
                if ep is not None:
                    for data, addr in batch:
                        ep.receive(data, addr, now)
                return self._collect(now)
            case PeerReplied(token=token, body=cm.BindTransportReply(binding=binding)) \
                    if token == _BIND:
                self._bound(binding, now)
                return self._collect(now)
            case PeerFailed(token=token) | PeerReplied(token=token) if token == _BIND:
                self._next_bind = now + BIND_RETRY_S
                return []
            case PeerReplied(token=(tag, _, peer, data)) if tag == DELIVER:
                self._delivering -= 1
                self._inbox_cost -= max(len(data), FRAME_COST)
                self.stats["delivered"] += 1
                if ep is not None:
                    ep.valued(peer, now)  # the router took it: a peer worth its slot
                return self._collect(now)
            case PeerFailed(token=(tag, seq, peer, data), code=code) if tag == DELIVER:
                self._delivering -= 1
                if code in RETRYABLE:
                    self.stats["deliver_retries"] += 1
                    self._failed.append((seq, peer, data))
                    self._deliver_after = now + DELIVER_RETRY_S
                else:
                    self._inbox_cost -= max(len(data), FRAME_COST)
                    self.stats["deliveries_refused"] += 1
                return self._collect(now)
            case PortmapStart():
                if self.portmap is not None:
                    self.portmap.start(now)
                return self._portmap_actions()
            case PortmapReceived(data=data):
                if self.portmap is not None:
                    self.portmap.receive(data, now)
                return self._portmap_actions()
            case Request(body=m.Info()):
                node = ep.node_id if ep else b""
                seen = Counter(self._observed.values())
                return [Reply(event.ctx, m.InfoReply(
                    node_id=node, host=self.local[0], port=self.local[1],
                    ready=ep is not None,
                    local=[m.SocketAddr(host=h, port=p) for h, p in self.local_candidates],
                    reflexive=[m.SocketAddr(host=h, port=p)
                               for (h, p), _ in seen.most_common()],
                    mapped=[m.SocketAddr(host=h, port=p) for h, p in self.mapped]))]
            case Request(body=m.Peers()):
                return [Reply(event.ctx, m.PeersReply(peers=self._peers()))]
            case Request() if ep is None:
                return [Fail(event.ctx, ErrorCode.UNAVAILABLE, "the transport has no signed "
                             "binding yet (is crypto running?)")]
            case Request(body=m.Connect(peer=peer, host=host, port=port)):
                assert ep is not None
                if peer in ep.peers:
                    # connected first by the peer (a stranger until now): asked for, it is
                    # known from now on, to admission (no stranger's rate) and for re-dials
                    ep.want(peer)
                    self._known[peer] = ep.peers[peer].addr
                    return [Reply(event.ctx, m.ConnectReply())]
                try:
                    host, is_literal = parse_host(host)
                    if is_literal and (":" in host) != (":" in self.local[0]) \
                            and self.local[0] != "::":  # (a dual-stack socket takes both)
                        raise ValueError("not of this socket's address family")
                except ValueError as e:
                    self.stats["invalid_hosts"] += 1
                    return [Fail(event.ctx, ErrorCode.INVALID, f"host {host!r}: {e}")]
                if is_literal:
                    self._connects.setdefault(peer, []).append(event.ctx)
                    ep.dial(peer, (host, port), now)
                    return self._collect(now)
                return self._resolve(event.ctx, peer, host, port)
            case Resolved(token=token, addr=addr, error=error, timed_out=timed_out):
                return self._resolved(token, addr, error, timed_out, now)
            case Unreachable(addr=addr, quoted=quoted, why=why):
                if ep is None:
                    return []
                ep.unreachable(addr, quoted, why, now)
                return self._collect(now)
            case Request(body=m.Punch(peer=peer, via=via)):
                assert ep is not None
                direct = ep.peers.get(peer)
                if direct is not None and not direct.stalled:
                    return [Reply(event.ctx, m.PunchReply(host=direct.addr[0],
                                                          port=direct.addr[1], elapsed_ms=0))]
                if peer == ep.node_id or via == peer:
                    return [Fail(event.ctx, ErrorCode.INVALID, "peer must be another node, "
                                 "introduced by a third one")]
                ep.want(peer)
                try:
                    ep.punch(peer, via, now)
                except SendError as e:
                    return [Fail(event.ctx, ErrorCode.UNAVAILABLE, str(e))]
                self._punches.setdefault(peer, []).append(event.ctx)
                return self._collect(now)
            case Request(body=m.Send(peer=peer)):
                assert ep is not None
                if len(event.blobs) != 1:
                    return [Fail(event.ctx, ErrorCode.INVALID, "expected one blob frame")]
                try:
                    ep.send(peer, event.blobs[0], now)
                except FrameTooLarge as e:
                    return [Fail(event.ctx, ErrorCode.TOO_LARGE, str(e))]
                except Backpressure as e:
                    return [Fail(event.ctx, ErrorCode.OVERLOADED, str(e))]
                except NotAnEnvelope as e:
                    return [Fail(event.ctx, ErrorCode.INVALID, str(e))]
                except SendError as e:
                    return [Fail(event.ctx, ErrorCode.UNAVAILABLE, str(e))]
                # packets are built in flush(), after the whole batch of requests (envelopes
                # share packets); the replies follow the packets out
                self._send_replies.append(Reply(event.ctx, m.SendReply()))
                return []
        return super().handle(event, now)

    def on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._next_bind is not None and now >= self._next_bind:
            self._next_bind = None  # one call in flight
            actions.append(Call("crypto", cm.BindTransport(
                transport_key=transport_public(self._key),
                not_after_s=int(self._wall() + self.binding_s)), _BIND))
        if self.endpoint is not None:
            for node, (when, attempt) in list(self._redial.items()):
                if now >= when and node not in self.endpoint.peers:
                    self._redial[node] = (float("inf"), attempt)
                    self.stats["redials"] += 1
                    self.endpoint.dial(node, self._known[node], now)
            self.endpoint.handle_timer(now)
        if self.portmap is not None:
            self.portmap.handle_timer(now)
            actions += self._portmap_actions()
        return actions + self._collect(now)

    def flush(self, now: float) -> list[Action]:
        return self._collect(now)

    def close(self, now: float) -> list[Action]:
        """Tell every peer the connection ends (CONNECTION_CLOSE), so they notice at once
        instead of after missed pings. Envelopes still queued for the router are lost with
        the process; their senders' routers retry what is not acknowledged end to end."""
        unmap: list[Action] = []
        if self.portmap is not None:  # ask the gateway to delete our mapping
            self.portmap.stop(now)
            unmap = self._portmap_actions()
        ep = self.endpoint
        if ep is None:
            return unmap
        for node in list(ep.peers):
            ep.close(node, now, "the peer's transport is shutting down")
        return [SendDatagram(d, a) for d, a in ep.datagrams()] + unmap

    def next_deadline(self) -> float | None:
        times = [t for t in (self._next_bind,
                             self.endpoint.next_timer() if self.endpoint else None)
                 if t is not None]
        times += [when for when, _ in self._redial.values() if when != float("inf")]
        if self.portmap is not None and (t := self.portmap.next_timer()) is not None:
            times.append(t)
        if (self._inbox or self._failed) and self._delivering < DELIVER_WINDOW:
            times.append(self._deliver_after)
        return min(times, default=None)

    def counters(self) -> dict[str, int]:
        return dict(self.stats) | (dict(self.endpoint.counters) if self.endpoint else {}) \
            | (dict(self.portmap.counters) if self.portmap else {})

    def queues(self) -> dict[str, int]:
        return {"pending_connects": sum(map(len, self._connects.values())),
                "resolving": len(self._resolving),
                "redial_addresses": len(self._known),
                "peers": len(self.endpoint.peers) if self.endpoint else 0,
                "half_open": self.endpoint.half_open if self.endpoint else 0,
                "throttled": self.endpoint.throttled if self.endpoint else 0,
                "deliver_queue": len(self._inbox) + len(self._failed),
                "deliver_queue_cost": self._inbox_cost,
                "delivering": self._delivering}

    # -- internals -------------------------------------------------------------------------

    def _portmap_actions(self) -> list[Action]:
        """The port mapper's datagrams for the gateway; a new or lost mapping changes our
        candidates (the mapped address first: peers outside reach us there) and is
        published (``transport.mapped``: the router announces our new addresses)."""
        pm = self.portmap
        if pm is None:
            return []
        actions: list[Action] = [SendPortmap(d) for d in pm.datagrams()]
        for ev in pm.events():
            actions += self._mapping_changed(ev)
        return actions

    def _mapping_changed(self, ev: MappingChanged) -> list[Action]:
        old = self.mapped
        self.mapped = [] if ev.external is None else [ev.external]
        if old == self.mapped:
            return []
        rest = [a for a in self.local_candidates if a not in old and a not in self.mapped]
        self.local_candidates[:] = self.mapped + rest  # (the endpoint shares this list)
        host, port = ev.external or ("", 0)
        return [Publish(m.Mapped(host=host, port=port, protocol=ev.protocol,
                                 reason=ev.reason))]

    def _bound(self, binding: bytes, now: float) -> None:
        if self.endpoint is None:
            self.endpoint = Endpoint(self._key, binding, self._wall,
                                     idle_timeout_s=self.idle_timeout_s, limits=self.limits)
            self.endpoint.local_candidates = self.local_candidates
        else:
            self.endpoint.set_binding(binding)
        self._next_bind = now + self.binding_s / 2

    def _collect(self, now: float) -> list[Action]:
        ep = self.endpoint
        if ep is None:
            return []
        actions: list[Action] = []
        room = DELIVER_QUEUE_COST - self._inbox_cost
        if not self._paused:
            ep.budget = room
        elif room >= DELIVER_QUEUE_COST // 2:
            self._paused = False
            ep.resume(now, room)  # before taking events: what it parses is among them
        for ev in ep.events():
            if isinstance(ev, Received):
                self._arrivals += 1
                self._inbox.append((self._arrivals, ev.node_id, ev.data))
                self._inbox_cost += max(len(ev.data), FRAME_COST)
            elif isinstance(ev, PathUpdated):
                actions.append(Publish(m.Path(peer=ev.node_id, host=ev.addr[0],
                                              port=ev.addr[1],
                                              path="stalled" if ev.stalled else "direct",
                                              rtt_ms=ev.rtt_ms)))
            elif isinstance(ev, PeerAuthenticated):
                if ev.node_id in ep.known:
                    self._known[ev.node_id] = ev.addr
                self._redial.pop(ev.node_id, None)
                actions.append(Publish(m.PeerConnected(peer=ev.node_id, host=ev.addr[0],
                                                       port=ev.addr[1], dialled=ev.dialled)))
                actions += [Reply(ctx, m.ConnectReply())
                            for ctx in self._connects.pop(ev.node_id, [])]
            elif isinstance(ev, PeerClosed):
                if ev.node_id is not None:
                    self._observed.pop(ev.node_id, None)
                    actions.append(Publish(m.PeerDisconnected(peer=ev.node_id,
                                                              reason=ev.reason)))
                    if ev.node_id in self._known:  # (never a stranger)
                        self._schedule_redial(ev.node_id, now, first=True)
                actions += self._fail_connects(ev.reason)
                self._retry_failed_redials(now)
            elif isinstance(ev, AddressObserved):
                before = self._observed.get(ev.node_id)
                if before is not None and before != ev.addr:  # our NAT mapping moved
                    actions.append(Publish(m.Reflexive(host=ev.addr[0], port=ev.addr[1],
                                                       peer=ev.node_id)))
                self._observed[ev.node_id] = ev.addr
            elif isinstance(ev, DialFailed):
                code = ErrorCode.PEER_TIMEOUT if ev.transient else ErrorCode.FAILED
                actions += [Fail(ctx, code, ev.reason)
                            for ctx in self._connects.pop(ev.node_id, [])]
                self._retry_failed_redials(now)
            elif isinstance(ev, PunchEnded):
                actions += self._punch_ended(ev)
        actions += self._deliver(now)
        replies, self._send_replies = self._send_replies, []
        sockets: list[Action] = [ExtraSockets(a) for a in ep.socket_actions()]
        return [SendDatagram(d, a) for d, a in ep.datagrams()] + sockets + actions + replies

    def _resolve(self, ctx: object, peer: bytes, host: str, port: int) -> list[Action]:
        """A connect to a host name: the shell resolves it off the loop (``Resolve``)."""
        waiting = peer in self._connects
        self._connects.setdefault(peer, []).append(ctx)
        if (peer, host, port) in self._resolving.values():
            return []  # that name is being resolved for this peer already
        if waiting:
            return []  # a dial or a resolution for this peer is in progress: join it
        if len(self._resolving) >= MAX_RESOLVING:
            self.stats["resolves_refused"] += 1
            self._connects[peer].remove(ctx)
            if not self._connects[peer]:
                del self._connects[peer]
            return [Fail(ctx, ErrorCode.OVERLOADED, f"{MAX_RESOLVING} host names are being "
                         "resolved already")]
        self._resolve_seq += 1
        self._resolving[self._resolve_seq] = (peer, host, port)
        self.stats["resolves"] += 1
        return [Resolve(self._resolve_seq, host, port)]

    def _resolved(self, token: int, addr: Addr | None, error: str, timed_out: bool,
                  now: float) -> list[Action]:
        ep = self.endpoint
        entry = self._resolving.pop(token, None)
        if entry is None or ep is None:
            return []
        peer, host, _ = entry
        if addr is not None:
            try:
                addr = (parse_host(addr[0])[0], addr[1])  # the resolver gives literals
            except ValueError as e:
                addr, error = None, str(e)
        if addr is None:
            self.stats["resolve_failures"] += 1
            code = ErrorCode.PEER_TIMEOUT if timed_out else ErrorCode.FAILED
            return [Fail(ctx, code, f"dns: cannot resolve {host}: {error}")
                    for ctx in self._connects.pop(peer, [])]
        if peer in ep.peers:
            return [Reply(ctx, m.ConnectReply()) for ctx in self._connects.pop(peer, [])]
        ep.dial(peer, addr, now)
        return self._collect(now)

    def _punch_ended(self, ev: PunchEnded) -> list[Action]:
        host, port = ev.addr or ("", 0)
        ms = round(ev.elapsed_s * 1000, 3)
        opened = -1.0 if ev.opened_s is None else round(ev.opened_s * 1000, 3)
        waiting = self._punches.pop(ev.peer, [])
        replies: list[Action] = [
            Reply(ctx, m.PunchReply(host=host, port=port, elapsed_ms=ms, opened_ms=opened))
            if ev.ok
            else Fail(ctx, ErrorCode.FAILED, ev.reason) for ctx in waiting]
        return replies + [Publish(m.Punched(peer=ev.peer, ok=ev.ok, host=host, port=port,
                                            elapsed_ms=ms, initiator=ev.initiator,
                                            reason=ev.reason))]

    def _deliver(self, now: float) -> list[Action]:
        """Hand queued envelopes to the router; stop or resume reading peers by queue size."""
        ep = self.endpoint
        assert ep is not None
        calls: list[Action] = []
        if now >= self._deliver_after:
            if self._failed:
                self._failed.sort()
                self._inbox.extendleft(reversed(self._failed))
                self._failed = []
            while self._inbox and self._delivering < DELIVER_WINDOW:
                seq, peer, data = self._inbox.popleft()
                self._delivering += 1
                calls.append(Call("router", rm.Deliver(peer=peer, path="direct"),
                                  (DELIVER, seq, peer, data), DELIVER_TIMEOUT_S, (data,)))
        if not self._paused and not ep.accepting:
            self._paused = True
            self.stats["paused_reading"] += 1
        return calls

    def _schedule_redial(self, node: bytes, now: float, first: bool = False) -> None:
        """Re-dial a lost peer the router asked for at its last address, backing off; give up
        and forget it after a while (the router's topology decides about peers that stay
        away)."""
        attempt = 0 if first else self._redial.get(node, (0.0, 0))[1] + 1
        if attempt >= REDIAL_ATTEMPTS:
            self._redial.pop(node, None)
            self._known.pop(node, None)  # the router asks again if it still wants it
            self.stats["redials_given_up"] += 1
            return
        self._redial[node] = (now + min(REDIAL_FIRST_S * 2 ** attempt, REDIAL_MAX_S), attempt)

    def _retry_failed_redials(self, now: float) -> None:
        ep = self.endpoint
        assert ep is not None
        dialling = ep.dialling()
        for node, (when, _) in list(self._redial.items()):
            if when == float("inf") and node not in dialling and node not in ep.peers:
                self._schedule_redial(node, now)  # that attempt failed: back off

    def _fail_connects(self, reason: str) -> list[Action]:
        """Fail the connects whose dial is no longer in progress."""
        ep = self.endpoint
        assert ep is not None
        dialling = ep.dialling() | {p for p, _, _ in self._resolving.values()}
        failed: list[Action] = []
        for peer in [p for p in self._connects if p not in dialling and p not in ep.peers]:
            code = ErrorCode.PEER_TIMEOUT if "in time" in reason else ErrorCode.FAILED
            failed += [Fail(ctx, code, f"unreachable: could not connect ({reason})")
                       for ctx in self._connects.pop(peer)]
        return failed

    def _peers(self) -> list[m.PeerInfo]:
        ep = self.endpoint
        if ep is None:
            return []
        out = []
        for node_id, conn in ep.peers.items():
            rtt = getattr(getattr(conn.quic, "_loss", None), "_rtt_smoothed", 0.0)
            out.append(m.PeerInfo(node_id=node_id, host=conn.addr[0], port=conn.addr[1],
                                  dialled=conn.dialled, path="direct",
                                  rtt_ms=round(float(rtt) * 1000, 3)))
        return out
