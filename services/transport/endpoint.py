"""A QUIC endpoint on one UDP socket, sans-I/O, with peers authenticated by node id.

Theory of operation. The endpoint owns aioquic ``QuicConnection`` objects (aioquic's own
sans-I/O API) and routes every incoming datagram to one of them by destination connection id;
an unknown id carrying a full-size Initial creates a server-side connection. It never touches
a socket or a clock: the shell calls

  ``receive(data, addr, now)``  for every datagram read from the socket,
  ``dial(node_id, addr, now)``  to open a connection to a peer,
  ``send(node_id, data, now)``  to send one envelope to an authenticated peer,
  ``handle_timer(now)``         when ``next_timer()`` has passed,

then sends ``datagrams()`` and handles ``events()``. Wall-clock time (binding expiry) comes
from the injected ``wall`` callable.

Authentication (docs/notes/transport-research.md §2). TLS runs with this process's own
Ed25519 *transport* key, never the identity key. Right after the handshake each side sends, on
its first unidirectional stream, msgpack ``[binding, proof]``: the binding signed by the crypto
service (node id → transport key, short-lived) and ``proof = sign(transport key,
"tom/transport-auth/1" 0x00 || role || cb)``, where ``cb`` is a secret derived from the TLS
key schedule of this very connection (so a proof cannot be relayed into another connection)
and ``role`` is ``c`` or ``s`` (so it cannot be reflected). The server proves itself only after
the client has. A connection is attributed to a node id only once the peer's proof verifies,
and a dialled connection must turn out to be the node that was dialled. Failures close the
connection with a reason and are counted.

Framing: one unidirectional stream per envelope, ended by FIN; a stream longer than
``max_frame_bytes`` is stopped and discarded before it is read further, and the sender refuses
such envelopes before sending. Streams that arrive before the peer is authenticated are held
(bounded) and delivered after.

One connection per peer, used in both directions: whoever dialled, envelopes to that node id
go over it. When both sides dial at once, the connection dialled by the smaller node id wins.
"""

from __future__ import annotations

import datetime
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.envelope import MAX_ENVELOPE_BYTES, EnvelopeError, TransportBinding
from shared.primitives import CryptoError, verify

ALPN = "tom/1"
AUTH_CONTEXT = b"tom/transport-auth/1\x00"
CHANNEL_LABEL = b"tom cb"
CID_LENGTH = 8
MAX_AUTH_BYTES = 1024
MAX_HELD_STREAMS = 64
MAX_HELD_BYTES = 1024 * 1024
WINDOW_BEFORE_AUTH = 64 * 1024
WINDOW_AFTER_AUTH = 4 * 1024 * 1024
PING_INTERVAL_S = 2.0
MISSED_PINGS = 3
"""A peer that acknowledges none of this many pings in a row is considered gone (about 6 s,
instead of the idle timeout)."""
SIMULTANEOUS_S = 2.0
"""Two connections to one peer authenticated this close together are a simultaneous dial."""
CLOSE_AUTH_FAILED = 0x100
CLOSE_DUPLICATE = 0x101
CLOSE_OVERSIZE = 0x102

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PeerAuthenticated:
    node_id: bytes
    addr: Addr
    dialled: bool
    """True if this side opened the connection."""


@dataclass(frozen=True, slots=True)
class PeerClosed:
    node_id: bytes | None
    """None when the connection closed before the peer was authenticated."""
    addr: Addr
    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    node_id: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class ProbeReceived:
    """A non-QUIC datagram starting with 0x00: a hole-punch probe."""

    addr: Addr
    data: bytes


Event = PeerAuthenticated | PeerClosed | Received | ProbeReceived


class SendError(Exception):
    """An envelope cannot be sent: no authenticated connection to the peer."""


class FrameTooLarge(SendError):
    """An envelope larger than the frame limit; refused before anything is sent."""


