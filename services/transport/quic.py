"""The QUIC connection of one peer and its TLS identity: aioquic's ``QuicConnection``
bounded by what the endpoint (endpoint.py) has consumed, acknowledging application packets
without a wake-up of their own, and holding the secret the channel binding is derived from;
the transport key's self-signed certificate; the channel binding itself.

These lean on aioquic 1.7.x internals (the receive windows' bookkeeping, the key schedule
callback); pyproject pins aioquic below 1.8 and the transport tests guard each of them.
"""

from __future__ import annotations

import datetime
import hmac
from typing import Any

from aioquic import tls
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.primitives import CryptoError

CHANNEL_LABEL = b"tom cb"
WINDOW_BEFORE_AUTH = 64 * 1024
"""Connection receive window until the peer is authenticated."""

APP_ACK_DELAY_S = 0.020
"""How long a lone application packet waits for something to carry its acknowledgement: below
the 25 ms ``max_ack_delay`` aioquic announces, which the peer's loss timer allows for."""


class BoundedQuicConnection(QuicConnection):
    """A QuicConnection whose receive windows follow what the endpoint has consumed.

    aioquic doubles a stream's or the connection's receive window once half of it has been
    *seen* (highest offset), whether or not the data was read; a peer sending sparse frames
    at high offsets can then make it allocate without bound, and a slow consumer could not
    push back. Here the endpoint sets the lane's window itself (``max_stream_data_local``),
    other streams keep their initial one, and the connection's window is ``consumed +
    connection_window`` where ``consumed`` counts the bytes the endpoint has parsed. The
    doubling is suppressed by hiding the offsets aioquic tests while its limit writers run
    (aioquic 1.7.x internals; tests guard).
    """

    consumed = 0
    connection_window = WINDOW_BEFORE_AUTH
    server_secret: bytes | None = None
    """The server's first application traffic secret (its transcript ends with the server's
    Finished): the server has it as soon as it sends its first flight, the client once it
    reads that flight. The channel binding is derived from it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # handshake packets are acknowledged when the batch that needs it has been read
        # (aioquic 1.7.x attribute); application packets: see receive_datagram
        self._ack_delay = 0.0
        self._eliciting = 0
        """Ack-eliciting application packets received since our last ACK frame."""
        self._sending = False
        """Stream data queued since the last packets were built: an ACK can ride along."""

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        """Application packets are acknowledged by the next packet this end sends anyway
        (an envelope going back, often its end-to-end ACK), or once two of them wait
        (RFC 9000 §13.2.2), or ``APP_ACK_DELAY_S`` after the first: not in a packet of their
        own right away, which would cost the peer a wake-up per message."""
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        waiting = space is not None and space.ack_at is not None
        super().receive_datagram(data, addr, now)
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is None or space.ack_at is None:
            return
        if self._eliciting >= 2:
            space.ack_at = now
        elif not waiting:
            space.ack_at = now + APP_ACK_DELAY_S

    def _payload_received(self, context: Any, plain: bytes,
                          crypto_frame_required: bool = False) -> tuple[bool, bool]:
        eliciting, probing = super()._payload_received(context, plain,
                                                       crypto_frame_required)
        if eliciting and context.epoch == tls.Epoch.ONE_RTT:
            self._eliciting += 1
        return eliciting, probing

    def _write_ack_frame(self, builder: QuicPacketBuilder, space: QuicPacketSpace,
                         now: float) -> None:
        super()._write_ack_frame(builder, space, now)
        if space is self._spaces.get(tls.Epoch.ONE_RTT):
            self._eliciting = 0

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._sending = True

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        if self._sending:
            self._sending = False
            space = self._spaces.get(tls.Epoch.ONE_RTT)
            if space is not None and space.ack_at is not None:
                space.ack_at = now  # rides on the data
        return super().datagrams_to_send(now)

    def _update_traffic_key(self, direction: tls.Direction, epoch: tls.Epoch,
                            cipher_suite: tls.CipherSuite, secret: bytes) -> None:
        # the server's sending key (read by the client): its first one, never an update
        if epoch == tls.Epoch.ONE_RTT and self.server_secret is None \
                and (direction == tls.Direction.ENCRYPT) != self._is_client:
            self.server_secret = secret
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)

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
        target = self.consumed + self.connection_window
        if target - limit.value >= self.connection_window // 4:  # in steps, not every packet
            limit.value = target
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


def channel_binding(conn: BoundedQuicConnection) -> bytes:
    """A secret both ends of this connection derive from its TLS key schedule.

    aioquic has no TLS exporter; the server's first application traffic secret covers the
    same transcript as TLS 1.3's exporter secret (ClientHello up to the server's Finished),
    and the server holds it when it sends its first flight, so it can prove itself in that
    flight (a test guards this and that both ends derive the same value).
    """
    secret = conn.server_secret
    if secret is None:
        raise CryptoError("the TLS handshake has no application secret yet")
    return hmac.digest(secret, CHANNEL_LABEL, "sha256")
