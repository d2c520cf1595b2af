"""Announcements and gossip: what a node signs about itself, and how nodes pass those on.

Announcement. Every node signs a ``PeerAnnounce`` envelope addressed to itself whose payload
is msgpack ``[username, [[host, port], ...], [neighbour node ids]]``: its name, at most
``MAX_ADDRS`` addresses where it can be dialled (literal IP addresses only: nothing a peer
says is ever resolved), and its directly connected peers (at most ``MAX_NEIGHBOURS``). A
receiver keeps, per node, the newest one whose signature verifies and whose timestamp is
within the last hour (and not more than 5 min ahead).

Everything a node learns about another node's addresses and neighbours is in that node's
own signed announcement (issue 13: the gossip used to carry, next to each announcement, an
address "observed" by the gossiper, and the gossiper's word that it was connected to the
node; a hostile peer rewrote where its victim dialled a node and made itself that node's
relay). Gossip is now a list of announcements and nothing else; the gossiper vouches for
nothing.

Gossip. A ``PeerAnnounce`` envelope from a connected peer to this node, sent directly (no
``via``) and signed by that peer, whose payload is a msgpack list of at most
``GOSSIP_SAMPLE + 1`` announcement envelopes (bytes). A peer's gossip is taken at most
``rate`` per second with a burst of ``burst`` (a token bucket per peer), checked before any
signature is verified, so a flood costs one dictionary lookup per envelope.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgpack

from shared.envelope import Envelope, EnvelopeError, MessageType

from .topology import Addr, Announce

ANNOUNCE_MAX_AGE_MS = 3_600_000
MAX_FUTURE_MS = 300_000
MAX_NEIGHBOURS = 32
MAX_ADDRS = 4
MAX_USERNAME = 64
GOSSIP_SAMPLE = 20


def usable_address(host: object, port: object) -> bool:
    """A literal IP address and port a node may be dialled at (no names, nothing
    unspecified or multicast)."""
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool) \
            or not 0 < port < 65536 or len(host) > 45:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast)


def normal_ip(host: str) -> str:
    """An IP address in one form (an IPv4-mapped IPv6 address as plain IPv4), so the same
    host announced both ways is one address (checked by :func:`usable_address` first)."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def own_addresses(host: str, port: int, reflexive: Iterable[Addr],
                  local: Iterable[Addr], mapped: Iterable[Addr] = ()) -> list[Addr]:
    """Where this node says it can be dialled: the address its socket is bound to when it
    is a specific one, then the public port its home router forwards to it at its request
    (PCP/NAT-PMP: open to anyone, even behind a symmetric NAT), then the addresses peers
    report seeing it at (behind a NAT, its public mapping), then its interfaces'
    addresses."""
    out: list[Addr] = []
    for h, p in [(host, port), *mapped, *reflexive, *local]:
        if usable_address(h, p) and (h, p) not in out:
            out.append((h, p))
    return out[:MAX_ADDRS]


def announce_payload(username: str, addrs: Iterable[Addr], neighbours: Iterable[bytes]) -> bytes:
    return msgpack.packb([username[:MAX_USERNAME], [[h, p] for h, p in list(addrs)[:MAX_ADDRS]],
                          list(neighbours)[:MAX_NEIGHBOURS]], use_bin_type=True)


def read_announce(env: Envelope, now_ms: int) -> Announce:
    """Check a (signature-verified) announcement envelope; raise EnvelopeError if it is not
    a valid, fresh one."""
    if env.msg_type != MessageType.PEER_ANNOUNCE or env.to != env.sender or env.encrypted \
            or env.via:
        raise EnvelopeError("not a self-addressed announcement")
    if env.timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise EnvelopeError("announcement from the future")
    if env.timestamp_ms < now_ms - ANNOUNCE_MAX_AGE_MS:
        raise EnvelopeError("announcement older than an hour")
    try:
        a = msgpack.unpackb(env.payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise EnvelopeError("announcement payload is not msgpack") from None
    if not (isinstance(a, list) and len(a) == 3 and isinstance(a[0], str)
            and len(a[0]) <= MAX_USERNAME and isinstance(a[1], list)
            and len(a[1]) <= MAX_ADDRS and isinstance(a[2], list)
            and len(a[2]) <= MAX_NEIGHBOURS
            and all(isinstance(x, list) and len(x) == 2 and usable_address(*x) for x in a[1])
            and all(isinstance(n, bytes) and len(n) == 32 for n in a[2])):
        raise EnvelopeError("announcement payload has the wrong shape")
    return Announce(env.sender, a[0], tuple((normal_ip(h), p) for h, p in a[1]),
                    frozenset(a[2]), env.timestamp_ms)


def read_gossip(payload: bytes) -> list[bytes]:
    """The announcements in a gossip payload; EnvelopeError if it is not a short list of
    byte strings."""
    try:
        items = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise EnvelopeError("gossip payload is not msgpack") from None
    if not isinstance(items, list) or len(items) > GOSSIP_SAMPLE + 1 \
            or not all(isinstance(i, bytes) for i in items):
        raise EnvelopeError("gossip is a list of at most 21 announcements")
    return items


def gossip_payload(announcements: Iterable[bytes]) -> bytes:
    return msgpack.packb(list(announcements), use_bin_type=True)


class RateLimit:
    """A token bucket per key: ``rate`` per second, bursts of ``burst``; at most ``keys``
    buckets (the fullest are dropped first: a full bucket is the same as none)."""

    def __init__(self, rate: float, burst: float, keys: int = 4096) -> None:
        self.rate, self.burst, self.keys = rate, burst, keys
        self.buckets: dict[bytes, tuple[float, float]] = {}

    def take(self, key: bytes, now: float) -> bool:
        tokens, at = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return False
        if key not in self.buckets and len(self.buckets) >= self.keys:
            self.prune(now)
        self.buckets[key] = (tokens - 1, now)
        return True

    def prune(self, now: float) -> None:
        """Forget the buckets that have refilled."""
        self.buckets = {k: (t, at) for k, (t, at) in self.buckets.items()
                        if t + (now - at) * self.rate < self.burst}
