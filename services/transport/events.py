"""What the QUIC endpoint (endpoint.py) reports to its owner (events, errors of ``send``),
and the lane's framing (a 4-byte big-endian length, then the frame)."""

from __future__ import annotations

from dataclasses import dataclass

from .addresses import Addr

PREFIX = 4
"""Bytes of a frame's length prefix on a lane."""


def framed(frame: bytes) -> bytes:
    return len(frame).to_bytes(PREFIX, "big") + frame


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
class DialFailed:
    """A connection this endpoint dialled ended before the peer proved its node id: why,
    said for the person who asked (``reason`` starts with ``refused:`` or ``unreachable:``,
    docs/protocol.md, ``transport.connect``)."""

    node_id: bytes
    """The node that was dialled."""
    addr: Addr
    reason: str
    transient: bool = False
    """Nothing answered (it may later); False: something answered and refused, or the
    network said that nothing listens there."""


@dataclass(frozen=True, slots=True)
class Received:
    node_id: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PathUpdated:
    """The path to an authenticated peer: at authentication, then when its RTT moves."""

    node_id: bytes
    addr: Addr
    rtt_ms: float
    stalled: bool = False
    """Keep-alives go unanswered: the path may be broken (it is dropped if that goes on)."""


@dataclass(frozen=True, slots=True)
class AddressObserved:
    """A connected peer reports the address it sees this node at (reflexive address)."""

    node_id: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class PunchEnded:
    """A hole punch ended: with an authenticated direct connection, or not."""

    peer: bytes
    ok: bool
    addr: Addr | None
    elapsed_s: float
    """From the introduction (from the request if none came) to the end."""
    initiator: bool
    reason: str = ""
    opened_s: float | None = None
    """From the introduction to the first of the peer's probes heard (None: never)."""


@dataclass(frozen=True, slots=True)
class OpenSockets:
    """Birthday probing: open ``count`` extra UDP sockets, each sending ``payload`` to
    ``dest`` (each gets its own NAT mapping toward it); the first datagram one of them
    receives from ``dest``'s address makes it the route to that address (the shell then
    sends everything for that address through it and hands what it receives to the
    endpoint as if it came on the main socket)."""

    key: bytes
    count: int
    dest: Addr
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseSockets:
    """Close the extra sockets opened under ``key`` that did not become a route."""

    key: bytes


SocketAction = OpenSockets | CloseSockets

Event = (PeerAuthenticated | PeerClosed | DialFailed | Received | PathUpdated
         | AddressObserved | PunchEnded)


class SendError(Exception):
    """An envelope cannot be sent: no authenticated connection to the peer."""


class FrameTooLarge(SendError):
    """An envelope larger than the frame limit; refused before anything is sent."""


class NotAnEnvelope(SendError):
    """Data starting with the control byte: refused, so nothing sent can pose as control."""


class Backpressure(SendError):
    """The peer's lane already holds ``MAX_BACKLOG`` bytes not yet acknowledged."""
