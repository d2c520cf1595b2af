"""`tom chat`, `tom chat --bot` and `tom send`: chat over the node's app API (tom.client).

    tom chat [PEER]            terminal chat (textual): delivery status of every message sent,
                               1:1 and in group rooms (/group NAME)
    tom chat --bot [PEER]      headless: print each message received, mark it read, echo it back
                               (in groups too: it joins the groups it is invited to); what
                               arrived while it was not running first, marked unread
    tom send PEER TEXT         send one message and wait until it is delivered (or fails)

PEER is a node id (64 hex or 52 base32 characters), optionally ``ID@host:port``: the node is
then introduced to the router (``router.add_peer``) before anything else.

The client library is blocking ZeroMQ. In the chat UI one thread (:class:`Link`) owns the
client and makes every call; the UI hands it commands and drains what it reports from a
textual timer every 50 ms, so a router that is slow or down never freezes the screen: it
shows an error line, and the link keeps retrying. Status events can be missed (ZeroMQ
PUB/SUB while the router restarts), so the link also asks ``router.outbox`` every couple of
seconds for the messages whose status may still move.

Rooms: the 1:1 room holds every 1:1 message (sent to the current peer), and each group has a
room of its own with a member pane. Group messages come from the client once each and in
group order (tom.client.GroupCursor); a line is still placed by its seq, so one that comes
late lands where it belongs. A message sent to a group waits at the bottom (``pending``)
until its hub orders it, then moves to its place (``ordered``).

Unread messages: the chat opens with what arrived while no chat showed it (the newest
``BACKLOG_SHOWN`` unread messages, marked), and marks a 1:1 message read (``router.read``:
its sender sees ``read``) only once its line has been on screen. Panes follow new lines
(textual's anchor) until the person scrolls up; a message over ``CUT_CHARS`` characters is
shown cut, whole on a click or ``/show``; typed keys reach the input in batches, so a line
of 10,000 characters typed as keys does not freeze the screen (docs/architecture.md,
issue 17).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from rich.text import Text
from textual import events
from textual.actions import SkipAction
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Static

from shared import nodeid
from shared.paths import DataDir
from shared.wire import BusTimeout, RemoteError, WireError
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm
from shared.wire.messages.sys import StatusReply

from .client import RETRYABLE, Client, Event, GroupMessage, Message
from .display import printable
from .group import n_members, resolve, resolve_invite
from .node import NodeError
from .peer import Peer, parse_peer
from .signals import Stop

T = TypeVar("T")
STATUS_RANK = {"pending": 0, "sent": 1, "relayed": 2, "delivered": 3, "read": 4}
"""Order of a sent message's statuses; ``failed`` is terminal (only before delivered)."""
GROUP_STATUS_RANK = {"sending": 0, "pending": 1, "ordered": 2}
"""A message sent to a group: stored by the groups service (pending), then ordered by the
hub; ``failed`` only before it is ordered."""
DIRECT = ""
"""The room of 1:1 messages (group rooms are named by their group id)."""
POLL_S = 0.05
"""UI timer period and the link's wait for events between commands."""
PEERS_EVERY_S = 3.0
OUTBOX_EVERY_S = 2.0
RETRY_EVERY_S = 1.0
UI_BUS_TIMEOUT_S = 2.0
UI_SEND_DEADLINE_S = 5.0
BACKLOG_SHOWN = 200
"""At most this many unread messages are shown when the chat opens (the newest); older
unread ones stay unread (`tom inbox --unread` lists them all)."""
CUT_CHARS = 600
"""A message longer than this is shown cut, with a way to see it whole (click, /show)."""
TYPED_FLUSH_S = 0.03
"""Typed characters reach the input box in batches this often (see ChatInput)."""
KEYS_PER_TURN = 256
"""The app forwards at most this many keys in a row before the event loop runs others."""


class AppClient(Protocol):
    """What the chat uses of :class:`tom.client.Client` (tests substitute a fake)."""

    after: int | None

    def node_id(self) -> bytes: ...
    def send(self, to: bytes, payload: bytes | str, encrypt: bool = True,
             deadline_s: float = 30.0) -> bytes: ...
    def read(self, msg: Message) -> None: ...
    def outbox(self, ids: list[bytes] | None = None,
               limit: int = 100) -> list[rm.MessageState]: ...
    def peers(self) -> list[rm.PeerEntry]: ...
    def add_peer(self, node_id: bytes, host: str, port: int) -> None: ...
    def stats(self) -> StatusReply: ...
    def inbox_tail(self) -> int: ...
    def inbox(self, after: int = 0, limit: int = 100, unread: bool = False
              ) -> list[Message]: ...
    def inbox_page(self, after: int = 0, limit: int = 100, unread: bool = False,
                   newest: bool = False) -> tuple[list[Message], int]: ...
    def subscribe(self) -> None: ...
    def events(self, timeout_s: float = 0.0) -> Iterator[Event]: ...
    def close(self) -> None: ...

    groups_error: str | None

    def groups(self) -> gm.ListReply: ...
    def group_create(self, name: str, members: list[bytes] | tuple[bytes, ...] = (),
                     hub: bytes | None = None, invite_only: bool = True) -> str: ...
    def group_invite(self, group_id: str, node_id: bytes) -> None: ...
    def group_join(self, group_id: str, hub: bytes | None = None) -> None: ...
    def group_leave(self, group_id: str) -> None: ...
    def group_send(self, group_id: str, text: bytes | str, deadline_s: float = 30.0,
                   msg_id: bytes | None = None) -> bytes: ...


# -- helpers shared by the three commands ---------------------------------------------------

def short(node_id: bytes) -> str:
    return nodeid.short(node_id)


def start_listening(client: AppClient) -> None:
    """Subscribe to the router's events, from the inbox's current end (what is unread
    before it: :func:`unread_before`).

    The tail is fetched before ``subscribe()`` so that a router that does not answer leaves
    the client unsubscribed (``Client.subscribe`` opens its socket first and would be left
    half-initialised: ``after`` None with a socket, so later ``events()`` calls assert)."""
    if client.after is None:
        client.after = client.inbox_tail()
    client.subscribe()


def unread_before(client: AppClient, after: int, limit: int = 1000
                  ) -> list[Message]:
    """The next page of unread messages after seq ``after``, up to where the events start
    (``client.after``: later ones come as events)."""
    assert client.after is not None
    return [m for m in client.inbox(after, limit, unread=True) if m.info.seq <= client.after]


def clock(ms: int | None = None) -> str:
    """Local time, HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(None if ms is None else ms / 1000))


def status_text(status: str, reason: str = "") -> str:
    """A status as shown, with the router's reason when it has one (why a message failed,
    or why it is still pending: "pending (recipient offline: held ...)")."""
    return f"{status} ({reason})" if reason and status in ("failed", "pending") else status


def steps(old: str, new: str) -> list[str]:
    """What a listener that knew ``old`` reports when it learns ``new`` (from the outbox,
    which has only the latest): ``new``, after ``delivered`` when ``new`` is ``read`` and
    ``delivered`` was not reported yet (read implies it: a poll that lands between the two
    events sees read alone)."""
    if new == "read" and STATUS_RANK.get(old, -1) < STATUS_RANK["delivered"]:
        return ["delivered", "read"]
    return [new]


def moves(old: str, new: str) -> bool:
    """Whether a status may replace another (statuses only move forward)."""
    if old in ("failed", "read") or old == new:
        return False
    if new == "failed":
        return STATUS_RANK.get(old, -1) < STATUS_RANK["delivered"]
    return STATUS_RANK.get(new, -1) > STATUS_RANK.get(old, -1)


def group_moves(old: str, new: str) -> bool:
    """Whether a group message's status may replace another (pending, ordered; failed)."""
    if old in ("failed", "ordered") or old == new:
        return False
    if new == "failed":
        return True
    return GROUP_STATUS_RANK.get(new, -1) > GROUP_STATUS_RANK.get(old, -1)


