"""Identifiers: message ids and their short display form."""

from __future__ import annotations


class MsgIds:
    """Unique 16-byte message ids: an 8-byte random prefix per process and a counter.

    Cheaper than a random id per message and unique as long as prefixes don't collide.
    """

    def __init__(self, prefix: bytes) -> None:
        if len(prefix) != 8:
            raise ValueError("prefix must be 8 bytes")
        self._prefix = prefix
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return self._prefix + self._n.to_bytes(8, "big")


def short(b: bytes, n: int = 8) -> str:
    """Short hex form of an id, for logs and displays."""
    return b.hex()[:n]
