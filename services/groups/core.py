"""Groups core: the app API (`groups.*`), the intake of `Group` envelopes from the router's
inbox, and the plumbing between the hub, member and failover parts.

Every payload from another node arrives as a `Group` envelope that the router has verified,
decrypted, stored in its inbox (kind `group`) and acknowledged; the router announces it with
`router.group_envelope`. This core handles each one once, in inbox order, and keeps its place
(the inbox seq) in its own SQLite file in the same commit as what the payload changed, so a
restart resumes exactly after the last one handled (reading what it missed with
`router.inbox`). Payloads to other nodes leave through `router.send` (`kind` `group`): sealed,
stored and retried by the router until acknowledged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.core import (
    Action,
    Call,
    Core,
    EventReceived,
    Fail,
    Input,
    PeerFailed,
    PeerReplied,
    PeerRestarted,
    Reply,
    Request,
)
from shared.wire.errors import ErrorCode
from shared.wire.messages import crypto as cm
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm

from . import wire
from .context import SIGNALS, Context, GroupsSettings
from .failover import Failover
from .hub import Hub
from .member import Member
from .state import GroupState
from .store import Store

TICK_S = 1.0
PULL_LIMIT = 200
RETRYABLE = frozenset({ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED})
_CURSOR = "inbox_seq"


@dataclass
class _History:
    ctx: Any
    seq: int
    want: int
    got: dict[int, gm.StoredMessage] = field(default_factory=dict)
    done: int = 0
    last: int = 0


class GroupsCore(Core):
    role = "groups"
    handles = frozenset({gm.Create, gm.InviteMember, gm.Join, gm.Decline, gm.Leave, gm.Kick,
                         gm.SetRole, gm.ListGroups, gm.Send, gm.History})

    def __init__(self, store: Store, wall: Callable[[], float],
                 settings: GroupsSettings | None = None,
                 randbytes: Callable[[int], bytes] | None = None) -> None:
        self.ctx = Context(store, wall, settings or GroupsSettings(), randbytes or os.urandom)
        self.member = Member(self.ctx)
        self.hub = Hub(self.ctx, self.member)
        self.failover = Failover(self.ctx, self.hub, self.member)
        self.member.failover = self.failover
        self._asked_id = False
        self._waiting: list[Request] = []
        self._cursor = 0
        self._announced = 0
        """The highest inbox seq announced: one announced during a read is read after it."""
        self._pulling = False
        self._next_tick = 0.0
        self._history: dict[int, _History] = {}
        self._history_keys = 0
        self._retry: list[tuple[float, Any]] = []

    @property
    def store(self) -> Store:
        return self.ctx.store

    # -- plumbing -----------------------------------------------------------------------------

    def handle(self, event: Input, now: float) -> list[Action]:
        ctx = self.ctx
        match event:
            case PeerReplied(token="node_id", body=cm.NodeIdReply(node_id=node_id)):
                self._started(node_id, now)
            case PeerFailed(token="node_id"):
                self._asked_id = False
                waiting, self._waiting = self._waiting, []
                return [Fail(r.ctx, ErrorCode.UNAVAILABLE, "the groups service does not know "
                             "its node id yet (is crypto running?)") for r in waiting]
            case Request() if not ctx.node_id:
                if len(self._waiting) < 100:
                    self._waiting.append(event)
                else:
                    return [Fail(event.ctx, ErrorCode.OVERLOADED, "starting")]
                return self._ask_id()
            case Request():
                self._request(event, now)
            case EventReceived(body=rm.GroupEnvelope(seq=0, sender=sender), blobs=blobs) \
                    if ctx.node_id and blobs:  # a signal: in no inbox, handled if it came
                self._payload(sender, blobs[0], now, signal=True)
            case EventReceived(body=rm.GroupEnvelope(seq=seq, sender=sender), blobs=blobs) \
                    if ctx.node_id:
                if not self._pulling and seq == self._cursor + 1 and blobs:
                    self._intake(seq, sender, blobs[0], now)
                elif seq > self._cursor:
                    self._announced = max(self._announced, seq)  # read after a pull too
                    self._pull()
            case PeerReplied(token=("pull",), body=rm.InboxReply(messages=rows, tail=tail)):
                self._pulling = False
                for r in rows:
                    if r.seq > self._cursor:
                        self._intake(r.seq, r.sender, r.payload, now)
                if tail > self._cursor and rows:
                    self._pull()
                elif tail > self._cursor:  # what is left was purged
                    self._advance(tail)
                if self._announced > self._cursor:  # announced while the read was made
                    self._pull()
            case PeerFailed(token=("pull",)):
                self._pulling = False
                self._retry.append((now + 1.0, ("pull",)))
            case PeerReplied(token=token) | PeerFailed(token=token) if isinstance(token, tuple):
                self._answered(token, event, now)
            case PeerRestarted(role="router", lost=False) if ctx.node_id:
                self._pull()
            case _:
                return super().handle(event, now)
        return self._drain(now)

    def _drain(self, now: float) -> list[Action]:
        """Handle the payloads this node addressed to itself (a hub that is a member)."""
        ctx = self.ctx
        while ctx.local:
            to, raw = ctx.local.popleft()
            self._payload(to, raw, now)
        return ctx.take()

    def _ask_id(self) -> list[Action]:
        if self._asked_id:
            return []
        self._asked_id = True
        return [Call("crypto", cm.NodeId(), "node_id")]

    def _started(self, node_id: bytes, now: float) -> None:
        ctx = self.ctx
        ctx.node_id = node_id
        self._cursor = self.store.get_meta(_CURSOR)
        for g in self.store.groups():
            ctx.groups[g.group_id] = g
            ctx.heard[g.group_id] = now
            if node_id in g.members:
                self.member.reopen(g.group_id)
                if g.hub != node_id:
                    self.member.sync(g, now, force=True)  # what was missed while away
        self._pull()
        waiting, self._waiting = self._waiting, []
        for r in waiting:
            self._request(r, now)

    def _pull(self) -> None:
        if self._pulling:
            return
        self._pulling = True
        self.ctx.call("router", rm.Inbox(after=self._cursor, limit=PULL_LIMIT, groups=True),
                      ("pull",))

    def _advance(self, seq: int) -> None:
        self._cursor = seq
        self.store.set_meta(_CURSOR, seq)

    def _intake(self, seq: int, sender: bytes, raw: bytes, now: float) -> None:
        self._advance(seq)
        self._payload(sender, raw, now)

    def _payload(self, sender: bytes, raw: bytes, now: float, signal: bool = False) -> None:
        ctx = self.ctx
        try:
            p = wire.decode(raw)
        except wire.BadPayload:
            ctx.count("rejected_malformed")
            return
        if signal != (p.kind in SIGNALS) and sender != ctx.node_id:
            ctx.count("rejected_malformed")  # signals only as signals, and the rest never
            return
        ctx.count(f"in_{p.kind}")
        _ = self.hub.payload(sender, p, now) or self.member.payload(sender, p, now) or \
            self.failover.payload(sender, p, now)

    # -- answers ------------------------------------------------------------------------------

    def _answered(self, token: tuple[Any, ...], event: PeerReplied | PeerFailed,
                  now: float) -> None:
        ctx = self.ctx
        ok = isinstance(event, PeerReplied)
        blobs = event.blobs if isinstance(event, PeerReplied) else ()
        match token:
            case ("sent", _to, _raw, lifetime, _relay):
                if not ok:
                    assert isinstance(event, PeerFailed)
                    ctx.count("sends_failed")
                    if event.code in RETRYABLE and lifetime is None:
                        self._retry.append((now + 1.0, token))
            case ("open", gid, entry):
                self.member.opened(gid, entry, ok, blobs)
            case ("seal", req_ctx, gid, mid, epoch):
                if not ok:
                    assert isinstance(event, PeerFailed)
                    ctx.actions.append(Fail(req_ctx, event.code, event.message))
                    return
                self.member.sealed(gid, mid, epoch, blobs[0], now)
                ctx.held.append(Reply(req_ctx, gm.SendReply(id=mid)))
            case ("hist", key, seq, entry):
                h = self._history.get(key)
                if h is None:
                    return
                h.done += 1
                if ok and blobs:
                    try:
                        text = blobs[0].decode()
                    except UnicodeDecodeError:
                        text = ""
                    h.got[seq] = gm.StoredMessage(group_id=entry[0], seq=seq, id=entry[1],
                                                  sender=entry[2], timestamp_ms=entry[3],
                                                  text=text)
                if h.done >= h.want:
                    del self._history[key]
                    ctx.actions.append(Reply(h.ctx, gm.HistoryReply(
                        messages=[h.got[s] for s in sorted(h.got)], seq=h.seq,
                        last=h.last)))

    # -- requests -----------------------------------------------------------------------------

    def _request(self, req: Request, now: float) -> None:
        ctx = self.ctx
        body = req.body
        try:
            match body:
                case gm.ListGroups():
                    return self._reply(req, self._list())
                case gm.Create():
                    return self._create(req, body, now)
                case gm.Join():
                    return self._join(req, body)
                case gm.Decline(group_id=gid):
                    ctx.store.delete_invite(gid)
                    return self._reply(req, gm.Done())
                case gm.Send():
                    return self._send(req, body, now)
                case gm.History():
                    return self._history_of(req, body)
            g = self._group(body.group_id)  # type: ignore[attr-defined]
            match body:
                case gm.Leave():
                    if g.is_admin(ctx.node_id) and g.admins() == 1 and len(g.members) > 1:
                        raise _Refused(ErrorCode.FAILED, "this node is the group's last admin: "
                                       "make another member admin first")
                    ctx.send(g.hub, "leave", g.group_id)
                case gm.Kick(node_id=node):
                    self._admin(g)
                    if node not in g.members:
                        raise _Refused(ErrorCode.INVALID, "not a member of the group")
                    ctx.send(g.hub, "kick", g.group_id, node)
                case gm.SetRole(node_id=node, role=role):
                    self._admin(g)
                    if node not in g.members:
                        raise _Refused(ErrorCode.INVALID, "not a member of the group")
                    ctx.send(g.hub, "role", g.group_id, node, role)
                case gm.InviteMember(node_id=node):
                    if g.invite_only:
                        self._admin(g)
                    if node in g.members:
                        raise _Refused(ErrorCode.INVALID, "already a member")
                    ctx.send(g.hub, "invite", g.group_id, node)
            self._reply(req, gm.Done())
        except _Refused as r:
            ctx.actions.append(Fail(req.ctx, r.code, r.message))

    def _reply(self, req: Request, body: Any) -> None:
        self.ctx.held.append(Reply(req.ctx, body))

    def _group(self, gid: str) -> GroupState:
        g = self.ctx.groups.get(gid)
        if g is None or self.ctx.node_id not in g.members:
            raise _Refused(ErrorCode.INVALID, f"this node is not a member of group {gid}")
        return g

    def _admin(self, g: GroupState) -> None:
        if not g.is_admin(self.ctx.node_id):
            raise _Refused(ErrorCode.FAILED, "only the group's admins may do that")

    def _list(self) -> gm.ListReply:
        ctx = self.ctx
        groups = [gm.GroupInfo(
            group_id=g.group_id, name=g.name, hub=g.hub, term=g.term, seq=g.seq,
            members=[gm.Member(node_id=n, role=m.role, joined_ms=m.joined_ms)  # type: ignore[arg-type]
                     for n, m in g.members.items()],
            invite_only=g.invite_only, max_members=g.max_members, successors=g.successors(),
            member=ctx.node_id in g.members) for g in ctx.groups.values()]
        invites = [gm.Invite(group_id=gid, name=name, hub=hub, inviter=inviter,
                             expires_ms=expires)
                   for gid, name, hub, inviter, expires in ctx.store.invites(ctx.now_ms())]
        return gm.ListReply(groups=groups, invites=invites)

    def _create(self, req: Request, body: gm.Create, now: float) -> None:
        ctx = self.ctx
        gid = "g" + ctx.randbytes(12).hex()
        hub = body.hub or ctx.node_id
        invitees = [n for n in dict.fromkeys(body.members) if n != ctx.node_id]
        self.member.joining[gid] = hub
        ctx.send(hub, "create", gid, body.name, body.invite_only, ctx.settings.max_members,
                 invitees)
        self._reply(req, gm.CreateReply(group_id=gid))

    def _join(self, req: Request, body: gm.Join) -> None:
        ctx = self.ctx
        if not wire.GID.match(body.group_id):
            ctx.actions.append(Fail(req.ctx, ErrorCode.INVALID, "a group id is made of "
                                    "lowercase letters, digits and -"))
            return
        if body.group_id in ctx.groups and ctx.node_id in ctx.groups[body.group_id].members:
            return self._reply(req, gm.Done())
        invite = ctx.store.invite(body.group_id)
        hub = invite[1] if invite is not None and invite[3] > ctx.now_ms() else body.hub
        if hub is None:
            ctx.actions.append(Fail(req.ctx, ErrorCode.INVALID, "no invitation to that group "
                                    "(or it expired); give the hub to join an open group"))
            return
        self.member.joining[body.group_id] = hub
        ctx.send(hub, "join", body.group_id)
        self._reply(req, gm.Done())

    def _send(self, req: Request, body: gm.Send, now: float) -> None:
        ctx = self.ctx
        g = ctx.groups.get(body.group_id)
        if g is None or ctx.node_id not in g.members:
            ctx.actions.append(Fail(req.ctx, ErrorCode.INVALID, "this node is not a member of "
                                    f"group {body.group_id}"))
            return
        if len(req.blobs) != 1:
            ctx.actions.append(Fail(req.ctx, ErrorCode.INVALID, "expected one blob: the text"))
            return
        text = req.blobs[0]
        if len(text) > wire.MAX_TEXT:
            ctx.actions.append(Fail(req.ctx, ErrorCode.TOO_LARGE, f"text of {len(text)} bytes "
                                    f"exceeds {wire.MAX_TEXT}"))
            return
        try:
            text.decode()
        except UnicodeDecodeError:
            ctx.actions.append(Fail(req.ctx, ErrorCode.INVALID, "the text is not UTF-8"))
            return
        mid = body.id or ctx.randbytes(16)
        if body.id is not None and (ctx.store.has_out(g.group_id, mid) or
                                    ctx.store.has_message(g.group_id, ctx.node_id, mid)):
            return self._reply(req, gm.SendReply(id=mid))  # sent before: idempotent
        epoch, key = self.member.own_key(g, now)
        ctx.call("crypto", cm.GroupSeal(group_id=g.group_id, key=key),
                 ("seal", req.ctx, g.group_id, mid, epoch), blobs=(text,))

    def _history_of(self, req: Request, body: gm.History) -> None:
        ctx = self.ctx
        g = self._group_or_fail(req, body.group_id)
        if g is None:
            return
        entries = ctx.store.messages_after(g.group_id, body.after, body.limit)
        last = entries[-1].seq if len(entries) == body.limit else g.seq
        self._history_keys += 1
        key = self._history_keys
        calls = []
        for e in entries:
            sender, mid, epoch, ct = e.args
            k = ctx.store.key(g.group_id, sender, epoch)
            if k is not None:
                calls.append((e, sender, mid, k, ct))
        if not calls:
            return self._reply(req, gm.HistoryReply(messages=[], seq=g.seq, last=last))
        self._history[key] = _History(req.ctx, g.seq, len(calls), last=last)
        for e, sender, mid, k, ct in calls:
            ctx.call("crypto", cm.GroupOpen(group_id=g.group_id, sender=sender, key=k),
                     ("hist", key, e.seq, (g.group_id, mid, sender, e.ts_ms)), blobs=(ct,))

    def _group_or_fail(self, req: Request, gid: str) -> GroupState | None:
        try:
            return self._group(gid)
        except _Refused as r:
            self.ctx.actions.append(Fail(req.ctx, r.code, r.message))
            return None

    # -- time ---------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if not self.ctx.node_id:  # ask crypto who we are (again, every 2 s, while it fails)
            return None if self._asked_id else self._next_tick
        d = self._next_tick
        if self._retry:
            d = min(d, min(t for t, _ in self._retry))
        f = self.failover.next_deadline()
        return d if f is None else min(d, f)

    def on_timer(self, now: float) -> list[Action]:
        ctx = self.ctx
        if not ctx.node_id:
            self._next_tick = now + 2.0
            return self._ask_id()
        due = [t for t in self._retry if t[0] <= now]
        self._retry = [t for t in self._retry if t[0] > now]
        for _t, token in due:
            if token == ("pull",):
                self._pull()
            else:
                _k, to, raw, lifetime, relay = token
                ctx.actions.append(Call("router", rm.Send(to=to, groups=True,
                                                          lifetime_s=lifetime, relay=relay),
                                        token, blobs=(raw,)))
        self.failover.tick(now)
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            self.member.tick(now)
            self._purge()
        return self._drain(now)

    def _purge(self) -> None:
        ctx = self.ctx
        now_ms = ctx.now_ms()
        ctx.store.expire_invites(now_ms)
        if ctx.store.purge(now_ms - int(ctx.settings.history_s * 1000)):
            ctx.count("entries_purged")
        for gid, mid in ctx.store.expire_out(now_ms - int(ctx.settings.history_s * 1000)):
            ctx.publish(gm.SendStatus(group_id=gid, id=mid, status="failed",
                                      reason="no hub ordered it within the history time"))

    def flush(self, now: float) -> list[Action]:
        ctx = self.ctx
        self.hub.flush()
        ctx.store.commit()
        held, ctx.held = ctx.held, []
        return ctx.take() + held

    def close(self, now: float) -> list[Action]:
        self.ctx.store.close()
        return []

    def counters(self) -> dict[str, int]:
        return dict(self.ctx.stats)

    def queues(self) -> dict[str, int]:
        return {"groups": len(self.ctx.groups), "retry": len(self._retry),
                "waiting_for_key": self.member.holding()}


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

