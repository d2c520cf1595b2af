"""Hub failover: the hub's beats, the successors' watch, claims of a new term, and who may
end a hub's term.

The hub sends its successors (:meth:`GroupState.successors`, the same on every node) a beat
every ``beat_s``. When successor *k* has heard nothing from the hub for
``takeover_after_s × (1 + k/2)``, it claims the next term: it asks every other member for the
messages they hold beyond its own last entry. A member asked (and a member that receives
entries of a higher term it did not grant) does not take the claimant's word: it *probes*
the hub itself (``ping``, answered ``pong`` by a hub that hosts the group) and grants the new
term only when its own probe goes unanswered within ``claim_wait_s``. The claimant takes over
when at least half of the members it asked granted (or there is nobody to ask): it orders what it
collected under the same numbers and appends a ``hub`` entry that opens its term. So a member
that forges a hub change while the hub is alive is refused by everyone (``rejected_not_hub``),
and a successor cut off from everyone claims alone and never takes over.

A hub steps down when members tell it of a higher term (``stale``): two different members,
or every other member when there is only one; it then catches up from the new hub's log.
docs/architecture.md ("Groups") states the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.envelope import BadSignature, EnvelopeError, GroupCiphertext

from . import wire
from .context import Context
from .hub import FAN_BATCH_BYTES, Hub
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
    granted: set[bytes] = field(default_factory=set)
    collected: dict[int, Entry] = field(default_factory=dict)
    """Messages the granting members passed on (each signed by its sender)."""
    votes: dict[int, dict[Entry, set[bytes]]] = field(default_factory=dict)
    """Membership entries the granting members passed on, and who passed each on: the old
    hub's word, which no signature of their own proves."""


@dataclass
class Probe:
    """This node's own check that a group's hub still answers."""

    nonce: int
    deadline: float
    claims: list[tuple[bytes, int, int]] = field(default_factory=list)
    """(claimant, term, its last seq) waiting for the answer."""
    held: list[tuple[bytes, int, int, tuple[Entry, ...]]] = field(default_factory=list)
    """Entries of a higher term (sender, term, last, entries) waiting for the answer."""


MAX_HELD = 8
MEMBERSHIP = frozenset({"joined", "left", "kicked", "role"})


