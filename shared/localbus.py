"""The bus between services that share a process (all-in-one), without ZeroMQ.

Between two processes a bus message is a ZeroMQ message; between two services of one process
it was one too (``inproc://``), which cost each hop an encoding and a decoding, a message
allocation, a pipe, an eventfd write and read, an event-loop wake-up and a ``ZMQ_EVENTS``
system call per check. Here a hop is the message as the sender built it (header, body,
blobs: a :class:`~shared.wire.Decoded`, trusted like any value the process made itself, so
neither encoded nor checked again) appended to the receiver's :class:`Inbox`, and, when the
inbox was empty, one ``call_soon`` of the receiver's drain. What the services see is the same
as over sockets: a request carries its caller (the caller's :class:`Dealer`, where a ROUTER
puts the peer's identity), replies and errors go back by it, events reach every subscriber
whose prefix matches the topic, and an inbox holds at most the bus high-water mark (a sender
then sees ``zmq.Again``, as from a full socket). Apps and the CLI still reach the services
over the endpoints file's sockets, encoded and checked.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from .wire import Decoded


class Inbox:
    """Messages waiting for one service, from the others of its process; the drain reads it
    as it reads a socket it watches."""

    __slots__ = ("queue", "limit", "wake", "scheduled", "closed")

    def __init__(self, limit: int) -> None:
        self.queue: deque[Any] = deque()
        self.limit = limit
        self.wake: Callable[[], object] | None = None
        """Schedules the owner's drain (set when the owner watches the inbox)."""
        self.scheduled = False
        self.closed = False
        """Its service stopped: it takes nothing more."""

    def put(self, item: Any) -> None:
        """Queue ``item``; raises ``zmq.Again`` when the inbox is full, as a socket at its
        high-water mark does, or when its service stopped (as a socket with no peer)."""
        if self.closed or len(self.queue) >= self.limit:
            raise zmq.Again()
        self.queue.append(item)
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

    def send(self, msg: Decoded) -> None:
        self.target.put((self, msg))


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

    def publish(self, role: str, topic: bytes, msg: Decoded) -> int:
        """Hand an event to every subscriber of ``role`` that takes its topic; how many could
        not take it (full: dropped, as a PUB socket drops)."""
        dropped = 0
        for sub in self.subscribers.get(role, ()):
            if topic.startswith(sub.prefixes):
                try:
                    sub.put(msg)
                except zmq.Again:
                    dropped += 1
        return dropped

    def leave(self, inbox: Inbox) -> None:
        """Stop delivering to ``inbox`` (its service stopped): what is sent to it from now
        on is refused at once."""
        inbox.wake, inbox.closed = None, True
        for subs in self.subscribers.values():
            if inbox in subs:
                subs.remove(inbox)
