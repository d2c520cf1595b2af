"""Frame layout of the local bus, and the codec.

A bus message is one ZeroMQ multipart message::

    [routing frames...] [b""]  -- only on ROUTER/DEALER: identities and an empty delimiter
    [b"tom/1"]                 -- protocol tag and major version
    [header]                   -- msgpack map: msg_type, msg_id, parent_id, src, ts
    [body]                     -- msgpack map, decoded and checked by the msg_type's model
    [blob] ...                 -- optional raw frames (opaque bytes that are never re-packed)

On PUB/SUB the routing part is replaced by one topic frame equal to the msg_type, so that a
subscription to ``"router."`` receives every router event.

Sizes are checked before anything is unpacked. Decoding is done in two steps: a small strict
header first, then the body by msg_type from the registry. Every failure raises
:class:`DecodeError` with the error code to put in the reply; nothing else escapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgpack
import msgspec
from msgspec import Meta

from .errors import DecodeError, ErrorCode
from .messages import REGISTRY, Message

TAG_PREFIX = b"tom/"
VERSION = 1
TAG = TAG_PREFIX + str(VERSION).encode()

MAX_HEADER_BYTES = 1024
MAX_MSG_TYPE_LEN = 64
MAX_SRC_LEN = 64
MAX_ID_BYTES = 32
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_BLOBS = 16
MAX_ROUTING_FRAMES = 8

_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


class Header(msgspec.Struct, omit_defaults=True):
    """The header frame: which message this is and what it answers."""

    msg_type: Annotated[str, Meta(min_length=1, max_length=MAX_MSG_TYPE_LEN)]
    msg_id: Annotated[bytes, Meta(min_length=1, max_length=MAX_ID_BYTES)]
    parent_id: Annotated[bytes, Meta(max_length=MAX_ID_BYTES)] | None
    src: Annotated[str, Meta(max_length=MAX_SRC_LEN)]
    ts: float
    deadline: float | None = None
    """Wall-clock time (Unix s) after which the sender no longer waits for a reply (left out
    of the frame when there is none)."""


@dataclass(slots=True)
class Decoded:
    """A message taken off the bus: header, validated body, raw blobs."""

    header: Header
    body: Message
    blobs: tuple[bytes, ...] = ()


_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[type[Message], msgspec.msgpack.Decoder[Message]] = {}
"""One decoder per model, made at its first use (a service meets a few dozen of them)."""


def _decoder(cls: type[Message]) -> msgspec.msgpack.Decoder[Message]:
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
    return decoder


_HEADER_DECODER = msgspec.msgpack.Decoder(Header)


def pack_header(header: Header) -> bytes:
    return _ENCODER.encode(header)


def pack_body(body: Message) -> bytes:
    return _ENCODER.encode(body)


def encode(body: Message, header: Header, blobs: tuple[bytes, ...] = (),
           packed: bytes | None = None) -> list[bytes]:
    """Frames for ``body`` (tag, header, body, blobs), without routing frames.

    :param packed: ``pack_body(body)`` computed earlier, for bodies sent many times.
    """
    return [TAG, pack_header(header), packed or pack_body(body), *blobs]


def split_routing(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split a ROUTER message into (routing frames incl. the empty delimiter, the rest).

    A message with no delimiter is answered to its first (identity) frame, and its rest is
    reported as malformed by :func:`decode`.
    """
    for i in range(1, min(len(frames), MAX_ROUTING_FRAMES + 1)):
        if not frames[i]:
            return frames[: i + 1], frames[i + 1 :]
    return [frames[0], b""], []


def decode_header(raw: bytes) -> Header:
    if len(raw) > MAX_HEADER_BYTES:
        raise DecodeError(ErrorCode.TOO_LARGE, f"header of {len(raw)} bytes exceeds "
                          f"{MAX_HEADER_BYTES}")
    try:
        return _HEADER_DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # say which part, answer its msg_id
        return _header_problem(raw)


