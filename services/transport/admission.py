"""Who gets a connection: half-open handshakes and authenticated slots, sans-I/O.

Theory of operation.

*Half-open* connections (a peer's Initial accepted, its node id not yet proven) cost state
for up to ``auth_timeout_s``, and a ClientHello costs its sender one datagram from any
source address it likes. So state is only kept for an Initial while fewer than
``retry_above`` are half-open *and* its source address holds fewer than
``half_open_per_address``; otherwise the endpoint answers with a QUIC Retry (RFC 9000 §8.1):
a small stateless packet carrying a token sealed with this endpoint's key (aioquic's
``QuicRetryTokenHandler``: source address, original connection id, 30 s lifetime). Only a
peer that receives datagrams at its source address can send the Initial again with that
token, so a spoofed flood never gets past the Retry. Initials with a valid token (the
address is proven) are taken up to ``max_half_open`` in all and ``half_open_per_address``
proven ones per address, which bounds what one real address can hold.

*Authenticated* connections: at most ``max_connections`` node ids at once. Strangers
(node ids the owner never asked for, whoever opened the connection: a punch's dial toward a
node a relay introduced is a stranger's too) may take all but ``reserved_connections`` of
them; the nodes the owner asked for (its dials, ``transport.connect``/``punch``) may take
any slot, and when none is free one stranger is
evicted for them: a stranger that never delivered anything the router accepted first, the
newest of those first (the least invested, most likely part of a flood), else the one whose
last accepted envelope is oldest. A new stranger finding the strangers' share full may evict
a stranger that has delivered nothing for ``stranger_grace_s`` since it connected (the one
connected longest ago); otherwise it is refused. A node that already holds a slot may
replace its connection (a restart); the connection it replaces is retired (one per node).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 1024
    """Authenticated node ids connected at once."""
    reserved_connections: int | None = None
    """Of those, slots strangers cannot take (the node's own dials and the peers it asked
    for); None: a quarter of ``max_connections``."""
    max_half_open: int = 64
    """Connections whose peer has not yet proven its node id."""
    half_open_per_address: int = 8
    """Half-open connections one IP address may hold without a Retry token, and as many
    again with one (its address proven; spoofed Initials cannot take those)."""
    retry_above: int = 32
    """Half-open connections beyond which an Initial must carry a Retry token (0: always)."""
    stranger_grace_s: float = 30.0
    """How long a stranger that delivers nothing keeps its slot against a new stranger."""
    stranger_envelopes_per_s: float = 250.0
    """Envelopes a stranger's lanes are parsed at, at most (ratelimit.py), bursts of 2 s."""
    stranger_bytes_per_s: float = 2 * 2**20
    """Bytes of envelopes likewise."""

    @property
    def reserved(self) -> int:
        if self.reserved_connections is None:
            return self.max_connections // 4
        return min(self.reserved_connections, self.max_connections)


ACCEPT, RETRY, FULL, ADDRESS_FULL = "accept", "retry", "full", "address_full"


class HalfOpen:
    """Counts of half-open connections, in all and by source IP address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.by_ip: Counter[str] = Counter()
        self.proven_by_ip: Counter[str] = Counter()
        """Those whose Initial carried a valid Retry token (their address is proven)."""

    def verdict(self, ip: str, proven: bool) -> str:
        """What to do with an Initial from ``ip`` (``proven``: it carried a valid token)."""
        lim = self.limits
        if proven:
            if self.total >= lim.max_half_open:
                return FULL
            if self.proven_by_ip[ip] >= lim.half_open_per_address:
                return ADDRESS_FULL
            return ACCEPT
        if self.total >= min(lim.retry_above, lim.max_half_open) \
                or self.by_ip[ip] >= lim.half_open_per_address:
            return RETRY
        return ACCEPT

    def add(self, ip: str, proven: bool) -> None:
        self.total += 1
        self.by_ip[ip] += 1
        if proven:
            self.proven_by_ip[ip] += 1

    def remove(self, ip: str, proven: bool) -> None:
        self.total -= 1
        for counts in (self.by_ip, self.proven_by_ip) if proven else (self.by_ip,):
            counts[ip] -= 1
            if counts[ip] <= 0:
                del counts[ip]


class Slot(Protocol):
    """An authenticated connection as admission sees it."""

    authenticated_at: float
    valued_at: float
    """When the router last accepted an envelope from this peer (0: never)."""


S = TypeVar("S", bound=Slot)


def evict_for_known(strangers: Iterable[S]) -> S | None:
    """The stranger to close so that one of the node's own dials or known peers gets a
    slot: one that never delivered anything, the newest first; else the least recently
    useful."""
    return min(strangers, default=None, key=lambda c: (
        c.valued_at > 0, -c.authenticated_at if c.valued_at == 0 else c.valued_at))


def evict_for_stranger(strangers: Iterable[S], now: float, grace_s: float) -> S | None:
    """The stranger a new stranger may replace: one that has delivered nothing for
    ``grace_s`` since it connected, the one connected longest ago first; else None."""
    idle = [c for c in strangers if c.valued_at == 0 and now - c.authenticated_at >= grace_s]
    return min(idle, default=None, key=lambda c: c.authenticated_at)
