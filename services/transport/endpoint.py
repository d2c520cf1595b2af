"""A QUIC endpoint on one UDP socket, sans-I/O, with peers authenticated by node id.

Theory of operation. The endpoint owns aioquic ``QuicConnection`` objects (aioquic's own
sans-I/O API) and routes every incoming datagram to one of them by destination connection id;
an unknown id carrying a full-size Initial creates a server-side connection. It never touches
a socket or a clock: the shell calls

  ``receive(data, addr, now)``  for every datagram read from the socket,
  ``dial(node_id, addr, now)``  to open a connection to a peer,
  ``send(node_id, data, now)``  to send one envelope to an authenticated peer,
  ``handle_timer(now)``         when ``next_timer()`` has passed,

then sends ``datagrams()`` and handles ``events()`` (events.py). Wall-clock time (binding
expiry) comes from the injected ``wall`` callable. Beside this module: addresses.py (hosts
checked where they enter), admission.py (who gets a connection), signalling.py (control
frames and hole punching, a mixin of :class:`Endpoint`), quic.py (each peer's aioquic
connection, bounded by what this module consumes, and the TLS identity it proves).

Framing. Each side sends everything on one long-lived unidirectional stream, its *lane*
(the client's first uni stream, id 2; the server's, id 3): frames of a 4-byte big-endian
length and that many bytes. The first frame is the sender's proof of identity, every later
one an envelope. A length of zero or above the limit (``MAX_AUTH_BYTES`` for the proof,
``max_frame_bytes`` after it) closes the connection as soon as the 4-byte prefix is read,
before the frame itself is buffered; so does any stream other than the peer's lane. One
stream per direction instead of one per envelope: aioquic walks every open stream for each
packet it builds, which made thousands of in-flight envelopes cost quadratic CPU (the
benchmark in docs/benchmarks.md has the figures); one ordered lane also means an envelope can
never overtake the proof. Flow control follows consumption: the lane's and the connection's
receive windows grow only by what the endpoint has parsed, and the endpoint parses only
while its owner's ``budget`` lasts (each envelope costs its size, at least ``FRAME_COST``, so
tiny frames cannot flood the owner's queue), so a slow consumer pushes back to the sending
peer. The budget is one for all connections, a peer's retired ones (below) included, whose
window no longer grows; the complete frames of a connection that ends are handed over past
the budget (they were acknowledged), but at most ``OVERDRAFT`` past it, so connection churn
cannot grow the owner's queue (issue 13: a retired connection parsed regardless of the
budget, with a window that kept growing, let one peer fill 592 MiB). A stranger's lane
is also parsed no faster than its rate (ratelimit.py: envelopes and bytes per second, for
all its connections), so one peer cannot take the CPU a legitimate peer's message needs.

Authentication (docs/notes/transport-research.md §2). TLS runs with this process's own
Ed25519 *transport* key, never the identity key. Each side sends, as the first frame on its
lane, msgpack ``[binding, proof]``: the binding signed by the crypto service (node id →
transport key, short-lived) and ``proof = sign(transport key, "tom/transport-auth/1" 0x00 ||
role || cb)``, where ``cb`` is a secret derived from the TLS key schedule of this very
connection (so a proof cannot be relayed into another connection) and ``role`` is ``c`` or
``s`` (so it cannot be reflected). The server proves itself in its first flight (0.5-RTT
data, beside its TLS Finished), the client as soon as its handshake completes: the dialler
knows the peer after one round trip, the peer knows the dialler half a round trip later,
and the dialler can send its first envelope right behind its proof. (The server's node id is
no secret: anyone may dial it and read it.) A connection is attributed to a node id only
once the peer's proof verifies, and a dialled connection must turn out to be the node that
was dialled. Failures close the connection with a reason and are counted.

One connection per peer, used in both directions: whoever dialled, envelopes to that node id
go over it. When both sides dial at once, the connection dialled by the smaller node id wins.
A connection that loses its place (to a restarted peer's or in a simultaneous dial) is
*retired*, not cut: nothing new is sent on it, its lane is ended with FIN, and it closes once
both lanes are finished or after ``DRAIN_S`` without progress, so envelopes already in
flight on it arrive; complete frames still buffered when any connection ends are handed over.
A node id holds at most one retired connection beside its current one.

Admission (admission.py). An Initial from an unknown connection id gets state only within the
half-open limits; beyond ``retry_above`` half-open connections, or beyond its address's share,
it is answered with a stateless QUIC Retry, and only an Initial carrying a valid token (its
source address proven) may then take a slot. An authenticated peer takes one of
``max_connections`` slots; strangers cannot take the reserved ones, and the owner's dials and
the nodes it asked for (``want``) evict a stranger when no slot is free.
"""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import ssl
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.envelope import MAX_ENVELOPE_BYTES, EnvelopeError, TransportBinding
from shared.primitives import CryptoError, verify