def place(seqs: list[int | None], seq: int) -> int | None:
    """Where a group message with ``seq`` goes among the group lines of a room (their seqs,
    top to bottom; None: a message of ours not ordered yet, which stays at the bottom): the
    index of the line to put it before, or None for after the last one."""
    for i, s in enumerate(seqs):
        if s is None or s > seq:
            return i
    return None


def visible(line: Static, top: float, height: int) -> bool:
    """Whether ``line`` (laid out in a pane scrolled to ``top``, ``height`` rows tall) is at
    least partly on screen."""
    r = line.virtual_region
    return r.height > 0 and r.y < top + height and r.bottom > top


def own_id_hint(data: DataDir) -> bytes | None:
    """This node's id from its key file (the header shows it before the router answers)."""
    from . import node

    try:
        return node.node_id(data, None)
    except (NodeError, WireError, OSError):
        return None


# -- the link: one thread owns the client ---------------------------------------------------

@dataclass(frozen=True)
class Notice:
    text: str
    error: bool = False
    about: str = "router"
    """Whose health it tells: ``router``, ``groups`` (the groups service), or "" (none: a
    command refused)."""


@dataclass(frozen=True)
class OwnId:
    node_id: bytes


@dataclass(frozen=True)
class Stored:
    key: int
    msg_id: bytes


@dataclass(frozen=True)
class SendFailed:
    key: int
    reason: str


@dataclass(frozen=True)
class PeerList:
    peers: list[rm.PeerEntry]
    show: bool  # asked for by /peers (print it), or a periodic refresh (side panel only)


@dataclass(frozen=True)
class Stats:
    reply: StatusReply


@dataclass(frozen=True)
class GroupStored:
    key: int
    msg_id: bytes


@dataclass(frozen=True)
class GroupList:
    reply: gm.ListReply
    show: bool  # asked for by /groups (print it), or a refresh (side panel only)


@dataclass(frozen=True)
class Backlog:
    """What arrived while no chat showed it: the newest unread messages before the events'
    start, oldest first, and how many older ones are unread too (not fetched)."""

    messages: list[Message]
    older: int


@dataclass(frozen=True)
class GroupAsked:
    """A group was created or joined from here: its room opens once this node is in it."""

    group_id: str
    what: str


Report = (Notice | OwnId | Stored | SendFailed | PeerList | Stats | GroupStored | GroupList
          | GroupAsked | Backlog | Event)


def describe(e: BaseException) -> str:
    return str(e) if isinstance(e, WireError) else f"{type(e).__name__}: {e}"


class Link:
    """Owns the app client in one thread; commands in, reports out (both thread-safe)."""

    def __init__(self, factory: Callable[[], AppClient]) -> None:
        self.factory = factory
        self.reports: queue.Queue[Report] = queue.Queue()
        self._commands: queue.Queue[tuple[str, Callable[[AppClient], None], str]] = \
            queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tom-chat-link", daemon=True)
        self._open: dict[bytes, str] = {}  # sent ids whose status may still move -> status
        self._failing: str | None = None
        self._groups_failing: str | None = None
        self._groups_next = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def drain(self) -> list[Report]:
        out: list[Report] = []
        while True:
            try:
                out.append(self.reports.get_nowait())
            except queue.Empty:
                return out

    # commands (called from the UI thread; run in the link's thread)

    def _submit(self, what: str, fn: Callable[[AppClient], None], about: str = "router"
                ) -> None:
        self._commands.put((what, fn, about))

    def ask_id(self) -> None:
        self._submit("node_id", lambda c: self.reports.put(OwnId(c.node_id())))

    def send(self, key: int, to: bytes, text: str, encrypt: bool = True) -> None:
        def run(c: AppClient) -> None:
            try:
                msg_id = c.send(to, text, encrypt, deadline_s=UI_SEND_DEADLINE_S)
            except Exception as e:  # the message was not stored: its line says why
                self.reports.put(SendFailed(key, f"not stored: {describe(e)}"))
                return
            self._open[msg_id] = "pending"
            self.reports.put(Stored(key, msg_id))
        self._submit("send", run)

    def read(self, msg: Message) -> None:
        self._submit("read receipt", lambda c: c.read(msg))

    def add_peer(self, peer: Peer) -> None:
        def run(c: AppClient) -> None:
            c.add_peer(peer.node_id, peer.host, peer.port)
            self.reports.put(Notice(f"introduced {short(peer.node_id)} at "
                                    f"{peer.host}:{peer.port} to the router"))
        self._submit("add_peer", run)

    def ask_peers(self, show: bool = True) -> None:
        self._submit("peers", lambda c: self.reports.put(PeerList(c.peers(), show)))

    def ask_stats(self) -> None:
        self._submit("stats", lambda c: self.reports.put(Stats(c.stats())))

    # group commands: a refusal (not an admin, no such invitation...) is an error line, not
    # a sign that a service is down

    def ask_groups(self, show: bool = True) -> None:
        self._submit("groups", lambda c: self._list_groups(c, show), "")

    def group_send(self, key: int, group_id: str, text: str) -> None:
        def run(c: AppClient) -> None:
            try:
                msg_id = c.group_send(group_id, text, deadline_s=UI_SEND_DEADLINE_S)
            except Exception as e:  # the message was not stored: its line says why
                self.reports.put(SendFailed(key, f"not stored: {describe(e)}"))
                return
            self.reports.put(GroupStored(key, msg_id))
        self._submit("send", run, "")

    def group_create(self, name: str, members: list[bytes]) -> None:
        def run(c: AppClient) -> None:
            gid = c.group_create(name, members)
            self.reports.put(GroupAsked(gid, "created"))
            self._list_groups(c, False)
        self._submit("create", run, "")

    def group_join(self, group_id: str) -> None:
        def run(c: AppClient) -> None:
            c.group_join(group_id)
            self.reports.put(GroupAsked(group_id, "joining"))
        self._submit("join", run, "")

    def group_invite(self, group_id: str, node_id: bytes) -> None:
        def run(c: AppClient) -> None:
            c.group_invite(group_id, node_id)
            self.reports.put(Notice(f"invited {short(node_id)}: the hub sends the invitation",
                                    about=""))
        self._submit("invite", run, "")

    def group_leave(self, group_id: str) -> None:
        self._submit("leave", lambda c: c.group_leave(group_id), "")

    def _list_groups(self, client: AppClient, show: bool) -> None:
        try:
            reply = client.groups()
        except WireError as e:
            self._groups_down(f"groups service not answering: {describe(e)}")
            if show:
                raise
            return
        self._groups_up()
        self.reports.put(GroupList(reply, show))

    # the thread

    def _run(self) -> None:
        client: AppClient | None = None
        listening = backlog = False
        retry_at = next_peers = next_outbox = 0.0
        try:
            while not self._stop.is_set():
                if client is None:
                    try:
                        client = self.factory()
                    except Exception as e:
                        self._down(f"cannot reach the node: {describe(e)}")
                        self._stop.wait(RETRY_EVERY_S)
                        continue
                self._commands_for(client)
                now = time.monotonic()
                if now < retry_at:
                    self._stop.wait(POLL_S)
                    continue
                try:
                    if not listening:
                        start_listening(client)
                        listening = True
                    if not backlog:  # before any event: unread first
                        self._backlog(client)
                        backlog = True
                    for ev in client.events(timeout_s=POLL_S):
                        self._track(ev)
                        self.reports.put(ev)
                    if now >= next_peers:
                        next_peers = now + PEERS_EVERY_S
                        self.reports.put(PeerList(client.peers(), False))
                    if now >= self._groups_next:
                        self._groups_next = now + PEERS_EVERY_S
                        self._list_groups(client, False)
                    if client.groups_error:  # the client's own catch-up could not reach it
                        self._groups_down(f"groups service not answering: "
                                          f"{client.groups_error}")
                    if self._open and now >= next_outbox:
                        next_outbox = now + OUTBOX_EVERY_S
                        self._poll_outbox(client)
                    self._up()
                except Exception as e:  # router down, restarting, or a bug: say it, retry
                    self._down(f"router not answering: {describe(e)}")
                    retry_at = time.monotonic() + RETRY_EVERY_S
        finally:
            if client is not None:
                client.close()

    def _commands_for(self, client: AppClient) -> None:
        while True:
            try:
                what, fn, about = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn(client)
            except Exception as e:
                self.reports.put(Notice(f"{what} failed: {describe(e)}", error=True,
                                        about=about))

    def _backlog(self, client: AppClient) -> None:
        """The newest ``BACKLOG_SHOWN`` unread messages from before the events' start."""
        assert client.after is not None
        page, unread = client.inbox_page(0, BACKLOG_SHOWN, unread=True, newest=True)
        shown = [m for m in page if m.info.seq <= client.after]
        self.reports.put(Backlog(shown, max(0, unread - len(page))))

    def _track(self, ev: Event) -> None:
        if isinstance(ev, rm.StatusChanged) and ev.id in self._open:
            if ev.status in ("read", "failed"):
                del self._open[ev.id]
            else:
                self._open[ev.id] = ev.status

    def _poll_outbox(self, client: AppClient) -> None:
        ids = list(self._open)[-1000:]
        for st in client.outbox(ids):
            if st.id in self._open and moves(self._open[st.id], st.status):
                for status in steps(self._open[st.id], st.status):
                    ev = rm.StatusChanged(id=st.id, to=st.to, status=status,  # type: ignore[arg-type]
                                          reason=st.reason)
                    self._track(ev)
                    self.reports.put(ev)

    def _down(self, why: str) -> None:
        if self._failing != why:
            self._failing = why
            self.reports.put(Notice(why, error=True))

    def _up(self) -> None:
        if self._failing is not None:
            self._failing = None
            self.reports.put(Notice("router answering again"))

    def _groups_down(self, why: str) -> None:
        if self._groups_failing != why:
            self._groups_failing = why
            self.reports.put(Notice(why, error=True, about="groups"))

    def _groups_up(self) -> None:
        if self._groups_failing is not None:
            self._groups_failing = None
            self.reports.put(Notice("groups service answering again", about="groups"))


