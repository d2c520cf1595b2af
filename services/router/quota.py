"""How much of the inbox each origin may fill (issue 13: one connection wrote 1.94 GB in
60 s, kept 24 h).

A received message is charged to its sender and to the peer that delivered it (the last
hop, authenticated by the transport): sender ids cost nothing, the connection does. What is
charged is what is stored, the plaintext and the signed envelope (kept for the read receipt),
plus ``ROW_OVERHEAD`` bytes, and one message. Limits:

* the whole inbox: ``max_bytes`` and ``max_messages``;
* senders without history together: ``strangers_share`` of those (so contacts always find
  room);
* one sender: ``sender_bytes`` and ``sender_messages``; one delivering peer: ``hop_bytes``
  and ``hop_messages``; both ``history_factor`` times larger for a peer with history (a
  bootstrap peer, or a node this node has sent a message to).

A message over any limit is refused, not stored and not acknowledged, so its sender's
router retries it later (with backoff) and it arrives once the inbox has room: nothing is
lost that the sender keeps trying, and nothing already accepted is ever dropped to make
room. Room comes back as messages leave the replay window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

ROW_OVERHEAD = 128
"""Bytes charged per message on top of its payload (ids, timestamps, index entries)."""


@dataclass(frozen=True)
class InboxLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_messages: int = 100_000
    strangers_share: float = 0.5
    sender_bytes: int = 8 * 1024 * 1024
    sender_messages: int = 5_000
    hop_bytes: int = 32 * 1024 * 1024
    hop_messages: int = 20_000
    history_factor: int = 8


class InboxQuota:
    def __init__(self, limits: InboxLimits, has_history: Callable[[bytes], bool]) -> None:
        self.limits = limits
        self.has_history = has_history
        self.by_sender: dict[bytes, list[int]] = {}
        """sender -> [messages, bytes] in the inbox."""
        self.by_hop: dict[bytes, list[int]] = {}
        self.total = [0, 0]
        self.strangers = [0, 0]

    def load(self, rows: Iterable[tuple[bytes, bytes, int, int]]) -> None:
        """(sender, hop, messages, bytes stored) of what the inbox holds."""
        for sender, hop, n, size in rows:
            self._move(sender, hop, n, size + n * ROW_OVERHEAD)
        self.recount()

    def refusal(self, sender: bytes, hop: bytes, payload: int) -> str | None:
        """Why a message storing ``payload`` bytes from ``sender`` delivered by ``hop`` may not
        be stored now (a counter's suffix), or None."""
        lim = self.limits
        size = payload + ROW_OVERHEAD
        if self.total[0] + 1 > lim.max_messages or self.total[1] + size > lim.max_bytes:
            return "full"
        known = self.has_history(sender)
        if not known and (
                self.strangers[0] + 1 > lim.max_messages * lim.strangers_share
                or self.strangers[1] + size > lim.max_bytes * lim.strangers_share):
            return "strangers"
        f = lim.history_factor if known else 1
        n, b = self.by_sender.get(sender, (0, 0))
        if n + 1 > lim.sender_messages * f or b + size > lim.sender_bytes * f:
            return "sender"
        f = lim.history_factor if self.has_history(hop) else 1
        n, b = self.by_hop.get(hop, (0, 0))
        if n + 1 > lim.hop_messages * f or b + size > lim.hop_bytes * f:
            return "hop"
        return None

    def add(self, sender: bytes, hop: bytes, payload: int) -> None:
        size = payload + ROW_OVERHEAD
        self._move(sender, hop, 1, size)
        if not self.has_history(sender):
            self.strangers[0] += 1
            self.strangers[1] += size

    def remove(self, rows: Iterable[tuple[bytes, bytes, int, int]]) -> None:
        """What a purge deleted: (sender, hop, messages, bytes stored)."""
        for sender, hop, n, size in rows:
            self._move(sender, hop, -n, -(size + n * ROW_OVERHEAD))
        self.recount()

    def recount(self) -> None:
        """The strangers' share again (after a purge, or when a peer gained history)."""
        self.strangers = [0, 0]
        for sender, (n, b) in self.by_sender.items():
            if not self.has_history(sender):
                self.strangers[0] += n
                self.strangers[1] += b

    def _move(self, sender: bytes, hop: bytes, n: int, size: int) -> None:
        for table, key in ((self.by_sender, sender), (self.by_hop, hop)):
            row = table.setdefault(key, [0, 0])
            row[0] += n
            row[1] += size
            if row[0] <= 0:
                del table[key]
        self.total[0] += n
        self.total[1] += size
