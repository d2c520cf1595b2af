"""A group's state, rebuilt the same way on every node from the hub's ordered log.

The hub appends entries (who joined, left, was kicked, changed role; messages; a new hub) and
every member applies the same entries in the same order, so members, roles, the hub, its term
and the successor chain are identical everywhere without any other replication: the log *is*
the replication. :meth:`GroupState.apply` is pure (no I/O), used by the hub and the members.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .wire import Entry, Snapshot

CHAIN_LENGTH = 3
"""How many successors watch the hub and may take over, in order."""


@dataclass
class MemberInfo:
    role: str
    joined_ms: int


@dataclass
class GroupState:
    group_id: str
    name: str
    hub: bytes
    term: int
    seq: int
    """The last entry applied."""
    invite_only: bool
    max_members: int
    created_ms: int
    members: dict[bytes, MemberInfo] = field(default_factory=dict)
    prev_hub: bytes = b""
    """The hub of the previous term (it may catch up from this one's log)."""

    # -- the log ------------------------------------------------------------------------------

    def apply(self, e: Entry) -> None:
        """Apply the next entry (``e.seq == self.seq + 1``; the caller checks)."""
        self.seq = e.seq
        match e.kind:
            case "created":
                creator, self.name, self.invite_only, self.max_members = e.args
                self.created_ms = e.ts_ms
                self.members = {creator: MemberInfo("admin", e.ts_ms)}
            case "joined":
                self.members.setdefault(e.args[0], MemberInfo("member", e.ts_ms))
            case "left" | "kicked":
                self.members.pop(e.args[0], None)
            case "role":
                if e.args[0] in self.members:
                    self.members[e.args[0]].role = e.args[1]
            case "hub":
                self.prev_hub = self.hub
                self.hub, self.term = e.args[0], e.term

    def snapshot(self) -> Snapshot:
        return Snapshot(self.term, self.seq, self.name, self.invite_only, self.max_members,
                        self.created_ms, tuple((n, m.role, m.joined_ms)
                                               for n, m in self.members.items()))

    @classmethod
    def from_snapshot(cls, group_id: str, hub: bytes, s: Snapshot) -> GroupState:
        return cls(group_id, s.name, hub, s.term, s.seq, s.invite_only, s.max_members,
                   s.created_ms, {n: MemberInfo(r, j) for n, r, j in s.members})

    # -- questions ----------------------------------------------------------------------------

    def is_admin(self, node: bytes) -> bool:
        m = self.members.get(node)
        return m is not None and m.role == "admin"

    def admins(self) -> int:
        return sum(m.role == "admin" for m in self.members.values())

    def successors(self) -> list[bytes]:
        """Who takes over when the hub goes silent, in order: the members other than the
        hub, admins first, then by a hash of the group id and the node id (so the order is
        the same on every node, and differs between groups)."""
        others = [n for n in self.members if n != self.hub]
        others.sort(key=lambda n: (self.members[n].role != "admin",
                                   hashlib.blake2b(self.group_id.encode() + n,
                                                   digest_size=8).digest()))
        return others[:CHAIN_LENGTH]