# -- the UI ---------------------------------------------------------------------------------

HELP = [
    ("/connect ID[@host:port], /c", "chat with ID (with an address: introduce it first)"),
    ("/direct, /d", "back to the 1:1 room"),
    ("/group GROUP, /g", "open a group's room (its id, or its name)"),
    ("/groups", "your groups and invitations"),
    ("/create NAME [ID...]", "create a group (this node its hub and admin), invite IDs"),
    ("/join GROUP", "accept an invitation (the room opens once the hub admits you)"),
    ("/invite ID[@host:port]", "invite a node to this room's group"),
    ("/leave", "leave this room's group"),
    ("/id", "this node's full id"),
    ("/peers", "nodes the router knows"),
    ("/stats", "session counters and the router's"),
    ("/clear", "clear this room's messages"),
    ("/show", f"show the last cut message whole (over {CUT_CHARS} characters; or click it)"),
    ("/help, /h", "this list"),
    ("/quit, /q", "leave (also Esc, Ctrl+C)"),
]
STATUS_STYLE = {"pending": "dim", "sent": "yellow", "relayed": "yellow", "delivered": "green",
                "read": "bold green", "failed": "bold red", "sending": "dim",
                "ordered": "green"}
MEMBER_CHANGE = {"joined": "joined", "left": "left", "kicked": "was removed"}
UNREAD_MARK = "●"
"""Marks a message that arrived while no chat showed it."""


class Line(Static):
    """One line of the message pane."""

    DEFAULT_CSS = "Line { height: auto; }"


class MessageLine(Line):
    """A message's line: its text is cut after ``CUT_CHARS`` characters, with a hint; a
    click (or /show) shows it whole, a second click cuts it again. Rendering a line of tens
    of thousands of characters costs the UI little, but it would fill the screen."""

    message = ""
    expanded = False

    @property
    def cut(self) -> bool:
        return len(self.message) > CUT_CHARS and not self.expanded

    def body(self) -> Text:
        if not self.cut:
            return Text(self.message)
        t = Text(self.message[:CUT_CHARS])
        t.append(f" … ({len(self.message) - CUT_CHARS:,} more characters: click or /show)",
                 "italic yellow")
        return t

    def render_text(self) -> Text:
        raise NotImplementedError

    def refresh_text(self) -> None:
        self.update(self.render_text())

    def on_mount(self) -> None:
        self.refresh_text()

    def toggle(self) -> None:
        self.expanded = not self.expanded
        self.refresh_text()

    def on_click(self) -> None:
        if len(self.message) > CUT_CHARS:
            self.toggle()


class InLine(MessageLine):
    """A 1:1 message received; ``backlog``: it arrived while no chat showed it (marked)."""

    def __init__(self, msg: Message, sender: str, backlog: bool = False) -> None:
        super().__init__()
        self.msg, self.sender, self.backlog = msg, sender, backlog
        self.message = printable(msg.text)

    def render_text(self) -> Text:
        info = self.msg.info
        tag = (f"[{'verified' if info.verified else 'UNVERIFIED'}, "
               f"{'encrypted' if info.encrypted else 'plain'}"
               f"{', relayed' if info.relayed else ''}]")
        t = Text()
        if self.backlog:
            t.append(f"{UNREAD_MARK} ", "bold yellow")
        t.append(f"[{clock(info.timestamp_ms)}] ", "dim")
        t.append(self.sender, "bold green")
        t.append(": ")
        t.append_text(self.body())
        t.append("  ")
        t.append(tag, "green" if info.encrypted else "yellow")
        return t


