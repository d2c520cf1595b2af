"""The member side: applying the hub's log in order, sender keys, decrypting and showing
messages, and sending this node's messages until a hub has ordered them."""

from __future__ import annotations

from typing import Any

from shared.wire.messages import crypto as cm
from shared.wire.messages import groups as gm

from . import wire
from .context import Context
from .state import GroupState
from .wire import Entry

MAX_BUFFERED = 2_000
"""Entries held per group while an earlier one is missing."""
MAX_EARLY_KEYS = 64
"""Sender keys held per group from nodes that are not members yet (a joiner's key can
overtake the hub's entry that admits it)."""
SYNC_EVERY_S = 2.0
KEY_WAIT_S = 10.0
"""How long a message waiting for its sender's key holds back the later ones' events."""


class Member:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.buffered: dict[str, dict[int, Entry]] = {}
        self.waiting: dict[tuple[str, bytes, int], list[Entry]] = {}
        """(group, sender, epoch) -> messages waiting for that sender key."""
        self.early_keys: dict[str, dict[tuple[bytes, int], bytes]] = {}
        self.synced: dict[str, float] = {}
        self.want_sync: dict[str, bytes | None] = {}
        """group -> whom to ask (None: the hub), for a sync put off by SYNC_EVERY_S."""
        self.joining: dict[str, bytes] = {}
        """group -> the hub asked to admit (or create) it: only it may send the state."""
        self.resent: dict[str, float] = {}
        self.showing: dict[str, dict[int, Any]] = {}
        """group -> seq -> when it began waiting (wall s), or (event, blobs) once opened, or
        None (could not be opened): what is published, in order, by :meth:`release`."""
        self.failover: Any = None
        """The :class:`~.failover.Failover` that judges higher terms (set by the core)."""
        self.greeted: dict[str, set[bytes]] = {}
        """group -> members this node, since it joined, answered with its own key. Each
        member gives a joiner its key when it applies the join, so the answer reaches it
        after the join too: the joiner's first key may have reached it earlier, before the
        leave of the joiner's previous membership, which then forgot it."""
        self.opening: set[tuple[str, bytes, bytes]] = set()
        """(group, sender, message id) of the messages crypto is opening: one that comes
        back at a new place meanwhile (a truncated term) is not opened and shown twice."""

    # -- the log --------------------------------------------------------------------------

    def entries(self, sender: bytes, gid: str, term: int, last: int,
                entries: tuple[Entry, ...], now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is None:
            ctx.count("unknown_group")
            return
        if not self.authorised(g, sender, term, last, entries, now):
            return
        ctx.heard[gid] = now
        buf = self.buffered.setdefault(gid, {})
        for e in entries:
            if e.kind == "hub" and e.seq <= g.seq and e.term > g.term:
                self.truncate(g, e.seq)
                buf.clear()
        for e in entries:
            if e.seq > g.seq and len(buf) < MAX_BUFFERED:
                buf.setdefault(e.seq, e)
        while (e := buf.pop(g.seq + 1, None)) is not None:  # type: ignore[arg-type]
            if not self.apply(g, e, sender, now):
                buf.clear()
                return
        if g.group_id not in ctx.groups:
            return  # this node left or was removed
        if buf or last > g.seq:  # a newer term's hub (its hub entry missed): ask it
            self.sync(g, now, to=sender if term > g.term else None)

    def authorised(self, g: GroupState, sender: bytes, term: int, last: int,
                   entries: tuple[Entry, ...], now: float) -> bool:
        """Entries come from the hub of their term: the current one, or for a higher term
        the successor this node granted it to (services/groups/failover.py)."""
        ctx = self.ctx
        if term < g.term:
            ctx.count("rejected_stale_term")
            ctx.send(sender, "stale", g.group_id, g.term, g.hub, g.seq)
            return False
        if term == g.term and sender != g.hub:
            ctx.count("rejected_not_hub")
            return False
        if term > g.term:
            return self.failover.accepts(g, sender, term, last, entries, now)
        return True

    def truncate(self, g: GroupState, seq: int) -> None:
        """A new term starts at ``seq``, below what this node holds: what it holds from
        there was ordered by a hub the others had left. This node's own messages among it go
        back to its outbox (the new hub orders them); messages already shown are not shown
        again when they come back at a new place. Membership changes in the part set aside
        stay applied (docs/architecture.md, Groups: the new hub took those that at least
        half of the members confirmed; these too few had)."""
        ctx = self.ctx
        for e in ctx.store.truncate(g.group_id, seq):
            if e.kind == "msg" and e.args[0] == ctx.node_id:
                ctx.store.put_out(g.group_id, e.args[1], e.args[2], e.args[3], ctx.now_ms())
        g.seq = seq - 1
        ctx.store.put_group(g)
        ctx.count("log_truncated")

    def sync(self, g: GroupState, now: float, force: bool = False,
             to: bytes | None = None) -> None:
        if not force and now - self.synced.get(g.group_id, -1e9) < SYNC_EVERY_S:
            self.want_sync[g.group_id] = to  # asked again at a tick, not dropped
            return
        self.want_sync.pop(g.group_id, None)
        self.synced[g.group_id] = now
        self.ctx.send(to or g.hub, "sync", g.group_id, g.seq)

    def apply(self, g: GroupState, e: Entry, source: bytes, now: float) -> bool:
        """Apply the next entry of ``g`` (ordered by this node as hub, or received from the
        hub); False if it ends this node's membership."""
        ctx = self.ctx
        me = ctx.node_id
        if e.kind == "hub" and e.term <= g.term:
            ctx.count("rejected_stale_term")
            return False
        if e.kind == "hub" and (e.args[0] not in g.successors() or e.args[1] != g.hub):
            ctx.count("rejected_hub_entries")  # only a successor replaces the hub it names
            return False
        if e.kind == "msg" and e.args[0] not in g.members:
            ctx.count("rejected_not_member")  # stored for the order, never shown
        stored = ctx.store.put_entry(g.group_id, e)
        if not stored:
            ctx.count("duplicate_entries")
        was_member = me in g.members
        old_hub = g.hub
        g.apply(e)
        ctx.store.put_group(g)
        match e.kind:
            case "msg":
                sender, mid = e.args[0], e.args[1]
                if sender == me and ctx.store.delete_out(g.group_id, mid):
                    ctx.publish(gm.SendStatus(group_id=g.group_id, id=mid, status="ordered",
                                              seq=e.seq))
                if stored == 1 and was_member and sender in g.members:
                    self.open(g.group_id, e)
                elif stored == 1:
                    ctx.store.mark_shown(g.group_id, e.seq)
            case "created":
                self.member_event(g, e, e.args[0], "joined")
            case "joined":
                node = e.args[0]
                self.member_event(g, e, node, "joined")
                if was_member and node != me:
                    self.give_key(g, node, now)
                    if g.group_id in self.greeted:  # it has this node's key: no answer
                        self.greeted[g.group_id].add(node)
                    self.early(g)
            case "left" | "kicked":
                node = e.args[0]
                self.member_event(g, e, node, e.kind)
                if node == me and g.hub != me:
                    self.remove(g, "left" if e.kind == "left" else "removed")
                    return False
                if node == me:  # the hub goes on hosting the group, as a non-member
                    self.stop_member(g, "left" if e.kind == "left" else "removed")
                    return True
                ctx.store.forget_keys(g.group_id, node)
                if was_member:
                    self.rotate(g, now)  # what is sent from now on, the node cannot read
            case "role":
                self.member_event(g, e, e.args[0], "role")
            case "hub":
                ctx.heard[g.group_id] = now
                ctx.publish(gm.GroupChanged(group_id=g.group_id, change="hub", hub=g.hub,
                                            term=g.term, seq=e.seq))
                ctx.count("hub_changes")
                if g.hub != old_hub and me in g.members:
                    self.resend(g, now, force=True)
        if me not in g.members and g.hub != me:
            self.remove(g, "removed")
            return False
        return True

    def member_event(self, g: GroupState, e: Entry, node: bytes, change: str) -> None:
        m = g.members.get(node)
        self.ctx.publish(gm.MemberChanged(group_id=g.group_id, node_id=node, change=change,  # type: ignore[arg-type]
                                          role=m.role if m else "member",  # type: ignore[arg-type]
                                          seq=e.seq))

    def remove(self, g: GroupState, change: str) -> None:
        ctx = self.ctx
        ctx.store.delete_group(g.group_id)
        ctx.groups.pop(g.group_id, None)
        self.buffered.pop(g.group_id, None)
        self.showing.pop(g.group_id, None)
        self.greeted.pop(g.group_id, None)
        ctx.publish(gm.GroupChanged(group_id=g.group_id, change=change, hub=g.hub,  # type: ignore[arg-type]
                                    term=g.term))

    def stop_member(self, g: GroupState, change: str) -> None:
        """This node, the hub, is no longer a member: it keeps ordering, holds no key."""
        ctx = self.ctx
        for node in (*g.members, ctx.node_id):
            ctx.store.forget_keys(g.group_id, node)
        ctx.publish(gm.GroupChanged(group_id=g.group_id, change=change, hub=g.hub,  # type: ignore[arg-type]
                                    term=g.term))

    # -- joining --------------------------------------------------------------------------

    def state(self, sender: bytes, gid: str, snap: wire.Snapshot, now: float) -> None:
        """The hub admitted this node (or created the group it asked for): start from its
        snapshot."""
        ctx = self.ctx
        g = ctx.groups.get(gid)
        if g is not None and sender == g.hub and ctx.node_id in g.members \
                and snap.term == g.term and snap.seq > g.seq:
            return self.reset(g, snap)
        if self.joining.get(gid) != sender:
            ctx.count("rejected_unasked_state")
            return
        if gid in ctx.groups or ctx.node_id not in {m[0] for m in snap.members}:
            ctx.count("rejected_unasked_state")
            return
        del self.joining[gid]
        ctx.store.delete_invite(gid)
        g = GroupState.from_snapshot(gid, sender, snap)
        ctx.groups[gid] = g
        ctx.heard[gid] = now
        ctx.store.put_group(g)
        creator = len(g.members) == 1 and g.is_admin(ctx.node_id)
        ctx.publish(gm.GroupChanged(group_id=gid, change="created" if creator else "joined",
                                    hub=g.hub, term=g.term))
        self.greeted[gid] = set()
        self.rotate(g, now)
        self.early(g)

    def reset(self, g: GroupState, snap: wire.Snapshot) -> None:
        """The hub no longer has the entries this node misses (older than its history):
        start again from its state. The messages in between are not shown."""
        ctx = self.ctx
        fresh = GroupState.from_snapshot(g.group_id, g.hub, snap)
        fresh.prev_hub = g.prev_hub
        ctx.groups[g.group_id] = fresh
        self.buffered.pop(g.group_id, None)
        ctx.store.put_group(fresh)
        ctx.count("resets")
        if ctx.node_id not in fresh.members:
            self.remove(fresh, "removed")

    def invited(self, hub: bytes, gid: str, name: str, inviter: bytes, expires_ms: int) -> None:
        ctx = self.ctx
        if gid in ctx.groups:
            ctx.count("invites_ignored")
            return
        now_ms = ctx.now_ms()
        expires_ms = min(expires_ms, now_ms + int(ctx.settings.invite_ttl_s * 1000))
        if expires_ms <= now_ms or (ctx.store.invite(gid) is None
                                    and ctx.store.count_invites() >= ctx.settings.max_invites):
            ctx.count("invites_refused")
            return
        ctx.store.put_invite(gid, name, hub, inviter, expires_ms)
        ctx.count("invites_received")
        ctx.publish(gm.Invited(group_id=gid, name=name, hub=hub, inviter=inviter,
                               expires_ms=expires_ms))

    # -- sender keys ----------------------------------------------------------------------

    def own_key(self, g: GroupState, now: float) -> tuple[int, bytes]:
        ctx = self.ctx
        k = ctx.store.latest_key(g.group_id, ctx.node_id)
        s = ctx.settings
        if k is None or k[3] >= s.rotate_messages or \
                ctx.now_ms() - k[2] >= s.rotate_age_s * 1000:
            return self.rotate(g, now)
        return k[0], k[1]

    def rotate(self, g: GroupState, now: float) -> tuple[int, bytes]:
        """A new sender key for this node, sent (sealed by the router) to every other
        member; the previous ones are kept for the messages still on their way."""
        ctx = self.ctx
        k = ctx.store.latest_key(g.group_id, ctx.node_id)
        epoch = (k[0] if k else 0) + 1
        key = ctx.randbytes(32)
        ctx.store.put_key(g.group_id, ctx.node_id, epoch, key, ctx.now_ms())
        ctx.store.purge_keys(g.group_id, ctx.node_id, epoch - 4)
        ctx.count("keys_rotated")
        for node in g.members:
            if node != ctx.node_id:
                ctx.send(node, "key", g.group_id, epoch, key)
        return epoch, key

    def give_key(self, g: GroupState, node: bytes, now: float) -> None:
        k = self.ctx.store.latest_key(g.group_id, self.ctx.node_id)
        if k is not None:
            self.ctx.send(node, "key", g.group_id, k[0], k[1])

    def key(self, sender: bytes, gid: str, epoch: int, key: bytes) -> None:
        ctx = self.ctx
        g = ctx.groups.get(gid)
        joining = g is None and gid in self.joining  # keys can overtake the hub's state
        if not joining and (g is None or ctx.node_id not in g.members) or epoch == 0:
            ctx.count("keys_refused")
            return
        if g is None or sender not in g.members:
            early = self.early_keys.setdefault(gid, {})
            if len(early) >= MAX_EARLY_KEYS:
                ctx.count("keys_refused")
                return
            early[(sender, epoch)] = key
            return
        self.keep_key(g, sender, epoch, key)

    def early(self, g: GroupState) -> None:
        """Keys that came before their owner was a member here, now that it is."""
        k = self.early_keys.get(g.group_id, {})
        for (owner, epoch), key in list(k.items()):
            if owner in g.members:
                del k[(owner, epoch)]
                self.keep_key(g, owner, epoch, key)

    def keep_key(self, g: GroupState, sender: bytes, epoch: int, key: bytes) -> None:
        ctx = self.ctx
        ctx.store.put_key(g.group_id, sender, epoch, key, ctx.now_ms())
        ctx.store.purge_keys(g.group_id, sender, epoch - 4)
        ctx.count("keys_received")
        greeted = self.greeted.get(g.group_id)
        if greeted is not None and sender not in greeted:
            greeted.add(sender)
            self.give_key(g, sender, 0.0)
        for e in self.waiting.pop((g.group_id, sender, epoch), []):
            self.open(g.group_id, e)

    # -- showing messages -----------------------------------------------------------------

    def open(self, gid: str, e: Entry) -> None:
        ctx = self.ctx
        sender, mid, epoch, ct = e.args
        showing = self.showing.setdefault(gid, {})
        if len(showing) < 2 * MAX_BUFFERED:
            showing.setdefault(e.seq, ctx.wall())
        key = ctx.store.key(gid, sender, epoch)
        if key is None:
            waiting = self.waiting.setdefault((gid, sender, epoch), [])
            if len(waiting) < MAX_BUFFERED:
                waiting.append(e)
            ctx.count("waiting_for_key")
            return
        if (gid, sender, mid) in self.opening:
            return
        self.opening.add((gid, sender, mid))
        ctx.call("crypto", cm.GroupOpen(group_id=gid, sender=sender, key=key),
                 ("open", gid, e), blobs=(ct,))

    def opened(self, gid: str, e: Entry, ok: bool, blobs: tuple[bytes, ...]) -> None:
        ctx = self.ctx
        self.opening.discard((gid, e.args[0], e.args[1]))
        if gid not in ctx.groups:
            return
        ctx.store.mark_shown_message(gid, e.args[0], e.args[1])  # wherever it is now
        showing = self.showing.setdefault(gid, {})
        if not ok:
            ctx.count("undecryptable")
            showing[e.seq] = None
        else:
            ctx.count("received")
            showing[e.seq] = (gm.MessageReceived(group_id=gid, seq=e.seq, id=e.args[1],
                                                 sender=e.args[0], timestamp_ms=e.ts_ms),
                              blobs[:1])
        self.release(gid)

    def holding(self) -> int:
        """Messages that hold later ones back now (waiting for a key, not for long)."""
        now = self.ctx.wall()
        return sum(isinstance(v, float) and now - v < KEY_WAIT_S
                   for showing in self.showing.values() for v in showing.values())

    def release(self, gid: str) -> None:
        """Publish the opened messages in group order: one still waiting for its sender's
        key holds the later ones back for ``KEY_WAIT_S``, then they go on without it (it
        follows when its key comes; its seq says where it belongs)."""
        showing = self.showing.get(gid)
        if not showing:
            return
        now = self.ctx.wall()
        for seq in sorted(showing):
            v = showing[seq]
            if isinstance(v, float):
                if now - v < KEY_WAIT_S:
                    return
                continue
            del showing[seq]
            if v is not None:
                self.ctx.publish(v[0], v[1])

    def reopen(self, gid: str) -> None:
        """After a restart: what was ordered but not shown yet."""
        for e in self.ctx.store.unshown(gid):
            self.open(gid, e)

    # -- sending --------------------------------------------------------------------------

    def sealed(self, gid: str, mid: bytes, epoch: int, ct: bytes, now: float) -> None:
        ctx = self.ctx
        ctx.store.put_out(gid, mid, epoch, ct, ctx.now_ms())
        ctx.store.count_key_use(gid, ctx.node_id, epoch)
        ctx.count("sent")
        g = ctx.groups.get(gid)
        if g is not None:
            ctx.send(g.hub, "msg", gid, mid, epoch, ct)

    def resend(self, g: GroupState, now: float, force: bool = False) -> None:
        """This node's messages the hub has not ordered yet, again (to a new hub, or after
        ``resend_s``): the hub keeps one copy of each."""
        ctx = self.ctx
        if not force and now - self.resent.get(g.group_id, now) < ctx.settings.resend_s:
            self.resent.setdefault(g.group_id, now)
            return
        self.resent[g.group_id] = now
        older = ctx.now_ms() - int(ctx.settings.resend_s * 1000)
        for mid, epoch, ct, created_ms in ctx.store.outbox(g.group_id):
            if force or created_ms <= older:  # (a fresh one is on its way)
                ctx.count("resent")
                ctx.send(g.hub, "msg", g.group_id, mid, epoch, ct)

    def tick(self, now: float) -> None:
        for gid in list(self.showing):
            self.release(gid)
            if not self.showing[gid]:
                del self.showing[gid]
        for gid, to in list(self.want_sync.items()):
            g = self.ctx.groups.get(gid)
            if g is None:
                del self.want_sync[gid]
            else:
                self.sync(g, now, to=to)
        for g in list(self.ctx.groups.values()):
            if self.ctx.node_id in g.members and self.ctx.store.has_outbox(g.group_id):
                self.resend(g, now)

    def payload(self, sender: bytes, p: wire.Payload, now: float) -> bool:
        """The member side's payloads; False if ``p`` is not one."""
        a: tuple[Any, ...] = p.args
        match p.kind:
            case "entries":
                self.entries(sender, p.group_id, a[0], a[1], a[2], now)
            case "state":
                self.state(sender, p.group_id, a[0], now)
            case "invited":
                self.invited(sender, p.group_id, a[0], a[1], a[2])
            case "key":
                self.key(sender, p.group_id, a[0], a[1])
            case "refused":
                self.ctx.count("refused_by_hub")
                if a[0] in ("join", "create") and self.joining.get(p.group_id) == sender:
                    del self.joining[p.group_id]  # not admitted: nothing to wait for
                self.ctx.publish(gm.Refused(group_id=p.group_id, what=a[0], reason=a[1]))
            case _:
                return False
        return True
