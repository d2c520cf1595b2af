"""The envelope: what travels between nodes, and how it is encoded, signed and bound.

Our encoding (documented with golden vectors in docs/protocol.md §8) is a msgpack array of ten
elements, bytes as ``bin`` and ids as raw bytes::

    [id: bin16, from: bin32, to: bin32, via: [bin32, ...], msg_type: str, payload: bin,
     timestamp_ms: uint, signature: bin (64 bytes, or empty when unsigned), ttl: uint,
     encrypted: bool]

Signing bytes: ``b"tom/envelope/1\\x00"`` followed by the msgpack array of the eight fields
other than ``signature`` and ``ttl`` (ttl is lowered by relays; everything else is fixed by
the sender, ``via`` included). The prefix separates envelope signatures from every other
object the identity key signs.

Associated data of an encrypted payload: ``b"tom/e2e/1\\x00"`` + msgpack
``[id, from, to, msg_type, timestamp_ms]``, so a ciphertext opens only inside the envelope it
was sealed for. ``via`` is left out so a sender may re-route (and re-sign) without
re-encrypting.

This module needs no secret: decoding, verifying and building signing bytes are used by the
router as well as by the crypto service. Signing and sealing live in ``services/crypto``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

import msgpack

from .primitives import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, XNONCE_BYTES, BadSignature, verify

ID_BYTES = 16
DEFAULT_TTL = 4
MAX_TTL = 4
MAX_VIA = 4
MAX_ENVELOPE_BYTES = 256 * 1024
MAX_MSG_TYPE_LEN = 32
SIGN_CONTEXT = b"tom/envelope/1\x00"
AAD_CONTEXT = b"tom/e2e/1\x00"

_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


class MessageType(StrEnum):
    """Envelope message types (protocol.md §5.1 names, kept for readability)."""

    CHAT = "Chat"
    ACK = "Ack"
    READ_RECEIPT = "ReadReceipt"
    HEARTBEAT = "Heartbeat"
    GROUP = "Group"
    """Every group payload (docs/protocol.md §8.8); the upstream names below are unused."""
    GROUP_SIGNAL = "GroupSignal"
    """A group payload sent once and not stored: liveness beats and probes."""
    GROUP_CREATE = "GroupCreate"
    GROUP_CREATED = "GroupCreated"
    GROUP_INVITE = "GroupInvite"
    GROUP_JOIN = "GroupJoin"
    GROUP_SYNC = "GroupSync"
    GROUP_MESSAGE = "GroupMessage"
    GROUP_LEAVE = "GroupLeave"
    GROUP_MEMBER_JOINED = "GroupMemberJoined"
    GROUP_MEMBER_LEFT = "GroupMemberLeft"
    GROUP_HUB_MIGRATION = "GroupHubMigration"
    GROUP_DELIVERY_ACK = "GroupDeliveryAck"
    GROUP_HUB_HEARTBEAT = "GroupHubHeartbeat"
    GROUP_SENDER_KEY_DISTRIBUTION = "GroupSenderKeyDistribution"
    GROUP_HUB_PING = "GroupHubPing"
    GROUP_HUB_PONG = "GroupHubPong"
    GROUP_HUB_SHADOW_SYNC = "GroupHubShadowSync"
    GROUP_CANDIDATE_ASSIGNED = "GroupCandidateAssigned"
    GROUP_HUB_UNREACHABLE = "GroupHubUnreachable"
    GROUP_KICK_MEMBER = "GroupKickMember"
    GROUP_UPDATE_MEMBER_ROLE = "GroupUpdateMemberRole"
    GROUP_MEMBER_ROLE_CHANGED = "GroupMemberRoleChanged"
    GROUP_INVITE_MEMBER = "GroupInviteMember"
    GROUP_SYNC_REQUEST = "GroupSyncRequest"
    GROUP_SYNC_RESPONSE = "GroupSyncResponse"
    BACKUP_STORE = "BackupStore"
    BACKUP_DELIVER = "BackupDeliver"
    BACKUP_REPLICATE = "BackupReplicate"
    BACKUP_REPLICATE_ACK = "BackupReplicateAck"
    BACKUP_QUERY = "BackupQuery"
    BACKUP_QUERY_RESPONSE = "BackupQueryResponse"
    BACKUP_CONFIRM_DELIVERY = "BackupConfirmDelivery"
    PEER_ANNOUNCE = "PeerAnnounce"


class EnvelopeError(ValueError):
    """Bytes that are not a well-formed envelope (truncated, wrong types or counts)."""


class EnvelopeTooLarge(EnvelopeError):
    """An envelope larger than MAX_ENVELOPE_BYTES; refused before decoding."""


class Unsigned(EnvelopeError):
    """The envelope carries no signature."""


class Expired(EnvelopeError):
    """A signed statement whose validity period has ended."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One envelope. ``sender`` is the protocol's ``from`` (a Python keyword)."""

    id: bytes
    sender: bytes
    to: bytes
    msg_type: str
    payload: bytes
    timestamp_ms: int
    via: tuple[bytes, ...] = ()
    signature: bytes = b""
    ttl: int = DEFAULT_TTL
    encrypted: bool = False

    def signing_bytes(self) -> bytes:
        return SIGN_CONTEXT + msgpack.packb(
            [self.id, self.sender, self.to, list(self.via), self.msg_type, self.payload,
             self.timestamp_ms, self.encrypted], use_bin_type=True)

    def aad(self) -> bytes:
        return AAD_CONTEXT + msgpack.packb(
            [self.id, self.sender, self.to, self.msg_type, self.timestamp_ms],
            use_bin_type=True)

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.id, self.sender, self.to, list(self.via), self.msg_type, self.payload,
             self.timestamp_ms, self.signature, self.ttl, self.encrypted], use_bin_type=True)

    def with_signature(self, signature: bytes) -> Envelope:
        return replace(self, signature=signature)

    def verify(self) -> None:
        """Raise :class:`Unsigned` or :class:`BadSignature` unless signed by ``sender``."""
        if not self.signature:
            raise Unsigned("the envelope is not signed")
        verify(self.sender, self.signature, self.signing_bytes())