class OutLine(MessageLine):
    """A message sent from here; its status suffix moves as the router reports."""

    def __init__(self, stamp: str, text: str, to: str) -> None:
        super().__init__()
        self.stamp, self.message, self.to = stamp, text, to
        self.status, self.reason = "sending", ""

    def set_status(self, status: str, reason: str = "") -> bool:
        if self.status == "sending" or moves(self.status, status) or (
                status == self.status and reason != self.reason):  # why it still waits
            self.status, self.reason = status, reason
            self.refresh_text()
            return True
        return False

    def render_text(self) -> Text:
        t = Text.assemble((f"[{self.stamp}] ", "dim"), ("me", "bold cyan"),
                          (f" → {self.to}", "dim"), ": ", self.body(), "  ")
        t.append(f"({status_text(self.status, self.reason)})",
                 STATUS_STYLE.get(self.status, ""))
        return t


class GroupLine(MessageLine):
    """A group message, placed in its room by ``seq`` (None: ours, not ordered yet)."""

    def __init__(self, seq: int | None, stamp: str, sender: str, text: str,
                 own: bool = False) -> None:
        super().__init__()
        self.seq, self.stamp, self.sender, self.message = seq, stamp, sender, text
        self.own = own
        self.status, self.reason = ("ordered" if seq is not None else "sending"), ""

    def set_status(self, status: str, reason: str = "", seq: int | None = None) -> bool:
        if not group_moves(self.status, status):
            return False
        self.status, self.reason = status, reason
        if seq is not None:
            self.seq = seq
        self.refresh_text()
        return True

    def render_text(self) -> Text:
        t = Text.assemble((f"[{self.stamp}] ", "dim"),
                          (self.sender, "bold cyan" if self.own else "bold green"), ": ",
                          self.body())
        if self.own:
            t.append("  ")
            t.append(f"({status_text(self.status, self.reason)})",
                     STATUS_STYLE.get(self.status, ""))
        return t


class Room(VerticalScroll):
    """A room's message pane. Not focusable: a click on a line (to show it whole) leaves the
    focus in the input, so typing goes on; it scrolls with the wheel and the app's keys."""

    can_focus = False


