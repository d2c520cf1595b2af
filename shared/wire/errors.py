"""Errors of the local bus contract.

Every error that crosses the bus is a ``sys.error`` reply carrying ``{code, name, message}``.
The codes below are part of the contract (``docs/protocol.md``); ``name`` is the lowercase
enum name, so a program in any language can switch on either.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Error codes of ``sys.error`` replies (HTTP-like, so they read at a glance)."""

    MALFORMED = 400
    """The frame could not be decoded (missing delimiter, bad header, truncated msgpack)."""
    BAD_TAG = 401
    """The protocol tag frame is not a ToM bus tag: the sender speaks another protocol."""
    UNSUPPORTED = 404
    """The msg_type is unknown to this service."""
    VERSION_MISMATCH = 426
    """The tag names a ToM bus major version this service does not speak."""
    TOO_LARGE = 413
    """A frame or the whole message exceeds the size limits; it was not unpacked."""
    INVALID = 422
    """The body does not match the model of its msg_type."""
    OVERLOADED = 429
    """A bounded queue is full; retry later. Nothing was accepted."""
    INTERNAL = 500
    """A bug in the service; the request was not carried out. See the service log."""
    UNAVAILABLE = 503
    """A service this request needs is not running or is shutting down."""
    PEER_TIMEOUT = 504
    """A service this request needs did not answer in time."""
    FAILED = 520
    """The request was well formed but could not be carried out (see the message)."""


class WireError(Exception):
    """Root of the bus contract's errors."""


class DecodeError(WireError):
    """A frame from the bus could not be turned into a message.

    Raised only by the decoder; the service base answers it with a ``sys.error`` reply and
    counts it under ``decode_errors``. The peer that sent it is at fault, not us.
    """

    def __init__(self, code: ErrorCode, message: str, parent_id: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parent_id = parent_id


class RemoteError(WireError):
    """A service answered a request with a ``sys.error`` reply."""

    def __init__(self, code: int, name: str, message: str, service: str = "") -> None:
        where = f"{service}: " if service else ""
        super().__init__(f"{where}{name} ({code}): {message}")
        self.code = code
        self.name = name
        self.message = message
        self.service = service


class BusTimeout(WireError):
    """A service did not answer a request in time (it may not be running)."""
