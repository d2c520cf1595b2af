"""Relaying: carrying an envelope that names this node in its ``via`` one hop on.

Forwarded to the next hop with ttl − 1 (ttl 0 → rejected), once per ``FORWARD_DEDUP_S``
(the sender's retries come later and pass), and for a ``Chat`` (or ``Group``) a
``RelayForwarded`` ACK goes back along the path. Relays forward nothing else: an envelope
neither for us nor naming us is rejected by the incoming side (``rejected_not_for_us``): no
open relay.
"""

from __future__ import annotations

from dataclasses import replace

from shared.core import Action, Call
from shared.envelope import MAX_TTL, AckPayload, AckType, Envelope, MessageType
from shared.wire.messages import transport as tm

from .context import Context

FORWARD_DEDUP_S = 2.0


class Relay:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.forwarded: dict[tuple[bytes, bytes], float] = {}
        """(sender, id) -> when it was last forwarded."""

    def forward(self, env: Envelope, peer: bytes, now: float) -> list[Action]:
        """Carry an envelope that names this node in its (signed) ``via`` one hop on.

        Only along the path its sender chose: it must come from the hop before us in
        ``via`` (or from its sender when we are first), and goes only to the hop after us
        (or to ``to``), and only when that one is connected (a relay dials nobody for a
        stranger). ``ttl`` is not signed, so it is bounded by the signed path: at
        ``via[pos]`` it is at most ``MAX_TTL - pos`` (each relay before lowered it by one),
        and a copy whose ttl was raised on the way is refused (``rejected_ttl_raised``);
        together with the check on the previous hop, a relay cannot make an envelope
        travel further than its sender allowed."""
        ctx = self.ctx
        assert ctx.node_id is not None and ctx.topo is not None
        if not ctx.fresh(env, ctx.now_ms()):
            return []
        pos = env.via.index(ctx.node_id)
        if peer != (env.via[pos - 1] if pos else env.sender):
            ctx.reject("wrong_hop")
            return []
        if len(set(env.via)) != len(env.via) or env.sender in env.via \
                or env.to in env.via or env.to == env.sender:
            ctx.reject("loop")
            return []
        if env.ttl > MAX_TTL - pos:
            ctx.reject("ttl_raised")
            return []
        if env.ttl == 0:
            ctx.reject("ttl_exhausted")
            return []
        key = (env.sender, env.id)
        if now - self.forwarded.get(key, -1e9) < FORWARD_DEDUP_S:
            ctx.stats["forward_duplicates"] += 1
            return []
        self.forwarded[key] = now
        hop = env.via[pos + 1] if pos + 1 < len(env.via) else env.to
        nxt = ctx.topo.peers.get(hop)
        if nxt is None or not nxt.connected:
            ctx.stats["forward_unreachable"] += 1
            return []
        ctx.stats["forwarded"] += 1
        actions: list[Action] = [Call("transport", tm.Send(peer=hop), ("fwd",),
                                      blobs=(replace(env, ttl=env.ttl - 1).encode(),))]
        if env.msg_type in (MessageType.CHAT, MessageType.GROUP):  # no ACKs of ACKs
            back = tuple(reversed(env.via[:pos]))
            payload = AckPayload(env.id, AckType.RELAY_FORWARDED).encode()
            actions += ctx.control(env.sender, MessageType.ACK, payload, back, env.encode())
        return actions

    def prune(self, now: float) -> None:
        """Forget the forwarding record older than ``FORWARD_DEDUP_S``."""
        self.forwarded = {k: t for k, t in self.forwarded.items()
                          if now - t < FORWARD_DEDUP_S}
