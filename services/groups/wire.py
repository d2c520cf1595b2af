"""What group services say to each other: the payloads of `Group` envelopes.

Every payload travels inside an ordinary envelope (`msg_type` ``Group``) sealed end to end by
the router to one node, signed by the sending node, ACKed and retried like a chat message; the
router has verified who sent it before the groups service sees it. A payload is a msgpack array
``[kind, group_id, ...]``; :func:`decode` checks every field's type and size and raises
:class:`BadPayload` on anything else, so a hostile peer's bytes never reach the core unchecked.
docs/protocol.md §8.8 describes each kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

MAX_PAYLOAD = 192 * 1024
"""Below the router's 200 KiB payload limit."""
MAX_TEXT = 16 * 1024
"""A group message's text (UTF-8 bytes)."""
MAX_CIPHERTEXT = MAX_TEXT + 512
MAX_ENTRIES = 256
"""Entries in one `entries` or `claimed` payload."""
MAX_INVITEES = 200
GID = re.compile(r"^[0-9a-z-]{1,64}$")
ROLES = ("admin", "member")


class BadPayload(ValueError):
    """A group payload does not decode: the message says what is wrong."""


# -- log entries -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a group's ordered log, as the hub that ordered it sent it.

    ``kind`` and ``args``: ``created [creator, name, invite_only, max_members]``,
    ``joined [node]``, ``left [node]``, ``kicked [node, by]``, ``role [node, role, by]``,
    ``msg [sender, message_id, epoch, ciphertext]``, ``hub [new_hub, old_hub]`` (the first
    entry of a new term).
    """

    seq: int
    term: int
    ts_ms: int
    kind: str
    args: tuple[Any, ...]

    def pack(self) -> list[Any]:
        return [self.seq, self.term, self.ts_ms, self.kind, *self.args]

    def encode(self) -> bytes:
        return msgpack.packb(self.pack(), use_bin_type=True)

    @property
    def sender(self) -> bytes:
        return self.args[0] if self.kind == "msg" else b""


_ENTRY_ARGS: dict[str, tuple[str, ...]] = {
    "created": ("node", "name", "bool", "count"),
    "joined": ("node",),
    "left": ("node",),
    "kicked": ("node", "node"),
    "role": ("node", "role", "node"),
    "msg": ("node", "mid", "count", "ct"),
    "hub": ("node", "node"),
}


def entry_from(raw: Any) -> Entry:
    if not isinstance(raw, list) or len(raw) < 4:
        raise BadPayload("an entry is an array [seq, term, ts, kind, ...]")
    seq, term, ts, kind, *args = raw
    for name, v in (("seq", seq), ("term", term), ("ts", ts)):
        _uint(v, name)
    if seq == 0:
        raise BadPayload("entries are numbered from 1")
    spec = _ENTRY_ARGS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise BadPayload(f"unknown entry kind {kind!r}")
    return Entry(seq, term, ts, kind, _fields(args, spec, f"entry {kind}"))


def entry_decode(raw: bytes) -> Entry:
    return entry_from(msgpack.unpackb(raw, raw=False))


# -- payloads --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Snapshot:
    """A group's state at ``seq``: what a joiner starts from."""

    term: int
    seq: int
    name: str
    invite_only: bool
    max_members: int
    created_ms: int
    members: tuple[tuple[bytes, str, int], ...]
    """(node, role, joined_ms)."""

    def pack(self) -> list[Any]:
        return [self.term, self.seq, self.name, self.invite_only, self.max_members,
                self.created_ms, [list(m) for m in self.members]]


def snapshot_from(raw: Any) -> Snapshot:
    if not isinstance(raw, list) or len(raw) != 7:
        raise BadPayload("a snapshot is an array of 7")
    term, seq, name, invite_only, max_members, created, members = raw
    _uint(term, "term")
    _uint(seq, "seq")
    _name(name)
    if not isinstance(invite_only, bool):
        raise BadPayload("invite_only must be a boolean")
    _count(max_members, "max_members")
    _uint(created, "created_ms")
    if not isinstance(members, list) or len(members) > 1000:
        raise BadPayload("members must be an array of at most 1000")
    out = []
    for m in members:
        if not isinstance(m, list) or len(m) != 3:
            raise BadPayload("a member is [node, role, joined_ms]")
        out.append(_fields(m, ("node", "role", "count"), "member"))
    return Snapshot(term, seq, name, invite_only, max_members, created,
                    tuple((m[0], m[1], m[2]) for m in out))


