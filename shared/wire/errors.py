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
    BAD_TAG = 401
    TOO_LARGE = 413
    UNSUPPORTED = 404
    INVALID = 422
    VERSION_MISMATCH = 426
    BAD_ENVELOPE = 440
    UNSIGNED = 441
    BAD_SIGNATURE = 442
    WRONG_RECIPIENT = 443
    DECRYPT_FAILED = 444
    NOT_OURS = 445
    BAD_KEY = 446
    EXPIRED = 447
    REFUSED = 448
    FORBIDDEN = 403
    OVERLOADED = 429
    INTERNAL = 500
    UNAVAILABLE = 503
    PEER_TIMEOUT = 504
    FAILED = 520


ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.MALFORMED: "The message could not be decoded: missing delimiter or frames, bad "
    "header, truncated or non-map msgpack.",
    ErrorCode.BAD_TAG: "The tag frame is not a ToM bus tag: the sender speaks another protocol.",
    ErrorCode.TOO_LARGE: "The message, its header or its blob count exceeds the limits; "
    "nothing was unpacked.",
    ErrorCode.UNSUPPORTED: "This service does not handle the msg_type (unknown, or not a "
    "request).",
    ErrorCode.INVALID: "The body does not match the model of its msg_type.",
    ErrorCode.VERSION_MISMATCH: "The tag names a bus major version this service does not "
    "speak.",
    ErrorCode.BAD_ENVELOPE: "The envelope (or signed object) does not decode: truncated, wrong "
    "field count or types.",
    ErrorCode.UNSIGNED: "The envelope carries no signature.",
    ErrorCode.BAD_SIGNATURE: "The signature does not verify under the sender's key (forged or "
    "altered).",
    ErrorCode.WRONG_RECIPIENT: "The envelope is addressed to another node.",
    ErrorCode.DECRYPT_FAILED: "Authenticated decryption failed: tampered ciphertext, wrong key, "
    "or a ciphertext moved to another envelope.",
    ErrorCode.NOT_OURS: "Asked to sign for a node id other than this node's.",
    ErrorCode.BAD_KEY: "A public key is not a valid curve point (or is of small order).",
    ErrorCode.EXPIRED: "A signed statement is past its validity period.",
    ErrorCode.REFUSED: "Crypto's signing policy refuses the request: an ACK or read receipt "
    "without the envelope it acknowledges, a timestamp out of the window, a binding for "
    "another transport key or for too long.",
    ErrorCode.FORBIDDEN: "The caller's bus key may not make this request (an app asking a "
    "service other than the router, or the wrong service asking crypto).",
    ErrorCode.OVERLOADED: "A bounded queue is full; nothing was accepted; retry later.",
    ErrorCode.INTERNAL: "A bug in the service; the request was not carried out (see its log).",
    ErrorCode.UNAVAILABLE: "A service this request needs is unknown or unreachable.",
    ErrorCode.PEER_TIMEOUT: "A service this request needs did not answer in time.",
    ErrorCode.FAILED: "The request was well formed but could not be carried out.",
}


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
