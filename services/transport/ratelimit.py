"""How fast a stranger's envelopes are taken off its lane, sans-I/O.

A stranger (a node id the owner never asked for) makes the node do work for every envelope
it sends: QUIC decryption, a ``router.deliver`` across the bus, the router's checks, often a
signature and a write. Budgets and per-peer turns bound what waits, not that work: on a
small machine one connection sending junk as fast as QUIC carries it takes the CPU that a
legitimate peer's next message needs (its round trip rose 2-9x during the router floods of
issue 13). So each stranger gets a token bucket of envelopes and of bytes, for all of its
connections; when one runs dry the endpoint stops parsing that peer's lane until it has
refilled, its receive window stops growing, and QUIC flow control makes the sender wait:
nothing is dropped, the peer is slowed where it sends. The nodes the owner asked for (its
dials, ``transport.connect``, punches) are not limited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    envelopes: float
    bytes: float
    stamp: float


class StrangerRate:
    """Token buckets per node id: ``envelopes_per_s`` and ``bytes_per_s``, each holding at
    most ``burst_s`` seconds' worth (the bytes at least ``min_bytes_burst``, so that the
    largest envelope always fits)."""

    def __init__(self, envelopes_per_s: float, bytes_per_s: float, burst_s: float = 2.0,
                 min_bytes_burst: int = 0) -> None:
        self.envelopes_per_s = envelopes_per_s
        self.bytes_per_s = bytes_per_s
        self.max_envelopes = max(envelopes_per_s * burst_s, 1.0)
        self.max_bytes = max(bytes_per_s * burst_s, float(min_bytes_burst))
        self._buckets: dict[bytes, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, node_id: bytes, size: int, now: float) -> bool:
        """Spend one envelope of ``size`` bytes for ``node_id`` if both buckets hold it."""
        b = self._refill(node_id, now)
        if b.envelopes < 1 or b.bytes < size:
            return False
        b.envelopes -= 1
        b.bytes -= size
        return True

    def ready_at(self, node_id: bytes, size: int, now: float) -> float:
        """When ``take(node_id, size)`` will succeed (``now`` if it would already)."""
        b = self._refill(node_id, now)
        wait = max((1 - b.envelopes) / self.envelopes_per_s,
                   (min(size, self.max_bytes) - b.bytes) / self.bytes_per_s, 0.0)
        return now + wait

    def prune(self, now: float) -> None:
        """Forget the buckets that are full again (a fresh one is the same)."""
        for node_id in [n for n in self._buckets if self._full(self._refill(n, now))]:
            del self._buckets[node_id]

    def _full(self, b: _Bucket) -> bool:
        return b.envelopes >= self.max_envelopes and b.bytes >= self.max_bytes

    def _refill(self, node_id: bytes, now: float) -> _Bucket:
        b = self._buckets.get(node_id)
        if b is None:
            b = self._buckets[node_id] = _Bucket(self.max_envelopes, self.max_bytes, now)
            return b
        dt = max(now - b.stamp, 0.0)
        b.envelopes = min(self.max_envelopes, b.envelopes + dt * self.envelopes_per_s)
        b.bytes = min(self.max_bytes, b.bytes + dt * self.bytes_per_s)
        b.stamp = now
        return b