class ChatInput(Input):
    """An input that handles Enter in order with the other keys, and typed text in batches.

    Textual runs key bindings (Input binds Enter to submit) as soon as the key is read, but
    inserts printable keys later, from the widget's queue: typed-ahead lines (a fast typist,
    tmux send-keys) came out merged ("hello/x" submitted, then empty lines). Enter is
    handled here as a key instead, and the input empties at once.

    Each character inserted on its own costs the input work in proportion to its length
    (cursor, scrolling, tab expansion): 10,000 characters arriving as keys (tmux send-keys,
    a terminal without bracketed paste) took seconds, during which the screen lagged.
    Printable keys are collected and inserted together every ``TYPED_FLUSH_S``, and before
    any other key, so the order of keys is kept."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "enter_in_order", show=False)]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._typed: list[str] = []

    def action_enter_in_order(self) -> None:
        raise SkipAction()  # not as a binding: the key then reaches _on_key, in order

    def flush_typed(self) -> None:
        if self._typed:
            text = "".join(self._typed)
            self._typed.clear()
            self.insert_text_at_cursor(text)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.flush_typed()
            self.post_message(self.Submitted(self, self.value, None))
            self.value = ""
            return
        if event.is_printable and event.character and self.selection.is_empty:
            event.stop()
            event.prevent_default()
            self._typed.append(event.character)
            if len(self._typed) == 1:
                self.set_timer(TYPED_FLUSH_S, self.flush_typed)
            return
        self.flush_typed()
        await super()._on_key(event)


class ChatApp(App[None]):
    """The chat screen: header, messages (one pane per room), peers or members, input, status
    line."""

    TITLE = "tom chat"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #header { height: 1; background: $primary; color: $text; padding: 0 1; }
    #main { height: 1fr; }
    .room { width: 1fr; padding: 0 1; }
    #peers { width: 40; height: 1fr; border-left: solid $primary; padding: 0 1; }
    #status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit", "quit", priority=True, show=False),
        Binding("escape", "quit", "quit", priority=True, show=False),
        Binding("up", "scroll(-1)", show=False, priority=True),
        Binding("down", "scroll(1)", show=False, priority=True),
        Binding("pageup", "scroll(-10)", show=False, priority=True),
        Binding("pagedown", "scroll(10)", show=False, priority=True),
    ]

    def __init__(self, link: Link, own: bytes | None = None, peer: Peer | None = None) -> None:
        super().__init__()
        self.link = link
        self.own = own
        self.peer = peer.node_id if peer else None
        self.intro = peer if peer and peer.address else None
        self.sent = self.received = 0
        self.router_ok: bool | None = None
        self.groups_ok: bool | None = None
        self.peer_entries: list[rm.PeerEntry] = []
        self._outgoing: dict[int, OutLine | GroupLine] = {}
        self._by_id: dict[bytes, OutLine] = {}
        self._group_ids: dict[bytes, GroupLine] = {}
        self._next_key = 0
        self.room = DIRECT
        self.groups: dict[str, gm.GroupInfo] = {}
        self.invites: list[gm.Invite] = []
        self.unread: dict[str, int] = {}  # group rooms: messages that came while not shown
        self._unseen: dict[InLine, Message] = {}
        """1:1 messages not on screen yet: marked read once their line is (pump)."""
        self._rooms: dict[str, VerticalScroll] = {}
        self._asked: dict[str, str] = {}  # groups created or joined from here -> what
        self._keys = 0

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Horizontal(id="main"):
            yield Room(id="messages", classes="room")
            yield Static("Peers", id="peers")
        yield ChatInput(placeholder="Enter to send, /help for commands", id="input")
        yield Static(id="status")

    def on_mount(self) -> None:
        self._rooms[DIRECT] = self.query_one("#messages", VerticalScroll)
        self._rooms[DIRECT].anchor()  # follows new lines until the person scrolls up
        self.link.start()
        if self.intro:
            self.link.add_peer(self.intro)
        self.link.ask_id()
        self.set_interval(POLL_S, self.pump)
        self.query_one(Input).focus()
        self.redraw_header()
        self.redraw_status()
        self.system("Enter to send, /help for commands")

    def on_unmount(self) -> None:
        self.link.stop()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._keys += 1
            if self._keys % KEYS_PER_TURN == 0:
                # a burst of keys (a long line typed by tmux, or by a terminal without
                # bracketed paste) is read 4 KiB at a time and forwarded without a pause:
                # let the screen and the input catch up in between
                await asyncio.sleep(0)
        await super().on_event(event)

    # rooms

    def pane(self, room: str | None = None) -> VerticalScroll:
        """The message pane of ``room`` (default: the one shown), made on first use."""
        room = self.room if room is None else room
        pane = self._rooms.get(room)
        if pane is None:
            pane = Room(classes="room")
            pane.display = room == self.room
            self._rooms[room] = pane
            self.query_one("#main", Horizontal).mount(pane, before=self.query_one("#peers"))
            pane.anchor()
        return pane

    def switch(self, room: str) -> None:
        self.room = room
        for name, pane in self._rooms.items():
            pane.display = name == room
        self.pane(room).scroll_end(animate=False)
        self.unread.pop(room, None)
        self.redraw_header()
        self.redraw_peers()

    def group_name(self, gid: str) -> str:
        g = self.groups.get(gid) or next((i for i in self.invites if i.group_id == gid), None)
        return printable(g.name, 32) if g else gid

    # drawing

    def name_of(self, node_id: bytes) -> str:
        if node_id == self.own:
            return "me"
        for p in self.peer_entries:
            if p.node_id == node_id and p.username:
                return f"{printable(p.username, 32)} ({short(node_id)})"
        return short(node_id)

    def redraw_header(self) -> None:
        you = short(self.own) if self.own else "?"
        if self.room != DIRECT:
            g = self.groups.get(self.room)
            where = f"Group → {self.group_name(self.room)} ({self.room})"
            if g is not None:
                where += f", {n_members(g)}"
        elif self.peer:
            where = f"Peer → {self.name_of(self.peer)}"
        else:
            where = "(no peer)"
        self.query_one("#header", Static).update(Text(f"tom chat | You: {you} | {where}"))

    def redraw_status(self) -> None:
        router = {None: "connecting", True: "ok", False: "NOT ANSWERING"}[self.router_ok]
        groups = {None: "", True: " | groups ok", False: " | groups NOT ANSWERING"}[
            self.groups_ok]
        above = (f" | {len(self._unseen)} unread above (PgUp)"
                 if self._unseen and self.room == DIRECT else "")
        self.query_one("#status", Static).update(Text(
            f"router {router}{groups} | {self.sent} sent, {self.received} received{above} | "
            "Esc or /q quits"))

    def redraw_peers(self) -> None:
        g = self.groups.get(self.room) if self.room != DIRECT else None
        t = Text()
        if g is not None:
            self._members(t, g)
        else:
            t.append("Peers\n", style="bold")
            if not self.peer_entries:
                t.append("none known\n", style="dim")
            for p in self.peer_entries:
                mark = "›" if p.node_id == self.peer else " "
                colour = {"online": "green", "stale": "yellow"}.get(p.status, "dim")
                t.append(f"{mark} ")
                t.append("●", style=colour)
                t.append(f" {short(p.node_id)} {p.status}")
                if p.username:
                    t.append(f" {printable(p.username, 32)}", style="cyan")
                if p.route:
                    t.append(" via relay", style="dim")
                t.append("\n")
        self._rooms_list(t)
        self.query_one("#peers", Static).update(t)

    def _members(self, t: Text, g: gm.GroupInfo) -> None:
        t.append(f"Members of {printable(g.name, 24)}\n", style="bold")
        status = {p.node_id: p.status for p in self.peer_entries}
        for m in sorted(g.members, key=lambda m: (m.role != "admin", m.node_id)):
            st = "online" if m.node_id == self.own else status.get(m.node_id, "unknown")
            t.append("  ")
            t.append("●", style={"online": "green", "stale": "yellow"}.get(st, "dim"))
            t.append(f" {'you' if m.node_id == self.own else short(m.node_id)}")
            if m.role == "admin":
                t.append(" admin", style="cyan")
            if m.node_id == g.hub:
                t.append(" hub", style="magenta")
            t.append("\n")
        if g.hub not in {m.node_id for m in g.members}:
            t.append(f"  hub {short(g.hub)} (not a member)\n", style="dim")

    def _rooms_list(self, t: Text) -> None:
        if not self.groups and not self.invites:
            return
        t.append("\nRooms\n", style="bold")
        rooms = [(DIRECT, "1:1")] + [(gid, printable(g.name, 24)) for gid, g in
                                     sorted(self.groups.items(), key=lambda x: x[1].name)
                                     if g.member]
        for room, name in rooms:
            t.append(f"{'›' if room == self.room else ' '} {name}")
            new = len(self._unseen) if room == DIRECT else self.unread.get(room, 0)
            if new and room != self.room:
                t.append(f" ({new} new)", style="bold yellow")
            t.append("\n")
        for i in self.invites:
            t.append(f"  {printable(i.name, 24)} ", style="dim")
            t.append("invited: /join\n", style="yellow")

    def add_line(self, line: Line, room: str | None = None) -> None:
        """Append ``line`` to a room; its pane stays at the bottom unless scrolled up
        (textual's anchor: a check of the position here came before the layout of a tall
        line, which then left the pane short of its end and following stopped)."""
        self.pane(room).mount(line)

    def add_group_line(self, gid: str, line: GroupLine) -> None:
        """Mount ``line`` at its place in the group's room (by seq)."""
        pane = self.pane(gid)
        lines = [w for w in pane.children if isinstance(w, GroupLine) and w is not line]
        i = place([w.seq for w in lines], line.seq) if line.seq is not None else None
        if line.parent is None:
            if i is None:
                pane.mount(line)
            else:
                pane.mount(line, before=lines[i])
        elif i is not None and pane.children.index(line) > pane.children.index(lines[i]):
            pane.move_child(line, before=lines[i])  # ordered: up to its place

    def system(self, text: str, error: bool = False, room: str | None = None) -> None:
        self.add_line(Line(Text.assemble((f"[{clock()}] ", "dim"),
                                         (text, "bold red" if error else "yellow italic"))),
                      room)

    def show_whole(self) -> None:
        """The newest message of this room still shown cut, whole (and it stays in view)."""
        pane = self.pane()
        line = next((w for w in reversed(pane.children)
                     if isinstance(w, MessageLine) and w.cut), None)
        if line is None:
            self.system(f"no cut message here (messages over {CUT_CHARS} characters are "
                        "cut; click one to show it whole or cut it again)")
            return
        line.toggle()
        if line is not pane.children[-1]:  # the last one stays in view at the bottom
            self.call_after_refresh(pane.scroll_to_widget, line, animate=False, top=True)

    def action_scroll(self, lines: int) -> None:
        self.pane().scroll_relative(y=lines, animate=False)

    # reports from the link

    def pump(self) -> None:
        for r in self.link.drain():
            self.on_report(r)
        self.read_shown()

    def read_shown(self) -> None:
        """Mark read the 1:1 messages whose line is on screen now (their senders see
        ``read``); those scrolled out of view, or in a room not shown, wait."""
        if not self._unseen or self.room != DIRECT:
            return
        pane = self.pane(DIRECT)
        top, height = pane.scroll_y, pane.scrollable_content_region.height
        shown = [line for line in self._unseen if height > 0 and visible(line, top, height)]
        for line in shown:
            self.link.read(self._unseen.pop(line))
        if shown:
            self.redraw_status()

    def on_report(self, r: Report) -> None:
        if isinstance(r, Notice):
            if r.about == "router":
                if r.error:
                    self.router_ok = False
                elif r.text == "router answering again":
                    self.router_ok = True
            elif r.about == "groups":
                self.groups_ok = not r.error
            self.system(r.text, r.error)
            self.redraw_status()
        elif isinstance(r, OwnId):
            self.own = r.node_id
            self.router_ok = True
            self.redraw_header()
            self.redraw_status()
        elif isinstance(r, Stored):
            line = self._outgoing.get(r.key)
            if isinstance(line, OutLine):
                self._by_id[r.msg_id] = line
                line.set_status("pending")
        elif isinstance(r, SendFailed):
            line = self._outgoing.get(r.key)
            if line is not None:
                line.set_status("failed", r.reason)
        elif isinstance(r, PeerList):
            self.peer_entries = r.peers
            self.redraw_peers()
            self.redraw_header()
            if r.show:
                self.show_peers(r.peers)
        elif isinstance(r, Stats):
            self.show_stats(r.reply)
        elif isinstance(r, Message):
            self.incoming(r)
        elif isinstance(r, Backlog):
            self.backlog(r)
        elif isinstance(r, rm.StatusChanged):
            line = self._by_id.get(r.id)
            if line is not None:
                line.set_status(r.status, r.reason)
        elif isinstance(r, rm.PeerChanged):
            name = f" ({printable(r.username, 32)})" if r.username else ""
            self.system(f"peer {short(r.node_id)}{name} {r.status}")
            self.link.ask_peers(show=False)
        else:
            self.on_group_report(r)

    def on_group_report(self, r: Report) -> None:
        if isinstance(r, GroupStored):
            line = self._outgoing.get(r.key)
            if isinstance(line, GroupLine):
                self._group_ids[r.msg_id] = line
                line.set_status("pending")
        elif isinstance(r, GroupList):
            self.groups = {g.group_id: g for g in r.reply.groups}
            self.invites = r.reply.invites
            if not self.groups_ok:
                self.groups_ok = True
                self.redraw_status()
            for gid, what in list(self._asked.items()):
                g = self.groups.get(gid)
                if g is not None and g.member:
                    del self._asked[gid]
                    self.switch(gid)
                    self.system(f"{what} {self.group_name(gid)} ({gid}): "
                                f"{n_members(g)}")
            self.redraw_peers()
            self.redraw_header()
            if r.show:
                self.show_groups()
        elif isinstance(r, GroupAsked):
            self._asked[r.group_id] = "created" if r.what == "created" else "joined"
            if r.what == "joining":
                self.system(f"asked the hub of {self.group_name(r.group_id)} to admit you")
            self.link.ask_groups(show=False)
        elif isinstance(r, GroupMessage):
            self.group_incoming(r)
        elif isinstance(r, gm.SendStatus):
            line = self._group_ids.get(r.id)
            if line is not None and line.set_status(r.status, r.reason,
                                                    r.seq if r.status == "ordered" else None):
                if r.status == "ordered":
                    self.add_group_line(r.group_id, line)
        elif isinstance(r, gm.MemberChanged):
            who = "you" if r.node_id == self.own else self.name_of(r.node_id)
            what = MEMBER_CHANGE.get(r.change, f"is now {r.role}")
            self.system(f"{who} {what}", room=r.group_id)
            self.link.ask_groups(show=False)
        elif isinstance(r, gm.GroupChanged):
            self.group_changed(r)
        elif isinstance(r, gm.Invited):
            self.system(f"{self.name_of(r.inviter)} invited you to {printable(r.name, 64)} "
                        f"({r.group_id}): /join {printable(r.name, 64)}")
            self.link.ask_groups(show=False)

    def group_changed(self, r: gm.GroupChanged) -> None:
        name = f"{self.group_name(r.group_id)} ({r.group_id})"
        if r.change == "hub":
            self.system(f"the hub of {name} is now {self.name_of(r.hub)} (term {r.term})",
                        room=r.group_id)
        elif r.change in ("left", "removed"):
            self.system(f"you {'left' if r.change == 'left' else 'were removed from'} {name}")
            if r.group_id in self._rooms and r.group_id != self.room:
                self.system(f"you are no longer in {name}", room=r.group_id)
        self.link.ask_groups(show=False)

    def group_incoming(self, m: GroupMessage) -> None:
        info = m.info
        line = self._group_ids.get(info.id) if info.sender == self.own else None
        if line is not None:  # ours, sent from here: it moves to its place
            line.set_status("ordered", seq=info.seq)
            self.add_group_line(info.group_id, line)
            return
        own = info.sender == self.own
        if not own:
            self.received += 1
            self.redraw_status()
        self.add_group_line(info.group_id, GroupLine(
            info.seq, clock(info.timestamp_ms), self.name_of(info.sender),
            printable(m.text), own=own))
        if info.group_id != self.room:
            self.unread[info.group_id] = self.unread.get(info.group_id, 0) + 1
            self.redraw_peers()

    def backlog(self, r: Backlog) -> None:
        """What arrived while no chat showed it, first and marked; read once on screen."""
        if not r.messages:
            return
        n = len(r.messages)
        text = (f"{n} unread message{'s' if n != 1 else ''} from while the chat was closed "
                f"(marked {UNREAD_MARK})")
        if r.older:
            text += (f"; {r.older} older unread message{'s' if r.older != 1 else ''} not "
                     "shown: `tom inbox --unread` lists them")
        self.system(text, room=DIRECT)
        for msg in r.messages:
            self.incoming(msg, backlog=True)

    def incoming(self, msg: Message, backlog: bool = False) -> None:
        info = msg.info
        self.received += 1
        if self.peer is None:
            self.peer = info.sender
            self.system(f"Auto-connected to {short(info.sender)} (first message)", room=DIRECT)
            self.redraw_header()
        line = InLine(msg, self.name_of(info.sender), backlog)
        self.add_line(line, DIRECT)
        self._unseen[line] = msg  # read once on screen (read_shown)
        self.redraw_status()
        self.redraw_peers()

    def show_peers(self, peers: list[rm.PeerEntry]) -> None:
        if not peers:
            self.system("no known peers (/connect ID@host:port introduces one)")
        for p in peers:
            where = f" {printable(p.host, 64)}:{p.port}" if p.host else ""
            rtt = f" rtt {p.rtt_ms:.1f} ms" if p.rtt_ms is not None else ""
            route = f" via {', '.join(short(r) for r in p.route)}" if p.route else ""
            user = f" {printable(p.username, 32)}" if p.username else ""
            conn = "connected" if p.connected else "not connected"
            self.system(f"{p.node_id.hex()}{user} {p.status}, {conn}{where}{rtt}{route}")

    def show_groups(self) -> None:
        mine = [g for g in self.groups.values() if g.member]
        if not mine and not self.invites:
            self.system("no groups (/create NAME [ID...] makes one)")
        for g in mine:
            self.system(f"{g.group_id} {printable(g.name, 64)}: {n_members(g)}, hub "
                        f"{self.name_of(g.hub)}")
        for i in self.invites:
            self.system(f"{i.group_id} {printable(i.name, 64)}: invited by "
                        f"{self.name_of(i.inviter)} (/join {printable(i.name, 64)})")

    def show_stats(self, st: StatusReply) -> None:
        self.system(f"this session: {self.sent} sent, {self.received} received")
        self.system(f"router {st.impl} pid {st.pid}, up {st.uptime_s:.0f} s, frames in "
                    f"{st.frames_in} out {st.frames_out}, drops {st.drops}")
        for title, values in (("counters", st.counters), ("queues", st.queues),
                              ("errors", st.errors)):
            if values:
                self.system(f"{title}: " + ", ".join(f"{k}={v}" for k, v in values.items()))

    # input

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if text.startswith("/"):
            self.command(text)
        else:
            self.send_text(text)

    def send_text(self, text: str) -> None:
        if self.room != DIRECT:
            return self.send_group(self.room, text)
        if self.peer is None:
            self.system("No peer selected: /connect ID[@host:port] first", error=True)
            return
        key = self._next_key
        self._next_key += 1
        line = OutLine(clock(), text, self.name_of(self.peer))
        self._outgoing[key] = line
        self.add_line(line)
        self.sent += 1
        self.redraw_status()
        self.link.send(key, self.peer, text)

    def send_group(self, gid: str, text: str) -> None:
        key = self._next_key
        self._next_key += 1
        line = GroupLine(None, clock(), "me", printable(text), own=True)
        self._outgoing[key] = line
        self.add_group_line(gid, line)
        self.sent += 1
        self.redraw_status()
        self.link.group_send(key, gid, text)

    def find_group(self, text: str) -> str | None:
        """The id of the group this node is in named by ``text``; None (and says why)."""
        try:
            return resolve(list(self.groups.values()), text).group_id
        except NodeError as e:
            self.system(str(e).replace("`tom group list`", "/groups"), error=True)
            return None

    def command(self, text: str) -> None:
        cmd, _, arg = text.partition(" ")
        arg = arg.strip()
        if cmd in ("/connect", "/c"):
            if not arg:
                self.system("usage: /connect ID[@host:port]", error=True)
                return
            try:
                peer = parse_peer(arg)
            except NodeError as e:
                self.system(str(e), error=True)
                return
            if peer.address:
                self.link.add_peer(peer)
            self.peer = peer.node_id
            if self.room != DIRECT:
                self.switch(DIRECT)
            self.system(f"Chatting with {peer.node_id.hex()}")
            self.redraw_header()
            self.redraw_peers()
        elif cmd in ("/direct", "/d"):
            self.switch(DIRECT)
        elif cmd in ("/group", "/g"):
            if not arg:
                self.system("usage: /group GROUP (/groups lists them)", error=True)
            elif (gid := self.find_group(arg)) is not None:
                self.switch(gid)
        elif cmd == "/groups":
            self.link.ask_groups(show=True)
        else:
            self.group_command(cmd, arg)

    def group_command(self, cmd: str, arg: str) -> None:
        if cmd == "/create":
            name, *members = arg.split() or [""]
            if not name or len(name) > 64:
                self.system("usage: /create NAME [ID...] (a name of 1 to 64 characters)",
                            error=True)
                return
            try:
                peers = [parse_peer(m) for m in members]
            except NodeError as e:
                self.system(str(e), error=True)
                return
            for p in peers:
                if p.address:
                    self.link.add_peer(p)
            self.link.group_create(name, [p.node_id for p in peers])
        elif cmd == "/join":
            try:
                invite = resolve_invite(self.invites, arg) if arg else None
            except NodeError as e:
                self.system(str(e), error=True)
                return
            if invite is None:
                self.system("usage: /join GROUP, an invitation (/groups lists them)",
                            error=True)
                return
            self.link.group_join(invite.group_id)
        elif cmd in ("/invite", "/leave") and self.room == DIRECT:
            self.system(f"{cmd} is for a group's room: /group GROUP first", error=True)
        elif cmd == "/invite":
            try:
                peer = parse_peer(arg)
            except NodeError as e:
                self.system(str(e), error=True)
                return
            if peer.address:
                self.link.add_peer(peer)
            self.link.group_invite(self.room, peer.node_id)
        elif cmd == "/leave":
            self.link.group_leave(self.room)
        else:
            self.basic_command(cmd)

    def basic_command(self, cmd: str) -> None:
        if cmd == "/id":
            self.system(f"Your node id: {self.own.hex() if self.own else 'unknown yet'}")
        elif cmd == "/peers":
            self.link.ask_peers(show=True)
        elif cmd == "/stats":
            self.link.ask_stats()
        elif cmd == "/clear":
            pane = self.pane()
            gone = set(pane.children)
            pane.remove_children()
            self._outgoing = {k: w for k, w in self._outgoing.items() if w not in gone}
            self._by_id = {k: w for k, w in self._by_id.items() if w not in gone}
            self._group_ids = {k: w for k, w in self._group_ids.items() if w not in gone}
            self._unseen = {k: m for k, m in self._unseen.items() if k not in gone}
            self.redraw_status()
        elif cmd == "/show":
            self.show_whole()
        elif cmd in ("/help", "/h"):
            for usage, what in HELP:
                self.system(f"{usage:30} {what}")
        elif cmd in ("/quit", "/q"):
            self.exit()
        else:
            self.system(f"Unknown command: {cmd} (/help lists them)", error=True)


