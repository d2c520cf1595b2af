"""Groups end to end on three real nodes (`tom node up`, five processes each, QUIC on
loopback): the `tom group` commands, tom.client's group events, `tom chat --bot` in a group,
and three `tom chat` sessions in tmux talking in one group. Every wait polls the nodes' own
state (or the screens) against a deadline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import nodeid
from shared.paths import DataDir
from tom.client import Client, GroupMessage

from .test_chat import Bot, Node, Tmux, chat_argv, kill_leftovers, start, tom, until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[Node, Node, Node]]:
    """A, B and C; B and C know only A (as the smoke test of the groups service had it): a
    member's sender key to another then often comes after the messages it opens, which the
    hub relays at once, so the groups service publishes some messages late (out of order)."""
    dirs = [Path(tempfile.mkdtemp(prefix=f"tomgrp-{n}-", dir="/tmp")) for n in "abc"]
    try:
        a, b, c = (start(d) for d in dirs)
        for x in (b, c):
            with x.client() as cx:
                cx.add_peer(a.id, a.host, a.port)
                until(f"{x.short} connected to A",
                      lambda: any(p.node_id == a.id and p.connected  # noqa: B023
                                  for p in cx.peers()))  # noqa: B023
        yield a, b, c
    finally:
        for d in dirs:
            kill_leftovers(d)
            shutil.rmtree(d, ignore_errors=True)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def listing(node: Node) -> dict[str, list[dict[str, object]]]:
    return json.loads(ok(tom(node.data, "group", "list", "--json")))  # type: ignore[no-any-return]


def history(node: Node, group: str, *args: str) -> list[dict[str, object]]:
    return json.loads(ok(tom(node.data, "group", "history", group, "--json", *args)))  # type: ignore[no-any-return]


def invited(node: Node, gid: str) -> bool:
    return any(i["group_id"] == gid for i in listing(node)["invites"])


def member_ids(node: Node, gid: str) -> set[str]:
    g = next((g for g in listing(node)["groups"] if g["group_id"] == gid and g["member"]),
             None)
    return set() if g is None else {m["node_id"] for m in g["members"]}  # type: ignore[attr-defined]


def create(node: Node, *args: str) -> str:
    out = ok(tom(node.data, "group", "create", *args))
    m = re.match(r"created group (g[0-9a-f]{24}) ", out)
    assert m, out
    return m.group(1)


def test_client_yields_every_group_message_once_in_group_order(
        nodes: tuple[Node, Node, Node]) -> None:
    """Three apps (tom.client) while the nodes send at once; one app restarts midway and
    continues from its group_after: nothing lost, nothing twice, the order of the log."""
    a, b, c = nodes
    clients = {n.short: n.client() for n in (a, b, c)}
    got: dict[str, list[GroupMessage]] = {k: [] for k in clients}

    def pump(seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            for k, cl in clients.items():
                got[k] += [e for e in cl.events(timeout_s=0.02) if isinstance(e, GroupMessage)]
            if time.monotonic() >= end:
                return

    try:
        pump()  # subscribed from now on
        gid = clients[a.short].group_create("apps", [b.id, c.id])
        for n in (b, c):
            until("the invitation", lambda: invited(n, gid))  # noqa: B023
            clients[n.short].group_join(gid)
            until("admitted", lambda: n.id.hex() in member_ids(a, gid))  # noqa: B023
        for i in range(10):
            for k, cl in clients.items():
                cl.group_send(gid, f"{k} {i}")
            pump()
            if i == 4:  # C's app goes away and comes back where it was
                old = clients[c.short]
                pump(0.5)
                after = old.group_after
                old.close()
                clients[c.short] = Client(DataDir(c.data), group_after=after)
        want = 30
        until("every app to see all 30", lambda: (pump(), all(
            len([m for m in v if m.group_id == gid]) >= want for v in got.values()))[1], 60)
        pump(1.0)  # nothing more comes (a repeat would show here)
        log = [(m["seq"], m["text"]) for m in history(a, gid)]
        assert len(log) == want
        for k, v in got.items():
            mine = [(m.seq, m.text) for m in v if m.group_id == gid]
            assert mine == log, (k, mine)
    finally:
        for cl in clients.values():
            cl.close()


def test_group_commands_end_to_end(nodes: tuple[Node, Node, Node]) -> None:
    a, b, c = nodes
    # C given in base32: every form `tom send` takes
    gid = create(a, "friends", b.id.hex(), nodeid.to_base32(c.id))
    assert member_ids(a, gid) == {a.id.hex()}
    for n in (b, c):
        until(f"{n.short}'s invitation", lambda: invited(n, gid))  # noqa: B023
    inv = next(i for i in listing(b)["invites"] if i["group_id"] == gid)
    assert (inv["name"], inv["hub"], inv["inviter"]) == ("friends", a.id.hex(), a.id.hex())

    assert "joined friends" in ok(tom(b.data, "group", "join", "friends"))  # by name
    assert "joined friends" in ok(tom(c.data, "group", "join", gid))  # by id
    assert not invited(b, gid)
    ok(tom(a.data, "group", "role", "friends", b.id.hex(), "admin"))
    out = ok(tom(a.data, "group", "members", "friends"))
    assert out.splitlines()[0].startswith(f"friends ({gid}): 3 members, hub this node")
    roles = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert roles == {a.id.hex(): "admin", b.id.hex(): "admin", c.id.hex(): "member"}

    # 9 messages, sent at the same time from the three nodes (some waiting until ordered)
    procs = [subprocess.Popen(
        [*tom_argv(n), "group", "send", "friends", f"{n.short} says {i}",
         *(["--wait"] if i != 1 else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(3) for n in (a, b, c)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, out + err
        assert re.fullmatch(r"ordered as #\d+\n|stored [0-9a-f]{32}: .*\n", out), out
    texts = {f"{n.short} says {i}" for i in range(3) for n in (a, b, c)}

    def complete(n: Node) -> list[dict[str, object]] | None:
        h = history(n, "friends")
        return h if {m["text"] for m in h} >= texts else None

    logs = [until(f"{n.short}'s history to hold all 9", lambda: complete(n))  # noqa: B023
            for n in (a, b, c)]
    assert logs[0] == logs[1] == logs[2]  # the same messages, seqs, ids, senders, order
    seqs = [m["seq"] for m in logs[0]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 9
    assert Counter(m["text"] for m in logs[0]) == Counter(texts)  # each once
    assert {m["sender"] for m in logs[0] if str(m["text"]).startswith(b.short)} == {b.id.hex()}
    after = history(b, gid, "--after", str(seqs[4]))
    assert after == logs[0][5:]
    plain = ok(tom(c.data, "group", "history", "friends")).splitlines()
    assert len(plain) == 9 and plain[0].startswith(f"#{seqs[0]} [")
    assert sum(f"] me: {c.short} says" in x for x in plain) == 3

    out = ok(tom(a.data, "group", "kick", "friends", c.id.hex()))
    assert out == f"kicked {c.short} from friends ({gid})\n"
    until("C to learn it was removed", lambda: not member_ids(c, gid))
    until("B to see C removed", lambda: member_ids(b, gid) == {a.id.hex(), b.id.hex()})
    r = tom(c.data, "group", "history", "friends")
    assert r.returncode == 1 and "not a group this node is in: 'friends'" in r.stderr

    ok(tom(a.data, "group", "send", "friends", "without C", "--wait"))
    until("B to have it", lambda: any(m["text"] == "without C" for m in history(b, gid)))
    assert ok(tom(b.data, "group", "leave", "friends")) == f"left friends ({gid})\n"
    assert member_ids(a, gid) == {a.id.hex()} and not member_ids(b, gid)
    assert gid not in {g["group_id"] for g in listing(b)["groups"]}


def tom_argv(node: Node) -> list[str]:
    import sys

    return [sys.executable, "-m", "tom.cli", "--data", str(node.data)]


def test_open_group_decline_and_input_errors(nodes: tuple[Node, Node, Node]) -> None:
    a, b, c = nodes
    lobby = create(a, "lobby", "--open")
    out = ok(tom(c.data, "group", "join", lobby, "--hub", f"{a.id.hex()}@{a.host}:{a.port}"))
    assert out.startswith(f"joined lobby ({lobby}): 2 members")
    r = tom(b.data, "group", "join", "g" + "0" * 24, "--hub", a.id.hex(), "--timeout", "2")
    assert r.returncode == 2 and "timeout after 2 s" in r.stderr, r.stderr

    club = create(a, "club", b.id.hex())
    until("B's invitation", lambda: invited(b, club))
    assert ok(tom(b.data, "group", "decline", "club")) == \
        f"declined the invitation to club ({club})\n"
    assert not invited(b, club)
    text = ok(tom(a.data, "group", "list"))
    assert re.search(rf"^{club} +club +1 admin +this node$", text, re.M), text
    assert re.search(rf"^{lobby} +lobby +2 admin +this node$", text, re.M), text

    for args, code, message in [  # 64: the command line is wrong; 1: the node said no
        (("send", "nosuch", "x"), 1, "not a group this node is in: 'nosuch'"),
        (("kick", "club", "zz"), 64, "'zz' has 2 characters: a node id is 64 hex or 52"),
        (("invite", "club", f"{b.id.hex()}@host"), 64, "expected host:port after '@'"),
        (("join", "nosuch"), 1, "no invitation to 'nosuch'"),
        (("join", "Not An Id", "--hub", a.id.hex()), 64, "not a group id"),
        (("decline", "nosuch"), 1, "no invitation to 'nosuch'"),
        (("create", "x" * 65), 64, "a group name is 1 to 64 characters"),
        (("kick", "club", b.id.hex()), 1, "not a member of the group"),
        (("leave", "club"), 0, ""),
    ]:
        r = tom(a.data, "group", *args)
        if args[0] == "leave":  # the last member may leave: the group ends
            assert r.returncode == 0, r.stderr
            continue
        # 64: argparse's usage message, or tom's when only the command can tell
        assert r.returncode == code and message in r.stderr, (args, r.returncode, r.stderr)
        assert code == 64 and "error: argument " in r.stderr or r.stderr.startswith("tom: "), \
            (args, r.stderr)
    r = tom(a.data, "group", "role", "lobby", c.id.hex(), "boss")
    assert r.returncode == 64 and "invalid choice: 'boss'" in r.stderr  # argparse's usage


def test_the_bot_answers_in_a_group(nodes: tuple[Node, Node, Node]) -> None:
    a, b, c = nodes
    bot = Bot(c)
    try:
        bot.wait("the bot's node id", f"[bot] node {c.id.hex()}")
        gid = create(a, "botroom", c.id.hex())
        bot.wait("the bot to join", f"[bot] invited to botroom ({gid}) by {a.short}: joining")
        until("the bot admitted", lambda: c.id.hex() in member_ids(a, gid))
        ok(tom(a.data, "group", "send", "botroom", "ping 1", "--wait"))

        def echoed() -> bool:
            return any(m["text"] == "echo: ping 1" and m["sender"] == c.id.hex()
                       for m in history(a, gid))

        until("the bot's echo in the group", echoed)
        bot.wait("the bot's log of the message", f'from {a.short} | #')
        bot.wait("the echo ordered", "[bot] reply to #")
        assert "ordered as #" in bot.out
    finally:
        rc = bot.stop()
    assert rc == 0, bot.out
    assert sum(1 for m in history(a, gid) if m["text"] == "echo: ping 1") == 1


# -- three chats in one group ---------------------------------------------------------------

def said(screen: str) -> list[str]:
    """The group message lines on a chat screen: 'SENDER: TEXT' (ours as 'me: TEXT')."""
    out = []
    for line in screen.splitlines():
        m = re.match(r"^ \[\d\d:\d\d:\d\d\] (?:\S+ \()?(\w+)\)?: (\w+ says \d)", line)
        if m:
            out.append(m.group(2))
    return out


def test_three_chats_talk_in_one_group(nodes: tuple[Node, Node, Node]) -> None:
    a, b, c = nodes
    screens = {n.short: Tmux() for n in (a, b, c)}
    ta, tb, tc = screens.values()
    try:
        for n, t in zip((a, b, c), screens.values(), strict=True):
            t.start(*chat_argv(n))
            t.wait("the header", lambda s: f"You: {n.short}" in s)  # noqa: B023
        ta.type(f"/create team {b.id.hex()} {c.id.hex()}")
        ta.wait("A's new room", lambda s: "Group → team" in s)
        for t in (tb, tc):
            t.wait("the invitation", lambda s: "invited you to team" in s)
            t.type("/join team")
            t.wait("the room", lambda s: "Group → team" in s)
        for t in screens.values():
            t.wait("three members", lambda s: "3 members" in s.splitlines()[0])
        texts = [f"{n.short[:4]} says {i}" for i in range(3) for n in (a, b, c)]
        for i in range(3):
            for n, t in zip((a, b, c), screens.values(), strict=True):
                t.type(f"{n.short[:4]} says {i}")

        def settled(screen: str) -> bool:
            lines = said(screen)
            return sorted(lines) == sorted(texts) and "(pending)" not in screen \
                and "(sending)" not in screen

        views = [t.wait("all 9 messages, ours ordered", settled, 60) for t in screens.values()]
        orders = [said(v) for v in views]
        for v, order in zip(views, orders, strict=True):
            assert Counter(order) == Counter(texts), v  # each exactly once on each screen
            assert v.count("(ordered)") == 3, v
        assert orders[0] == orders[1] == orders[2]  # the same order everywhere...
        gid = next(g["group_id"] for g in listing(a)["groups"] if g["name"] == "team")
        assert orders[0] == [m["text"] for m in history(b, gid)]  # ...the group's
    finally:
        for t in screens.values():
            t.kill()
