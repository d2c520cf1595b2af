"""tom/chat.py, issue 17: what arrived while no chat ran is shown first, marked, and read
only once on screen; long lines stay cheap and the log keeps following; a status listener
that learns `read` from the outbox still reports `delivered` first. Same fake client and
Pilot as tests/unit/test_chat.py; real nodes in tests/e2e/test_inbox.py."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from textual import events
from textual.pilot import Pilot

from shared.wire.messages import router as rm
from tom import chat

from .test_chat import PEER, FakeClient, drive, pane, room, type_line, until

LONG = "".join(chr(97 + i % 26) for i in range(9990)) + "THE-END-XY"


def on_screen(app: chat.ChatApp, line: chat.Line) -> bool:
    pane = app.pane()
    return chat.visible(line, pane.scroll_y, pane.scrollable_content_region.height)


def test_unread_messages_come_first_marked_and_are_read_once_on_screen() -> None:
    fake = FakeClient()
    away = [fake.receive(PEER, f"while away {i}", event=False) for i in (1, 2)]

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "2 unread messages from while the chat was closed" in
                    pane(app), "the unread messages")
        live = fake.receive(PEER, "live one")
        await until(pilot, lambda: "live one" in pane(app), "the live message")
        lines = [x for x in room(app) if "while away" in x or "live one" in x
                 or "unread messages" in x]
        assert "unread messages" in lines[0]
        assert lines[1].startswith(f"{chat.UNREAD_MARK} [") and "while away 1" in lines[1]
        assert lines[2].startswith(f"{chat.UNREAD_MARK} [") and "while away 2" in lines[2]
        assert "live one" in lines[3] and not lines[3].startswith(chat.UNREAD_MARK)
        await until(pilot, lambda: len(fake.reads) == 3, "the read receipts")
        assert fake.reads == [away[0].info.id, away[1].info.id, live.info.id]
        assert app.peer == PEER  # the first unread message's sender became the peer

    drive(fake, scenario)


def test_a_long_backlog_is_read_only_as_it_scrolls_into_view(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """60 unread, 50 shown (the newest); 40 rows of screen: what is above stays unread
    until scrolled to, and the status line says how many."""
    monkeypatch.setattr(chat, "BACKLOG_SHOWN", 50)
    fake = FakeClient()
    away = [fake.receive(PEER, f"backlog {i}", event=False) for i in range(60)]

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "backlog 59" in pane(app), "the backlog")
        assert ("50 unread messages from while the chat was closed (marked ●); 10 older "
                "unread messages not shown: `tom inbox --unread` lists them") in pane(app)
        assert "backlog 9 " not in pane(app) + " " and "backlog 10" in pane(app)
        await until(pilot, lambda: fake.reads, "the lines on screen to be read")
        await pilot.pause(0.3)
        n = len(fake.reads)
        assert 10 < n < 50, n  # only what fits on the screen
        assert fake.reads == [m.info.id for m in away[60 - n:]]
        status = str(app.query_one("#status", chat.Static).content)
        assert f"{50 - n} unread above (PgUp)" in status
        for _ in range(5):
            await pilot.press("pageup")
        await until(pilot, lambda: len(fake.reads) == 50, "the rest, scrolled to")
        assert set(fake.reads) == {m.info.id for m in away[10:]}
        assert "unread above" not in str(app.query_one("#status", chat.Static).content)

    drive(fake, scenario)


def test_a_long_line_is_cut_shown_whole_on_demand_and_the_log_keeps_following() -> None:
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: fake.after is not None, "subscribed")
        for i in range(50):  # more than the screen holds
            fake.receive(PEER, f"before {i}")
        fake.receive(PEER, LONG)
        await until(pilot, lambda: "9,400 more characters: click or /show" in pane(app),
                    "the long line, cut")
        assert "THE-END-XY" not in pane(app)
        for i in range(3):
            fake.receive(PEER, f"after {i}")
            await until(pilot, lambda: f"after {i}" in pane(app), "a short one")  # noqa: B023
            await pilot.pause(0.1)
            last = app.pane().children[-1]
            assert isinstance(last, chat.Line) and on_screen(app, last), i  # the bottom
        long_line = next(w for w in app.pane().children
                         if isinstance(w, chat.InLine) and w.message == LONG)
        await type_line(pilot, "/show")
        await until(pilot, lambda: "THE-END-XY" in pane(app), "the whole line")
        assert not long_line.cut
        await pilot.click(long_line)  # a click cuts it again
        await until(pilot, lambda: "THE-END-XY" not in pane(app), "cut again")
        await pilot.click(long_line)
        await until(pilot, lambda: "THE-END-XY" in pane(app), "whole again")
        await type_line(pilot, "/show")
        await until(pilot, lambda: "no cut message here" in pane(app), "nothing left cut")
        await type_line(pilot, LONG)  # ours: cut as well
        await until(pilot, lambda: fake.sent, "sent")
        assert fake.sent[0][1] == LONG
        await until(pilot, lambda: "(pending)" in room(app)[-1], "our long line")
        assert "9,400 more characters" in room(app)[-1]

    drive(fake, scenario, chat.Peer(PEER))


def test_a_10000_character_line_never_stalls_the_screen_for_200_ms() -> None:
    """Typed as 10,000 keys (tmux send-keys; a terminal without bracketed paste), read 4 KiB
    at a time as the terminal driver does, then sent; and received: the event loop never
    stops for 200 ms (it stopped for seconds: every key redid work on the whole input)."""
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: fake.after is not None, "subscribed")
        stalls: list[float] = []
        done = False

        async def probe() -> None:
            while not done:
                t0 = time.perf_counter()
                await asyncio.sleep(0.005)
                stalls.append(time.perf_counter() - t0 - 0.005)

        task = asyncio.create_task(probe())
        field = app.query_one(chat.ChatInput)
        t0 = time.perf_counter()
        for i, ch in enumerate(LONG):
            if i % 4096 == 0:
                await asyncio.sleep(0)  # the driver's next read
            app.post_message(events.Key(ch, ch))
        await until(pilot, lambda: field.value == LONG, "the typed line", 30)
        typed_s = time.perf_counter() - t0
        await pilot.press("enter")
        await until(pilot, lambda: fake.sent and "(pending)" in room(app)[-1], "sent")
        fake.receive(PEER, LONG)
        await until(pilot, lambda: len(fake.reads) == 1, "received and read")
        done = True
        await task
        assert fake.sent[0][1] == LONG
        assert max(stalls) < 0.2, f"the loop stalled {max(stalls) * 1000:.0f} ms"
        assert typed_s < 3, typed_s

    drive(fake, scenario, chat.Peer(PEER))


def test_typed_keys_keep_their_order_around_enter_and_editing() -> None:
    fake = FakeClient()

    async def scenario(app: chat.ChatApp, pilot: Pilot[None]) -> None:
        await pilot.press(*"first", "enter", *"secondX", "backspace", "enter")
        await until(pilot, lambda: len(fake.sent) == 2, "two lines")
        assert [t for _, t, _, _ in fake.sent] == ["first", "second"]

    drive(fake, scenario, chat.Peer(PEER))


def test_the_outbox_poll_reports_delivered_before_read() -> None:
    """The statuses' events were missed, and the recipient read the message at once: the
    outbox says `read`; the link still reports `delivered` first."""
    fake = FakeClient()
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
        fake.status(fake.sent[0][3], "read", event=False)
        while not any(isinstance(r, rm.StatusChanged) and r.status == "read" for r in got):
            assert time.monotonic() < deadline + chat.OUTBOX_EVERY_S
            got += link.drain()
            time.sleep(0.01)
    finally:
        link.stop()
    assert [r.status for r in got if isinstance(r, rm.StatusChanged)] == ["delivered", "read"]
    assert chat.steps("sent", "read") == ["delivered", "read"]
    assert chat.steps("delivered", "read") == ["read"] and chat.steps("sent", "relayed") == [
        "relayed"]


def test_the_bot_handles_what_came_while_it_was_stopped_first(
        capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeClient()
    stop = threading.Event()
    away = [fake.receive(PEER, f"away {i}", event=False) for i in (1, 2)]
    read_before = fake.receive(PEER, "already read", event=False)
    fake.read(read_before)
    fake.reads.clear()
    live = fake.receive(PEER, "live")

    def stopper() -> None:
        deadline = time.monotonic() + 5
        while len(fake.sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()

    t = threading.Thread(target=stopper)
    t.start()
    assert chat.run_bot(fake, None, stop) == 0
    t.join()
    out = capsys.readouterr().out
    short = PEER.hex()[:10]
    assert f'[bot] #1 from {short} | verified | unread | "away 1"' in out
    assert f'[bot] #2 from {short} | verified | unread | "away 2"' in out
    assert f'[bot] #3 from {short} | verified | "live"' in out
    assert "already read" not in out
    assert fake.reads == [away[0].info.id, away[1].info.id, live.info.id]
    assert [t for _, t, _, _ in fake.sent] == ["echo: away 1", "echo: away 2", "echo: live"]