# -- commands -------------------------------------------------------------------------------

def client_factory(data: DataDir, timeout_s: float) -> Callable[[], AppClient]:
    def make() -> AppClient:
        return Client(data, timeout_s=timeout_s)
    return make


def run_chat(data: DataDir, peer_text: str | None) -> int:
    peer = parse_peer(peer_text) if peer_text else None
    if not data.endpoints.exists():
        raise NodeError(f"no node at {data.root} ({data.endpoints.name} missing): "
                        "start one with `tom node up`")
    app = ChatApp(Link(client_factory(data, UI_BUS_TIMEOUT_S)), own_id_hint(data), peer)
    app.run()
    print(f"Stats: {app.sent} sent, {app.received} received")
    return 0


def say(text: str, err: bool = False) -> None:
    """One line of the bot's log; what peers wrote in it is shown escaped."""
    print(printable(text), file=sys.stderr if err else sys.stdout, flush=True)


def run_bot(client: AppClient, peer: Peer | None, stop: threading.Event) -> int:
    """Print every message received, mark it read, reply ``echo: <text>`` (not to echoes,
    so two bots do not loop); log the status of the replies. In groups the same, per group:
    it joins the groups it is invited to, answers every member's message in the group (not
    its own), and logs when the hub ordered each reply. Runs until ``stop``."""
    return Bot(client).run(peer, stop)


