"""Why a message is not delivered yet, or why it failed: the ``reason`` of ``router.status``
and ``router.outbox`` (issue 17), said for the person who sent it.

Theory of operation. A message that cannot go anywhere now (no path to its recipient) says
why as soon as the router knows, while it stays ``pending`` (or ``sent``) and is retried:

* ``unreachable: no route (...)``: nobody knows an address of the node nor a path to it;
* ``unreachable: ...``, ``dns: ...``: the transport's word on the last dial (nothing
  listening at the address, no answer, a host name the resolver could not resolve now);
* ``recipient offline: held for delivery until <expiry>, on this node[ and by N holders]``:
  the recipient was known (heard from, directly or through announcements) and cannot be
  reached now; the message waits here, and with the holders it was handed to (backup). A
  recipient never seen whose message holders took says both: ``<why>; held for delivery
  until ...``.

Some answers are final for the address that gave them: a different node (or one that
cannot prove any node id) answers there (``refused: ...``), or its host name does not exist
(``dns: ... no such host``). The transport says which with the failure's code (``failed``
and a ``refused:`` or ``dns:`` message; docs/protocol.md, ``transport.connect``). A chat
still ``pending``, held by no holder, whose recipient has no other address and no path then
fails at once with that reason instead of being retried for a day against an address that
cannot deliver it; the address is forgotten (a refusal) and stops being dialled as a
bootstrap peer (either), unless ``[router] bootstrap`` names it.

Pure functions and a small record; the parts that use them are services/router/peers.py
(dial failures) and services/router/outgoing.py (messages).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.wire import ErrorCode

MAX_REASON = 300
"""Characters of a reason kept (the transport's text is bounded; this bounds everything)."""
KINDS = ("refused", "unreachable", "dns")
"""How the transport's failure messages start (docs/protocol.md, ``transport.connect``)."""
FINAL_KINDS = frozenset({"refused", "dns"})
NO_ROUTE = "unreachable: no route (no address known for this node, and no peer knows a path " \
    "to it)"


@dataclass(frozen=True)
class DialFailure:
    """The last failed dial to a node: where, what the transport said, and whether that
    address can never deliver to that node."""

    addr: tuple[str, int]
    text: str
    final: bool

    @property
    def detail(self) -> str:
        """The text without its kind (``nothing listening at ...``)."""
        kind, sep, rest = self.text.partition(": ")
        return rest if sep and kind in KINDS else self.text


def dial_failure(code: int, message: str, addr: tuple[str, int]) -> DialFailure:
    """What a failed ``transport.connect`` to ``addr`` means for the messages waiting."""
    text = " ".join(message.split())  # one line
    text = text.removeprefix("transport: ")[:MAX_REASON]  # (the bus names who answered)
    kind = text.partition(":")[0]
    if kind not in KINDS:  # (another transport, or an older one): say where, not final
        host, port = addr
        return DialFailure(addr, f"unreachable: {host}:{port}: {text}"[:MAX_REASON], False)
    return DialFailure(addr, text, code == ErrorCode.FAILED and kind in FINAL_KINDS)


def utc(ms: int) -> str:
    """A Unix time in milliseconds, as people read it (UTC: the router has no time zone)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _where(expires_ms: int, holders: int) -> str:
    by = "on this node" if not holders else \
        f"on this node and by {holders} holder{'s' if holders > 1 else ''}"
    return f"held for delivery until {utc(expires_ms)}, {by}"


def offline(expires_ms: int, holders: int, detail: str = "") -> str:
    """The recipient is away: where the message waits, and until when."""
    why = f" (last try: {detail})" if detail else ""
    return f"recipient offline: {_where(expires_ms, holders)}{why}"


def held(why: str, expires_ms: int, holders: int) -> str:
    """A recipient never seen, whose message holders keep too: why, and where it waits."""
    return f"{why}; {_where(expires_ms, holders)}" if why else _where(expires_ms, holders)
