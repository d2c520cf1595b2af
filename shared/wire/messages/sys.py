"""``sys.*``: messages every service answers in the service base, before any core work."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import U64, Message, message


@message("sys.error", "reply")
class ErrorReply(Message):
    """The reply to any request that failed. Sent instead of the request's own reply."""

    code: Annotated[int, Meta(ge=0, le=65535)]
    """Numeric error code (see the error code table)."""
    name: str
    """Lowercase name of the code, e.g. `unsupported`."""
    message: str
    """What went wrong, written for the person who reads it."""


@message("sys.ping_reply", "reply")
class PingReply(Message):
    """Answer to `sys.ping`: the service is alive and serving its request socket."""

    service: str
    """Role of the answering service, e.g. `router`."""
    impl: str
    """Name and version of the implementation."""
    pid: U64
    """Operating-system process id of the service."""


@message("sys.ping", "request", reply=PingReply)
class Ping(Message):
    """Liveness check. Handled before any queued work; also the readiness probe."""


@message("sys.status_reply", "reply")
class StatusReply(Message):
    """Counters and queue depths of one service."""

    service: str
    """Role of the answering service."""
    impl: str
    """Name and version of the implementation."""
    pid: U64
    """Operating-system process id."""
    uptime_s: Annotated[float, Meta(ge=0, le=1e12)]
    """Seconds since the service started."""
    frames_in: U64
    """Messages received on all bus sockets."""
    frames_out: U64
    """Messages sent on all bus sockets."""
    decode_errors: U64
    """Received messages rejected before reaching the core (malformed, bad tag, oversize, unknown
    msg_type, invalid body)."""
    drops: U64
    """Outgoing messages dropped (peer gone or its queue full)."""
    errors: dict[str, U64] = {}
    """Error replies sent, by error name."""
    queues: dict[str, U64] = {}
    """Current depth of each bounded queue."""
    counters: dict[str, U64] = {}
    """Service-specific counters."""


@message("sys.status", "request", reply=StatusReply)
class Status(Message):
    """Ask for the service's counters (`tom node status` shows them)."""


@message("sys.shutdown_reply", "reply")
class ShutdownReply(Message):
    """The service accepted the shutdown and will exit with status 0."""


@message("sys.shutdown", "request", reply=ShutdownReply)
class Shutdown(Message):
    """Ask the service to stop cleanly, as SIGTERM does."""


@message("sys.ready", "event")
class Ready(Message):
    """Published once the service has bound its sockets and serves requests."""

    service: str
    """Role of the service."""
    impl: str
    """Name and version of the implementation."""
    pid: U64
    """Operating-system process id."""
    incarnation: Annotated[bytes, Meta(max_length=16)] = b""
    """Random id drawn at each start (8 bytes): a service that sees another's change knows it
    restarted and drops what lived in the old process. Empty: not told."""


@message("sys.heartbeat", "event")
class Heartbeat(Message):
    """Published every `bus.heartbeat_s` seconds while the service runs, and a few times
    in its first seconds (0.2, 0.5, 1 and 2 s after start), so that subscribers that
    reconnect after a restart hear the new incarnation at once. A subscriber that hears
    nothing from a service for three intervals (and at least 5 s) treats it as gone."""

    service: str
    """Role of the service."""
    uptime_s: Annotated[float, Meta(ge=0, le=1e12)]
    """Seconds since the service started."""
    incarnation: Annotated[bytes, Meta(max_length=16)] = b""
    """As in `sys.ready`."""
