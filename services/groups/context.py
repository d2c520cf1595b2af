"""What the parts of the groups core share: settings, the store, the groups, and the
outgoing side (payloads to other nodes, calls, events), collected per input and carried out
by the shell."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.core import Action, Call, Publish
from shared.wire.messages import Message
from shared.wire.messages import router as rm

from . import wire
from .state import GroupState
from .store import Store

SIGNALS = frozenset({"beat", "ping", "pong"})
"""Payloads that only matter now: sent as router signals (not stored, not retried)."""
LOCAL_MAX = 10_000
"""Payloads this node addresses to itself (a hub that is also a member) queued at once."""


@dataclass(frozen=True)
class GroupsSettings:
    max_members: int = 50
    invite_ttl_s: float = 86_400
    history_s: float = 86_400
    rate_per_s: float = 20.0
    rate_burst: float = 50.0
    beat_s: float = 3.0
    takeover_after_s: float = 12.0
    claim_wait_s: float = 3.0
    resend_s: float = 10.0
    rotate_messages: int = 10_000
    rotate_age_s: float = 86_400
    max_hosted: int = 200
    max_invites: int = 100


class Context:
    """Shared by :class:`~.hub.Hub`, :class:`~.member.Member` and
    :class:`~.failover.Failover`."""

    def __init__(self, store: Store, wall: Callable[[], float], settings: GroupsSettings,
                 randbytes: Callable[[int], bytes]) -> None:
        self.store = store
        self.wall = wall
        self.settings = settings
        self.randbytes = randbytes
        self.node_id = b""
        self.groups: dict[str, GroupState] = {}
        self.stats: Counter[str] = Counter()
        self.actions: list[Action] = []
        self.held: list[Action] = []
        """Replies and events that wait for the store's commit (the core's flush)."""
        self.local: deque[tuple[bytes, bytes]] = deque()
        self.fanout: dict[tuple[bytes, str], list[wire.Entry]] = {}
        self.heard: dict[str, float] = {}
        """group -> when its hub was last heard from (monotonic)."""

    def now_ms(self) -> int:
        return int(self.wall() * 1000)

    def count(self, what: str) -> None:
        self.stats[what] += 1

    def send(self, to: bytes, kind: str, gid: str, *args: Any,
             lifetime_s: float | None = None) -> None:
        """A payload to another node's groups service (or to this one, processed next).
        Beats, pings and pongs go as signals: once, not stored, not acknowledged."""
        raw = wire.encode(kind, gid, *args)
        if to == self.node_id:
            if len(self.local) >= LOCAL_MAX:
                self.count("local_dropped")
                return
            self.local.append((to, raw))
            return
        signal = kind in SIGNALS
        relay = self.relay(to, gid)
        if lifetime_s is not None:  # derived from the settings (2 beats...): within bounds
            lifetime_s = min(lifetime_s, rm.MAX_LIFETIME_S)
        # held until the commit of what made it: a crash never sends a payload whose cause
        # is undone (a key the restarted service would draw again, differently)
        self.held.append(Call("router", rm.Send(to=to, groups=True, lifetime_s=lifetime_s,
                                                signal=signal, relay=relay),
                              ("sent", to, raw, lifetime_s if not signal else 0.0, relay),
                              blobs=(raw,)))

    def relay(self, to: bytes, gid: str) -> bytes | None:
        """The group's hub, as the relay for a payload to another member: every member
        reaches the hub, not always each other (the router tries its own path first)."""
        g = self.groups.get(gid)
        if g is None or g.hub in (to, self.node_id):
            return None
        return g.hub

    def fan(self, to: bytes, gid: str, e: wire.Entry) -> None:
        """An entry for ``to``; entries for one node leave together at the flush."""
        self.fanout.setdefault((to, gid), []).append(e)

    def call(self, role: str, body: Message, token: Any, blobs: tuple[bytes, ...] = ()) -> None:
        self.actions.append(Call(role, body, token, blobs=blobs))

    def publish(self, body: Message, blobs: tuple[bytes, ...] = ()) -> None:
        self.held.append(Publish(body, blobs))

    def take(self) -> list[Action]:
        out, self.actions = self.actions, []
        return out
