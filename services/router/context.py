"""What the parts of the router core share: settings, the store, the node id and topology,
the open outgoing messages, the inbox quotas, the counters, the replies held for the
store's commit, and the checks every part makes on an envelope (freshness, signature) or
the control envelopes it sends (ACKs, read receipts).

The router never holds the identity secret: it asks crypto for its node id at start, to
seal (encrypt and sign) what it originates and to open what is addressed to it. Until the
node id is known, requests that need it fail with ``unavailable``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from shared.core import Action, Call
from shared.envelope import Envelope, Unsigned
from shared.primitives import BadSignature
from shared.wire import ErrorCode
from shared.wire.messages import crypto as cm

from .quota import InboxLimits, InboxQuota
from .store import Store
from .topology import Topology

PENDING, SENT, RELAYED, DELIVERED, READ, FAILED = range(6)
STATUS = ("pending", "sent", "relayed", "delivered", "read", "failed")
MAX_FUTURE_MS = 300_000
RETRYABLE = frozenset({ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED})


def backup_caller(caller: str | None) -> bool:
    """Envelopes passed on unchanged are the backup service's."""
    return caller is None or caller in ("service:backup", "owner")


def groups_caller(caller: str | None) -> bool:
    """Group envelopes are the groups service's (over ipc/inproc, where callers are not
    told apart by key, the file system guards the bus)."""
    return caller is None or caller in ("service:groups", "owner")


@dataclass
class RouterSettings:
    """The router's bounds; see RouterConfig (services/router/config.py) for each."""

    username: str = "anonymous"
    replay_window_s: float = 86_400 + 600
    message_lifetime_s: float = 86_400
    gossip_interval_s: float = 5.0
    max_open_messages: int = 100_000
    bootstrap: tuple[tuple[bytes, str, int], ...] = ()
    inbox_max_bytes: int = InboxLimits.max_bytes
    inbox_max_messages: int = InboxLimits.max_messages
    inbox_strangers_share: float = InboxLimits.strangers_share
    inbox_sender_max_bytes: int = InboxLimits.sender_bytes
    inbox_sender_max_messages: int = InboxLimits.sender_messages
    inbox_hop_max_bytes: int = InboxLimits.hop_bytes
    inbox_hop_max_messages: int = InboxLimits.hop_messages
    inbox_history_factor: int = InboxLimits.history_factor
    max_peers: int = 2_000
    max_saved_peers: int = 1_000
    forget_after_s: float = 3_600
    gossip_rate: float = 1.0
    gossip_burst: int = 10
    backup_after_s: float = 30.0
    backup_copies: int = 3

    def inbox_limits(self) -> InboxLimits:
        return InboxLimits(self.inbox_max_bytes, self.inbox_max_messages,
                           self.inbox_strangers_share, self.inbox_sender_max_bytes,
                           self.inbox_sender_max_messages, self.inbox_hop_max_bytes,
                           self.inbox_hop_max_messages, self.inbox_history_factor)


@dataclass
class OutMsg:
    id: bytes
    to: bytes
    env: Envelope
    status: int
    created_ms: int
    attempts: int = 0
    next_try: float = 0.0
    busy: bool = False
    """A crypto or transport call about this message is in flight."""
    sent_at: float = float("-inf")
    """When it was last handed to the transport."""
    expires_ms: int = 0
    """When it fails unacknowledged (Unix ms); 0: ``message_lifetime_s`` after creation."""
    relay: bytes | None = None
    """The relay the app named, for when the topology knows no path."""
    holders: tuple[bytes, ...] = ()
    """Holders that confirmed they keep a copy (services/router/handoff.py)."""
    reason: str = ""
    """Why it is not delivered yet, as last published (services/router/reasons.py)."""


def split_ids(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw[i:i + 32] for i in range(0, len(raw) - 31, 32))


class Context:
    """Shared by :class:`~.outgoing.Outgoing`, :class:`~.incoming.Incoming`,
    :class:`~.relay.Relay`, :class:`~.peers.Peers` and :class:`~.discovery.Discovery`."""

    def __init__(self, store: Store, wall: Callable[[], float], settings: RouterSettings,
                 rng: random.Random) -> None:
        self.store = store
        self.wall = wall
        self.settings = settings
        self.rng = rng
        self.node_id: bytes | None = None
        self.topo: Topology | None = None
        self.out: dict[bytes, OutMsg] = {}
        self.held: list[Action] = []
        """Replies, delivery ACKs and new-message events that wait for the store's commit
        (the core's flush)."""
        self.quota = InboxQuota(settings.inbox_limits(), self.has_history)
        self.stats: Counter[str] = Counter()

    def now_ms(self) -> int:
        return int(self.wall() * 1000)

    def has_history(self, node: bytes) -> bool:
        return self.topo is not None and self.topo.has_history(node)

    def reject(self, reason: str) -> None:
        self.stats[f"rejected_{reason}"] += 1

    def fresh(self, env: Envelope, now_ms: int) -> bool:
        if self.fresh_unverified(env, now_ms):
            return True
        self.reject("future" if env.timestamp_ms > now_ms else "stale")
        return False

    def fresh_unverified(self, env: Envelope, now_ms: int) -> bool:
        """The freshness check without counting (on a timestamp not verified yet)."""
        return now_ms - self.settings.replay_window_s * 1000 <= env.timestamp_ms \
            <= now_ms + MAX_FUTURE_MS

    def verified(self, env: Envelope) -> bool:
        """Verify here (the envelopes crypto.open does not verify first); count a refusal."""
        try:
            env.verify()
        except Unsigned:
            self.reject("unsigned")
            return False
        except BadSignature:
            self.reject("forged")
            return False
        return True

    def control(self, to: bytes, kind: str, payload: bytes,
                via: tuple[bytes, ...], proof: bytes | None = None,
                also: bytes | None = None) -> list[Action]:
        """Seal (sign, not encrypt) a control envelope and send it to its first hop; best
        effort: the sender's retries cover a lost one. ``proof``: for an ACK or read receipt,
        the envelope it acknowledges (crypto signs acknowledgements only with it). ``also``:
        a second peer that gets a copy (the holder that delivered a held message)."""
        hop = via[0] if via else to
        blobs = (payload,) if proof is None else (payload, proof)
        return [Call("crypto", cm.Seal(to=to, envelope_type=kind, via=list(via),
                                       encrypt=False), ("ctl", hop, also), blobs=blobs)]
