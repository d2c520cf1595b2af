"""The hub side: admitting members, ordering messages (1, 2, 3... per group) and fanning the
log out. The hub checks membership, the sender's signature and a per-sender rate before it
orders a message, and never holds a key that opens one."""

from __future__ import annotations

from typing import Any

from services.router.gossip import RateLimit
from shared.envelope import BadSignature, EnvelopeError, GroupCiphertext

from . import wire
from .context import Context
from .member import Member
from .state import GroupState
from .wire import Entry

SYNC_BATCH = 200
"""Entries per `entries` payload of a gap fill."""
FAN_BATCH_BYTES = 150 * 1024


class Hub:
    def __init__(self, ctx: Context, member: Member) -> None:
        self.ctx = ctx
        self.member = member
        s = ctx.settings
        self.rates = RateLimit(s.rate_per_s, s.rate_burst, keys=100_000)
        """Per (group, member): what the hub orders from it."""

    def hosted(self, gid: str) -> GroupState | None:
        g = self.ctx.groups.get(gid)
        return g if g is not None and g.hub == self.ctx.node_id else None

    # -- the log --------------------------------------------------------------------------

    def append(self, g: GroupState, kind: str, *args: Any, now: float,
               skip: bytes = b"", extra: bytes = b"", term: int = 0, fan: bool = True) -> Entry:
        """Order an entry: apply it here, then send it to every member (but ``skip``, and
        also to ``extra``: a member just removed learns it)."""
        e = Entry(g.seq + 1, term or g.term, self.ctx.now_ms(), kind, args)
        targets = [n for n in g.members if n not in (skip, self.ctx.node_id)] if fan else []
        if extra and extra != self.ctx.node_id and extra not in targets:
            targets.append(extra)
        self.member.apply(g, e, self.ctx.node_id, now)
        for node in targets:
            self.ctx.fan(node, g.group_id, e)
        self.ctx.count(f"ordered_{kind}")
        return e

    def flush(self) -> None:
        """Send the entries gathered for each node in this batch, a few per payload."""
        ctx = self.ctx
        for (to, gid), entries in ctx.fanout.items():
            g = ctx.groups.get(gid)
            # a group that just ended (its last member left) still tells that member
            term, last = (g.term, g.seq) if g is not None else (entries[-1].term,
                                                                 entries[-1].seq)
            chunk: list[Any] = []
            size = 0
            for e in entries:
                packed = e.pack()
                n = len(e.args[3]) + 100 if e.kind == "msg" else 200
                if chunk and (size + n > FAN_BATCH_BYTES or len(chunk) >= wire.MAX_ENTRIES):
                    ctx.send(to, "entries", gid, term, last, chunk)
                    chunk, size = [], 0
                chunk.append(packed)
                size += n
            ctx.send(to, "entries", gid, term, last, chunk)
        ctx.fanout.clear()

    def refuse(self, to: bytes, gid: str, what: str, why: str) -> None:
        self.ctx.count(f"refused_{what}")
        self.ctx.send(to, "refused", gid, what, why)

    # -- requests from members ------------------------------------------------------------

    def create(self, sender: bytes, gid: str, name: str, invite_only: bool, max_members: int,
               invitees: tuple[bytes, ...], now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is not None:
            if g.hub == ctx.node_id and g.is_admin(sender) and g.seq == 1:
                ctx.send(sender, "state", gid, g.snapshot().pack())  # a re-sent create
            else:
                self.refuse(sender, gid, "create", "that group id is taken")
            return
        if sum(g.hub == ctx.node_id for g in ctx.groups.values()) >= ctx.settings.max_hosted:
            self.refuse(sender, gid, "create", "this hub hosts as many groups as it may")
            return
        g = GroupState(gid, name, ctx.node_id, 1, 0, invite_only,
                       min(max_members or ctx.settings.max_members, ctx.settings.max_members),
                       ctx.now_ms())
        ctx.groups[gid] = g
        ctx.heard[gid] = now
        self.append(g, "created", sender, name, invite_only, g.max_members, now=now)
        if sender != ctx.node_id:
            ctx.send(sender, "state", gid, g.snapshot().pack())
        else:
            self.member.rotate(g, now)
        for node in invitees[:g.max_members]:
            if node != sender:
                self.invite(g, sender, node)

    def invite(self, g: GroupState, inviter: bytes, node: bytes) -> None:
        ctx = self.ctx
        if node in g.members:
            return
        expires = ctx.now_ms() + int(ctx.settings.invite_ttl_s * 1000)
        ctx.store.put_invited(g.group_id, node, expires)
        ctx.send(node, "invited", g.group_id, g.name, inviter, expires)

    def join(self, sender: bytes, g: GroupState, now: float) -> None:
        ctx = self.ctx
        if sender in g.members:
            ctx.send(sender, "state", g.group_id, g.snapshot().pack())  # asked again
            return
        if g.invite_only and not ctx.store.is_invited(g.group_id, sender, ctx.now_ms()):
            return self.refuse(sender, g.group_id, "join", "not invited")
        if len(g.members) >= g.max_members:
            return self.refuse(sender, g.group_id, "join", "the group is full")
        ctx.store.delete_invited(g.group_id, sender)
        self.append(g, "joined", sender, now=now, skip=sender)
        if sender != ctx.node_id:
            ctx.send(sender, "state", g.group_id, g.snapshot().pack())

    def leave(self, sender: bytes, g: GroupState, now: float) -> None:
        if sender not in g.members:
            return self.refuse(sender, g.group_id, "leave", "not a member")
        if g.is_admin(sender) and g.admins() == 1 and len(g.members) > 1:
            return self.refuse(sender, g.group_id, "leave", "the last admin must first make "
                               "another member admin")
        self.append(g, "left", sender, now=now, extra=sender)
        self.end_if_empty(g)

    def end_if_empty(self, g: GroupState) -> None:
        if not g.members and g.group_id in self.ctx.groups:
            self.ctx.store.delete_group(g.group_id)
            del self.ctx.groups[g.group_id]
            self.ctx.count("groups_ended")

    def kick(self, sender: bytes, g: GroupState, target: bytes, now: float) -> None:
        if not g.is_admin(sender):
            return self.refuse(sender, g.group_id, "kick", "only admins kick")
        if target not in g.members or target == sender:
            return self.refuse(sender, g.group_id, "kick", "not a member (or yourself)")
        self.append(g, "kicked", target, sender, now=now, extra=target)

    def role(self, sender: bytes, g: GroupState, target: bytes, role: str, now: float) -> None:
        if not g.is_admin(sender):
            return self.refuse(sender, g.group_id, "role", "only admins change roles")
        m = g.members.get(target)
        if m is None or m.role == role:
            return
        if role == "member" and g.admins() <= 1:
            return self.refuse(sender, g.group_id, "role", "the last admin cannot step down")
        self.append(g, "role", target, role, sender, now=now)

    def invite_request(self, sender: bytes, g: GroupState, node: bytes) -> None:
        if sender not in g.members or (g.invite_only and not g.is_admin(sender)):
            return self.refuse(sender, g.group_id, "invite", "only admins invite")
        if len(g.members) >= g.max_members:
            return self.refuse(sender, g.group_id, "invite", "the group is full")
        self.invite(g, sender, node)

    def message(self, sender: bytes, g: GroupState, mid: bytes, epoch: int, ct: bytes,
                now: float) -> None:
        ctx = self.ctx
        if sender not in g.members:
            return self.refuse(sender, g.group_id, "msg", "not a member")
        try:
            gc = GroupCiphertext.decode(ct)
            if gc.sender != sender or gc.group_id != g.group_id:
                raise BadSignature("another sender's or group's message")
            gc.verify()
        except (EnvelopeError, BadSignature, ValueError):
            ctx.count("rejected_forged")
            return
        seq = ctx.store.has_message(g.group_id, sender, mid)
        if seq:  # sent again (a lost reply, a new hub): the sender learns its place again
            ctx.count("duplicate_messages")
            for e in ctx.store.entries_after(g.group_id, seq - 1, 1):
                ctx.fan(sender, g.group_id, e)
            return
        if not self.rates.take(g.group_id.encode() + sender, now):
            ctx.count("rate_limited")  # not ordered: the sender sends it again later
            return
        self.append(g, "msg", sender, mid, epoch, ct, now=now)

    def sync(self, sender: bytes, g: GroupState, after: int) -> None:
        if sender not in g.members and sender != g.prev_hub:  # a deposed hub catches up
            return self.refuse(sender, g.group_id, "sync", "not a member")
        self.ctx.count("syncs_served")
        entries = self.ctx.store.entries_after(g.group_id, after, SYNC_BATCH)
        first = entries[0].seq if entries else g.seq + 1
        if first > after + 1:  # what it misses is purged (older than history_s)
            self.ctx.send(sender, "state", g.group_id, g.snapshot().pack())
            return
        opening = self.ctx.store.first_of_term(g.group_id, g.term)
        if opening is not None and opening.kind == "hub" and opening.seq <= after:
            # the entry that opened this term, also to a node that asks from past it: one
            # still in an older term sets aside what it holds from there on (it cannot know
            # where the term began; a stale hint gives only the informer's last seq)
            self.ctx.fan(sender, g.group_id, opening)
        for e in entries:
            self.ctx.fan(sender, g.group_id, e)
        if not entries:
            self.ctx.send(sender, "entries", g.group_id, g.term, g.seq, [])

    def payload(self, sender: bytes, p: wire.Payload, now: float) -> bool:
        """The hub side's payloads; False if ``p`` is not one of them."""
        a = p.args
        if p.kind == "create":
            self.create(sender, p.group_id, a[0], a[1], a[2], a[3], now)
            return True
        if p.kind not in ("join", "leave", "kick", "role", "invite", "msg", "sync"):
            return False
        g = self.hosted(p.group_id)
        if g is None:
            known = self.ctx.groups.get(p.group_id)
            self.ctx.count("not_hub")
            if known is not None:  # the sender has not heard of the new hub yet
                self.ctx.send(sender, "stale", p.group_id, known.term, known.hub, known.seq)
            return True
        match p.kind:
            case "join":
                self.join(sender, g, now)
            case "leave":
                self.leave(sender, g, now)
            case "kick":
                self.kick(sender, g, a[0], now)
            case "role":
                self.role(sender, g, a[0], a[1], now)
            case "invite":
                self.invite_request(sender, g, a[0])
            case "msg":
                self.message(sender, g, a[0], a[1], a[2], now)
            case "sync":
                self.sync(sender, g, a[0])
        return True