class Bot:
    def __init__(self, client: AppClient) -> None:
        self.client = client
        self.own: bytes | None = None
        self.received = self.replied = 0
        self.replies: dict[bytes, int] = {}  # reply id -> the number of the message it answers
        self.names: dict[str, str] = {}  # group id -> name, for the log
        self.backlog_after: int | None = None
        """While the unread messages from before the start are being handled: the last seq
        handled (None: none left)."""

    def run(self, peer: Peer | None, stop: threading.Event) -> int:
        client = self.client
        say("[bot] running in bot mode")
        failing: str | None = None
        introduced = peer is None or peer.address is None
        while not stop.is_set():
            try:
                if self.own is None:
                    self.own = client.node_id()
                    say(f"[bot] node {self.own.hex()} ({short(self.own)})")
                if not introduced:
                    assert peer is not None
                    client.add_peer(peer.node_id, peer.host, peer.port)
                    say(f"[bot] introduced {short(peer.node_id)} at {peer.host}:{peer.port}")
                    introduced = True
                if client.after is None:
                    self.backlog_after = 0  # (kept if the start fails: tried again)
                    start_listening(client)
                while self.backlog_after is not None and not stop.is_set():
                    self.backlog()
                for ev in client.events(timeout_s=0.2):
                    self.on_event(ev)
                if failing is not None:
                    failing = None
                    say("[bot] router answering again")
            except WireError as e:
                if failing != str(e):
                    failing = str(e)
                    say(f"[bot] router not answering: {e} (retrying)", err=True)
                stop.wait(RETRY_EVERY_S)
        say(f"[bot] stopped: {self.received} received, {self.replied} replied")
        return 0

    def backlog(self) -> None:
        """A page of what arrived while no app showed it: handled first, marked unread."""
        assert self.backlog_after is not None
        page = unread_before(self.client, self.backlog_after)
        if not page:
            self.backlog_after = None
        for m in page:
            self.on_event(m, backlog=True)
            self.backlog_after = m.info.seq

    def on_event(self, ev: Event, backlog: bool = False) -> None:
        client = self.client
        if isinstance(ev, Message):
            self.received += 1
            n, info = self.received, ev.info
            sig = "verified" if info.verified else "UNVERIFIED"
            mark = " | unread" if backlog else ""
            say(f'[bot] #{n} from {short(info.sender)} | {sig}{mark} | "{ev.text}"')
            client.read(ev)  # printed: shown
            if ev.text.startswith("echo: "):
                return
            try:
                msg_id = client.send(info.sender, f"echo: {ev.text}", deadline_s=10)
            except WireError as e:
                say(f"[bot] reply to #{n} failed: {e}", err=True)
                return
            self.replies[msg_id] = n
            self.replied += 1
            say(f"[bot] replied to #{n}: \"echo: {ev.text}\"")
        elif isinstance(ev, GroupMessage):
            self.group_message(ev)
        elif isinstance(ev, rm.StatusChanged) and ev.id in self.replies:
            say(f"[bot] reply to #{self.replies[ev.id]}: {status_text(ev.status, ev.reason)}")
            if ev.status in ("read", "failed"):
                del self.replies[ev.id]
        elif isinstance(ev, gm.SendStatus) and ev.id in self.replies:
            say(f"[bot] reply to #{self.replies.pop(ev.id)}: "
                f"{status_text(ev.status, ev.reason)}"
                + (f" as #{ev.seq} in {self.group(ev.group_id)}" if ev.seq else ""))
        elif isinstance(ev, rm.PeerChanged):
            say(f"[bot] peer {short(ev.node_id)} {ev.status}")
        elif isinstance(ev, gm.Invited):
            self.names[ev.group_id] = ev.name
            say(f"[bot] invited to {self.group(ev.group_id)} by {short(ev.inviter)}: joining")
            try:
                client.group_join(ev.group_id)
            except WireError as e:
                say(f"[bot] joining {self.group(ev.group_id)} failed: {e}", err=True)
        elif isinstance(ev, gm.GroupChanged) and ev.change != "hub":
            say(f"[bot] group {self.group(ev.group_id)}: {ev.change}")
        elif isinstance(ev, gm.MemberChanged):
            say(f"[bot] group {self.group(ev.group_id)}: {short(ev.node_id)} {ev.change}"
                + (f" ({ev.role})" if ev.change == "role" else ""))

    def group(self, gid: str) -> str:
        name = self.names.get(gid)
        return f"{name} ({gid})" if name else gid

    def group_message(self, ev: GroupMessage) -> None:
        info = ev.info
        if info.sender == self.own:  # its own (a reply, or sent from elsewhere on this
            if info.id in self.replies:  # node): not answered
                say(f"[bot] reply to #{self.replies.pop(info.id)}: ordered as #{info.seq} "
                    f"in {self.group(info.group_id)}")
            return
        self.received += 1
        n = self.received
        where = self.group(info.group_id)
        say(f'[bot] #{n} in {where} from {short(info.sender)} | #{info.seq} | "{ev.text}"')
        if ev.text.startswith("echo: "):
            return
        try:
            msg_id = self.client.group_send(info.group_id, f"echo: {ev.text}", deadline_s=10)
        except WireError as e:
            say(f"[bot] reply to #{n} failed: {e}", err=True)
            return
        self.replies[msg_id] = n
        self.replied += 1
        say(f"[bot] replied to #{n} in {where}: \"echo: {ev.text}\"")