def _bin(v: object, n: int | None, what: str) -> bytes:
    if not isinstance(v, bytes) or (n is not None and len(v) != n):
        raise EnvelopeError(f"{what} must be {n or 'some'} bytes")
    return v


def _uint(v: object, limit: int, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise EnvelopeError(f"{what} must be an integer in 0..{limit}")
    return v


def decode(raw: bytes) -> Envelope:
    """Decode envelope bytes; raise :class:`EnvelopeError` for anything malformed."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(f"envelope of {len(raw)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        a = msgpack.unpackb(raw, raw=False, use_list=True)
    except _UNPACK_ERRORS as e:
        raise EnvelopeError(f"not a msgpack envelope: {e}") from None
    if not isinstance(a, list) or len(a) != 10:
        raise EnvelopeError("an envelope is a msgpack array of 10 elements")
    via = a[3]
    if not isinstance(via, list) or len(via) > MAX_VIA:
        raise EnvelopeError(f"via must be a list of at most {MAX_VIA} node ids")
    msg_type = a[4]
    if not isinstance(msg_type, str) or not 0 < len(msg_type) <= MAX_MSG_TYPE_LEN:
        raise EnvelopeError("msg_type must be a short string")
    signature = _bin(a[7], None, "signature")
    if len(signature) not in (0, SIGNATURE_BYTES):
        raise EnvelopeError("signature must be empty or 64 bytes")
    if not isinstance(a[9], bool):
        raise EnvelopeError("encrypted must be a boolean")
    return Envelope(
        id=_bin(a[0], ID_BYTES, "id"),
        sender=_bin(a[1], PUBLIC_KEY_BYTES, "from"),
        to=_bin(a[2], PUBLIC_KEY_BYTES, "to"),
        via=tuple(_bin(v, PUBLIC_KEY_BYTES, "via entry") for v in via),
        msg_type=msg_type,
        payload=_bin(a[5], None, "payload"),
        timestamp_ms=_uint(a[6], 2**64 - 1, "timestamp"),
        signature=signature,
        ttl=_uint(a[8], MAX_TTL, "ttl"),
        encrypted=a[9],
    )


@dataclass(frozen=True, slots=True)
class EncryptedPayload:
    """The payload of an encrypted envelope: msgpack ``[ciphertext, nonce, ephemeral_pk]``."""

    ciphertext: bytes
    nonce: bytes
    ephemeral_pk: bytes

    def encode(self) -> bytes:
        return msgpack.packb([self.ciphertext, self.nonce, self.ephemeral_pk],
                             use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> EncryptedPayload:
        try:
            a = msgpack.unpackb(raw, raw=False)
        except _UNPACK_ERRORS:
            raise EnvelopeError("encrypted payload is not msgpack") from None
        if not isinstance(a, list) or len(a) != 3:
            raise EnvelopeError("encrypted payload is an array of 3")
        return cls(_bin(a[0], None, "ciphertext"), _bin(a[1], XNONCE_BYTES, "nonce"),
                   _bin(a[2], 32, "ephemeral key"))


class AckType(StrEnum):
    RELAY_FORWARDED = "RelayForwarded"
    RECIPIENT_RECEIVED = "RecipientReceived"
    HOLD_REFUSED = "HoldRefused"
    """A holder's answer to a ``BackupStore`` it has no room for (its quota): the sender
    asks the next holder at once instead of asking this one again."""


@dataclass(frozen=True, slots=True)
class AckPayload:
    """Payload of ``Ack``: msgpack ``[original_id: bin16, ack_type: str]``."""

    original_id: bytes
    ack_type: AckType

    def encode(self) -> bytes:
        return msgpack.packb([self.original_id, str(self.ack_type)], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> AckPayload:
        a = _array(raw, 2, "ack")
        kind = a[1]
        if not isinstance(kind, str) or kind not in AckType._value2member_map_:
            raise EnvelopeError(f"ack: unknown ack type {kind!r}")
        return cls(_bin(a[0], ID_BYTES, "original id"), AckType(kind))


@dataclass(frozen=True, slots=True)
class ReadReceiptPayload:
    """Payload of ``ReadReceipt``: msgpack ``[original_id: bin16, read_at_ms: uint]``."""

    original_id: bytes
    read_at_ms: int

    def encode(self) -> bytes:
        return msgpack.packb([self.original_id, self.read_at_ms], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> ReadReceiptPayload:
        a = _array(raw, 2, "read receipt")
        return cls(_bin(a[0], ID_BYTES, "original id"), _uint(a[1], 2**64 - 1, "read_at"))


def _array(raw: bytes, n: int, what: str) -> list[object]:
    try:
        a = msgpack.unpackb(raw, raw=False)
    except _UNPACK_ERRORS:
        raise EnvelopeError(f"{what} payload is not msgpack") from None
    if not isinstance(a, list) or len(a) != n:
        raise EnvelopeError(f"{what} payload is an array of {n}")
    return a


@dataclass(frozen=True, slots=True)
class TransportBinding:
    """A node's signed statement that ``transport_key`` may speak for it until ``not_after``.

    Encoded as msgpack ``[node_id, transport_key, not_after_s, signature]``; the signature
    covers ``b"tom/transport-binding/1\\x00"`` + msgpack ``[node_id, transport_key,
    not_after_s]``.
    """

    node_id: bytes
    transport_key: bytes
    not_after_s: int
    signature: bytes = field(default=b"", repr=False)

    CONTEXT = b"tom/transport-binding/1\x00"

    def signing_bytes(self) -> bytes:
        return self.CONTEXT + msgpack.packb([self.node_id, self.transport_key,
                                             self.not_after_s], use_bin_type=True)

    def encode(self) -> bytes:
        return msgpack.packb([self.node_id, self.transport_key, self.not_after_s,
                              self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> TransportBinding:
        a = _array(raw, 4, "transport binding")
        return cls(_bin(a[0], PUBLIC_KEY_BYTES, "node id"), _bin(a[1], None, "transport key"),
                   _uint(a[2], 2**64 - 1, "not_after"), _bin(a[3], SIGNATURE_BYTES, "signature"))

    def verify(self, now_s: float) -> None:
        """Raise BadSignature if not signed by node_id, Expired if past not_after_s."""
        verify(self.node_id, self.signature, self.signing_bytes())
        if now_s > self.not_after_s:
            raise Expired(f"transport binding expired at {self.not_after_s}")


@dataclass(frozen=True, slots=True)
class GroupCiphertext:
    """A group message encrypted with a sender key and signed by its sender.

    Encoded as msgpack ``[group_id: str, sender: bin32, nonce: bin24, ciphertext: bin,
    signature: bin64]``. The signature covers ``b"tom/group/1\\x00"`` + msgpack
    ``[group_id, sender, nonce, ciphertext]``; the AEAD's associated data is
    ``b"tom/group/1\\x00"`` + msgpack ``[group_id, sender]``.
    """

    group_id: str
    sender: bytes
    nonce: bytes
    ciphertext: bytes
    signature: bytes = field(default=b"", repr=False)

    CONTEXT = b"tom/group/1\x00"

    def aad(self) -> bytes:
        return self.CONTEXT + msgpack.packb([self.group_id, self.sender], use_bin_type=True)

    def signing_bytes(self) -> bytes:
        return self.CONTEXT + msgpack.packb([self.group_id, self.sender, self.nonce,
                                             self.ciphertext], use_bin_type=True)

    def encode(self) -> bytes:
        return msgpack.packb([self.group_id, self.sender, self.nonce, self.ciphertext,
                              self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> GroupCiphertext:
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise EnvelopeTooLarge(f"group message of {len(raw)} bytes exceeds "
                                   f"{MAX_ENVELOPE_BYTES}")
        a = _array(raw, 5, "group message")
        if not isinstance(a[0], str) or not 0 < len(a[0]) <= 64:
            raise EnvelopeError("group id must be a short string")
        return cls(a[0], _bin(a[1], PUBLIC_KEY_BYTES, "sender"),
                   _bin(a[2], XNONCE_BYTES, "nonce"), _bin(a[3], None, "ciphertext"),
                   _bin(a[4], SIGNATURE_BYTES, "signature"))

    def verify(self) -> None:
        verify(self.sender, self.signature, self.signing_bytes())


__all__ = ["BadSignature", "Envelope", "EnvelopeError", "MessageType", "decode"]
