"""`tom inbox`: the messages this node received, read from the router's inbox.

    tom inbox [--unread] [--after N] [--follow] [--json] [--mark-read]

One line per message, oldest first: ``[time] sender: text`` (the sender's time, its short
id, the text with control characters shown escaped), ``sender (unread)`` for a message no
app has shown yet (with ``--unread`` every line is one, so none is marked); ``--json``: one
JSON object per line. ``--follow`` then prints each new message as it arrives, until Ctrl+C
or SIGTERM (exit 130, interrupted) or until the reader of its output pipe leaves, also while
no message comes (``tom inbox --follow | head -1``: exit 141, quietly, as every command).

Listing does not mark anything read: the command shows the inbox, like ``tom backup``
shows the backup, and is as often read by scripts as by people; ``--mark-read`` marks each
message read once its line is written (its sender then sees ``read``).

No gap and no repeat with ``--follow``: the command subscribes first (``Client.events``
from the inbox's tail at that moment), then lists up to that tail; whatever arrives during
the listing is fetched by the client's catch-up and printed after it, in inbox order.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from shared.nodeid import short
from shared.paths import DataDir
from shared.wire import WireError

from .cli import EX_INTERRUPTED, output_closed
from .client import Client, Message
from .display import printable
from .signals import Stop

PAGE = 1000
FOLLOW_POLL_S = 0.2
RETRY_S = 1.0


def line(msg: Message, mark_unread: bool) -> str:
    info = msg.info
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.timestamp_ms / 1000))
    sender = short(info.sender) + (" (unread)" if mark_unread and not msg.read else "")
    return f"[{stamp}] {sender}: {printable(msg.text)}"


def record(msg: Message) -> str:
    info = msg.info
    return json.dumps({"seq": info.seq, "id": info.id.hex(), "sender": info.sender.hex(),
                       "timestamp_ms": info.timestamp_ms, "encrypted": info.encrypted,
                       "relayed": info.relayed, "read": msg.read, "text": msg.text},
                      ensure_ascii=False)


class Printer:
    """Writes each message once (flushed: a pipe's reader sees it at once) and marks it read
    after if asked."""

    def __init__(self, client: Client, args: Any) -> None:
        self.client = client
        self.json = args.json
        self.mark_unread = not args.unread
        self.mark_read = args.mark_read

    def show(self, msg: Message) -> None:
        print(record(msg) if self.json else line(msg, self.mark_unread), flush=True)
        if self.mark_read and not msg.read:
            self.client.read(msg)


def listing(client: Client, out: Printer, after: int, upto: int | None, unread: bool,
            stop: threading.Event) -> None:
    """The inbox after ``after`` (up to ``upto``: later ones come from the events), page by
    page."""
    while not stop.is_set():
        page = client.inbox(after, PAGE, unread)
        if upto is not None:
            page = [m for m in page if m.info.seq <= upto]
        if not page:
            return
        for m in page:
            out.show(m)
        after = page[-1].info.seq


def follow(client: Client, out: Printer, stop: threading.Event) -> None:
    """New messages as they arrive, until ``stop`` or the reader of the output leaves
    (``BrokenPipeError``, which ``tom``'s main turns into a quiet exit 141); a router that
    stops answering is waited for (said once on stderr)."""
    failing: str | None = None
    while not stop.is_set():
        if output_closed():  # found while idle too, not only at the next write
            raise BrokenPipeError("the reader of the output has gone")
        try:
            for ev in client.events(timeout_s=FOLLOW_POLL_S):
                if isinstance(ev, Message):
                    out.show(ev)
            if failing is not None:
                failing = None
                print("tom inbox: router answering again", file=sys.stderr, flush=True)
        except WireError as e:
            if failing != str(e):
                failing = str(e)
                print(f"tom inbox: router not answering: {e} (retrying)", file=sys.stderr,
                      flush=True)
            stop.wait(RETRY_S)


def cmd_inbox(data: DataDir, args: Any) -> int:
    with Client(data, with_groups=False) as client, Stop() as stop:
        out = Printer(client, args)
        upto = None
        if args.follow:  # subscribed before the listing: nothing can fall between
            client.after = max(client.inbox_tail(), args.after)
            client.subscribe()
            upto = client.after
        listing(client, out, args.after, upto, args.unread, stop.event)
        if args.follow:
            follow(client, out, stop.event)
    return EX_INTERRUPTED if stop.event.is_set() else 0
