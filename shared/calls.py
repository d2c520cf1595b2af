"""What a service waits for from the others: its calls in flight and the liveness of the
services it calls or listens to. Sans-I/O: the shell (:class:`shared.service.Service`) hands
it what arrived and the time, and feeds the core the inputs it returns.

A call ends once: with its reply (``PeerReplied``), an error reply or the wrong reply
(``PeerFailed``), its timeout (``peer_timeout``), or the end of the process that had it
(``unavailable``: the service restarted, with a new incarnation in its heartbeat, or went
silent for ``silence_s``). A reply to a call that already ended is counted and dropped.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .core import Input, PeerFailed, PeerReplied, PeerRestarted
from .wire import Decoded, ErrorCode, Message
from .wire.messages.sys import ErrorReply


@dataclass
class _Peer:
    incarnation: bytes
    heard: float
    lost: bool = False


@dataclass
class _Pending:
    token: Any
    role: str
    request: type[Message]
    timeout_s: float


class Calls:
    """Calls in flight (by message id) and the services they go to (by role)."""

    def __init__(self, stats: Counter[str], silence_s: float, log: logging.Logger) -> None:
        self.stats = stats
        """The service's counters: ``late_replies``, ``unexpected_replies``,
        ``call_timeouts``, ``peer_services_restarted``, ``peer_services_lost``."""
        self.silence_s = silence_s
        self.log = log
        self._pending: dict[bytes, _Pending] = {}
        self._deadlines: list[tuple[float, bytes]] = []
        self._peers: dict[str, _Peer] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def knows(self, role: str) -> bool:
        """Whether ``role``'s heartbeats have been heard (its first word is the base line)."""
        return role in self._peers

    # -- calls -------------------------------------------------------------------------------

    def add(self, msg_id: bytes, token: Any, role: str, request: type[Message],
            timeout_s: float, now: float) -> None:
        self._pending[msg_id] = _Pending(token, role, request, timeout_s)
        heapq.heappush(self._deadlines, (now + timeout_s, msg_id))

    def cancel(self, msg_id: bytes) -> bool:
        """Forget a call that could not be sent; whether it was in flight."""
        return self._pending.pop(msg_id, None) is not None

    def answer(self, role: str, msg: Decoded) -> Input | None:
        """What the core hears of a reply from ``role``; None for one nobody waits for."""
        parent = msg.header.parent_id or b""
        p = self._pending.get(parent)
        if p is None or p.role != role:
            self.stats["late_replies"] += 1
            return None
        del self._pending[parent]
        body = msg.body
        if not isinstance(body, (ErrorReply, p.request.reply_type or ErrorReply)):
            self.stats["unexpected_replies"] += 1
            return PeerFailed(p.token, ErrorCode.FAILED,
                              f"{role} answered {p.request.msg_type} with {body.msg_type}")
        if isinstance(body, ErrorReply):
            try:
                code = ErrorCode(body.code)
            except ValueError:
                code = ErrorCode.FAILED
            return PeerFailed(p.token, code, f"{role}: {body.message}")
        return PeerReplied(p.token, body, msg.blobs)

    def expire(self, now: float) -> list[Input]:
        """The calls whose timeout has passed, failed ``peer_timeout``."""
        out: list[Input] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, msg_id = heapq.heappop(self._deadlines)
            p = self._pending.pop(msg_id, None)
            if p is not None:
                self.stats["call_timeouts"] += 1
                out.append(PeerFailed(p.token, ErrorCode.PEER_TIMEOUT,
                                      f"{p.role} did not answer {p.request.msg_type} within "
                                      f"{p.timeout_s:g} s (is it running?)"))
        return out

    # -- the services called or listened to --------------------------------------------------

    def heard(self, role: str, incarnation: bytes, now: float, known: bool) -> list[Input]:
        """A ``sys.ready`` or heartbeat of ``role`` (``known``: a service this one calls or
        listens to). A new incarnation, or a word after a silence, means what lived in the
        process we knew is gone."""
        peer = self._peers.get(role)
        if peer is None:  # first word: the base line (or not a service we depend on)
            if known:
                self._peers[role] = _Peer(incarnation, now)
            return []
        peer.heard = now
        restarted = peer.lost or bool(incarnation and peer.incarnation
                                      and incarnation != peer.incarnation)
        peer.lost = False
        peer.incarnation = incarnation or peer.incarnation
        if not restarted:
            return []
        self.stats["peer_services_restarted"] += 1
        self.log.info("%s restarted: resynchronising", role)
        return self.gone(role, lost=False)

    def silent(self, now: float) -> list[str]:
        """The services not heard for ``silence_s``, taken for gone now (once, until they
        speak again): the caller hands the core :meth:`gone` of each in turn, so that a call
        the core makes to the next one while hearing of the first fails with it."""
        out: list[str] = []
        for role, peer in self._peers.items():
            if not peer.lost and now - peer.heard >= self.silence_s:
                peer.lost = True
                self.stats["peer_services_lost"] += 1
                self.log.warning("%s has been silent for %.0f s: taken for gone", role,
                                 now - peer.heard)
                out.append(role)
        return out

    def gone(self, role: str, lost: bool) -> list[Input]:
        """Fail the calls in flight to ``role`` (the process that had them is gone), then
        tell the core."""
        out: list[Input] = []
        for msg_id, p in list(self._pending.items()):
            if p.role == role:
                del self._pending[msg_id]
                out.append(PeerFailed(p.token, ErrorCode.UNAVAILABLE,
                                      f"{role} {'went silent' if lost else 'restarted'}"))
        out.append(PeerRestarted(role, lost))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`expire` or :meth:`silent` next has something to say."""
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)
        times = [p.heard + self.silence_s for p in self._peers.values() if not p.lost]
        if self._deadlines:
            times.append(self._deadlines[0][0])
        return min(times, default=None)