class BoundedQuicConnection(QuicConnection):
    """A QuicConnection whose receive windows follow what the endpoint has consumed.

    aioquic doubles a stream's or the connection's receive window once half of it has been
    *seen* (highest offset), whether or not the data was read; a peer sending sparse frames
    at high offsets can then make it allocate without bound. Here a stream's window never
    grows past its initial size (``max_stream_data``, just above the largest frame), and the
    connection's window is ``consumed + connection_window`` where ``consumed`` counts the
    bytes aioquic has handed to the endpoint. The doubling is suppressed by hiding the
    offsets aioquic tests while its limit writers run (aioquic 1.7.x internals; tests guard).
    """

    consumed = 0
    connection_window = 64 * 1024

    def _write_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace,
                             stream: QuicStream) -> None:
        receiver = stream.receiver
        seen, receiver.highest_offset = receiver.highest_offset, 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = seen

    def _write_connection_limits(self, builder: QuicPacketBuilder,
                                 space: QuicPacketSpace) -> None:
        limit = self._local_max_data
        limit.value = max(limit.value, self.consumed + self.connection_window)
        used, limit.used = limit.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used


def transport_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def self_signed(key: Ed25519PrivateKey, now: datetime.datetime) -> x509.Certificate:
    """A self-signed certificate for the transport key (it proves nothing by itself)."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "tom")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, None))


def channel_binding(conn: QuicConnection) -> bytes:
    """A secret both ends of this connection derive from its TLS key schedule.

    aioquic has no TLS exporter; after the handshake its key schedule holds the master secret
    and the transcript up to the client's Finished on both sides (a test guards this).
    """
    schedule = conn.tls.key_schedule
    if schedule is None:
        raise CryptoError("the TLS handshake has no key schedule")
    return bytes(schedule.derive_secret(CHANNEL_LABEL))


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
    unanswered_pings: int = 0
    expires_wall: float = 0.0
    """Wall-clock time at which the peer's binding ends (the connection is closed then)."""
    streams: dict[int, bytearray] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    held: list[bytes] = field(default_factory=list)
    auth_stream: int | None = None


