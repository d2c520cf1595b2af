"""A small Python client of the node's app API: the router's ``router.*`` requests and events
(1:1 messages) and the groups service's ``groups.*`` (group messages).

    with Client(DataDir(Path("~/.tom").expanduser())) as c:
        msg_id = c.send(peer, "hello")            # stored by the router once this returns
        gid = c.group_create("friends", [peer])   # this node hosts it; peer is invited
        c.group_send(gid, "hello all")            # stored by the groups service
        for ev in c.events(timeout_s=5):          # messages, group messages, status changes,
            ...                                   # peer and membership changes, invitations

``send`` and ``group_send`` pick the message id themselves and re-send with the same id when a
reply is lost (service restarting), so a message is stored once however often it is retried.
``events`` yields every received message exactly once and in inbox order: it remembers the
last ``seq`` it yielded and fetches from the inbox whatever the event stream skipped (events
are not queued while nobody listens; the inbox is). Group messages likewise, once each and in
group order per group (:class:`GroupCursor`), completed from ``groups.history``.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import zmq

from shared import endpoints as ep
from shared.bus import BusClient, socket
from shared.buskeys import OWNER, BusKeys
from shared.paths import DataDir
from shared.wire import BusTimeout, DecodeError, RemoteError, WireError, decode
from shared.wire.errors import ErrorCode
from shared.wire.messages import as_dict
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm
from shared.wire.messages.sys import Status, StatusReply

RETRYABLE = (ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED)


@dataclass(frozen=True)
class Message:
    """A received message and its plaintext."""

    info: rm.Received
    payload: bytes
    read: bool = False
    """Whether an app had marked it read when it was fetched from the inbox (a message from
    an event is new, so unread)."""

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")


@dataclass(frozen=True)
class GroupMessage:
    """A group message (decrypted, its sender verified) and its text."""

    info: gm.GroupMessage
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    @property
    def group_id(self) -> str:
        return self.info.group_id

    @property
    def seq(self) -> int:
        return self.info.seq


GroupEvent = gm.MemberChanged | gm.GroupChanged | gm.Invited | gm.SendStatus | gm.Refused
Event = (Message | rm.StatusChanged | rm.PeerChanged | rm.PathChanged | GroupMessage
         | GroupEvent)


CATCH_UP_S = 1.0
"""``events`` asks the router (and the groups service) for missed messages at most this often
(and on a gap)."""
GAP_GRACE_S = 1.0
"""A group message after a gap waits at least this long for the missing one (its event may
be on its way, or crypto still opening it)..."""
HOLD_S = 60.0
"""... and at most this long while the groups service holds messages waiting for their
sender's key (``waiting_for_key`` in its ``sys.status`` queues): a member's key can reach
another member seconds after the messages it opens, when the two have no path yet. With none
waiting, a gap is an entry that is not a message (a new hub), or one never to be shown."""
KEYS_EVERY_S = 0.5
"""``events`` asks the groups service whether messages wait for keys at most this often."""
GROUPS_RETRY_S = 5.0
"""After the groups service did not answer, ``events`` asks it again this much later (router
events keep flowing meanwhile)."""
HISTORY_PAGES = 10
"""Pages of ``groups.history`` (1000 messages each) read per group per catch-up."""
MAX_LATE_RANGES = 64


class GroupCursor:
    """Where an app is in one group's messages: each message yielded once, in group order.

    Messages come from two sources: ``groups.message`` events, which can be missed (nobody
    queues them) and which come out of order when a message waits for its sender's key, and
    ``groups.history``, which leaves out what this node cannot decrypt (yet). The log also
    holds entries that are not messages (membership changes, a new hub), and neither source
    says whether a missing seq is such an entry or a message still to come. So a message
    after a gap is held until the gap fills: at least ``GAP_GRACE_S``, then for as long as
    the service says that messages wait for keys (at most ``HOLD_S``); a ``groups.member``
    event (it carries the entry's seq) closes its gap at once. A message whose gap was given
    up on and that comes later anyway is still yielded, once, late (its seq says where it
    belongs).

    Pure (no I/O): the client feeds it and asks it what to yield.
    """

    def __init__(self, done: int) -> None:
        self.done = done
        """Every seq up to this one is settled: yielded, not a message, or given up on."""
        self.held: dict[int, GroupMessage] = {}
        self.skip: set[int] = set()
        """Seqs above ``done`` known not to be messages."""
        self.late: list[tuple[int, int]] = []
        """Ranges (inclusive) at or below ``done`` where a message is still yielded if it
        comes: gaps given up on."""
        self.checked = done
        """The last log seq a history read covered."""
        self._gap: tuple[int, float] | None = None

    @property
    def gap(self) -> bool:
        """Whether messages are held behind a missing seq."""
        return bool(self.held)

    def add(self, m: GroupMessage, now: float) -> list[GroupMessage]:
        """A message from either source; returns what to yield now, in order."""
        s = m.seq
        if s <= self.done:
            return [m] if self._take_late(s) else []
        self.held.setdefault(s, m)
        return self.release(now)

    def not_message(self, seq: int, now: float) -> list[GroupMessage]:
        """The entry at ``seq`` is not a message (a ``groups.member`` event said so)."""
        if seq > self.done:
            self.skip.add(seq)
        return self.release(now)

    def stalled(self, now: float) -> bool:
        """Whether messages have waited behind a gap for ``GAP_GRACE_S`` (whether keys are
        awaited then decides)."""
        return self._gap is not None and bool(self.held) and now - self._gap[1] >= GAP_GRACE_S

    def release(self, now: float, keys_awaited: bool = True) -> list[GroupMessage]:
        """What the held messages allow to yield now; ``keys_awaited``: whether the service
        holds messages waiting for keys (if not, a gap is given up after ``GAP_GRACE_S``)."""
        out: list[GroupMessage] = []
        while True:
            nxt = self.done + 1
            if nxt in self.held:
                out.append(self.held.pop(nxt))
            elif nxt in self.skip:
                self.skip.discard(nxt)
            elif self.held:
                if self._gap is None or self._gap[0] != nxt:
                    self._gap = (nxt, now)  # a new gap: its wait starts now
                waited = now - self._gap[1]
                if waited < GAP_GRACE_S or keys_awaited and waited < HOLD_S:
                    break
                first = min(self.held)  # given up: the gap's messages may still come, late
                self._add_late(nxt, first - 1)
                self.skip = {s for s in self.skip if s > first}
                self.done = first - 1
                continue
            else:
                break
            self.done = nxt
        if not self.held:
            self._gap = None
        return out

    def _add_late(self, lo: int, hi: int) -> None:
        self.late.append((lo, hi))
        del self.late[:-MAX_LATE_RANGES]

    def _take_late(self, seq: int) -> bool:
        for i, (lo, hi) in enumerate(self.late):
            if lo <= seq <= hi:
                rest = [(a, b) for a, b in ((lo, seq - 1), (seq + 1, hi)) if a <= b]
                self.late[i:i + 1] = rest
                return True
        return False


class Client:
    def __init__(self, data: DataDir, timeout_s: float = 5.0, after: int | None = None,
                 key: str = OWNER, group_after: dict[str, int] | None = None,
                 with_groups: bool = True) -> None:
        """``after``: the last inbox seq this app already handled (None: only messages
        that arrive from now on). ``group_after``: likewise per group, the last group seq
        handled (None: from now on; a group missing from the dict: all that this node
        holds). ``with_groups``: False leaves the groups service out of ``events``.
        ``key``: the bus key pair used over a tcp bus, the owner's or an app's listed in
        ``DATA/bus/apps/`` (docs/security.md)."""
        self.endpoints = ep.load(data.endpoints)
        self.bus = BusClient(self.endpoints, src="tom-app", timeout_s=timeout_s,
                             keys=BusKeys(data.bus_keys), key_name=key)
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sub: zmq.Socket | None = None
        self._gsub: zmq.Socket | None = None
        self.after = after
        self._next_catch_up = 0.0
        self.with_groups = with_groups
        self._group_start = group_after
        self.cursors: dict[str, GroupCursor] | None = None
        """Per group, where the app is (None until the groups service first answered)."""
        self.groups_error: str | None = None
        """Why the groups service did not answer the last time ``events`` asked it."""
        self._next_groups = 0.0
        self._keys_checked = -KEYS_EVERY_S
        self._awaited = True
        self._waiting_before = 1

    # -- requests -------------------------------------------------------------------------

    def node_id(self) -> bytes:
        reply = self.bus.request("router", rm.NodeInfo())
        assert isinstance(reply, rm.NodeInfoReply)
        return reply.node_id

    def send(self, to: bytes, payload: bytes | str, encrypt: bool = True,
             deadline_s: float = 30.0) -> bytes:
        """Hand a message to the router; returns its id once the router has stored it.
        Retries (same id) while the router is restarting or busy, up to ``deadline_s``."""
        data = payload.encode() if isinstance(payload, str) else payload
        msg_id = os.urandom(16)
        end = time.monotonic() + deadline_s
        while True:
            try:
                reply = self.bus.call("router", rm.Send(to=to, id=msg_id, encrypt=encrypt),
                                      (data,)).body
                assert isinstance(reply, rm.SendReply)
                return reply.id
            except BusTimeout:
                if time.monotonic() > end:
                    raise
            except RemoteError as e:
                if e.code not in RETRYABLE or time.monotonic() > end:
                    raise
                time.sleep(0.2)  # the router said busy or was restarting

    def send_many(self, to: bytes, payloads: list[bytes], window: int = 64,
                  deadline_s: float = 30.0) -> list[bytes]:
        """:meth:`send` of each payload, in order, with up to ``window`` requests in
        flight; returns the ids in the payloads' order once the router has stored each. A
        request the router answered busy or unavailable goes again (same id)."""
        ids = [os.urandom(16) for _ in payloads]
        todo = collections.deque(range(len(payloads)))
        inflight: collections.deque[tuple[bytes, int]] = collections.deque()
        end = time.monotonic() + deadline_s
        while todo or inflight:
            if todo and len(inflight) < window:
                i = todo.popleft()
                inflight.append((self.bus.send("router", rm.Send(to=to, id=ids[i]),
                                                (payloads[i],), timeout_s=deadline_s), i))
                continue
            req, i = inflight.popleft()
            try:
                self.bus.recv("router", req, timeout_s=max(0.1, end - time.monotonic()))
            except RemoteError as e:
                if e.code not in RETRYABLE or time.monotonic() > end:
                    raise
                todo.appendleft(i)
                time.sleep(0.01)
            else:
                end = time.monotonic() + deadline_s  # progress: a new deadline
        return ids

    def read(self, msg: Message) -> None:
        """Mark ``msg`` read, once it was shown to the person: its sender sees ``read`` (one
        receipt however often this is called)."""
        self.bus.request("router", rm.Read(id=msg.info.id, sender=msg.info.sender))

    def outbox(self, ids: list[bytes] | None = None, limit: int = 100) -> list[rm.MessageState]:
        states: list[rm.MessageState] = []
        ids = ids or []
        for i in range(0, max(len(ids), 1), 1000):
            reply = self.bus.request("router", rm.Outbox(ids=ids[i:i + 1000], limit=limit))
            assert isinstance(reply, rm.OutboxReply)
            states += reply.messages
        return states

    def inbox(self, after: int = 0, limit: int = 100, unread: bool = False) -> list[Message]:
        """Messages after seq ``after``, oldest first (``unread``: only those no app marked
        read)."""
        return self.inbox_page(after, limit, unread)[0]

    def inbox_page(self, after: int = 0, limit: int = 100, unread: bool = False,
                   newest: bool = False) -> tuple[list[Message], int]:
        """:meth:`inbox` (``newest``: the last ``limit`` instead of the first, still oldest
        first), and how many messages in the whole inbox are unread."""
        reply = self.bus.request("router", rm.Inbox(after=after, limit=limit, unread=unread,
                                                    newest=newest))
        assert isinstance(reply, rm.InboxReply)
        return [Message(rm.Received(**as_dict(r, exclude={"payload", "read"})), r.payload,
                        r.read) for r in reply.messages], reply.unread

    def peers(self) -> list[rm.PeerEntry]:
        reply = self.bus.request("router", rm.Peers())
        assert isinstance(reply, rm.PeersReply)
        return reply.peers

    def add_peer(self, node_id: bytes, host: str, port: int) -> None:
        self.bus.request("router", rm.AddPeer(node_id=node_id, host=host, port=port))

    def stats(self) -> StatusReply:
        reply = self.bus.request("router", Status())
        assert isinstance(reply, StatusReply)
        return reply

    # -- groups ---------------------------------------------------------------------------

    def group_create(self, name: str, members: list[bytes] | tuple[bytes, ...] = (),
                     hub: bytes | None = None, invite_only: bool = True) -> str:
        """Create a group (this node its first admin) and invite ``members``; its id. With
        another node as ``hub`` the group appears here (``groups.changed`` ``created``) once
        that hub has created it."""
        reply = self.bus.request("groups", gm.Create(name=name, members=list(members),
                                                     hub=hub, invite_only=invite_only))
        assert isinstance(reply, gm.CreateReply)
        return reply.group_id

    def group_invite(self, group_id: str, node_id: bytes) -> None:
        self.bus.request("groups", gm.InviteMember(group_id=group_id, node_id=node_id))

    def group_join(self, group_id: str, hub: bytes | None = None) -> None:
        """Accept an invitation (or join an open group through ``hub``); the group appears
        in ``groups()`` once its hub has admitted this node."""
        self.bus.request("groups", gm.Join(group_id=group_id, hub=hub))

    def group_decline(self, group_id: str) -> None:
        self.bus.request("groups", gm.Decline(group_id=group_id))

    def group_leave(self, group_id: str) -> None:
        self.bus.request("groups", gm.Leave(group_id=group_id))

    def group_kick(self, group_id: str, node_id: bytes) -> None:
        self.bus.request("groups", gm.Kick(group_id=group_id, node_id=node_id))

    def group_set_role(self, group_id: str, node_id: bytes, role: gm.Role) -> None:
        self.bus.request("groups", gm.SetRole(group_id=group_id, node_id=node_id, role=role))

    def groups(self) -> gm.ListReply:
        """The groups this node is in (or hosts) and its open invitations."""
        reply = self.bus.request("groups", gm.ListGroups())
        assert isinstance(reply, gm.ListReply)
        return reply

    def group_send(self, group_id: str, text: bytes | str, deadline_s: float = 30.0,
                   msg_id: bytes | None = None) -> bytes:
        """Hand a message to the groups service; returns its id once the service has stored
        it (it is then sent to the hub until ordered: ``groups.status``). Retries (same id)
        while the service is restarting or busy, up to ``deadline_s``."""
        data = text.encode() if isinstance(text, str) else text
        msg_id = msg_id or os.urandom(16)
        end = time.monotonic() + deadline_s
        while True:
            try:
                reply = self.bus.call("groups", gm.Send(group_id=group_id, id=msg_id),
                                      (data,)).body
                assert isinstance(reply, gm.SendReply)
                return reply.id
            except BusTimeout:
                if time.monotonic() > end:
                    raise
            except RemoteError as e:
                if e.code not in RETRYABLE or time.monotonic() > end:
                    raise
                time.sleep(0.2)

    def group_history(self, group_id: str, after: int = 0,
                      limit: int = 100) -> tuple[list[GroupMessage], int]:
        """Messages after ``after`` in group order (those this node cannot decrypt are left
        out) and the last log seq this node has."""
        reply = self.bus.request("groups", gm.History(group_id=group_id, after=after,
                                                      limit=limit))
        assert isinstance(reply, gm.HistoryReply)
        return ([GroupMessage(gm.GroupMessage(**as_dict(m, exclude={"text"})),
                              m.text.encode()) for m in reply.messages], reply.seq)

    @property
    def group_after(self) -> dict[str, int]:
        """Per group, the seq up to which messages were yielded (or settled): what to pass
        as ``group_after`` to continue later. (A message given up on and still to come late
        when the app stops is not yielded after such a restart.)"""
        return {g: c.done for g, c in (self.cursors or {}).items()}

    # -- events ---------------------------------------------------------------------------

    def subscribe(self) -> None:
        """Start listening (``events`` does it on first use); messages received from here
        on, and after ``after`` if it was given, will be yielded."""
        if self._sub is None:
            sub = socket(self._ctx, zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.bus.connect(sub, "router", self.endpoints["router"].events)
            try:
                if self.after is None:
                    self.after = self.inbox_tail()
            except Exception:
                sub.close(0)  # router not answering: stay unsubscribed, try again later
                raise
            self._sub = sub
        if self.with_groups and self._gsub is None:
            gsub = socket(self._ctx, zmq.SUB)
            gsub.setsockopt(zmq.SUBSCRIBE, b"")
            self.bus.connect(gsub, "groups", self.endpoints["groups"].events)
            self._gsub = gsub  # the cursors start at the groups service's first answer

    def inbox_tail(self) -> int:
        """The seq of the newest message in the inbox (0 if none)."""
        reply = self.bus.request("router", rm.Inbox(after=2**63 - 1, limit=1))  # no rows
        assert isinstance(reply, rm.InboxReply)
        return reply.tail

    def events(self, timeout_s: float = 0.0) -> Iterator[Event]:
        """Events waiting now or within ``timeout_s``; received messages (1:1 and group)
        without gaps or repeats."""
        self.subscribe()
        assert self._sub is not None
        if time.monotonic() >= self._next_catch_up:
            # the inbox, not only the events: an event dropped with no later one to reveal
            # the gap is found here (at most once a second, not on every poll)
            yield from self._catch_up()
            yield from self._groups_catch_up()
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        if self._gsub is not None:
            poller.register(self._gsub, zmq.POLLIN)
        end = time.monotonic() + timeout_s
        while True:
            yield from self._release_held()
            left = end - time.monotonic()
            ready = dict(poller.poll(max(0, int(left * 1000))))
            if not ready:
                return
            if self._gsub is not None and self._gsub in ready:
                yield from self._group_event(self._gsub.recv_multipart())
            if self._sub not in ready:
                continue
            frames = self._sub.recv_multipart()
            try:
                msg = decode(frames[1:])
            except DecodeError:
                continue
            body = msg.body
            if isinstance(body, rm.MessageReceived):
                assert self.after is not None
                if body.seq <= self.after:
                    continue  # already fetched from the inbox
                if body.seq > self.after + 1:
                    yield from self._catch_up()  # events were missed
                    continue
                self.after = body.seq
                yield Message(rm.Received(**as_dict(body)), msg.blobs[0])
            elif isinstance(body, rm.StatusChanged | rm.PeerChanged | rm.PathChanged):
                yield body

    def _catch_up(self) -> Iterator[Message]:
        assert self.after is not None
        self._next_catch_up = time.monotonic() + CATCH_UP_S
        while batch := self.inbox(self.after, 1000):
            for m in batch:
                self.after = m.info.seq
                yield m

    # -- group events --------------------------------------------------------------------

    def _group_event(self, frames: list[bytes]) -> Iterator[Event]:
        try:
            msg = decode(frames[1:])
        except DecodeError:
            return
        body = msg.body
        now = time.monotonic()
        if isinstance(body, gm.MessageReceived):
            if self.cursors is None or not msg.blobs:
                return  # before the start: the cursors are set from the service's state
            m = GroupMessage(gm.GroupMessage(**as_dict(body)), msg.blobs[0])
            cursor = self._cursor(body.group_id)
            had_gap = cursor.gap
            yield from cursor.add(m, now)
            if cursor.gap and not had_gap:  # an event may have been missed: look now
                yield from self._read_history(body.group_id, cursor)
        elif isinstance(body, gm.MemberChanged):
            if self.cursors is not None and body.seq:
                yield from self._cursor(body.group_id).not_message(body.seq, now)
            yield body
        elif isinstance(body, gm.GroupChanged):
            if self.cursors is not None:
                if body.change in ("left", "removed"):
                    self.cursors.pop(body.group_id, None)
                elif body.seq:  # the entry that opened a term: no message there
                    yield from self._cursor(body.group_id).not_message(body.seq, now)
                else:
                    self._cursor(body.group_id)
            yield body
        elif isinstance(body, gm.Invited | gm.SendStatus | gm.Refused):
            yield body

    def _cursor(self, gid: str) -> GroupCursor:
        """The group's cursor; for a group first seen now, one from its start: everything
        this node holds of it (a group just joined: from the join on; the entries before
        are a gap given up on like any other, once no key is awaited)."""
        assert self.cursors is not None
        cursor = self.cursors.get(gid)
        if cursor is None:
            cursor = self.cursors[gid] = GroupCursor(0)  # its history: at the catch-up
        return cursor

    def _groups_catch_up(self) -> Iterator[Event]:
        """The groups' state: cursors at the first answer, then history for every group whose
        log grew past what the events brought (missed events), or that holds a gap."""
        if not self.with_groups or time.monotonic() < self._next_groups:
            return
        try:
            listed = self.groups()
        except WireError as e:
            self._groups_failed(e)
            return
        self.groups_error = None
        mine = {g.group_id: g for g in listed.groups if g.member}
        start = self._group_start
        if self.cursors is None:
            self.cursors = {}
            for gid, g in mine.items():
                if start is None:  # from now on
                    self.cursors[gid] = GroupCursor(g.seq)
                elif gid in start:  # (its history is read below)
                    self.cursors[gid] = GroupCursor(start[gid])
        for gid, g in mine.items():
            cursor = self._cursor(gid)  # new: joined meanwhile, or not in group_after
            if cursor.gap or g.seq > max(cursor.done, cursor.checked):
                yield from self._read_history(gid, cursor)

    def _read_history(self, gid: str, cursor: GroupCursor) -> Iterator[Event]:
        """Feed the cursor what the group's history holds after it."""
        after = cursor.done
        try:
            for _ in range(HISTORY_PAGES):
                page, seq = self.group_history(gid, after, 1000)
                cursor.checked = max(cursor.checked, seq)
                for m in page:
                    yield from cursor.add(m, time.monotonic())
                if not page:
                    break
                after = page[-1].seq
        except WireError as e:
            self._groups_failed(e)
            return

    def _release_held(self) -> Iterator[Event]:
        """Messages held behind a gap whose wait is over."""
        if self.cursors:
            now = time.monotonic()
            stalled = [c for c in self.cursors.values() if c.stalled(now)]
            if stalled:
                awaited = self._keys_awaited(now)
                for cursor in stalled:
                    yield from cursor.release(now, awaited)

    def _keys_awaited(self, now: float) -> bool:
        """Whether the groups service holds messages waiting for their sender's key (asked at
        most every ``KEYS_EVERY_S``). No only when two answers in a row say none: a key that
        came just before one is answered may still be opening its messages. Yes when it
        does not answer: keep waiting."""
        if now >= self._keys_checked + KEYS_EVERY_S:
            self._keys_checked = now
            try:
                reply = self.bus.request("groups", Status())
                assert isinstance(reply, StatusReply)
                waiting = reply.queues.get("waiting_for_key", 0)
            except WireError:
                waiting = 1
            self._awaited = waiting > 0 or self._waiting_before > 0
            self._waiting_before = waiting
        return self._awaited

    def _groups_failed(self, e: WireError) -> None:
        self.groups_error = str(e)
        self._next_groups = time.monotonic() + GROUPS_RETRY_S

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
        if self._gsub is not None:
            self._gsub.close(0)
        self.bus.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
