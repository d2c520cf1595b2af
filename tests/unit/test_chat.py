"""tom/chat.py against an in-process fake of the few tom.client.Client methods it uses: the
textual UI driven by textual's Pilot, the bot loop, `tom send`'s wait, and the PEER syntax.
The real thing (two nodes, tmux) is tests/e2e/test_chat.py."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from shared.primitives import SigningKey
from shared.wire import BusTimeout
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm
from shared.wire.messages.sys import StatusReply
from tom import chat
from tom.client import Event, GroupMessage, Message
from tom.node import NodeError

OWN = SigningKey(b"\x01" * 32).public
PEER = SigningKey(b"\x02" * 32).public
OTHER = SigningKey(b"\x03" * 32).public


class FakeClient:
    """The client's methods, answering from memory; ``down`` makes every call time out as
    when the router does not answer. Used from the link's thread and the test's."""

    def __init__(self) -> None:
        self.after: int | None = None
        self.down = False
        self.sent: list[tuple[bytes, str, bool, bytes]] = []
        self.reads: list[bytes] = []
        self.stored: list[Message] = []
        """The inbox: every message received (``receive``), ``read`` as the app marked it."""
        self.added: list[tuple[bytes, str, int]] = []
        self.states: dict[bytes, rm.MessageState] = {}
        self.peer_list: list[rm.PeerEntry] = []
        self.queue: queue.Queue[Event] = queue.Queue()
        self.seq = self.tail = 0
        self.closed = False
        self.on_send: Callable[[bytes], None] = lambda msg_id: None
        self.groups_error: str | None = None
        self.group_list: list[gm.GroupInfo] = []
        self.invites: list[gm.Invite] = []
        self.group_sent: list[tuple[str, str, bytes]] = []
        self.group_calls: list[tuple[str, ...]] = []
        self.groups_down = False

    def _check(self) -> None:
        if self.down:
            raise BusTimeout("no reply from router at ipc://fake within 0.1 s")

    def node_id(self) -> bytes:
        self._check()
        return OWN

    def send(self, to: bytes, payload: bytes | str, encrypt: bool = True,
             deadline_s: float = 30.0) -> bytes:
        self._check()
        msg_id = os.urandom(16)
        text = payload if isinstance(payload, str) else payload.decode()
        self.sent.append((to, text, encrypt, msg_id))
        self.states[msg_id] = rm.MessageState(id=msg_id, to=to, status="pending",
                                              updated_ms=0)
        self.on_send(msg_id)
        return msg_id

    def read(self, msg: Message) -> None:
        self._check()
        self.reads.append(msg.info.id)
        self.stored = [Message(m.info, m.payload, m.read or m.info.id == msg.info.id)
                       for m in self.stored]

    def inbox(self, after: int = 0, limit: int = 100, unread: bool = False) -> list[Message]:
        return self.inbox_page(after, limit, unread)[0]

    def inbox_page(self, after: int = 0, limit: int = 100, unread: bool = False,
                   newest: bool = False) -> tuple[list[Message], int]:
        self._check()
        rows = [m for m in self.stored if m.info.seq > after and not (unread and m.read)]
        return (rows[-limit:] if newest else rows[:limit]), sum(not m.read
                                                                 for m in self.stored)

    def outbox(self, ids: list[bytes] | None = None, limit: int = 100) -> list[rm.MessageState]:
        self._check()
        return [self.states[i] for i in ids or [] if i in self.states]

    def peers(self) -> list[rm.PeerEntry]:
        self._check()
        return list(self.peer_list)

    def add_peer(self, node_id: bytes, host: str, port: int) -> None:
        self._check()
        self.added.append((node_id, host, port))

    def stats(self) -> StatusReply:
        self._check()
        return StatusReply(service="router", impl="fake 0", pid=1, uptime_s=3.0, frames_in=7,
                           frames_out=5, decode_errors=0, drops=0,
                           counters={"sent": 4, "delivered": 2})

    def inbox_tail(self) -> int:
        """The last message received with no event: those with one (even if queued before
        the app started) stand for messages that come after it subscribed."""
        self._check()
        return self.tail

    def subscribe(self) -> None:
        assert self.after is not None

    def events(self, timeout_s: float = 0.0) -> Iterator[Event]:
        self._check()
        end = time.monotonic() + timeout_s
        while True:
            try:
                yield self.queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return

    def close(self) -> None:
        self.closed = True

    def _check_groups(self) -> None:
        self._check()
        if self.groups_down:
            raise BusTimeout("no reply from groups at ipc://fake within 0.1 s")

    def groups(self) -> gm.ListReply:
        self._check_groups()
        return gm.ListReply(groups=list(self.group_list), invites=list(self.invites))

    def group_create(self, name: str, members: list[bytes] | tuple[bytes, ...] = (),
                     hub: bytes | None = None, invite_only: bool = True) -> str:
        self._check_groups()
        self.group_calls.append(("create", name, *(m.hex() for m in members)))
        gid = f"g{len(self.group_list):024x}"
        self.group_list.append(group(gid, name, [OWN]))
        return gid

    def group_invite(self, group_id: str, node_id: bytes) -> None:
        self._check_groups()
        self.group_calls.append(("invite", group_id, node_id.hex()))

    def group_join(self, group_id: str, hub: bytes | None = None) -> None:
        self._check_groups()
        self.group_calls.append(("join", group_id))

    def group_leave(self, group_id: str) -> None:
        self._check_groups()
        self.group_calls.append(("leave", group_id))

    def group_send(self, group_id: str, text: bytes | str, deadline_s: float = 30.0,
                   msg_id: bytes | None = None) -> bytes:
        self._check_groups()
        msg_id = msg_id or os.urandom(16)
        self.group_sent.append((group_id, text if isinstance(text, str) else text.decode(),
                                msg_id))
        self.on_send(msg_id)
        return msg_id

    # test side

    def status(self, msg_id: bytes, status: str, reason: str = "", event: bool = True) -> None:
        to = self.states[msg_id].to
        self.states[msg_id] = rm.MessageState(id=msg_id, to=to, status=status,  # type: ignore[arg-type]
                                              reason=reason, updated_ms=1)
        if event:
            self.queue.put(rm.StatusChanged(id=msg_id, to=to, status=status,  # type: ignore[arg-type]
                                            reason=reason))

    def receive(self, sender: bytes, text: str, encrypted: bool = True,
                event: bool = True) -> Message:
        """A message arrives: stored in the inbox, and an event (``event`` False: while
        no app listened, so only in the inbox)."""
        self.seq += 1
        msg = Message(rm.Received(seq=self.seq, id=os.urandom(16), sender=sender,
                                  timestamp_ms=int(time.time() * 1000), encrypted=encrypted,
                                  relayed=False), text.encode())
        self.stored.append(msg)
        if event:
            self.queue.put(msg)
        else:
            self.tail = self.seq
        return msg


    def group_message(self, gid: str, seq: int, sender: bytes, text: str,
                      msg_id: bytes | None = None) -> GroupMessage:
        m = GroupMessage(gm.GroupMessage(group_id=gid, seq=seq, id=msg_id or os.urandom(16),
                                         sender=sender, timestamp_ms=int(time.time() * 1000)),
                         text.encode())
        self.queue.put(m)
        return m


def group(gid: str, name: str, members: list[bytes], hub: bytes = OWN) -> gm.GroupInfo:
    return gm.GroupInfo(group_id=gid, name=name, hub=hub, term=1, seq=1,
                        members=[gm.Member(node_id=n, role="admin" if n == members[0]
                                           else "member", joined_ms=0) for n in members],
                        invite_only=True, max_members=50, successors=[], member=OWN in members)


def pane(app: chat.ChatApp) -> str:
    return "\n".join(str(line.content) for line in app.query(chat.Line))


def room(app: chat.ChatApp, name: str = "") -> list[str]:
    """The lines of one room's pane, top to bottom (the 1:1 room by default)."""
    return [str(w.content) for w in app.pane(name).children if isinstance(w, chat.Line)]


