"""How much one origin may have this node hold: a share that shrinks as it grows, never a
ban, and never at another origin's expense.

An origin may hold at most half of what the other origins leave free: with capacity ``C``
and the others holding ``O``, it may grow to ``(C − O) / 2``, in bytes and in messages. A
lone origin can fill half the store; a second one then finds a quarter left to it and the
first cannot grow until the second's share is taken into account; nobody is ever evicted to
make room (what was accepted stays until delivered or expired). A refusal is an answer the
origin acts on (it hands the envelope to another holder), counted as ``refused_share`` or
``refused_full``.
"""

from __future__ import annotations

from collections import Counter


class Quota:
    def __init__(self, capacity_bytes: int, capacity_messages: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.capacity_messages = capacity_messages
        self.bytes: Counter[bytes] = Counter()
        self.messages: Counter[bytes] = Counter()
        self.total_bytes = 0
        self.total_messages = 0

    def refusal(self, origin: bytes, size: int) -> str | None:
        """Why ``origin`` may not have ``size`` more bytes held here, or None."""
        if self.total_bytes + size > self.capacity_bytes or \
                self.total_messages + 1 > self.capacity_messages:
            return "full"
        others_bytes = self.total_bytes - self.bytes[origin]
        others_messages = self.total_messages - self.messages[origin]
        if 2 * (self.bytes[origin] + size) > self.capacity_bytes - others_bytes or \
                2 * (self.messages[origin] + 1) > self.capacity_messages - others_messages:
            return "share"
        return None

    def add(self, origin: bytes, size: int, messages: int = 1) -> None:
        self.bytes[origin] += size
        self.messages[origin] += messages
        self.total_bytes += size
        self.total_messages += messages

    def remove(self, origin: bytes, size: int) -> None:
        self.bytes[origin] -= size
        self.messages[origin] -= 1
        self.total_bytes -= size
        self.total_messages -= 1
        if self.messages[origin] <= 0:
            del self.bytes[origin], self.messages[origin]
