"""The sans-I/O face every service core shows its shell.

A core is synchronous and deterministic: it never touches a socket, a clock or a random
source of its own. The shell feeds it *inputs* (typed records below, plus ``now`` in monotonic
seconds) and carries out the *actions* it returns, then re-arms one timer at
:meth:`Core.next_deadline`. Inputs are facts (past tense or nouns); actions are commands.

Inputs:
  :class:`Request`      a request from the bus (the base class has already answered ``sys.*``)
  :class:`PeerReplied`  the reply to a :class:`Call` this core made
  :class:`PeerFailed`   a :class:`Call` failed: timeout, error reply, or the peer is unknown
  :class:`EventReceived` an event from a subscribed service
  :class:`PeerRestarted` a service this one calls or listens to restarted (a new
                        incarnation) or went silent: what lived in it is gone

Actions:
  :class:`Reply`, :class:`Fail`  answer a request (once; later answers are dropped)
  :class:`Publish`               publish an event on this service's PUB socket
  :class:`Call`                  send a request to another service; the answer comes back as
                                 ``PeerReplied`` or ``PeerFailed`` carrying the same token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire.errors import ErrorCode
from .wire.messages import Message


@dataclass(frozen=True, slots=True)
class Request:
    ctx: Any
    """Opaque reply handle; give it back unchanged in :class:`Reply` or :class:`Fail`."""
    body: Message
    blobs: tuple[bytes, ...] = ()
    src: str = ""
    caller: str | None = None
    """Whose bus key sent it (``service:ROLE``, ``owner``, ``app:NAME``) over an
    authenticated tcp bus; None over ipc/inproc, where the file system is the guard."""


@dataclass(frozen=True, slots=True)
class PeerReplied:
    token: Any
    body: Message
    blobs: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerFailed:
    token: Any
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class EventReceived:
    body: Message
    blobs: tuple[bytes, ...] = ()
    src: str = ""


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """Another service (``role``) is not the process it was: it started again (``lost``
    False: it serves now, with a new incarnation, or answers again after a silence) or its
    heartbeats stopped (``lost`` True). Calls in flight to it have been failed already
    (``unavailable``); the core drops what it held about the old process (connections,
    paths) and rebuilds it from the new one."""

    role: str
    lost: bool = False


class ServiceInput:
    """Base of inputs a service's shell feeds from outside the bus (the transport's
    datagrams)."""


Input = Request | PeerReplied | PeerFailed | EventReceived | PeerRestarted | ServiceInput


@dataclass(frozen=True, slots=True)
class Reply:
    ctx: Any
    body: Message
    blobs: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Fail:
    ctx: Any
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Publish:
    body: Message
    blobs: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Call:
    role: str
    body: Message
    token: Any
    timeout_s: float | None = None
    """None: the bus default (``bus.request_timeout_s``)."""
    blobs: tuple[bytes, ...] = ()


class ServiceAction:
    """Base of actions a service's own shell carries out (the transport sends datagrams)."""


Action = Reply | Fail | Publish | Call | ServiceAction


class Core:
    """Base of the service cores. Subclasses list the request models they handle."""

    role: str = ""
    handles: frozenset[type[Message]] = frozenset()

    def handle(self, event: Input, now: float) -> list[Action]:
        """Process one input; return the actions to carry out, in order."""
        if isinstance(event, Request):
            return [Fail(event.ctx, ErrorCode.UNSUPPORTED,
                         f"{self.role} does not handle {event.body.msg_type}")]
        return []

    def on_timer(self, now: float) -> list[Action]:
        """Called when :meth:`next_deadline` has passed."""
        return []

    def next_deadline(self) -> float | None:
        """Monotonic time at which :meth:`on_timer` should run next, or None."""
        return None

    def flush(self, now: float) -> list[Action]:
        """Called after each batch of inputs: actions the core held back to do once per
        batch (the transport builds its packets here)."""
        return []

    def counters(self) -> dict[str, int]:
        """Service-specific counters for ``sys.status``."""
        return {}

    def queues(self) -> dict[str, int]:
        """Depths of the core's bounded queues for ``sys.status``."""
        return {}

    def leave(self, now: float) -> list[Action]:
        """The service is about to stop while the node's other services still run: start
        handing on what others count on this node for (the backup service hands on its
        copies). The service keeps serving until :meth:`left` or a short grace."""
        return []

    def left(self) -> bool:
        """Whether what :meth:`leave` started is done."""
        return True

    def close(self, now: float) -> list[Action]:
        """The service is stopping: flush what must be flushed; return final actions."""
        return []
