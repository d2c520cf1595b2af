"""NodeId: the node's 32-byte Ed25519 public key, and its text forms.

Canonical text is 64 lowercase hex characters. Parsing also accepts upper-case hex and
RFC 4648 base32 without padding (52 characters, any case). A parsed id must be a valid
Ed25519 point of large order. The short form (first 10 hex characters) is for display only.
"""

from __future__ import annotations

import base64
import binascii

from .primitives import PUBLIC_KEY_BYTES, valid_public_key

SHORT_HEX = 10
BASE32_CHARS = 52


class InvalidNodeId(ValueError):
    """Text or bytes that are not a node id."""


def to_text(node_id: bytes) -> str:
    return node_id.hex()


def short(node_id: bytes) -> str:
    return node_id.hex()[:SHORT_HEX]


def to_base32(node_id: bytes) -> str:
    return base64.b32encode(node_id).decode().rstrip("=").lower()


def check(node_id: bytes) -> bytes:
    if not valid_public_key(node_id):
        raise InvalidNodeId(f"{node_id.hex()[:16]}… is not a valid Ed25519 public key")
    return node_id


def parse(text: str) -> bytes:
    """Parse hex (64 chars) or base32 (52 chars) into a validated node id."""
    s = text.strip()
    if len(s) == 2 * PUBLIC_KEY_BYTES:
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            raise InvalidNodeId(f"{text!r} has 64 characters but is not hex") from None
    elif len(s) == BASE32_CHARS:
        try:
            raw = base64.b32decode(s.upper() + "====")
        except (ValueError, binascii.Error):
            raise InvalidNodeId(f"{text!r} has 52 characters but is not base32") from None
        if to_base32(raw) != s.lower():  # the last 4 bits must be zero: one spelling
            raise InvalidNodeId(f"{text!r} is not a canonical base32 node id")
    else:
        raise InvalidNodeId(f"{text!r} has {len(s)} characters: a node id is 64 hex or "
                            f"{BASE32_CHARS} base32 characters")
    return check(raw)


def distance(a: bytes, b: bytes) -> int:
    """XOR distance of two node ids: who is closest to a node, as every node computes it
    (the backup holders of a recipient's messages)."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
