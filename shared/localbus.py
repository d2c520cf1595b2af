"""The bus between services that share a process (all-in-one), without ZeroMQ.

Between two processes a bus message is a ZeroMQ message; between two services of one process
it was one too (``inproc://``), which cost each hop a message allocation, a pipe, an eventfd
write and read, an event-loop wake-up and a ``ZMQ_EVENTS`` system call per check. Here a hop
is a list appended to the receiver's :class:`Inbox` and, when the inbox was empty, one
``call_soon`` of the receiver's drain. The frames are the same bytes the sockets carry
(encoded and decoded as on any bus), so nothing above the sockets changes: a request still
has its routing part (the caller's :class:`Dealer` stands where a ROUTER puts the peer's
identity), replies and errors go back by it, events reach every subscriber whose prefix
matches the topic, and an inbox holds at most the bus high-water mark (a sender then sees
``zmq.Again``, as from a full socket). Apps and the CLI still reach the services over the
endpoints file's sockets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import zmq


class Inbox:
    """Frames waiting for one service, from the others of its process; the drain treats it
    as a socket it watches (``ready``, ``take``)."""

    __slots__ = ("queue", "limit", "wake", "scheduled")

    def __init__(self, limit: int) -> None:
        self.queue: deque[list[Any]] = deque()
        self.limit = limit
        self.wake: Callable[[], object] | None = None
        """Schedules the owner's drain (set when the owner watches the inbox)."""
        self.scheduled = False

    def put(self, frames: list[Any]) -> None:
        """Queue ``frames``; raises ``zmq.Again`` when the inbox is full, as a socket at its
        high-water mark does."""
        if len(self.queue) >= self.limit:
            raise zmq.Again()
        self.queue.append(frames)
        if not self.scheduled and self.wake is not None:
            self.scheduled = True
            self.wake()


class Dealer(Inbox):
    """A caller's end of its calls to one service: it sends requests to that service's
    request inbox, its own queue takes the replies."""

    __slots__ = ("target",)

    def __init__(self, limit: int, target: Inbox) -> None:
        super().__init__(limit)
        self.target = target

    def send(self, frames: list[Any]) -> None:
        self.target.put([self, *frames])


class Sub(Inbox):
    """A subscriber's queue of one service's events, with the topic prefixes it takes."""

    __slots__ = ("prefixes",)

    def __init__(self, limit: int, prefixes: tuple[bytes, ...]) -> None:
        super().__init__(limit)
        self.prefixes = prefixes


class Hub:
    """The services of one process, by role: their request inboxes and their subscribers."""

    def __init__(self) -> None:
        self.requests: dict[str, Inbox] = {}
        self.subscribers: dict[str, list[Sub]] = {}

    def join(self, role: str, limit: int) -> Inbox:
        """Register ``role``; its request inbox."""
        inbox = self.requests[role] = Inbox(limit)
        self.subscribers.setdefault(role, [])
        return inbox

    def has(self, role: str) -> bool:
        return role in self.requests

    def dealer(self, role: str, limit: int) -> Dealer:
        return Dealer(limit, self.requests[role])

    def subscribe(self, role: str, limit: int, prefix: bytes) -> Sub:
        sub = Sub(limit, (prefix,))
        self.subscribers[role].append(sub)
        return sub

    def publish(self, role: str, frames: list[bytes]) -> int:
        """Hand an event (``[topic, ...]``) to every subscriber of ``role`` that takes its
        topic; how many could not take it (full: dropped, as a PUB socket drops)."""
        topic, dropped = frames[0], 0
        for sub in self.subscribers.get(role, ()):
            if topic.startswith(sub.prefixes):
                try:
                    sub.put(frames)
                except zmq.Again:
                    dropped += 1
        return dropped

    def leave(self, inbox: Inbox) -> None:
        """Stop delivering to ``inbox`` (its service stopped)."""
        inbox.wake = None
        for subs in self.subscribers.values():
            if inbox in subs:
                subs.remove(inbox)