def side(app: chat.ChatApp) -> str:
    return str(app.query_one("#peers", chat.Static).content)


def header(app: chat.ChatApp) -> str:
    return str(app.query_one("#header", chat.Static).content)


def drive(fake: FakeClient,
          scenario: Callable[[chat.ChatApp, Pilot[None]], Coroutine[Any, Any, None]],
          peer: chat.Peer | None = None) -> None:
    async def main() -> None:
        app = chat.ChatApp(chat.Link(lambda: fake), own=OWN, peer=peer)
        async with app.run_test(size=(140, 40)) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())


async def until(pilot: Pilot[None], cond: Callable[[], object], what: str,
                timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


async def type_line(pilot: Pilot[None], text: str) -> None:
    """Fill the input and press Enter (the first test types key by key)."""
    pilot.app.query_one(chat.ChatInput).value = text
    await pilot.press("enter")


def test_sent_message_status_moves_in_place_to_read() -> None:
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "You: " + OWN.hex()[:10] in header(app), "header")
        assert f"Peer → {PEER.hex()[:10]}" in header(app)
        await pilot.press(*"hello [b]there[/b]", "enter")
        await until(pilot, lambda: fake.sent and "(pending)" in pane(app), "pending")
        to, text, encrypt, msg_id = fake.sent[0]
        assert (to, text, encrypt) == (PEER, "hello [b]there[/b]", True)
        lines = [x for x in pane(app).splitlines() if "hello" in x]
        assert len(lines) == 1 and "] me → " in lines[0] and ": hello [b]there[/b]" in lines[0]
        for status in ("sent", "relayed", "delivered", "read"):
            fake.status(msg_id, status)
            await until(pilot, lambda: f"({status})" in pane(app), status)  # noqa: B023
        assert len([x for x in pane(app).splitlines() if "hello" in x]) == 1  # in place
        fake.status(msg_id, "sent")  # stale: statuses only move forward
        await pilot.pause(0.2)
        assert "(read)" in pane(app)

    drive(fake, scenario, chat.Peer(PEER))


