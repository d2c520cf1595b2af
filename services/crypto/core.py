"""Crypto core: the identity key and every operation that needs it.

Inputs are bus requests (``crypto.*``); the core is given the 32-byte seed, a random source
``rng(n) -> bytes`` and a wall clock ``wall_ms() -> int``, so it never reads a file, the OS
RNG or the time itself, and golden vectors can pin every random byte.

Schemes (docs/protocol.md §8 has the byte layouts and golden vectors):

- **sign**: Ed25519 over ``Envelope.signing_bytes()`` (domain-separated).
- **seal**: encrypt-then-sign. The recipient's X25519 key is derived from its Ed25519 key
  (libsodium's conversion); a fresh ephemeral X25519 key per message; ``K = HKDF-SHA256(
  ikm = X25519(e, X_R), salt = none, info = "tom/e2e/1" || E || X_R)``; XChaCha20-Poly1305
  with a random 24-byte nonce and the envelope header as associated data; then sign.
- **open**: verify the signature first, always; then check the recipient; then decrypt.
  Asked with ``ack_via``, it also seals (signs, unencrypted) the ``recipient_received`` ACK
  for what it just opened, so the router's delivery ACK costs no second call.
- **group**: XChaCha20-Poly1305 with the sender key (associated data: group id and sender),
  then an Ed25519 signature over the group id, sender, nonce and ciphertext.
- **bind_transport**: sign (node id, transport key, expiry) for the transport's handshake.

Every failure is a specific error reply (see ``_ERRORS``) and is counted by name.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import replace

from shared import primitives as p
from shared.core import Action, Core, Fail, Input, Reply, Request
from shared.envelope import (
    ID_BYTES,
    MAX_ENVELOPE_BYTES,
    AckPayload,
    AckType,
    EncryptedPayload,
    Envelope,
    EnvelopeError,
    EnvelopeTooLarge,
    Expired,
    GroupCiphertext,
    MessageType,
    TransportBinding,
    Unsigned,
    decode,
)
from shared.wire import ErrorCode, Message
from shared.wire.messages import crypto as m

from . import policy

E2E_INFO = b"tom/e2e/1"
X25519_CACHE = 1024


class WrongRecipient(Exception):
    pass


class NotOurs(Exception):
    pass


class MissingBlob(Exception):
    pass


class OutOfBounds(Exception):
    pass


class WrongSender(p.BadSignature):
    """Validly signed, but not by the member (or for the group) the caller expected."""


MAX_BINDING_S = policy.MAX_BINDING_S
FIXED_OVERHEAD_BYTES = 512  # an envelope's fields besides its payload take less than this


def _fits(size: int, what: str) -> None:
    if size > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(f"the {what} would be {size} bytes, over the "
                               f"{MAX_ENVELOPE_BYTES}-byte limit peers accept")


_ERRORS: list[tuple[type[Exception], ErrorCode]] = [
    (EnvelopeTooLarge, ErrorCode.TOO_LARGE),
    (Unsigned, ErrorCode.UNSIGNED),
    (Expired, ErrorCode.EXPIRED),
    (EnvelopeError, ErrorCode.BAD_ENVELOPE),
    (p.BadSignature, ErrorCode.BAD_SIGNATURE),
    (p.DecryptFailed, ErrorCode.DECRYPT_FAILED),
    (p.BadKey, ErrorCode.BAD_KEY),
    (WrongRecipient, ErrorCode.WRONG_RECIPIENT),
    (NotOurs, ErrorCode.NOT_OURS),
    (MissingBlob, ErrorCode.INVALID),
    (OutOfBounds, ErrorCode.INVALID),
]


def e2e_key(shared_secret: bytes, ephemeral_pk: bytes, recipient_x: bytes) -> bytes:
    return p.hkdf_sha256(shared_secret, E2E_INFO + ephemeral_pk + recipient_x)


class Identity:
    """The node's key and the schemes that use it (no I/O)."""

    def __init__(self, seed: bytes, rng: Callable[[int], bytes]) -> None:
        self._key = p.SigningKey(seed)
        self.node_id = self._key.public
        self._rng = rng
        self._x_cache: OrderedDict[bytes, bytes] = OrderedDict()
        self.x_public = self.x25519_of(self.node_id)

    def x25519_of(self, node_id: bytes) -> bytes:
        """The X25519 key of a node id (cached: the conversion is the costly part)."""
        x = self._x_cache.get(node_id)
        if x is None:
            x = self._x_cache[node_id] = p.ed25519_pk_to_x25519(node_id)
            if len(self._x_cache) > X25519_CACHE:
                self._x_cache.popitem(last=False)
        return x

    def sign(self, env: Envelope) -> Envelope:
        if env.sender != self.node_id:
            raise NotOurs("the envelope's from is not this node")
        return env.with_signature(self._key.sign(env.signing_bytes()))

    def seal(self, to: bytes, msg_type: str, payload: bytes, timestamp_ms: int,
             via: tuple[bytes, ...] = (), ttl: int = 4, encrypt: bool = True,
             env_id: bytes | None = None) -> Envelope:
        env = Envelope(id=env_id or self._rng(ID_BYTES), sender=self.node_id, to=to,
                       msg_type=msg_type, payload=payload, timestamp_ms=timestamp_ms, via=via,
                       ttl=ttl,
                       encrypted=encrypt)
        if encrypt:
            x_r = self.x25519_of(to)
            e = self._rng(p.X25519_BYTES)
            eph = p.x25519_base(e)
            key = e2e_key(p.x25519(e, x_r), eph, x_r)
            nonce = self._rng(p.XNONCE_BYTES)
            ct = p.xchacha_seal(key, nonce, payload, env.aad())
            env = replace(env, payload=EncryptedPayload(ct, nonce, eph).encode())
        env = self.sign(env)
        if len(env.payload) > MAX_ENVELOPE_BYTES - FIXED_OVERHEAD_BYTES:  # near the limit
            _fits(len(env.encode()), "envelope")
        return env

    def open(self, raw: bytes) -> tuple[Envelope, bytes]:
        env = decode(raw)
        env.verify()
        if env.to != self.node_id:
            raise WrongRecipient("the envelope is addressed to another node")
        if not env.encrypted:
            return env, env.payload
        enc = EncryptedPayload.decode(env.payload)
        key = e2e_key(self._key.x25519(enc.ephemeral_pk), enc.ephemeral_pk, self.x_public)
        return env, p.xchacha_open(key, enc.nonce, enc.ciphertext, env.aad())

    def group_seal(self, group_id: str, key: bytes, plaintext: bytes) -> GroupCiphertext:
        nonce = self._rng(p.XNONCE_BYTES)
        g = GroupCiphertext(group_id, self.node_id, nonce, b"")
        g = replace(g, ciphertext=p.xchacha_seal(key, nonce, plaintext, g.aad()))
        g = replace(g, signature=self._key.sign(g.signing_bytes()))
        _fits(len(g.encode()), "group message")
        return g

    @staticmethod
    def group_open(key: bytes, raw: bytes, group_id: str | None = None,
                   sender: bytes | None = None) -> tuple[GroupCiphertext, bytes]:
        """Verify, check it comes from the expected group and sender, then decrypt."""
        g = GroupCiphertext.decode(raw)
        g.verify()
        if (group_id is not None and g.group_id != group_id) or (
                sender is not None and g.sender != sender):
            raise WrongSender(f"message of {g.sender.hex()[:10]} in {g.group_id!r}, expected "
                              f"{(sender or g.sender).hex()[:10]} in {group_id or g.group_id!r}")
        return g, p.xchacha_open(key, g.nonce, g.ciphertext, g.aad())

    def bind_transport(self, transport_key: bytes, not_after_s: int,
                       now_s: int) -> TransportBinding:
        if not now_s < not_after_s <= now_s + MAX_BINDING_S + policy.CLOCK_SLACK_S:
            raise policy.Refused("binding", f"not_after_s must be in the next {MAX_BINDING_S} "
                                 f"s (now {now_s}); bindings are short-lived since they cannot "
                                 "be revoked")
        b = TransportBinding(self.node_id, transport_key, not_after_s)
        return replace(b, signature=self._key.sign(b.signing_bytes()))