from .addresses import Addr
from .admission import (
    ACCEPT,
    ADDRESS_FULL,
    RETRY,
    HalfOpen,
    Limits,
    evict_for_known,
    evict_for_stranger,
)
from .events import (
    PREFIX,
    AddressObserved,
    Backpressure,
    DialFailed,
    Event,
    FrameTooLarge,
    NotAnEnvelope,
    PathUpdated,
    PeerAuthenticated,
    PeerClosed,
    PunchEnded,
    Received,
    SendError,
    SocketAction,
    framed,
)
from .quic import (
    WINDOW_BEFORE_AUTH,
    BoundedQuicConnection,
    channel_binding,
    self_signed,
    transport_public,
)
from .ratelimit import StrangerRate
from .signalling import (
    ADDR_BURST,
    CONTROL,
    INTRO_BURST,
    INTRO_IN_BURST,
    INTRO_TIMEOUT_S,
    INTRO_WINDOW_S,
    MAX_CANDIDATES,
    MAX_INTRODUCED,
    MAX_PUNCHES,
    PROBE_BYTES,
    PROBE_EVERY_S,
    PROBE_MAGIC,
    PUBLIC_CANDIDATES,
    PUNCH_DIALS,
    PUNCH_PROBES,
    PUNCH_TIMEOUT_S,
    SPRAY_BURST,
    SPRAY_PORTS,
    SPRAY_PROBES,
    TOKEN_BYTES,
    Signalling,
    _Punch,
)

__all__ = [
    "ADDR_BURST", "CONTROL", "INTRO_BURST", "INTRO_IN_BURST", "INTRO_TIMEOUT_S",
    "INTRO_WINDOW_S", "MAX_CANDIDATES", "MAX_INTRODUCED", "MAX_PUNCHES", "PROBE_BYTES",
    "PROBE_EVERY_S", "PROBE_MAGIC", "PUBLIC_CANDIDATES", "PUNCH_DIALS", "PUNCH_PROBES",
    "PUNCH_TIMEOUT_S", "SPRAY_PORTS", "SPRAY_PROBES", "TOKEN_BYTES", "Addr",
    "AddressObserved", "Backpressure", "DialFailed",
    "Endpoint", "Event", "FrameTooLarge", "NotAnEnvelope", "PathUpdated", "PeerAuthenticated",
    "PeerClosed", "PunchEnded", "Received", "SendError", "channel_binding",
    "transport_public",
]

ALPN = "tom/1"
AUTH_CONTEXT = b"tom/transport-auth/1\x00"
CID_LENGTH = 8
MAX_AUTH_BYTES = 1024
FRAME_COST = 256
"""What an envelope costs against the owner's budget at least (queue entries have overhead)."""
MAX_BACKLOG = 8 * 1024 * 1024
"""Bytes queued on a peer's lane (unsent or unacknowledged) above which ``send`` refuses."""
DRAIN_S = 10.0
OVERDRAFT = 8 * 1024 * 1024
"""Frames acknowledged on a connection that ended are handed over up to this far past the
owner's budget (then dropped, counted): the budget holds across connection churn."""
PING_INTERVAL_S = 1.0
STALL_S = 1.5
"""Silence (no keep-alive acknowledged) after which a path is reported stalled, so the router
routes around it before it is dropped; at least 4 smoothed RTTs (checked at each keep-alive,
so 2 s in practice)."""
DEAD_S = 4.0
"""Silence after which the peer is considered gone (at least 8 smoothed RTTs; 4 to 5 s
instead of the idle timeout). Two keep-alives after the stall may still revive it."""
SIMULTANEOUS_S = 2.0
"""Two connections to one peer authenticated this close together are a simultaneous dial."""
CLOSE_AUTH_FAILED = 0x100
CLOSE_DUPLICATE = 0x101
CLOSE_MALFORMED = 0x102
CLOSE_EVICTED = 0x103
MAX_KNOWN = 4096
"""Node ids the owner asked for (dials, punches) that admission remembers as known."""



@dataclass(eq=False)
class _Conn:
    quic: BoundedQuicConnection
    addr: Addr
    dialled: bool
    created: float
    expect: bytes | None = None
    node_id: bytes | None = None
    proved: bool = False
    authenticated_at: float = 0.0
    closing: bool = False
    next_ping: float = 0.0
    heard: float = 0.0
    """When the peer last acknowledged a keep-alive (or was authenticated)."""
    expires_wall: float = 0.0
    """Wall-clock time at which the peer's binding ends (the connection is closed then)."""
    lane: int | None = None
    """Our lane's stream id, once the proof is sent on it."""
    rx: bytearray = field(default_factory=bytearray)
    """The peer's lane: received, not yet parsed."""
    parsed: int = 0
    """Bytes of the peer's lane parsed so far (the lane's window is this plus the window)."""
    lane_ended: bool = False
    retired_until: float | None = None
    """Set once the connection is retired: it closes when both lanes end, or then."""
    rtt_reported: float = 0.0
    stalled: bool = False
    peer_locals: list[Addr] = field(default_factory=list)
    """The addresses the peer says its socket has (its local candidates)."""
    intros_asked: list[float] = field(default_factory=list)
    """When this peer last asked us (as its relay) for introductions (rate limit)."""
    intros_made: list[float] = field(default_factory=list)
    addr_reports: list[float] = field(default_factory=list)
    """When this peer (as a relay) last introduced others to us (rate limit)."""
    half_open: str | None = None
    """Source IP this server-side connection is counted under while half-open."""
    proven: bool = False
    """Its Initial carried a valid Retry token."""
    valued_at: float = 0.0
    """When the owner last reported an envelope of this peer accepted (admission)."""
    dial_reported: bool = False
    """A dial that failed: its :class:`DialFailed` is out (once per connection)."""