def cmd_chat(data: DataDir, args: Any) -> int:
    if not args.bot:
        return run_chat(data, args.peer)
    peer = parse_peer(args.peer) if args.peer else None
    with Client(data, timeout_s=UI_BUS_TIMEOUT_S) as client, Stop() as stop:
        return run_bot(client, peer, stop.event)


def retrying(fn: Callable[[], T], deadline: float) -> T:
    """``fn()``, again while the router does not answer or says it is busy, until
    ``deadline`` (monotonic); then its last error."""
    while True:
        try:
            return fn()
        except (BusTimeout, RemoteError) as e:
            if isinstance(e, RemoteError) and e.code not in RETRYABLE \
                    or time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def send_once(client: AppClient, peer: Peer, text: str, timeout_s: float,
              encrypt: bool = True,
              progress: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Send and wait for the outcome: (EX_DELIVERED, "delivered"), (EX_FAILED,
    "failed: reason") or (EX_TIMEOUT, timeout with the last status and its reason).
    While it waits, each new reason the router gives (why the message is not delivered
    yet: no route, nothing listening at the address, the recipient offline and where the
    message is held) goes to ``progress`` at once. Raises WireError when the router does
    not take the message before the deadline; once it has, a router that stops answering
    is waited for."""
    from .cli import EX_DELIVERED, EX_FAILED, EX_TIMEOUT

    deadline = time.monotonic() + timeout_s
    if peer.address:
        retrying(lambda: client.add_peer(peer.node_id, peer.host, peer.port), deadline)
    retrying(lambda: start_listening(client), deadline)  # first: no event can be missed
    msg_id = client.send(peer.node_id, text, encrypt,
                         deadline_s=max(0.0, deadline - time.monotonic()))
    status, reason, trouble, said = "pending", "", "", ""
    check_at = time.monotonic() + 1.0

    def seen(new_status: str, new_reason: str) -> None:
        nonlocal status, reason
        if moves(status, new_status):
            status, reason = new_status, new_reason
        elif new_status == status and new_reason:  # same status, now with a reason
            reason = new_reason

    while True:
        if status in ("delivered", "read"):
            return EX_DELIVERED, "delivered" if status == "delivered" \
                else "delivered (and read)"
        if status == "failed":
            return EX_FAILED, f"failed: {reason or 'no reason given'}"
        if reason and reason != said and progress is not None:
            said = reason
            progress(f"{status}: {reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            why = f": {reason}" if reason else ""
            return EX_TIMEOUT, f"timeout after {timeout_s:g} s: last status " \
                f"{status}{why}{trouble}"
        try:
            for ev in client.events(timeout_s=min(left, 0.25)):
                if isinstance(ev, rm.StatusChanged) and ev.id == msg_id:
                    seen(ev.status, ev.reason)
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + 1.0  # a missed event cannot hang us
                for st in client.outbox([msg_id]):
                    seen(st.status, st.reason)
            trouble = ""
        except WireError as e:  # the message is stored: wait for the router to come back
            trouble = f" (router not answering: {e})"
            time.sleep(0.1)


def cmd_send(data: DataDir, args: Any) -> int:
    """`tom send`: exit statuses in tom/cli.py (``EX_*``; the PEER argument and a node that
    is not running are checked before this runs); reasons on stderr, "delivered" on
    stdout."""
    from .cli import EX_TIMEOUT

    peer = parse_peer(args.peer)
    with Client(data, timeout_s=min(args.timeout, 5.0)) as client:
        try:
            rc, outcome = send_once(client, peer, args.text, args.timeout,
                                    not args.no_encrypt, lambda line: say(line, err=True))
        except BusTimeout as e:  # the router never answered (it may have stored it)
            say(f"timeout after {args.timeout:g} s: the router did not answer ({e})",
                err=True)
            return EX_TIMEOUT
    say(outcome, err=rc != 0)
    return rc