def _header_problem(raw: bytes) -> Header:
    """Raise the :class:`DecodeError` that names what is wrong with a header msgspec
    refused, with the request's msg_id as parent when that part is sound."""
    try:
        h = msgpack.unpackb(raw, raw=False, use_list=False)
    except _UNPACK_ERRORS as e:
        raise DecodeError(ErrorCode.MALFORMED, f"header is not valid msgpack: {e}") from None
    if not isinstance(h, dict):
        raise DecodeError(ErrorCode.MALFORMED, "header is not a msgpack map")
    msg_id = h.get("msg_id")
    if not isinstance(msg_id, bytes) or not 0 < len(msg_id) <= MAX_ID_BYTES:
        raise DecodeError(ErrorCode.MALFORMED, "header.msg_id must be 1-32 bytes (bin)")
    msg_type = h.get("msg_type")
    if not isinstance(msg_type, str) or not 0 < len(msg_type) <= MAX_MSG_TYPE_LEN:
        raise DecodeError(ErrorCode.MALFORMED, "header.msg_type must be a short string",
                          parent_id=msg_id)
    parent_id = h.get("parent_id")
    if parent_id is not None and (
        not isinstance(parent_id, bytes) or len(parent_id) > MAX_ID_BYTES
    ):
        raise DecodeError(ErrorCode.MALFORMED, "header.parent_id must be bytes or nil",
                          parent_id=msg_id)
    src = h.get("src")
    ts = h.get("ts")
    deadline = h.get("deadline")
    if not isinstance(src, str) or len(src) > MAX_SRC_LEN:
        raise DecodeError(ErrorCode.MALFORMED, "header.src must be a short string",
                          parent_id=msg_id)
    for name, value in (("ts", ts), ("deadline", deadline)):
        if (not isinstance(value, (int, float)) or isinstance(value, bool)) and not (
                name == "deadline" and value is None):
            raise DecodeError(ErrorCode.MALFORMED, f"header.{name} must be a number",
                              parent_id=msg_id)
    assert isinstance(ts, (int, float))
    return Header(msg_type, msg_id, parent_id, src, float(ts),
                  None if deadline is None else float(deadline))


def decode(frames: list[bytes], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Decoded:
    """Decode ``[tag, header, body, *blobs]`` into a validated message.

    :raises DecodeError: for anything that is not a well-formed, registered, valid message.
    """
    total = sum(len(f) for f in frames)
    if total > max_message_bytes:
        raise DecodeError(ErrorCode.TOO_LARGE, f"message of {total} bytes exceeds the "
                          f"{max_message_bytes}-byte limit")
    if len(frames) < 3:
        raise DecodeError(ErrorCode.MALFORMED, f"expected tag, header and body frames, "
                          f"got {len(frames)} frame(s)")
    tag = frames[0]
    if tag != TAG:
        if tag.startswith(TAG_PREFIX):
            raise DecodeError(ErrorCode.VERSION_MISMATCH, f"protocol tag {tag[:16]!r}: this "
                              f"service speaks {TAG!r}")
        raise DecodeError(ErrorCode.BAD_TAG, f"not a ToM bus message (tag {tag[:16]!r}, "
                          f"expected {TAG!r})")
    header = decode_header(frames[1])
    if len(frames) - 3 > MAX_BLOBS:  # after the header: the error names the request
        raise DecodeError(ErrorCode.TOO_LARGE, f"{len(frames) - 3} blob frames exceed "
                          f"the limit of {MAX_BLOBS}", parent_id=header.msg_id)
    cls = REGISTRY.get(header.msg_type)
    if cls is None:
        raise DecodeError(ErrorCode.UNSUPPORTED, f"unknown msg_type {header.msg_type!r}",
                          parent_id=header.msg_id)
    raw = frames[2]
    if not raw or not (0x80 <= raw[0] <= 0x8F or raw[0] in (0xDE, 0xDF)):  # map headers
        raise DecodeError(ErrorCode.MALFORMED, f"body of {header.msg_type} is not a map",
                          parent_id=header.msg_id)
    try:
        body = _decoder(cls).decode(raw)
    except msgspec.ValidationError as e:
        problem, _, where = str(e).partition(" - at `$")
        where = where.rstrip("`").lstrip(".") or "body"
        raise DecodeError(ErrorCode.INVALID, f"{header.msg_type}: {where}: {problem}",
                          parent_id=header.msg_id) from None
    except msgspec.DecodeError as e:
        raise DecodeError(ErrorCode.MALFORMED, f"body of {header.msg_type} is not valid "
                          f"msgpack: {e}", parent_id=header.msg_id) from None
    except RecursionError:  # msgspec's answer to values nested ~1,000 deep
        raise DecodeError(ErrorCode.MALFORMED, f"body of {header.msg_type} is nested too "
                          "deeply", parent_id=header.msg_id) from None
    return Decoded(header, body, tuple(frames[3:]))