class Endpoint(Signalling):
    def __init__(self, transport_key: Ed25519PrivateKey, binding: bytes,
                 wall: Callable[[], float], *, idle_timeout_s: float = 30.0,
                 auth_timeout_s: float = 10.0, max_frame_bytes: int = MAX_ENVELOPE_BYTES,
                 max_backlog: int = MAX_BACKLOG, limits: Limits | None = None,
                 max_connections: int | None = None) -> None:
        self._key = transport_key
        self._binding = binding
        self.node_id = TransportBinding.decode(binding).node_id
        self._wall = wall
        self._cert = self_signed(transport_key, datetime.datetime.fromtimestamp(
            wall(), datetime.UTC))
        self.idle_timeout_s = idle_timeout_s
        self.ping_interval_s = min(idle_timeout_s / 3, PING_INTERVAL_S)
        self.auth_timeout_s = auth_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_backlog = max_backlog
        limits = limits or Limits()
        if max_connections is not None:
            limits = dataclasses.replace(limits, max_connections=max_connections)
        self.limits = limits
        self._half_open = HalfOpen(limits)
        self._rate = StrangerRate(limits.stranger_envelopes_per_s, limits.stranger_bytes_per_s,
                                  min_bytes_burst=2 * max_frame_bytes)
        self._throttled: dict[_Conn, float] = {}
        """Strangers' connections whose lane waits for their rate (ratelimit.py): when."""
        self._retry = QuicRetryTokenHandler()
        self.known: dict[bytes, None] = {}
        """Node ids the owner asked for (``want``): never strangers to admission."""
        self.window = 2 * (max_frame_bytes + PREFIX)
        """Receive window of a lane and of an authenticated connection: two full frames."""
        self.overdraft = OVERDRAFT
        """How far past the budget the frames of connections that ended are handed over."""
        self.budget = sys.maxsize
        """What the owner still takes: each envelope parsed costs ``max(size, FRAME_COST)``.
        At zero, authenticated peers' lanes are not parsed (their windows stop growing, so
        they stop sending); ``resume`` sets a new budget and parses what waited."""
        self._rotation = 0
        self._routes: dict[bytes, _Conn] = {}
        self._conns: set[_Conn] = set()
        self.peers: dict[bytes, _Conn] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._dirty: dict[_Conn, float] = {}
        self._events: list[Event] = []
        self._punches: dict[bytes, _Punch] = {}
        self._spray_tokens = SPRAY_BURST
        self._spray_time: float | None = None
        self._socket_actions: list[SocketAction] = []
        self._birthdays: set[bytes] = set()
        self.local_candidates: list[Addr] = []
        """This socket's own addresses (interface address and port), told to every peer so
        that a relay can pass them on with the address it observes."""
        self.counters: Counter[str] = Counter()

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Feed one datagram read from the socket."""
        if data[:1] == b"\x00":  # never QUIC (its fixed bit is 0): a hole-punch probe
            self._on_probe(data, addr, now)
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            self.counters["garbage_datagrams"] += 1
            return
        conn = self._routes.get(header.destination_cid)
        if conn is None:
            conn = self._accept(data, addr, header, now)
            if conn is None:
                return
            conn.quic.receive_datagram(data, addr, now)
            tls_state = getattr(conn.quic.tls, "state", None)
            if tls_state in (None, tls.State.SERVER_EXPECT_CLIENT_HELLO):
                # not a readable ClientHello (random bytes shaped like an Initial): keep no
                # state, so such datagrams cannot fill the half-open slots
                self._forget(conn)
                self.counters["unreadable_initials"] += 1
                return
            self._pump(conn, now)
            return
        conn.quic.receive_datagram(data, addr, now)
        self._dirty[conn] = now  # pumped once per batch of datagrams: one ACK per batch

    def dial(self, node_id: bytes, addr: Addr, now: float) -> None:
        """Open a connection to ``node_id`` at ``addr`` (no-op if one is up or being made)."""
        self.want(node_id)
        if node_id in self.peers or node_id in self.dialling():
            return
        self.counters["dials"] += 1
        self._open(node_id, addr, now)

    def _open(self, node_id: bytes, addr: Addr, now: float) -> None:
        quic = BoundedQuicConnection(configuration=self._config(is_client=True))
        conn = _Conn(quic, addr, dialled=True, created=now, expect=node_id)
        self._add(conn)
        quic.connect(addr, now)
        self._pump(conn, now)

    def send(self, node_id: bytes, data: bytes, now: float) -> None:
        """Send one envelope over the peer's connection (whoever opened it)."""
        size = len(data)
        if size > self.max_frame_bytes:
            raise FrameTooLarge(f"envelope of {size} bytes exceeds {self.max_frame_bytes}")
        if not size:
            raise SendError("an envelope cannot be empty")
        if data[0] == CONTROL:
            raise NotAnEnvelope("an envelope cannot start with byte 0xC1")
        conn = self.peers.get(node_id)
        if conn is None or conn.lane is None or conn.closing:
            raise SendError("no authenticated connection to this peer")
        if self.backlog(node_id) > self.max_backlog:
            self.counters["send_backpressure"] += 1
            raise Backpressure(f"{self.backlog(node_id)} bytes already queued for this peer")
        conn.quic.send_stream_data(conn.lane, size.to_bytes(PREFIX, "big") + data)
        self.counters["frames_sent"] += 1
        self._dirty[conn] = now  # packets are built by datagrams(): envelopes sent together
        # share packets instead of one datagram each

    def backlog(self, node_id: bytes) -> int:
        """Bytes queued on the peer's lane, not yet acknowledged by it."""
        conn = self.peers.get(node_id)
        if conn is None or conn.lane is None:
            return 0
        sender = conn.quic._streams[conn.lane].sender
        return sender._buffer_stop - sender._buffer_start

    @property
    def half_open(self) -> int:
        """Connections accepted from peers that have not yet proven their node id."""
        return self._half_open.total

    @property
    def throttled(self) -> int:
        """Strangers' connections waiting for their rate."""
        return len(self._throttled)

    @property
    def accepting(self) -> bool:
        return self.budget > 0

    def resume(self, now: float, budget: int = sys.maxsize) -> None:
        """Take up to ``budget`` more and parse what waited, starting with a different
        connection each time so that no peer is always served last."""
        self.budget = budget
        conns = [c for c in self._conns if c.rx and c.node_id is not None]
        if not conns:
            return
        self._rotation = (self._rotation + 1) % len(conns)
        for conn in conns[self._rotation:] + conns[:self._rotation]:
            if self.budget <= 0:
                break
            self._parse(conn, now)
            self._dirty[conn] = now  # window updates go out with the next datagrams

    def dialling(self) -> set[bytes]:
        """Node ids this endpoint is dialling and not yet connected to."""
        return {c.expect for c in self._conns
                if c.expect is not None and c.node_id is None and not c.closing}

    def set_binding(self, binding: bytes) -> None:
        """Use a renewed binding for new connections (same transport key and node id)."""
        b = TransportBinding.decode(binding)
        if b.node_id != self.node_id or b.transport_key != transport_public(self._key):
            raise ValueError("the binding is for another node id or transport key")
        self._binding = binding

    def want(self, node_id: bytes) -> None:
        """The owner asked for this node (``dial`` and ``punch`` call this too): admission
        treats it as known (at most ``MAX_KNOWN`` remembered, the oldest forgotten first)."""
        self.known.pop(node_id, None)
        self.known[node_id] = None
        while len(self.known) > MAX_KNOWN:
            del self.known[next(iter(self.known))]

    def valued(self, node_id: bytes, now: float) -> None:
        """The owner accepted an envelope from this peer: it weighs in admission."""
        conn = self.peers.get(node_id)
        if conn is not None:
            conn.valued_at = now

    def close(self, node_id: bytes, now: float, reason: str = "closed") -> None:
        conn = self.peers.pop(node_id, None)
        if conn is not None:
            conn.closing = True
            self._settle(conn)
            conn.quic.close(reason_phrase=reason)
            self._pump(conn, now)
            self._events.append(PeerClosed(node_id, conn.addr, reason))

    def handle_timer(self, now: float) -> None:
        for conn in list(self._conns):
            if (conn.node_id is None and not conn.closing
                    and now >= conn.created + self.auth_timeout_s):
                where, limit = where_text(conn.addr), f"{self.auth_timeout_s:g} s"
                self._fail(conn, "not authenticated in time", count="auth_timeouts",
                           dial_reason=f"unreachable: no answer from {where} within {limit}"
                           if conn.lane is None else f"unreachable: {where} proved no node "
                           f"id within {limit}", transient=True)
            if conn.node_id is not None and not conn.closing and \
                    self._wall() >= conn.expires_wall:
                self._fail(conn, "the peer's transport binding expired", count="expired")
            if conn.retired_until is not None and not conn.closing and (
                    now >= conn.retired_until or conn.lane_ended and not conn.rx
                    and self._lane_done(conn)):
                conn.closing = True
                conn.quic.close(error_code=CLOSE_DUPLICATE, reason_phrase="retired")
            if conn.node_id is not None and not conn.closing and now >= conn.next_ping:
                silence = now - conn.heard
                srtt = float(conn.quic._loss._rtt_smoothed)
                if silence >= max(DEAD_S, 8 * srtt):
                    self._fail(conn, "the peer stopped answering", count="dead_peers")
                else:  # keep-alive (idle timeout, NAT mappings) and liveness probe
                    conn.quic.send_ping(0)
                    conn.next_ping = now + self.ping_interval_s
                    if silence >= max(STALL_S, 4 * srtt) and not conn.stalled \
                            and self.peers.get(conn.node_id) is conn:
                        conn.stalled = True
                        self.counters["stalled_paths"] += 1
                        self._events.append(PathUpdated(conn.node_id, conn.addr,
                                                        conn.rtt_reported, stalled=True))
            timer = conn.quic.get_timer()
            if timer is not None and timer <= now:
                conn.quic.handle_timer(now)
            self._pump(conn, now)
        self._punch_timers(now)
        for conn in [c for c, t in self._throttled.items() if t <= now]:
            del self._throttled[conn]
            if conn in self._conns and self.budget > 0:
                self._parse(conn, now)
                self._pump(conn, now)  # the window update goes out
        if not self._throttled:
            self._rate.prune(now)

    # -- outputs ---------------------------------------------------------------------------

    def datagrams(self) -> list[tuple[bytes, Addr]]:
        """Datagrams to send now (this also builds the packets for envelopes sent since the
        last call)."""
        self._pump_dirty()
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        self._pump_dirty()
        out, self._events = self._events, []
        return out

    def _pump_dirty(self) -> None:
        """Handle the connections touched since the last call: their events, then their
        packets (envelopes and acknowledgements of a whole batch share packets)."""
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            for conn, now in dirty.items():
                if conn in self._conns:
                    self._pump(conn, now)

    def next_timer(self) -> float | None:
        times = [t for c in self._conns if (t := c.quic.get_timer()) is not None]
        times += [c.created + self.auth_timeout_s if c.node_id is None else c.next_ping
                  for c in self._conns if not c.closing]
        times += [c.retired_until for c in self._conns
                  if c.retired_until is not None and not c.closing]
        times += self._punch_deadlines()
        times += self._throttled.values()
        return min(times, default=None)

    # -- internals -------------------------------------------------------------------------

    def _config(self, is_client: bool) -> QuicConfiguration:
        return QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN],
                                 idle_timeout=self.idle_timeout_s, certificate=self._cert,
                                 private_key=self._key, verify_mode=ssl.CERT_NONE,
                                 max_datagram_frame_size=None,
                                 max_data=WINDOW_BEFORE_AUTH,
                                 max_stream_data=self.window)

    def _accept(self, data: bytes, addr: Addr, header: QuicHeader,
                now: float) -> _Conn | None:
        version = header.version
        config = self._config(is_client=False)
        if version not in (None, 0) and version not in config.supported_versions \
                and len(data) >= 1200:  # RFC 9000 5.2.2: never answer small packets
            self._out.append((encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=config.supported_versions), addr))
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200 \
                or version is None:
            self.counters["unroutable_datagrams"] += 1
            return None
        ip = addr[0]
        original, retry_source = header.destination_cid, None
        if header.token:  # the Initial that answers our Retry
            try:
                original = self._retry.validate_token(
                    address=addr, destination_cid=header.destination_cid,
                    token=header.token, now=now)
            except ValueError:
                self.counters["invalid_tokens"] += 1
                return None
            retry_source = header.destination_cid
        verdict = self._half_open.verdict(ip, proven=retry_source is not None)
        if verdict == RETRY:  # stateless: prove the address first
            source_cid = secrets.token_bytes(CID_LENGTH)
            self._out.append((encode_quic_retry(
                version=version, source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self._retry.create_token(
                    address=addr, original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid, now=now)), addr))
            self.counters["retries_sent"] += 1
            return None
        if verdict != ACCEPT:
            self.counters["refused_half_open_per_address" if verdict == ADDRESS_FULL
                          else "refused_half_open"] += 1
            return None
        quic = BoundedQuicConnection(configuration=config,
                                     original_destination_connection_id=original,
                                     retry_source_connection_id=retry_source)
        conn = _Conn(quic, addr, dialled=False, created=now, half_open=ip,
                     proven=retry_source is not None)
        self._half_open.add(ip, conn.proven)
        self._routes[header.destination_cid] = conn
        self._add(conn)
        self.counters["accepted"] += 1
        return conn

    def _settle(self, conn: _Conn) -> None:
        """The connection is no longer half-open (authenticated, closing or gone)."""
        if conn.half_open is not None:
            self._half_open.remove(conn.half_open, conn.proven)
            conn.half_open = None

    def _forget(self, conn: _Conn) -> None:
        self._settle(conn)
        for cid in [k for k, c in self._routes.items() if c is conn]:
            del self._routes[cid]
        self._conns.discard(conn)
        self._throttled.pop(conn, None)

    def _add(self, conn: _Conn) -> None:
        self._conns.add(conn)
        self._routes[conn.quic.host_cid] = conn

    def _pump(self, conn: _Conn, now: float) -> None:
        """After every call into a connection: handle its events, collect its datagrams."""
        while (ev := conn.quic.next_event()) is not None:
            self._on_event(conn, ev, now)
        if not conn.dialled and conn.lane is None and not conn.closing \
                and conn.quic.server_secret is not None:
            self._prove(conn)  # in the server's first flight: the client knows us after 1 RTT
        self._out.extend(conn.quic.datagrams_to_send(now))

    def _on_event(self, conn: _Conn, ev: qe.QuicEvent, now: float) -> None:
        if isinstance(ev, qe.StreamDataReceived):
            self._on_stream(conn, ev, now)
        elif isinstance(ev, qe.ConnectionIdIssued):
            self._routes[ev.connection_id] = conn
        elif isinstance(ev, qe.ConnectionIdRetired):
            self._routes.pop(ev.connection_id, None)
        elif isinstance(ev, qe.HandshakeCompleted):
            if conn.dialled:
                self._prove(conn)
        elif isinstance(ev, qe.PingAcknowledged):
            conn.heard = now
            if conn.stalled:
                conn.stalled = False
                conn.rtt_reported = 0.0  # report the path as alive again
            paths = conn.quic._network_paths
            if paths and conn.node_id is not None and self.peers.get(conn.node_id) is conn \
                    and tuple(paths[0].addr[:2]) != conn.addr:
                conn.addr = (paths[0].addr[0], paths[0].addr[1])  # the peer's NAT rebound
                self.counters["peer_address_changes"] += 1
                self._tell_address(conn)
                conn.rtt_reported = 0.0  # report the new path
            self._report_rtt(conn)
        elif isinstance(ev, qe.StreamReset | qe.StopSendingReceived):
            self._malformed(conn, f"the peer aborted stream {ev.stream_id}")
        elif isinstance(ev, qe.ConnectionTerminated):
            self._terminated(conn, ev.reason_phrase or f"code {ev.error_code}", now)

    def _on_stream(self, conn: _Conn, ev: qe.StreamDataReceived, now: float) -> None:
        if conn.closing:
            return
        if ev.stream_id != (3 if conn.dialled else 2):  # only the peer's lane exists
            self._malformed(conn, f"unexpected stream {ev.stream_id}")
            return
        conn.rx += ev.data
        if ev.end_stream:
            conn.lane_ended = True
        self._parse(conn, now)

    def _parse(self, conn: _Conn, now: float, final: bool = False) -> None:
        """Take the complete frames off the peer's lane: the proof first, then envelopes,
        while the owner's budget lasts, whichever of the peer's connections they arrive on
        (``final``: the connection has ended; what is complete was acknowledged to the peer,
        so it is handed over even past the budget, up to ``overdraft`` past it; beyond, it
        is dropped and counted, and the sender's router retries it end to end)."""
        rx = conn.rx
        pos, end = 0, len(rx)
        node_id = conn.node_id
        limit = self.max_frame_bytes if node_id is not None else MAX_AUTH_BYTES
        frames: list[bytes] = []
        while end - pos >= PREFIX and (final or not conn.closing):
            if node_id is not None and self.budget <= (-self.overdraft if final else 0):
                if final:
                    self._drop_rest(rx, pos)
                break
            size = int.from_bytes(rx[pos:pos + PREFIX], "big")
            if not 0 < size <= limit:
                self._malformed(conn, f"frame length {size} outside 1..{limit}",
                                "oversize_frames" if size else "malformed_frames")
                return
            if end - pos - PREFIX < size:
                break
            if node_id is not None and not final and rx[pos + PREFIX] != CONTROL \
                    and node_id not in self.known \
                    and not self._rate.take(node_id, size, now):
                self._throttle(conn, node_id, size, now)
                break
            frame = bytes(rx[pos + PREFIX:pos + PREFIX + size])
            pos += PREFIX + size
            if node_id is None:
                self._authenticate(conn, frame, now)
                node_id = conn.node_id
                limit = self.max_frame_bytes
            elif frame[0] == CONTROL:
                self._on_control(conn, frame[1:], now)
            else:
                frames.append(frame)
                self.budget -= max(size, FRAME_COST)
        del rx[:pos]
        conn.parsed += pos
        conn.quic.consumed += pos
        if frames:
            assert node_id is not None
            self.counters["frames_received"] += len(frames)
            self._events += [Received(node_id, f) for f in frames]
            if conn.retired_until is not None and not final:
                conn.retired_until = max(conn.retired_until, now + DRAIN_S)  # still draining
        if conn.lane_ended and rx and not conn.closing and not final and (
                node_id is None or self.budget > 0):
            self._malformed(conn, "the peer's lane ended inside a frame")
            return
        stream = conn.quic._streams.get(3 if conn.dialled else 2)
        # a retired connection's window never grows: the peer only finishes what was in
        # flight, and cannot go on sending there
        if stream is not None and node_id is not None and conn.retired_until is None \
                and conn.parsed + self.window - stream.max_stream_data_local >= self.window // 4:
            stream.max_stream_data_local = conn.parsed + self.window

    def _throttle(self, conn: _Conn, node_id: bytes, size: int, now: float) -> None:
        """A stranger's lane waits for its rate: parsed again when a ``size`` envelope fits
        (``handle_timer``); meanwhile its window does not grow."""
        if conn not in self._throttled:
            self.counters["throttled_strangers"] += 1
        self._throttled[conn] = self._rate.ready_at(node_id, size, now)

    def _drop_rest(self, rx: bytearray, pos: int) -> None:
        """Count the complete frames left on an ended connection past the overdraft."""
        frames = 0
        while len(rx) - pos >= PREFIX:
            size = int.from_bytes(rx[pos:pos + PREFIX], "big")
            if len(rx) - pos - PREFIX < size:
                break
            pos += PREFIX + size
            frames += 1
        self.counters["frames_dropped_at_close"] += frames

    def _malformed(self, conn: _Conn, reason: str, count: str = "malformed_streams") -> None:
        if not conn.closing:
            self._fail(conn, reason, CLOSE_MALFORMED, count=count)

    def _prove(self, conn: _Conn) -> None:
        """Send our proof as the first frame of our lane (once)."""
        if conn.lane is not None:
            return
        role = b"c" if conn.dialled else b"s"
        proof = self._key.sign(AUTH_CONTEXT + role + channel_binding(conn.quic))
        frame = msgpack.packb([self._binding, proof])
        conn.lane = conn.quic.get_next_available_stream_id(is_unidirectional=True)
        conn.quic.send_stream_data(conn.lane, framed(frame))

    def _authenticate(self, conn: _Conn, data: bytes, now: float) -> None:
        try:
            raw_binding, proof = msgpack.unpackb(data)
            binding = TransportBinding.decode(raw_binding)
            binding.verify(self._wall())
            peer_role = b"s" if conn.dialled else b"c"
            verify(binding.transport_key, proof,
                   AUTH_CONTEXT + peer_role + channel_binding(conn.quic))
        except (EnvelopeError, CryptoError, ValueError, TypeError,
                msgpack.UnpackException) as e:
            self._fail(conn, f"authentication failed: {e}", dial_reason=f"refused: "
                       f"{where_text(conn.addr)} cannot prove a node id ({e})")
            return
        node_id = binding.node_id
        conn.expires_wall = binding.not_after_s
        if conn.expect is not None and node_id != conn.expect:
            # (authenticated: the binding and the proof over this connection verify)
            refused = f"refused: a different node ({node_id.hex()[:16]}) answers at " \
                f"{where_text(conn.addr)}"
            current = self.peers.get(node_id)
            if current is None or current.closing or node_id == self.node_id:
                self._fail(conn, "the peer is not the node that was dialled",
                           dial_reason=refused)
                return
            # a node we hold a connection to: it takes this one as our new connection when
            # our proof (already sent) reaches it, so do the same, or the two sides would
            # each hold a different one; the dial itself failed all the same
            self._dial_failed(conn, refused, transient=False)
            self.counters["wrong_node_kept"] += 1
            conn.expect = None
        if node_id == self.node_id:
            self._fail(conn, "connected to ourselves",
                       dial_reason=f"refused: {where_text(conn.addr)} is this node itself")
            return
        if not self._admit(conn, node_id, now):
            return
        self._settle(conn)
        conn.node_id = node_id
        conn.quic.connection_window = self.window
        conn.authenticated_at = now
        conn.heard = now
        conn.next_ping = now + self.ping_interval_s
        if conn.lane is None:
            self._prove(conn)
        existing = self.peers.get(node_id)
        if existing is not None and not self._keep_new(existing, conn, node_id, now):
            self.counters["duplicates"] += 1
            self._retire(conn, node_id, now)
            return
        self.peers[node_id] = conn
        if existing is not None:  # replaced: a stale connection, or the loser of a race
            self.counters["replaced"] += 1
            self._retire(existing, node_id, now)
            self._dirty[existing] = now
        self.counters["authenticated"] += 1
        self._events.append(PeerAuthenticated(node_id, conn.addr, conn.dialled))
        self._tell_address(conn)
        self._report_rtt(conn)
        punch = self._punches.get(node_id)
        if punch is not None:
            self._end_punch(punch, now, conn.addr)

    def _retire(self, conn: _Conn, node_id: bytes, now: float) -> None:
        """Send nothing new on this connection; let what is in flight arrive, then close.
        An older retired connection of the same node is closed now (one per node)."""
        for other in self._conns:
            if other is not conn and other.node_id == node_id \
                    and other.retired_until is not None and not other.closing:
                other.closing = True
                other.quic.close(error_code=CLOSE_DUPLICATE, reason_phrase="retired")
                self._dirty[other] = now
        conn.retired_until = now + DRAIN_S
        self.counters["retired"] += 1
        if conn.lane is not None and not conn.closing:
            try:
                conn.quic.send_stream_data(conn.lane, b"", end_stream=True)
            except (RuntimeError, ValueError):  # the lane was already reset or ended
                pass

    @staticmethod
    def _lane_done(conn: _Conn) -> bool:
        """Our lane has ended and the peer acknowledged all of it."""
        stream = None if conn.lane is None else conn.quic._streams.get(conn.lane)
        return stream is None or stream.sender.is_finished  # aioquic drops finished streams

    def _report_rtt(self, conn: _Conn) -> None:
        rtt = float(conn.quic._loss._rtt_smoothed) * 1000
        if conn.node_id is not None and self.peers.get(conn.node_id) is conn and (
                conn.rtt_reported == 0.0 or abs(rtt - conn.rtt_reported) > max(
                    1.0, conn.rtt_reported / 4)):
            conn.rtt_reported = rtt
            self._events.append(PathUpdated(conn.node_id, conn.addr, round(rtt, 3)))

    def _keep_new(self, old: _Conn, new: _Conn, node_id: bytes, now: float) -> bool:
        """The newer connection replaces an older one (the peer restarted, or the path
        changed), except when both sides dialled at once: then both keep the connection
        dialled by the smaller node id, so they agree without talking."""
        if old.closing or old.dialled == new.dialled \
                or now - old.authenticated_at > SIMULTANEOUS_S:
            return True
        dialler_new = self.node_id if new.dialled else node_id
        return dialler_new == min(self.node_id, node_id)

    def _admit(self, conn: _Conn, node_id: bytes, now: float) -> bool:
        """Whether the newly authenticated ``conn`` gets a slot (admission.py); may evict a
        stranger to make room. Refused: closed and counted."""
        if node_id in self.peers and not self.peers[node_id].closing:
            return True  # replaces its own connection: no new slot
        lim = self.limits
        held = [c for c in self.peers.values() if not c.closing]
        strangers = [c for c in held if self._stranger(c)]
        victim = None
        if not self._stranger(conn, node_id):
            if len(held) < lim.max_connections:
                return True
            victim = evict_for_known(strangers)
        elif len(held) < lim.max_connections \
                and len(strangers) < lim.max_connections - lim.reserved:
            return True
        else:
            victim = evict_for_stranger(strangers, now, lim.stranger_grace_s)
            if victim is None:
                self.counters["refused_strangers"] += 1
        if victim is None:
            self._fail(conn, "too many connections", count="refused_connections")
            return False
        self._fail(victim, "evicted: the slot went to another peer", CLOSE_EVICTED,
                   count="evicted_strangers")
        self._dirty[victim] = now
        return True

    def _stranger(self, conn: _Conn, node_id: bytes | None = None) -> bool:
        """A node id the owner never asked for (``dial``, ``punch``, ``want``), whoever
        opened the connection: a punch's dial toward a node a relay introduced is a
        stranger's too, or forged introductions would buy reserved slots."""
        return (node_id or conn.node_id) not in self.known

    def _fail(self, conn: _Conn, reason: str, code: int = CLOSE_AUTH_FAILED,
              count: str = "auth_failures", dial_reason: str | None = None,
              transient: bool = False) -> None:
        """Close ``conn`` with ``reason`` (sent to the peer); a dial of ours fails at once
        with ``dial_reason`` (for the person who asked; default: ``reason``), not after
        the closing period."""
        self.counters[count] += 1
        self._settle(conn)
        conn.closing = True
        conn.quic.close(error_code=code, reason_phrase=reason)
        if dial_reason is None:
            dial_reason, transient = f"unreachable: {where_text(conn.addr)}: {reason}", True
        self._dial_failed(conn, dial_reason, transient)

    def _dial_failed(self, conn: _Conn, reason: str, transient: bool) -> None:
        if conn.dialled and conn.node_id is None and conn.expect is not None \
                and not conn.dial_reported:
            conn.dial_reported = True
            self.counters["dials_failed"] += 1
            self._events.append(DialFailed(conn.expect, conn.addr, reason, transient))

    def unreachable(self, addr: Addr, quoted: bytes, why: str, now: float) -> None:
        """The network says a datagram sent to ``addr`` cannot be delivered (an ICMP
        error from the kernel's error queue: port or host unreachable), quoting the
        datagram. A dial of ours to ``addr`` that is not authenticated yet, and whose
        packet the quote shows (its destination connection id, which an off-path forger
        would have to guess), fails now instead of after the authentication timeout.
        Anything else is ignored (counted): authenticated connections have their own
        liveness, and ICMP is easily forged."""
        for conn in list(self._conns):
            if conn.dialled and conn.node_id is None and not conn.closing \
                    and conn.addr == addr and _quotes(quoted, conn.quic._peer_cid.cid):
                self.counters["dials_unreachable"] += 1
                self._dial_failed(conn, f"unreachable: {why}", transient=False)
                conn.closing = True
                self._forget(conn)  # nobody there to tell: no closing period
                return
        self.counters["icmp_ignored"] += 1

    def _terminated(self, conn: _Conn, reason: str, now: float) -> None:
        if conn.node_id is not None and conn.rx:
            self._parse(conn, now, final=True)  # acknowledged to the peer: hand it over
        self._forget(conn)
        if conn.node_id is None:
            self._dial_failed(conn, f"unreachable: the connection to {where_text(conn.addr)} "
                              f"ended before it was authenticated ({reason})", transient=True)
            self._events.append(PeerClosed(None, conn.addr, reason))
        elif self.peers.get(conn.node_id) is conn:  # not for one that was replaced
            del self.peers[conn.node_id]
            self._events.append(PeerClosed(conn.node_id, conn.addr, reason))


def where_text(addr: Addr) -> str:
    """``host:port`` (``[v6]:port``), for messages."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quotes(quoted: bytes, dcid: bytes) -> bool:
    """Whether ``quoted`` (the start of a datagram, from an ICMP error) is a QUIC packet
    to the connection id ``dcid``: long header (its length byte, then the id) or short."""
    if not quoted or not dcid:
        return False
    if quoted[0] & 0x80:
        return len(quoted) >= 6 + len(dcid) and quoted[5] == len(dcid) \
            and quoted[6:6 + len(dcid)] == dcid
    return quoted[1:1 + len(dcid)] == dcid