def test_failed_shows_reason_and_missed_events_come_from_the_outbox() -> None:
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await type_line(pilot, "one")
        await type_line(pilot, "two")
        await until(pilot, lambda: len(fake.sent) == 2, "two sends")
        (_, _, _, one), (_, _, _, two) = fake.sent
        fake.status(one, "failed", "no route to 0202")
        await until(pilot, lambda: "(failed (no route to 0202))" in pane(app), "failed")
        fake.status(two, "delivered", event=False)  # the event was missed
        await until(pilot, lambda: "two  (delivered)" in pane(app), "outbox poll")

    drive(fake, scenario, chat.Peer(PEER))


def test_incoming_is_tagged_read_and_first_sender_becomes_the_peer() -> None:
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: fake.after is not None, "subscribed")
        assert "(no peer)" in header(app)
        await type_line(pilot, "nobody")
        await until(pilot, lambda: "No peer selected" in pane(app), "no-peer error")
        first = fake.receive(PEER, "hi [there]")
        fake.receive(OTHER, "plain one", encrypted=False)
        await until(pilot, lambda: "plain one" in pane(app), "messages")
        text = pane(app)
        assert f"{PEER.hex()[:10]}: hi [there]  [verified, encrypted]" in text
        assert f"{OTHER.hex()[:10]}: plain one  [verified, plain]" in text
        assert f"Auto-connected to {PEER.hex()[:10]}" in text
        assert f"Peer → {PEER.hex()[:10]}" in header(app)
        await until(pilot, lambda: len(fake.reads) == 2, "read receipts")
        assert fake.reads[0] == first.info.id
        await type_line(pilot, "back")
        await until(pilot, lambda: fake.sent, "reply")
        assert fake.sent[0][0] == PEER

    drive(fake, scenario)