class Failover:
    def __init__(self, ctx: Context, hub: Hub, member: Member) -> None:
        self.ctx = ctx
        self.hub = hub
        self.member = member
        self.claims: dict[str, Claim] = {}
        self.probes: dict[str, Probe] = {}
        self.granted: dict[str, tuple[int, bytes]] = {}
        """group -> (term, node) this node accepted as the next hub."""
        self.stale_from: dict[str, dict[tuple[int, bytes], set[bytes]]] = {}
        self.beaten: dict[str, float] = {}
        self._nonce = 0

    def tick(self, now: float) -> None:
        ctx, s = self.ctx, self.ctx.settings
        for gid, p in list(self.probes.items()):
            if now >= p.deadline:
                self.unanswered(gid, p, now)
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
                    self.decide(g, claim, now)
                continue
            chain = g.successors()
            if ctx.node_id not in chain:
                continue
            k = chain.index(ctx.node_id)
            silent = now - ctx.heard.setdefault(gid, now)
            if silent >= s.takeover_after_s * (1 + k / 2):
                self.claim(g, now)

    def next_deadline(self) -> float | None:
        times = [c.deadline for c in self.claims.values()] + \
            [p.deadline for p in self.probes.values()]
        return min(times) if times else None

    # -- probing the hub ------------------------------------------------------------------

    def probe(self, g: GroupState, now: float) -> Probe:
        p = self.probes.get(g.group_id)
        if p is None:
            self._nonce += 1
            p = self.probes[g.group_id] = Probe(self._nonce, now + self.ctx.settings.claim_wait_s)
            self.ctx.count("probes")
            self.ctx.send(g.hub, "ping", g.group_id, p.nonce,
                          lifetime_s=self.ctx.settings.claim_wait_s)
        return p

    def on_pong(self, sender: bytes, gid: str, nonce: int, now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        p = self.probes.get(gid)
        if g is None or p is None or p.nonce != nonce or sender != g.hub:
            ctx.count("pongs_ignored")
            return
        del self.probes[gid]
        ctx.heard[gid] = now
        for claimant, term, _seq in p.claims:  # the hub answers: no new term
            ctx.send(claimant, "claimed", gid, term, True, g.seq, [])
        ctx.stats["rejected_not_hub"] += len(p.held)

    def unanswered(self, gid: str, p: Probe, now: float) -> None:
        """The hub did not answer this node: grant the best claim (highest term, then the
        earliest successor), then take the entries held for it."""
        ctx = self.ctx
        del self.probes[gid]
        g = ctx.groups.get(gid)
        if g is None:
            return
        ctx.count("hub_unanswered")
        chain = g.successors()
        offers = [(t, n) for n, t, _s in p.claims] + [(t, n) for n, t, _l, _e in p.held]
        offers = [(t, n) for t, n in offers if t > g.term and n in chain]
        if offers:
            term, node = max(offers, key=lambda o: (o[0], -chain.index(o[1])))
            self.granted[gid] = (term, node)
            ctx.count("terms_granted")
        for claimant, term, seq in p.claims:
            ok = self.granted.get(gid) == (term, claimant)
            packed: list[list[object]] = []
            size = 0
            for e in ctx.store.entries_after(gid, seq, wire.MAX_ENTRIES) if ok else []:
                size += (len(e.args[3]) if e.kind == "msg" else 0) + 100
                if packed and size > FAN_BATCH_BYTES:  # what the router carries; the rest
                    break  # comes again from its senders
                packed.append(e.pack())
            ctx.send(claimant, "claimed", gid, term, not ok, g.seq, packed)
        for sender, term, last, entries in p.held:
            self.member.entries(sender, gid, term, last, entries, now)

    def accepts(self, g: GroupState, sender: bytes, term: int, last: int,
                entries: tuple[Entry, ...], now: float) -> bool:
        """Entries of a higher term than ``g``'s: accepted from the node this node granted
        that term; otherwise held while this node probes its hub (a successor's word is
        not enough)."""
        if self.granted.get(g.group_id) == (term, sender):
            return True
        if sender not in g.successors() or g.hub == self.ctx.node_id:
            self.ctx.count("rejected_not_hub")
            return False
        p = self.probe(g, now)
        if len(p.held) < MAX_HELD:
            p.held.append((sender, term, last, entries))
        return False

    # -- the successor --------------------------------------------------------------------

    def claim(self, g: GroupState, now: float) -> None:
        ctx = self.ctx
        asked = {n for n in g.members if n not in (ctx.node_id, g.hub)}
        c = Claim(g.term + 1, g.seq, now + 2 * ctx.settings.claim_wait_s, asked)
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
        c.answered[sender] = seq
        if not alive:
            c.granted.add(sender)
            for e in entries:
                if e.seq <= c.base:
                    continue
                if e.kind == "msg" and e.seq not in c.collected and self.genuine(g, e):
                    c.collected[e.seq] = e
                elif e.kind in MEMBERSHIP and len(c.votes) < wire.MAX_ENTRIES:
                    c.votes.setdefault(e.seq, {}).setdefault(e, set()).add(sender)
        if c.asked <= c.answered.keys():
            c.deadline = now

    def decide(self, g: GroupState, c: Claim, now: float) -> None:
        ctx = self.ctx
        del self.claims[g.group_id]
        if g.hub == ctx.node_id or g.term >= c.term:
            return  # another successor won meanwhile
        if c.asked and 2 * len(c.granted) < len(c.asked):
            # at least half the others must have granted: two successors on two sides of a
            # partition would otherwise both open this term, and the group stay split
            ctx.heard[g.group_id] = now
            ctx.count("claims_dropped")
            ctx.count("claims_unanswered")
            return
        self.take_over(g, c, now)

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

    def agreed(self, c: Claim, seq: int) -> Entry | None:
        """What the old hub ordered at ``seq``, as the granting members tell it: a signed
        message, or a membership entry that at least half of the members asked passed on
        identically (and nobody contradicted). A change that removes this node is not
        taken: it would end the claimant's own membership in the middle of its claim."""
        msg = c.collected.get(seq)
        votes = c.votes.get(seq, {})
        if msg is not None:
            return msg if not votes else None
        if len(votes) != 1:
            return None
        [(e, voters)] = votes.items()
        if 2 * len(voters) < len(c.asked):
            self.ctx.count("claim_entries_unconfirmed")
            return None
        if e.kind in ("left", "kicked") and e.args[0] == self.ctx.node_id:
            return None
        return e

    def take_over(self, g: GroupState, c: Claim, now: float) -> None:
        """Order what was collected (as numbered by the old hub, up to the first gap or
        disagreement), then open the new term."""
        ctx = self.ctx
        while (e := self.agreed(c, g.seq + 1)) is not None:
            self.member.apply(g, e, ctx.node_id, now)
        self.hub.append(g, "hub", ctx.node_id, g.hub, now=now, term=c.term, fan=False)
        ctx.count("takeovers")
        for node in g.members:
            if node != ctx.node_id:  # from the hub entry at the latest (g.seq is its seq)
                after = min(c.answered.get(node, c.base), g.seq - 1)
                for entry in ctx.store.entries_after(g.group_id, after, wire.MAX_ENTRIES):
                    ctx.fan(node, g.group_id, entry)
        self.member.resend(g, now, force=True)

    # -- everyone -------------------------------------------------------------------------

    def on_claim(self, sender: bytes, gid: str, term: int, seq: int, now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is not None and term <= g.term and sender in g.members and g.term > 1:
            # a term that is taken: the claimant missed it (it was cut off); tell it
            ctx.count("rejected_claims")
            ctx.send(sender, "stale", gid, g.term, g.hub, self.base(g))
            return
        if g is None or term <= g.term or sender not in g.successors() or \
                ctx.node_id not in g.members:
            ctx.count("rejected_claims")
            return
        ctx.count("claims_answered")
        if g.hub == ctx.node_id:  # this node is the hub, and answers
            ctx.send(sender, "claimed", gid, term, True, g.seq, [])
            return
        p = self.probe(g, now)
        if len(p.claims) < MAX_HELD:
            p.claims.append((sender, term, seq))

    def on_ping(self, sender: bytes, gid: str, nonce: int) -> None:
        g = self.hub.hosted(gid)
        if g is None or sender not in g.members:
            self.ctx.count("pings_ignored")
            return
        self.ctx.send(sender, "pong", gid, nonce, lifetime_s=self.ctx.settings.claim_wait_s)

    def on_beat(self, sender: bytes, gid: str, term: int, seq: int, now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is None:
            return
        if term < g.term:
            ctx.count("rejected_stale_term")
            ctx.send(sender, "stale", gid, g.term, g.hub, self.base(g))
            return
        if term > g.term and sender in g.successors() and sender != g.hub:
            ctx.count("newer_beats")  # a hub of a term this node missed: ask it for the log
            self.member.sync(g, now, to=sender)
            return
        if sender != g.hub or term != g.term:
            ctx.count("rejected_not_hub")
            return
        ctx.heard[gid] = now
        self.claims.pop(gid, None)
        if seq > g.seq:
            self.member.sync(g, now)

    def base(self, g: GroupState) -> int:
        """The seq of the entry that opened the current term (1 for the first)."""
        return self.ctx.store.term_start(g.group_id, g.term) or g.seq

    def on_stale(self, sender: bytes, gid: str, term: int, hub: bytes, base: int,
                 now: float) -> None:
        """A member tells this node of a newer term (``base``: the seq of its ``hub``
        entry). A member asks that hub for the log from there (the entries then go through
        :meth:`accepts`); a hub steps down only when two members (or every other one) say
        so."""
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is None or term <= g.term or (sender not in g.members and sender != g.hub) or \
                hub not in g.successors() or hub == ctx.node_id:
            ctx.count("rejected_stale")
            return
        if g.hub == ctx.node_id:
            said = self.stale_from.setdefault(gid, {}).setdefault((term, hub), set())
            said.add(sender)
            others = len([n for n in g.members if n != ctx.node_id])
            if len(said) < min(2, others):
                ctx.count("stale_heard")
                return
            ctx.count("stepped_down")
            self.granted[gid] = (term, hub)
            self.stale_from.pop(gid, None)
            for node in g.members:  # those that followed this hub learn it too
                if node not in said and node not in (ctx.node_id, hub):
                    ctx.send(node, "stale", gid, term, hub, base)
        ctx.count("stale_hints")
        self.member.synced.pop(gid, None)
        ctx.send(hub, "sync", gid, max(0, min(base, g.seq + 1) - 1))

    def payload(self, sender: bytes, p: wire.Payload, now: float) -> bool:
        a: tuple[Any, ...] = p.args
        match p.kind:
            case "beat":
                self.on_beat(sender, p.group_id, a[0], a[1], now)
            case "claim":
                self.on_claim(sender, p.group_id, a[0], a[1], now)
            case "claimed":
                self.claimed(sender, p.group_id, a[0], a[1], a[2], a[3], now)
            case "stale":
                self.on_stale(sender, p.group_id, a[0], a[1], a[2], now)
            case "ping":
                self.on_ping(sender, p.group_id, a[0])
            case "pong":
                self.on_pong(sender, p.group_id, a[0], now)
            case _:
                return False
        return True