def info(env: Envelope, cls: type[m.EnvelopeInfo]) -> m.EnvelopeInfo:
    return cls(id=env.id, sender=env.sender, to=env.to, via=list(env.via),
               envelope_type=env.msg_type, timestamp_ms=env.timestamp_ms, ttl=env.ttl,
               encrypted=env.encrypted)


class CryptoCore(Core):
    role = "crypto"
    handles = frozenset({m.NodeId, m.Sign, m.Seal, m.Open, m.Verify, m.GroupSeal,
                         m.GroupOpen, m.BindTransport})

    def __init__(self, seed: bytes, rng: Callable[[int], bytes],
                 wall_ms: Callable[[], int]) -> None:
        self.identity = Identity(seed, rng)
        self.node_id = self.identity.node_id
        self._wall_ms = wall_ms
        self._counts: Counter[str] = Counter()

    def handle(self, event: Input, now: float) -> list[Action]:
        if not isinstance(event, Request) or type(event.body) not in self.handles:
            return super().handle(event, now)
        try:
            policy.check_caller(event.body, event.caller)
            body, blobs = self._do(event.body, event.blobs)
        except policy.Forbidden as exc:
            self._counts["refused_caller"] += 1
            return [Fail(event.ctx, ErrorCode.FORBIDDEN, str(exc))]
        except policy.Refused as exc:
            self._counts[f"refused_{exc.reason}"] += 1
            return [Fail(event.ctx, ErrorCode.REFUSED, str(exc))]
        except tuple(e for e, _ in _ERRORS) as exc:
            code = next(c for e, c in _ERRORS if isinstance(exc, e))
            self._counts[f"rejected_{code.name.lower()}"] += 1
            return [Fail(event.ctx, code, str(exc))]
        self._counts[event.body.msg_type.removeprefix("crypto.")] += 1
        return [Reply(event.ctx, body, blobs)]

    def _do(self, req: Message, blobs: tuple[bytes, ...]) -> tuple[Message, tuple[bytes, ...]]:
        ident = self.identity
        match req:
            case m.NodeId():
                return m.NodeIdReply(node_id=self.node_id), ()
            case m.Sign():
                env = decode(_blob(blobs))
                policy.check_timestamp(env.timestamp_ms, self._wall_ms())
                if env.msg_type in policy.ACK_TYPES:
                    raise policy.Refused("ack_without_proof", "acknowledgements are made with "
                                         "crypto.seal and the envelope they acknowledge")
                return m.SignReply(), (ident.sign(env).encode(),)
            case m.Seal():
                ts = self._wall_ms() if req.timestamp_ms is None else req.timestamp_ms
                policy.check_timestamp(ts, self._wall_ms())
                payload, *proof = _blobs(blobs, 1, 2)
                policy.check_ack(self.node_id, req.to, req.envelope_type, payload,
                                 proof[0] if proof else None)
                env = ident.seal(req.to, req.envelope_type, payload, ts, tuple(req.via),
                                 req.ttl, req.encrypt, req.id)
                return m.SealReply(id=env.id), (env.encode(),)
            case m.Open():
                env, plaintext = ident.open(_blob(blobs))
                if req.ack_via is None:
                    return info(env, m.OpenReply), (plaintext,)
                ack = ident.seal(env.sender, MessageType.ACK,
                                 AckPayload(env.id, AckType.RECIPIENT_RECEIVED).encode(),
                                 self._wall_ms(), tuple(req.ack_via), encrypt=False)
                self._counts["open_acks"] += 1
                return info(env, m.OpenReply), (plaintext, ack.encode())
            case m.Verify():
                env = decode(_blob(blobs))
                env.verify()
                return info(env, m.VerifyReply), ()
            case m.GroupSeal():
                g = ident.group_seal(req.group_id, req.key, _blob(blobs))
                return m.GroupSealReply(), (g.encode(),)
            case m.GroupOpen():
                g, plaintext = ident.group_open(req.key, _blob(blobs), req.group_id,
                                                req.sender)
                return m.GroupOpenReply(group_id=g.group_id, sender=g.sender), (plaintext,)
            case m.BindTransport():
                b = ident.bind_transport(req.transport_key, req.not_after_s,
                                         self._wall_ms() // 1000)
                return m.BindTransportReply(binding=b.encode()), ()
        raise AssertionError(f"unhandled {req.msg_type}")

    def counters(self) -> dict[str, int]:
        return dict(self._counts)


def _blobs(blobs: tuple[bytes, ...], least: int, most: int) -> tuple[bytes, ...]:
    if not least <= len(blobs) <= most:
        raise MissingBlob(f"expected {least} to {most} blob frames, got {len(blobs)}")
    return blobs


def _blob(blobs: tuple[bytes, ...]) -> bytes:
    if len(blobs) != 1:
        raise MissingBlob(f"expected exactly one blob frame, got {len(blobs)}")
    return blobs[0]