def test_commands() -> None:
    fake = FakeClient()
    fake.peer_list = [rm.PeerEntry(node_id=PEER, status="online", connected=True,
                                   host="127.0.0.1", port=4433, rtt_ms=0.4, username="bob")]

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await type_line(pilot, "/id")
        await until(pilot, lambda: f"Your node id: {OWN.hex()}" in pane(app), "/id")
        await type_line(pilot, "/peers")
        await until(pilot, lambda: f"{PEER.hex()} bob online, connected 127.0.0.1:4433"
                    in pane(app), "/peers")
        await until(pilot, lambda: "bob" in str(app.query_one("#peers", chat.Static).content),
                    "side panel")
        await type_line(pilot, "/stats")
        await until(pilot, lambda: "counters: sent=4, delivered=2" in pane(app), "/stats")
        assert "this session: 0 sent, 0 received" in pane(app)
        await type_line(pilot, "/frobnicate")
        await until(pilot, lambda: "Unknown command: /frobnicate" in pane(app), "unknown")
        await type_line(pilot, "/h")
        await until(pilot, lambda: "/connect ID[@host:port]" in pane(app), "/h")
        await type_line(pilot, "/c nothex")
        await until(pilot, lambda: "not a node id" in pane(app), "bad id")
        await type_line(pilot, f"/connect {OTHER.hex()}@127.0.0.1:9999")
        await until(pilot, lambda: fake.added == [(OTHER, "127.0.0.1", 9999)], "add_peer")
        assert f"Peer → {OTHER.hex()[:10]}" in header(app)
        await type_line(pilot, "/clear")
        await until(pilot, lambda: "Unknown command" not in pane(app), "/clear")
        await type_line(pilot, "/q")
        await until(pilot, lambda: not app.is_running, "/q")

    drive(fake, scenario)
    assert fake.closed


def test_a_router_that_does_not_answer_shows_an_error_not_a_crash() -> None:
    fake = FakeClient()
    fake.down = True

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "router not answering" in pane(app), "error line")
        assert "NOT ANSWERING" in str(app.query_one("#status", chat.Static).content)
        t0 = time.monotonic()
        await type_line(pilot, "lost")
        await until(pilot, lambda: "lost  (failed (not stored: no reply from router" in
                    pane(app), "send failure")
        assert time.monotonic() - t0 < 3
        fake.down = False
        await until(pilot, lambda: "router answering again" in pane(app), "recovery")
        fake.receive(PEER, "after the outage")
        await until(pilot, lambda: "after the outage" in pane(app), "message after outage")

    drive(fake, scenario, chat.Peer(PEER))


def test_the_link_keeps_the_client_in_one_thread() -> None:
    threads: set[str] = set()
    fake = FakeClient()
    fake.on_send = lambda _: threads.add(threading.current_thread().name)
    link = chat.Link(lambda: fake)
    link.start()
    try:
        link.send(0, PEER, "x")
        deadline = time.monotonic() + 5
        got: list[object] = []
        while not any(isinstance(r, chat.Stored) for r in got):
            assert time.monotonic() < deadline
            got += link.drain()
            time.sleep(0.01)
    finally:
        link.stop()
    assert threads == {"tom-chat-link"} and fake.closed


# -- bot and send ---------------------------------------------------------------------------

