"""The cryptographic primitives the node uses, as thin wrappers over libraries.

libsodium (through PyNaCl) provides Ed25519, X25519, the Ed25519→X25519 key conversions and
XChaCha20-Poly1305; HKDF-SHA256 (RFC 5869) is the standard library's HMAC, extract then
expand. Nothing else here is built by hand. HKDF came from ``cryptography`` before; loading that
package (its own OpenSSL) cost every process ~7 MB of RSS (bench/bench_memory.py), and
only the transport needs it (aioquic's TLS).
Why libsodium: on this machine it verifies Ed25519 signatures about twice as fast as
``cryptography`` (signature verification is the per-message CPU ceiling of a node), its
verification is strict (rejects non-canonical S and small-order points), and it is the
reference for the key conversions. Measured in ``bench/bench_crypto.py``.

Every failure raises :class:`CryptoError` (or a subclass); callers map them to bus errors.
"""

from __future__ import annotations

import hmac

import nacl.bindings as sodium
import nacl.exceptions

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
X25519_BYTES = 32
XNONCE_BYTES = 24
AEAD_KEY_BYTES = 32
AEAD_TAG_BYTES = 16


class CryptoError(Exception):
    """A cryptographic operation failed (bad key, bad signature, failed authentication)."""


class BadSignature(CryptoError):
    """The signature does not verify under the claimed key."""


class DecryptFailed(CryptoError):
    """Authenticated decryption failed: wrong key, tampered ciphertext or associated data."""


class BadKey(CryptoError):
    """A public key is not a valid curve point (or is of small order)."""


class SigningKey:
    """An Ed25519 key pair made from a 32-byte seed, with its X25519 secret for decryption."""

    __slots__ = ("public", "_secret", "_x_secret")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise BadKey(f"a seed is {SEED_BYTES} bytes, got {len(seed)}")
        self.public, self._secret = sodium.crypto_sign_seed_keypair(seed)
        self._x_secret = sodium.crypto_sign_ed25519_sk_to_curve25519(self._secret)

    def sign(self, message: bytes) -> bytes:
        return sodium.crypto_sign(message, self._secret)[:SIGNATURE_BYTES]

    def x25519(self, their_public: bytes) -> bytes:
        """X25519(our converted secret, their X25519 public key)."""
        return x25519(self._x_secret, their_public)


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Check an Ed25519 signature; raise :class:`BadSignature` if it does not verify."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        raise BadSignature("signature or key has the wrong length")
    try:
        sodium.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        raise BadSignature("signature does not verify") from None


def valid_public_key(public_key: bytes) -> bool:
    """Whether 32 bytes are a valid Ed25519 point of large order (a usable NodeId)."""
    return len(public_key) == PUBLIC_KEY_BYTES and bool(
        sodium.crypto_core_ed25519_is_valid_point(public_key))


def ed25519_pk_to_x25519(public_key: bytes) -> bytes:
    """libsodium's crypto_sign_ed25519_pk_to_curve25519."""
    try:
        return sodium.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise BadKey("not a valid Ed25519 public key") from None


def x25519_base(secret: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(secret)


def x25519(secret: bytes, their_public: bytes) -> bytes:
    """X25519; raises :class:`BadKey` when the result is all zeros (a small-order point)."""
    try:
        return sodium.crypto_scalarmult(secret, their_public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise BadKey("X25519 with a small-order or malformed public key") from None


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract, then expand, on the standard library's HMAC (checked
    against the RFC's vectors in tests/crypto/test_primitives.py)."""
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 derives 1 to 8160 bytes")
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        okm += block
    return okm[:length]


def xchacha_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def xchacha_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(nonce) != XNONCE_BYTES or len(key) != AEAD_KEY_BYTES:
        raise DecryptFailed("nonce or key has the wrong length")
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError):
        raise DecryptFailed("authentication failed: tampered, moved or not for this key") \
            from None
