"""Hub failover: the hub's beats, the successors' watch, the claim of a new term, and a
deposed hub stepping down.

The hub sends its successors (:meth:`GroupState.successors`, the same on every node) a beat
every ``beat_s``. When successor *k* has heard nothing from the hub for
``takeover_after_s × (1 + k/2)``, it claims the next term: it asks every other member for the
messages they hold beyond its own last entry (members that heard from the hub recently answer
"alive" and the claim is dropped), waits ``claim_wait_s`` or for every answer, orders what it
collected under the same numbers, and appends a ``hub`` entry that opens its term. Members
accept entries of a higher term only from a successor of the term they know; a returning hub
hears of the higher term (``stale``) from any member and steps down. docs/architecture.md
("Groups") states the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.envelope import BadSignature, EnvelopeError, GroupCiphertext

from . import wire
from .context import Context
from .hub import Hub
from .member import Member
from .state import GroupState
from .wire import Entry


@dataclass
class Claim:
    term: int
    base: int
    deadline: float
    asked: set[bytes]
    answered: dict[bytes, int] = field(default_factory=dict)
    collected: dict[int, Entry] = field(default_factory=dict)


class Failover:
    def __init__(self, ctx: Context, hub: Hub, member: Member) -> None:
        self.ctx = ctx
        self.hub = hub
        self.member = member
        self.claims: dict[str, Claim] = {}
        self.beaten: dict[str, float] = {}

    def tick(self, now: float) -> None:
        ctx, s = self.ctx, self.ctx.settings
        for g in list(ctx.groups.values()):
            gid = g.group_id
            if g.hub == ctx.node_id:
                if now - self.beaten.get(gid, -1e9) >= s.beat_s:
                    self.beaten[gid] = now
                    for node in g.successors():
                        ctx.send(node, "beat", gid, g.term, g.seq, lifetime_s=2 * s.beat_s)
                continue
            claim = self.claims.get(gid)
            if claim is not None:
                if now >= claim.deadline:
                    self.take_over(g, claim, now)
                continue
            chain = g.successors()
            if ctx.node_id not in chain:
                continue
            k = chain.index(ctx.node_id)
            silent = now - ctx.heard.setdefault(gid, now)
            if silent >= s.takeover_after_s * (1 + k / 2):
                self.claim(g, now)

    def next_deadline(self) -> float | None:
        if not self.claims:
            return None
        return min(c.deadline for c in self.claims.values())

    # -- the successor --------------------------------------------------------------------

    def claim(self, g: GroupState, now: float) -> None:
        ctx = self.ctx
        asked = {n for n in g.members if n not in (ctx.node_id, g.hub)}
        c = Claim(g.term + 1, g.seq, now + ctx.settings.claim_wait_s, asked)
        self.claims[g.group_id] = c
        ctx.count("claims")
        for node in asked:
            ctx.send(node, "claim", g.group_id, c.term, g.seq,
                     lifetime_s=2 * ctx.settings.claim_wait_s)
        if not asked:
            c.deadline = now

    def claimed(self, sender: bytes, gid: str, term: int, alive: bool, seq: int,
                entries: tuple[Entry, ...], now: float) -> None:
        ctx = self.ctx
        c = self.claims.get(gid)
        g = ctx.groups.get(gid)
        if c is None or g is None or c.term != term or sender not in c.asked:
            ctx.count("claimed_ignored")
            return
        if alive:  # the hub is there for others: only this node lost it
            del self.claims[gid]
            ctx.heard[gid] = now
            ctx.count("claims_dropped")
            return
        c.answered[sender] = seq
        for e in entries:
            if e.kind == "msg" and e.seq > c.base and e.seq not in c.collected \
                    and self.genuine(g, e):
                c.collected[e.seq] = e
        if c.asked <= c.answered.keys():
            c.deadline = now

    def genuine(self, g: GroupState, e: Entry) -> bool:
        """A message another member passes on: signed by a member, for this group."""
        sender, _mid, _epoch, ct = e.args
        try:
            gc = GroupCiphertext.decode(ct)
            if gc.sender != sender or gc.group_id != g.group_id or sender not in g.members:
                raise BadSignature("not this group's member's")
            gc.verify()
        except (EnvelopeError, BadSignature, ValueError):
            self.ctx.count("rejected_forged")
            return False
        return True

    def take_over(self, g: GroupState, c: Claim, now: float) -> None:
        """Order what was collected (as numbered by the old hub, up to the first gap), then
        open the new term."""
        ctx = self.ctx
        del self.claims[g.group_id]
        if g.hub == ctx.node_id or g.term >= c.term:
            return  # the hub came back, or another successor won meanwhile
        while (e := c.collected.get(g.seq + 1)) is not None:
            self.member.apply(g, e, ctx.node_id, now)
        self.hub.append(g, "hub", ctx.node_id, g.hub, now=now, term=c.term, fan=False)
        ctx.count("takeovers")
        for node in g.members:
            if node != ctx.node_id:
                after = min(c.answered.get(node, c.base), g.seq)
                for entry in ctx.store.entries_after(g.group_id, after, wire.MAX_ENTRIES):
                    ctx.fan(node, g.group_id, entry)
        self.member.resend(g, now, force=True)

    # -- everyone -------------------------------------------------------------------------

    def on_claim(self, sender: bytes, gid: str, term: int, seq: int, now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is None or term <= g.term or sender not in g.successors():
            ctx.count("rejected_claims")
            return
        alive = g.hub == ctx.node_id or now - ctx.heard.get(gid, -1e9) < 2 * ctx.settings.beat_s
        entries = [] if alive else [e.pack() for e in
                                    ctx.store.messages_after(gid, seq, wire.MAX_ENTRIES)]
        ctx.count("claims_answered")
        ctx.send(sender, "claimed", gid, term, alive, g.seq, entries)

    def on_beat(self, sender: bytes, gid: str, term: int, seq: int, now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is None:
            return
        if term < g.term:
            ctx.count("rejected_stale_term")
            ctx.send(sender, "stale", gid, g.term, g.hub, g.seq)
            return
        if sender != g.hub or term != g.term:
            ctx.count("rejected_not_hub")
            return
        ctx.heard[gid] = now
        self.claims.pop(gid, None)
        if seq > g.seq:
            self.member.sync(g, now)

    def on_stale(self, sender: bytes, gid: str, term: int, hub: bytes, base: int,
                 now: float) -> None:
        """A member tells this node of a newer term (``base``: the seq of the entry that
        opened it). Believed only as a hint: this node asks that hub, when it is one of the
        successors it knows, for the log from ``base``; the entries themselves (the
        ``hub`` entry first) are what moves it, so a lying member can only cause a sync."""
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is None or term <= g.term or sender not in g.members or \
                hub not in g.successors() or hub == ctx.node_id:
            ctx.count("rejected_stale")
            return
        ctx.count("stale_hints")
        self.member.synced.pop(gid, None)
        ctx.send(hub, "sync", gid, max(0, min(base, g.seq + 1) - 1))