def test_bot_prints_reads_and_echoes(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeClient()
    stop = threading.Event()
    first = fake.receive(PEER, "ping 1")
    fake.receive(OTHER, "echo: ping")  # another bot's echo: read, not answered

    def replied() -> None:
        deadline = time.monotonic() + 5
        while len(fake.sent) < 1 or len(fake.reads) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fake.status(fake.sent[0][3], "delivered")
        fake.queue.put(rm.PeerChanged(node_id=OTHER, status="online"))
        time.sleep(0.3)
        stop.set()

    # the bot subscribes from the inbox's end: events already queued stand for new messages
    t = threading.Thread(target=replied)
    t.start()
    assert chat.run_bot(fake, None, stop) == 0
    t.join()
    out = capsys.readouterr().out
    assert f"[bot] node {OWN.hex()}" in out
    assert f'[bot] #1 from {PEER.hex()[:10]} | verified | "ping 1"' in out
    assert f'[bot] #2 from {OTHER.hex()[:10]} | verified | "echo: ping"' in out
    assert fake.sent == [(PEER, "echo: ping 1", True, fake.sent[0][3])]
    assert fake.reads[0] == first.info.id and len(fake.reads) == 2
    assert "[bot] reply to #1: delivered" in out
    assert f"[bot] peer {OTHER.hex()[:10]} online" in out
    assert "[bot] stopped: 2 received, 1 replied" in out


def test_bot_survives_a_router_outage(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeClient()
    fake.down = True
    stop = threading.Event()

    def later() -> None:
        time.sleep(0.3)
        fake.down = False
        fake.receive(PEER, "late")
        deadline = time.monotonic() + 5
        while not fake.sent:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stop.set()

    t = threading.Thread(target=later)
    t.start()
    assert chat.run_bot(fake, chat.Peer(PEER, "10.0.0.1", 4433), stop) == 0
    t.join()
    captured = capsys.readouterr()
    assert "router not answering" in captured.err
    assert fake.added == [(PEER, "10.0.0.1", 4433)]
    assert '"late"' in captured.out


def send(fake: FakeClient, script: Callable[[bytes], None], timeout_s: float = 3
         ) -> tuple[int, str]:
    fake.on_send = lambda msg_id: threading.Timer(0.05, script, (msg_id,)).start()
    return chat.send_once(fake, chat.Peer(PEER), "hi", timeout_s)


def test_send_once_outcomes() -> None:
    def deliver(msg_id: bytes) -> None:
        fake.status(msg_id, "sent")
        fake.status(msg_id, "delivered")

    fake = FakeClient()
    assert send(fake, deliver) == (0, "delivered")

    fake = FakeClient()
    assert send(fake, lambda i: fake.status(i, "failed", "no route")) == (1, "failed: no route")

    fake = FakeClient()
    rc, out = send(fake, lambda i: fake.status(i, "sent"), timeout_s=0.5)
    assert rc == 2 and out == "timeout after 0.5 s: last status sent"

    fake = FakeClient()  # every event missed: the outbox says it
    t0 = time.monotonic()
    assert send(fake, lambda i: fake.status(i, "read", event=False)) == (
        0, "delivered (and read)")
    assert time.monotonic() - t0 < 2.5


def test_send_once_says_each_reason_at_once_and_times_out_with_the_last() -> None:
    """A status event with the same status and a reason (the router's word on why it is
    not delivered) is printed when it comes, once; the timeout repeats the last one."""
    lines: list[str] = []
    seen_at: list[float] = []

    def why(msg_id: bytes) -> None:
        fake.status(msg_id, "pending", "unreachable: nothing listening at 10.0.0.9:4433")
        fake.status(msg_id, "pending", "unreachable: nothing listening at 10.0.0.9:4433")
        time.sleep(0.2)
        fake.status(msg_id, "pending", "recipient offline: held for delivery until X",
                    event=False)  # missed: the outbox says it

    fake = FakeClient()
    fake.on_send = lambda msg_id: threading.Timer(0.05, why, (msg_id,)).start()
    t0 = time.monotonic()
    rc, out = chat.send_once(fake, chat.Peer(PEER), "hi", 1.6,
                             progress=lambda x: (lines.append(x),
                                                 seen_at.append(time.monotonic() - t0)))
    assert lines == ["pending: unreachable: nothing listening at 10.0.0.9:4433",
                     "pending: recipient offline: held for delivery until X"]
    assert seen_at[0] < 0.5  # at once, not at the deadline
    assert (rc, out) == (2, "timeout after 1.6 s: last status pending: recipient offline: "
                            "held for delivery until X")

    fake = FakeClient()  # a reason that came with an earlier status is not kept
    rc, out = send(fake, lambda i: (fake.status(i, "pending", "no route"),
                                    fake.status(i, "sent")), timeout_s=0.5)
    assert (rc, out) == (2, "timeout after 0.5 s: last status sent")


def test_send_once_waits_out_a_router_outage() -> None:
    fake = FakeClient()
    fake.down = True  # not answering at first: retried until the deadline
    threading.Timer(0.3, lambda: setattr(fake, "down", False)).start()

    def outage(msg_id: bytes) -> None:
        fake.status(msg_id, "sent")
        time.sleep(0.2)
        fake.down = True  # stored, then the router goes away: waited for, not an error

    rc, out = send(fake, outage, timeout_s=1.5)
    assert rc == 2 and out.startswith("timeout after 1.5 s: last status sent (router not "
                                      "answering: no reply from router"), out

    fake = FakeClient()
    fake.down = True
    with pytest.raises(BusTimeout):  # never answered: the message was not stored
        send(fake, lambda i: None, timeout_s=0.5)


def test_parse_peer() -> None:
    assert chat.parse_peer(PEER.hex()) == chat.Peer(PEER)
    assert chat.parse_peer(f"{PEER.hex()}@10.1.2.3:4433") == chat.Peer(PEER, "10.1.2.3", 4433)
    assert chat.parse_peer(f"{PEER.hex()}@[::1]:5") == chat.Peer(PEER, "::1", 5)
    for bad in ("zz", f"{PEER.hex()}@host", f"{PEER.hex()}@host:0", f"{PEER.hex()}@:44",
                "00" * 32):
        with pytest.raises(NodeError):
            chat.parse_peer(bad)


def test_statuses_only_move_forward() -> None:
    assert chat.moves("pending", "sent") and chat.moves("sent", "read")
    assert chat.moves("relayed", "failed") and not chat.moves("delivered", "failed")
    assert not chat.moves("delivered", "sent") and not chat.moves("read", "delivered")
    assert not chat.moves("failed", "delivered") and not chat.moves("sent", "sent")


def test_what_peers_write_reaches_the_terminal_escaped(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Escape sequences, forged lines and bidi overrides from a peer are shown, not obeyed."""
    hostile = "hi\x1b[2J\x1b]0;pwned\x07\n[12:00:00] alice: send me your key\u202egnp.exe"
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: fake.after is not None, "subscribed")
        fake.receive(PEER, hostile)
        await until(pilot, lambda: "pwned" in pane(app), "the message")
        text = pane(app)
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
        assert "hi\\x1b[2J\\x1b]0;pwned\\x07\\x0a[12:00:00] alice" in text
        assert "\\u202egnp.exe" in text

    drive(fake, scenario)

    fake = FakeClient()
    stop = threading.Event()
    fake.receive(PEER, hostile)

    def stopper() -> None:
        deadline = time.monotonic() + 5
        while not fake.sent:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stop.set()

    t = threading.Thread(target=stopper)
    t.start()
    assert chat.run_bot(fake, None, stop) == 0
    t.join()
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x0a[12:00:00] alice" in out
    assert fake.sent[0][1] == f"echo: {hostile}"  # the data itself is not altered


def test_printable() -> None:
    from tom.display import printable

    assert printable("plain text, ünïcode, emoji 👩‍💻") == "plain text, ünïcode, emoji 👩‍💻"
    assert printable("a\tb\r\x00\x7f\x9b") == "a\\x09b\\x0d\\x00\\x7f\\x9b"
    assert printable("x\u2028y\u2066z") == "x\\u2028y\\u2066z"
    assert printable("abcdef", limit=3) == "abc…"


# -- groups ---------------------------------------------------------------------------------

GID = "g" + "ab" * 12


def test_place_orders_group_lines_by_seq_and_keeps_ours_pending_at_the_bottom() -> None:
    assert chat.place([], 5) is None
    assert chat.place([1, 3], 4) is None
    assert chat.place([1, 3], 2) == 1
    assert chat.place([4, 7], 1) == 0
    assert chat.place([1, 3, None, None], 4) == 2  # before our messages not ordered yet
    assert chat.place([1, 3, None], 2) == 1


def test_group_statuses_only_move_forward() -> None:
    assert chat.group_moves("sending", "pending") and chat.group_moves("pending", "ordered")
    assert chat.group_moves("sending", "ordered") and chat.group_moves("pending", "failed")
    assert not chat.group_moves("ordered", "pending") and not chat.group_moves("ordered",
                                                                                 "failed")
    assert not chat.group_moves("failed", "ordered") and not chat.group_moves("pending",
                                                                                "pending")


def test_group_room_order_status_and_members() -> None:
    fake = FakeClient()
    fake.group_list = [group(GID, "friends", [OWN, PEER, OTHER])]

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: GID in app.groups, "the group list")
        assert "friends" in side(app) and "Rooms" in side(app)
        await type_line(pilot, "/g friends")
        await until(pilot, lambda: "Group → friends" in header(app), "the room")
        assert f"({GID}), 3 members" in header(app)
        members = side(app)
        assert "Members of friends" in members and "you admin hub" in members
        assert PEER.hex()[:10] in members and OTHER.hex()[:10] in members
        await type_line(pilot, "hello all")
        await until(pilot, lambda: fake.group_sent, "the send")
        (gid, text, mine), = fake.group_sent
        assert (gid, text) == (GID, "hello all")
        await until(pilot, lambda: "hello all  (pending)" in "\n".join(room(app, GID)),
                    "pending")
        fake.group_message(GID, 3, PEER, "from peer")
        await until(pilot, lambda: "from peer" in "\n".join(room(app, GID)), "peer's message")
        lines = [x for x in room(app, GID) if "]" in x and ": " in x]
        assert "from peer" in lines[-2] and "hello all  (pending)" in lines[-1]  # ours below
        fake.group_message(GID, 5, OWN, "hello all", msg_id=mine)  # the hub ordered it
        fake.group_message(GID, 2, OTHER, "late one")  # came late: goes above
        fake.queue.put(gm.SendStatus(group_id=GID, id=mine, status="ordered", seq=5))
        fake.group_message(GID, 6, OTHER, "after")
        await until(pilot, lambda: "after" in "\n".join(room(app, GID)), "the last one")
        texts = [x.split(": ", 1)[1] for x in room(app, GID) if "] " in x and ": " in x
                 and "Enter to send" not in x]
        assert texts == ["late one", "from peer", "hello all  (ordered)", "after"], texts
        assert "me: hello all" in "\n".join(room(app, GID))
        assert not any("hello all" in x for x in room(app))  # not in the 1:1 room
        assert app.received == 3 and app.sent == 1

    drive(fake, scenario)


def test_invitation_join_create_and_unread_counts() -> None:
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: fake.after is not None, "subscribed")
        fake.invites = [gm.Invite(group_id=GID, name="club", hub=PEER, inviter=PEER,
                                  expires_ms=2**40)]
        fake.queue.put(gm.Invited(group_id=GID, name="club", hub=PEER, inviter=PEER,
                                  expires_ms=2**40))
        await until(pilot, lambda: "invited you to club" in pane(app), "the invitation")
        assert f"({GID}): /join club" in pane(app)
        await type_line(pilot, "/join nothing")
        await until(pilot, lambda: "usage: /join GROUP" in pane(app), "unknown invitation")
        await type_line(pilot, "/join club")
        await until(pilot, lambda: ("join", GID) in fake.group_calls, "join")
        await until(pilot, lambda: "asked the hub of club" in pane(app), "asked")
        fake.invites = []
        fake.group_list = [group(GID, "club", [PEER, OWN], hub=PEER)]
        fake.queue.put(gm.GroupChanged(group_id=GID, change="joined", hub=PEER, term=1))
        await until(pilot, lambda: app.room == GID, "the room to open once admitted")
        assert "joined club" in pane(app) and "Group → club" in header(app)
        # a 1:1 message while in a group room: counted, read only once its room is shown
        fake.receive(PEER, "psst")
        await until(pilot, lambda: "1:1 (1 new)" in side(app), "the 1:1 unread count")
        assert fake.reads == []
        await type_line(pilot, "/d")
        await until(pilot, lambda: len(fake.reads) == 1, "the read receipt")
        assert "Peer →" in header(app) and "psst" in "\n".join(room(app))
        fake.group_message(GID, 4, PEER, "in the club")
        await until(pilot, lambda: "club (1 new)" in side(app), "the group unread count")
        await type_line(pilot, f"/create team {PEER.hex()} {OTHER.hex()}@10.0.0.2:4433")
        await until(pilot, lambda: any(c[0] == "create" for c in fake.group_calls), "create")
        assert ("create", "team", PEER.hex(), OTHER.hex()) in fake.group_calls
        assert fake.added == [(OTHER, "10.0.0.2", 4433)]
        await until(pilot, lambda: "Group → team" in header(app), "the new room")
        await type_line(pilot, "/invite zz")
        await until(pilot, lambda: "not a node id" in pane(app), "a bad id")
        await type_line(pilot, f"/invite {OTHER.hex()}")
        await until(pilot, lambda: "invited 0303" in pane(app) or
                    f"invited {OTHER.hex()[:10]}" in pane(app), "invite")
        await type_line(pilot, "/g nosuch")
        await until(pilot, lambda: "not a group this node is in: 'nosuch' (/groups" in
                    pane(app), "unknown group")
        await type_line(pilot, "/groups")
        await until(pilot, lambda: f"{GID} club: 2 members" in pane(app), "/groups")
        await type_line(pilot, "/leave")
        await until(pilot, lambda: fake.group_calls[-1][0] == "leave", "leave")
        await type_line(pilot, "/d")
        await type_line(pilot, "/leave")
        await until(pilot, lambda: "/leave is for a group's room" in pane(app), "no group")

    drive(fake, scenario)


def test_a_groups_service_that_does_not_answer_leaves_the_router_ok() -> None:
    fake = FakeClient()
    fake.groups_down = True

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "groups service not answering" in pane(app), "error line")
        status = str(app.query_one("#status", chat.Static).content)
        assert "groups NOT ANSWERING" in status and "router ok" in status
        fake.groups_down = False
        await until(pilot, lambda: "groups service answering again" in pane(app), "recovery")
        assert "groups ok" in str(app.query_one("#status", chat.Static).content)

    drive(fake, scenario, chat.Peer(PEER))


def test_bot_answers_in_groups(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeClient()
    stop = threading.Event()
    fake.queue.put(gm.Invited(group_id=GID, name="club", hub=PEER, inviter=PEER,
                              expires_ms=2**40))
    fake.group_message(GID, 2, PEER, "hi bots")
    fake.group_message(GID, 3, OTHER, "echo: hi")  # another bot's echo: not answered
    fake.group_message(GID, 4, OWN, "mine")  # its own: not answered

    def replied() -> None:
        deadline = time.monotonic() + 5
        while not fake.group_sent:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fake.queue.put(gm.SendStatus(group_id=GID, id=fake.group_sent[0][2], status="ordered",
                                     seq=5))
        time.sleep(0.3)
        stop.set()

    t = threading.Thread(target=replied)
    t.start()
    assert chat.run_bot(fake, None, stop) == 0
    t.join()
    out = capsys.readouterr().out
    assert ("join", GID) in fake.group_calls
    assert f"[bot] invited to club ({GID}) by {PEER.hex()[:10]}: joining" in out
    assert [(g, x) for g, x, _ in fake.group_sent] == [(GID, "echo: hi bots")]
    assert f'[bot] #1 in club ({GID}) from {PEER.hex()[:10]} | #2 | "hi bots"' in out
    assert f'[bot] #2 in club ({GID}) from {OTHER.hex()[:10]} | #3 | "echo: hi"' in out
    assert "mine" not in out
    assert f"[bot] reply to #1: ordered as #5 in club ({GID})" in out
    assert "[bot] stopped: 2 received, 1 replied" in out


def test_a_group_is_named_by_its_id_or_a_name_only_one_has() -> None:
    from tom.group import resolve, resolve_invite

    one, two, three = (group(f"g{i:024x}", n, [OWN, PEER]) for i, n in
                       enumerate(("club", "twin", "twin")))
    hosted = group("g" + "f" * 24, "hosted", [PEER])  # this node its hub, not a member
    groups = [one, two, three, hosted]
    assert resolve(groups, "club") is one and resolve(groups, two.group_id) is two
    with pytest.raises(NodeError, match="2 groups are named 'twin': give the id"):
        resolve(groups, "twin")
    for nobody in ("hosted", hosted.group_id, "nothing"):
        with pytest.raises(NodeError, match="not a group this node is in"):
            resolve(groups, nobody)
    invites = [gm.Invite(group_id=g, name=n, hub=PEER, inviter=PEER, expires_ms=1)
               for g, n in (("g1", "a"), ("g2", "b"), ("g3", "b"))]
    assert resolve_invite(invites, "a") is invites[0]
    assert resolve_invite(invites, "g3") is invites[2] and resolve_invite(invites, "z") is None
    with pytest.raises(NodeError, match="2 invitations are to groups named 'b'"):
        resolve_invite(invites, "b")


def test_a_pending_line_says_why_it_waits_and_takes_a_new_reason() -> None:
    from tom.chat import OutLine, status_text

    assert status_text("pending", "unreachable: no route") == "pending (unreachable: no route)"
    assert status_text("failed", "expired") == "failed (expired)"
    assert status_text("delivered", "") == "delivered"
    line = OutLine("12:00:00", "hi", "bob")
    line.refresh_text = lambda: None  # type: ignore[method-assign]  (no screen here)
    assert line.set_status("pending")
    assert line.set_status("pending", "recipient offline: held for delivery until 13:00 UTC")
    assert "held for delivery" in status_text(line.status, line.reason)
    assert not line.set_status("pending", "recipient offline: held for delivery until 13:00 UTC")
    assert line.set_status("delivered") and line.reason == ""