class Endpoint:
    def __init__(self, transport_key: Ed25519PrivateKey, binding: bytes,
                 wall: Callable[[], float], *, idle_timeout_s: float = 30.0,
                 auth_timeout_s: float = 10.0, max_frame_bytes: int = MAX_ENVELOPE_BYTES,
                 max_unauthenticated: int = 64) -> None:
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
        self.max_unauthenticated = max_unauthenticated
        self._routes: dict[bytes, _Conn] = {}
        self._conns: set[_Conn] = set()
        self.peers: dict[bytes, _Conn] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._dirty: dict[_Conn, float] = {}
        self._events: list[Event] = []
        self.counters: Counter[str] = Counter()

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Addr, now: float) -> None:
        """Feed one datagram read from the socket."""
        if data[:1] == b"\x00":
            self._events.append(ProbeReceived(addr, data))
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
        self._pump(conn, now)

    def dial(self, node_id: bytes, addr: Addr, now: float) -> None:
        """Open a connection to ``node_id`` at ``addr`` (no-op if one is up or being made)."""
        if node_id in self.peers or node_id in self.dialling():
            return
        quic = BoundedQuicConnection(configuration=self._config(is_client=True))
        conn = _Conn(quic, addr, dialled=True, created=now, expect=node_id)
        self._add(conn)
        quic.connect(addr, now)
        self.counters["dials"] += 1
        self._pump(conn, now)

    def send(self, node_id: bytes, data: bytes, now: float) -> None:
        """Send one envelope over the peer's connection (whoever opened it)."""
        if len(data) > self.max_frame_bytes:
            raise FrameTooLarge(f"envelope of {len(data)} bytes exceeds "
                                f"{self.max_frame_bytes}")
        conn = self.peers.get(node_id)
        if conn is None:
            raise SendError("no authenticated connection to this peer")
        sid = conn.quic.get_next_available_stream_id(is_unidirectional=True)
        conn.quic.send_stream_data(sid, data, end_stream=True)
        self.counters["frames_sent"] += 1
        self._dirty[conn] = now  # packets are built by datagrams(): envelopes sent together
        # share packets instead of one datagram each

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

    def close(self, node_id: bytes, now: float, reason: str = "closed") -> None:
        conn = self.peers.pop(node_id, None)
        if conn is not None:
            conn.closing = True
            conn.quic.close(reason_phrase=reason)
            self._pump(conn, now)
            self._events.append(PeerClosed(node_id, conn.addr, reason))

    def handle_timer(self, now: float) -> None:
        for conn in list(self._conns):
            if (conn.node_id is None and not conn.closing
                    and now >= conn.created + self.auth_timeout_s):
                self._fail(conn, "not authenticated in time", count="auth_timeouts")
            if conn.node_id is not None and not conn.closing and \
                    self._wall() >= conn.expires_wall:
                self._fail(conn, "the peer's transport binding expired", count="expired")
            if conn.node_id is not None and not conn.closing and now >= conn.next_ping:
                if conn.unanswered_pings >= MISSED_PINGS:
                    self._fail(conn, "the peer stopped answering", count="dead_peers")
                else:  # keep-alive (idle timeout, NAT mappings) and liveness probe
                    conn.unanswered_pings += 1
                    conn.quic.send_ping(conn.unanswered_pings)
                    conn.next_ping = now + self.ping_interval_s
            timer = conn.quic.get_timer()
            if timer is not None and timer <= now:
                conn.quic.handle_timer(now)
            self._pump(conn, now)

    # -- outputs ---------------------------------------------------------------------------

    def datagrams(self) -> list[tuple[bytes, Addr]]:
        """Datagrams to send now (this also builds the packets for envelopes sent since the
        last call)."""
        dirty, self._dirty = self._dirty, {}
        for conn, now in dirty.items():
            if conn in self._conns:
                self._pump(conn, now)
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        times = [t for c in self._conns if (t := c.quic.get_timer()) is not None]
        times += [c.created + self.auth_timeout_s if c.node_id is None else c.next_ping
                  for c in self._conns if not c.closing]
        return min(times, default=None)

    # -- internals -------------------------------------------------------------------------

    def _config(self, is_client: bool) -> QuicConfiguration:
        return QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN],
                                 idle_timeout=self.idle_timeout_s, certificate=self._cert,
                                 private_key=self._key, verify_mode=ssl.CERT_NONE,
                                 max_datagram_frame_size=None,
                                 max_data=WINDOW_BEFORE_AUTH,
                                 max_stream_data=self.max_frame_bytes + 1)

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
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            self.counters["unroutable_datagrams"] += 1
            return None
        if sum(1 for c in self._conns if c.node_id is None and not c.dialled) \
                >= self.max_unauthenticated:
            self.counters["refused_half_open"] += 1
            return None
        quic = BoundedQuicConnection(configuration=config,
                                     original_destination_connection_id=header.destination_cid)
        conn = _Conn(quic, addr, dialled=False, created=now)
        self._routes[header.destination_cid] = conn
        self._add(conn)
        self.counters["accepted"] += 1
        return conn

    def _forget(self, conn: _Conn) -> None:
        for cid in [k for k, c in self._routes.items() if c is conn]:
            del self._routes[cid]
        self._conns.discard(conn)

    def _add(self, conn: _Conn) -> None:
        self._conns.add(conn)
        self._routes[conn.quic.host_cid] = conn

    def _pump(self, conn: _Conn, now: float) -> None:
        """After every call into a connection: handle its events, collect its datagrams."""
        while (ev := conn.quic.next_event()) is not None:
            self._on_event(conn, ev, now)
        self._out.extend(conn.quic.datagrams_to_send(now))

    def _on_event(self, conn: _Conn, ev: qe.QuicEvent, now: float) -> None:
        if isinstance(ev, qe.ConnectionIdIssued):
            self._routes[ev.connection_id] = conn
        elif isinstance(ev, qe.ConnectionIdRetired):
            self._routes.pop(ev.connection_id, None)
        elif isinstance(ev, qe.HandshakeCompleted):
            if conn.dialled:
                self._prove(conn)
        elif isinstance(ev, qe.StreamDataReceived):
            self._on_stream(conn, ev, now)
        elif isinstance(ev, qe.PingAcknowledged):
            conn.unanswered_pings = 0
        elif isinstance(ev, qe.StreamReset):
            conn.streams.pop(ev.stream_id, None)
            conn.refused.discard(ev.stream_id)
        elif isinstance(ev, qe.ConnectionTerminated):
            self._terminated(conn, ev.reason_phrase or f"code {ev.error_code}")

    def _on_stream(self, conn: _Conn, ev: qe.StreamDataReceived, now: float) -> None:
        conn.quic.consumed += len(ev.data)  # out of aioquic's buffers: credit it again
        if ev.stream_id in conn.refused:
            return  # the rest of a refused stream
        if ev.stream_id % 4 in (0, 1):  # bidirectional streams are not part of the protocol
            self._refuse(conn, ev.stream_id, "refused_streams")
            return
        auth = ev.stream_id == self._peer_auth_stream(conn)
        if auth and conn.auth_stream is not None:
            return  # the proof was already read
        buf = conn.streams.setdefault(ev.stream_id, bytearray())
        buf += ev.data
        if len(buf) > (MAX_AUTH_BYTES if auth else self.max_frame_bytes):
            del conn.streams[ev.stream_id]
            self._refuse(conn, ev.stream_id, "oversize_frames")
            return
        if not ev.end_stream:
            return
        data = bytes(conn.streams.pop(ev.stream_id))
        if auth:
            conn.auth_stream = ev.stream_id
            self._authenticate(conn, data, now)
        elif conn.node_id is None:
            # an envelope that overtook the peer's proof: hold it (bounded) until the proof
            conn.held.append(data)
            if len(conn.held) > MAX_HELD_STREAMS or sum(map(len, conn.held)) > MAX_HELD_BYTES:
                conn.held.clear()
                if not conn.closing:
                    self._fail(conn, "too much data before authentication")
        else:
            self.counters["frames_received"] += 1
            self._events.append(Received(conn.node_id, data))

    @staticmethod
    def _peer_auth_stream(conn: _Conn) -> int:
        """The peer's first unidirectional stream: 2 if it is the client, 3 if the server."""
        return 3 if conn.dialled else 2

    def _refuse(self, conn: _Conn, stream_id: int, counter: str) -> None:
        conn.refused.add(stream_id)
        if len(conn.refused) > 4 * MAX_HELD_STREAMS:
            self._fail(conn, "too many refused streams", CLOSE_OVERSIZE, count=counter)
            return
        conn.quic.stop_stream(stream_id, CLOSE_OVERSIZE)
        self.counters[counter] += 1

    def _prove(self, conn: _Conn) -> None:
        role = b"c" if conn.dialled else b"s"
        proof = self._key.sign(AUTH_CONTEXT + role + channel_binding(conn.quic))
        sid = conn.quic.get_next_available_stream_id(is_unidirectional=True)
        conn.quic.send_stream_data(sid, msgpack.packb([self._binding, proof]), end_stream=True)
        conn.proved = True

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
            self._fail(conn, f"authentication failed: {e}")
            return
        node_id = binding.node_id
        conn.expires_wall = binding.not_after_s
        if conn.expect is not None and node_id != conn.expect:
            self._fail(conn, "the peer is not the node that was dialled")
            return
        if node_id == self.node_id:
            self._fail(conn, "connected to ourselves")
            return
        existing = self.peers.get(node_id)
        if existing is not None and not self._keep_new(existing, conn, node_id, now):
            self._fail(conn, "duplicate connection", CLOSE_DUPLICATE, count="duplicates")
            return
        conn.node_id = node_id
        conn.quic.connection_window = WINDOW_AFTER_AUTH
        conn.authenticated_at = now
        conn.next_ping = now + self.ping_interval_s
        self.peers[node_id] = conn
        if existing is not None:  # replaced: a stale connection, or the loser of a race
            self._fail(existing, "replaced by a newer connection", CLOSE_DUPLICATE,
                       count="replaced")
            self._pump(existing, now)
        if not conn.proved:
            self._prove(conn)
        self.counters["authenticated"] += 1
        self._events.append(PeerAuthenticated(node_id, conn.addr, conn.dialled))
        for held in conn.held:
            self.counters["frames_received"] += 1
            self._events.append(Received(node_id, held))
        conn.held.clear()

    def _keep_new(self, old: _Conn, new: _Conn, node_id: bytes, now: float) -> bool:
        """The newer connection replaces an older one (the peer restarted, or the path
        changed), except when both sides dialled at once: then both keep the connection
        dialled by the smaller node id, so they agree without talking."""
        if old.closing or old.dialled == new.dialled \
                or now - old.authenticated_at > SIMULTANEOUS_S:
            return True
        dialler_new = self.node_id if new.dialled else node_id
        return dialler_new == min(self.node_id, node_id)

    def _fail(self, conn: _Conn, reason: str, code: int = CLOSE_AUTH_FAILED,
              count: str = "auth_failures") -> None:
        self.counters[count] += 1
        conn.closing = True
        conn.quic.close(error_code=code, reason_phrase=reason)

    def _terminated(self, conn: _Conn, reason: str) -> None:
        self._forget(conn)
        if conn.node_id is None:
            self._events.append(PeerClosed(None, conn.addr, reason))
        elif self.peers.get(conn.node_id) is conn:  # not for one that was replaced
            del self.peers[conn.node_id]
            self._events.append(PeerClosed(conn.node_id, conn.addr, reason))