_PAYLOAD_ARGS: dict[str, tuple[str, ...]] = {
    # to the hub
    "create": ("name", "bool", "count", "nodes"),
    "join": (),
    "leave": (),
    "kick": ("node",),
    "role": ("node", "role"),
    "invite": ("node",),
    "msg": ("mid", "count", "ct"),
    "sync": ("count",),
    # from the hub
    "entries": ("count", "count", "entries"),
    "state": ("snapshot",),
    "invited": ("name", "node", "count"),
    "beat": ("count", "count"),
    "refused": ("text", "text"),
    # between members
    "key": ("count", "key"),
    "claim": ("count", "count"),
    "claimed": ("count", "bool", "count", "entries"),
    "stale": ("count", "node", "count"),
    "ping": ("count",),
    "pong": ("count",),
}
"""kind -> the fields after ``[kind, group_id]``."""


@dataclass(frozen=True, slots=True)
class Payload:
    kind: str
    group_id: str
    args: tuple[Any, ...]

    def encode(self) -> bytes:
        return encode(self.kind, self.group_id, *self.args)


def encode(kind: str, group_id: str, *args: Any) -> bytes:
    return msgpack.packb([kind, group_id, *args], use_bin_type=True)


def decode(raw: bytes) -> Payload:
    if len(raw) > MAX_PAYLOAD:
        raise BadPayload(f"payload of {len(raw)} bytes exceeds {MAX_PAYLOAD}")
    try:
        a = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise BadPayload(f"not msgpack: {e}") from None
    if not isinstance(a, list) or len(a) < 2:
        raise BadPayload("a payload is an array [kind, group_id, ...]")
    kind, gid, *rest = a
    spec = _PAYLOAD_ARGS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise BadPayload(f"unknown payload kind {kind!r}")
    if not isinstance(gid, str) or not GID.match(gid):
        raise BadPayload("group_id must be 1-64 of [0-9a-z-]")
    return Payload(kind, gid, _fields(rest, spec, kind))


def _fields(values: list[Any], spec: tuple[str, ...], what: str) -> tuple[Any, ...]:
    if len(values) != len(spec):
        raise BadPayload(f"{what}: expected {len(spec)} fields, got {len(values)}")
    return tuple(_CHECKS[t](v, f"{what} field {i}")
                 for i, (t, v) in enumerate(zip(spec, values, strict=True)))


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < 2**63:
        raise BadPayload(f"{what} must be an unsigned integer")
    return v


def _count(v: Any, what: str) -> int:
    return _uint(v, what)


def _bytes(n: int | None, most: int = 0) -> Any:
    def check(v: Any, what: str) -> bytes:
        if not isinstance(v, bytes) or (n is not None and len(v) != n) or \
                (most and len(v) > most):
            raise BadPayload(f"{what} must be {n or f'at most {most}'} bytes")
        return v
    return check


def _name(v: Any, what: str = "name") -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 64:
        raise BadPayload(f"{what} must be 1-64 characters")
    return v


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > 200:
        raise BadPayload(f"{what} must be a short string")
    return v


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise BadPayload(f"{what} must be a boolean")
    return v


def _role(v: Any, what: str) -> str:
    if v not in ROLES:
        raise BadPayload(f"{what} must be admin or member")
    return str(v)


def _nodes(v: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > MAX_INVITEES:
        raise BadPayload(f"{what} must be an array of at most {MAX_INVITEES} node ids")
    return tuple(_bytes(32)(n, what) for n in v)


def _entries(v: Any, what: str) -> tuple[Entry, ...]:
    if not isinstance(v, list) or len(v) > MAX_ENTRIES:
        raise BadPayload(f"{what} must be an array of at most {MAX_ENTRIES} entries")
    return tuple(entry_from(e) for e in v)


_CHECKS: dict[str, Any] = {
    "node": _bytes(32), "mid": _bytes(16), "key": _bytes(32), "ct": _bytes(None, MAX_CIPHERTEXT),
    "count": _count, "name": _name, "text": _text, "bool": _bool, "role": _role,
    "nodes": _nodes, "entries": _entries, "snapshot": lambda v, what: snapshot_from(v),
}
