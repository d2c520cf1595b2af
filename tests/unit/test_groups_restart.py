"""Groups cores over groups_sim across restarts: the router inbox (missed events, pages,
purges) and the groups process restarted from its SQLite file (groups, keys, cursor, outbox,
what was not shown yet, a crash before the commit)."""

from __future__ import annotations

from pathlib import Path

from shared.wire.messages import groups as gm

from .groups_sim import GroupsSim, group, log_of, successors, texts_once

# -- the router inbox -------------------------------------------------------------------------

def test_missed_envelope_events_are_read_from_the_router_inbox() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    b = sim.nodes["b"]
    sim.lose_events = lambda dst, ev: dst == "b"
    sim.send("a", gid, b"one")
    sim.send("a", gid, b"two")
    assert b.texts(gid) == []
    sim.lose_events = None
    sim.send("a", gid, b"three")  # its seq is past the cursor: b pulls what it missed
    sim.quiet()
    assert b.texts(gid) == [b"one", b"two", b"three"]
    assert b.c._cursor == b.tail


def test_a_missed_key_is_read_from_the_inbox_not_skipped() -> None:
    """The event of a key payload is missed; the next payload's event is past the cursor:
    the core reads both from its inbox, in order, instead of skipping to the later one."""
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b",))
    sim.ok("a", gm.InviteMember(group_id=gid, node_id=sim.nodes["c"].id))
    sim.run()
    sim.lose_events = lambda dst, ev: dst == "b" and ev.sender == sim.nodes["c"].id
    sim.ok("c", gm.Join(group_id=gid))
    sim.run()
    sim.lose_events = None
    sim.send("c", gid, b"from c")
    sim.quiet(30)
    assert sim.nodes["b"].texts(gid) == [b"from c"]
    b = sim.nodes["b"]
    assert b.c._cursor == b.tail
    assert sum(v for k, v in b.stats.items() if k.startswith("in_")) == b.tail  # once each


def test_a_router_restart_makes_the_core_read_its_inbox() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    sim.lose_events = lambda dst, ev: dst == "b"
    sim.send("a", gid, b"unannounced")
    sim.lose_events = None
    assert sim.nodes["b"].texts(gid) == []
    sim.router_restarted("b")
    assert sim.nodes["b"].texts(gid) == [b"unannounced"]


# -- restarts from the SQLite file ------------------------------------------------------------

def test_a_member_restarted_from_its_file_keeps_groups_keys_and_place(tmp_path: Path) -> None:
    sim = GroupsSim("a", "b", "c", db={"b": str(tmp_path / "b.db")})
    b = sim.nodes["b"]
    gid = sim.create("a", members=("b", "c"))
    sim.send("a", gid, b"one")
    sim.send("b", gid, b"two")
    sim.quiet()
    key = b.c.store.latest_key(gid, b.id)
    others = {n: b.c.store.latest_key(gid, sim.nodes[n].id) for n in "ac"}
    cursor = b.c._cursor
    assert cursor == b.tail
    sim.crash("b")
    sim.send("c", gid, b"three")  # waits in b's router inbox
    sim.send("a", gid, b"four")
    sim.start("b")
    sim.quiet()
    assert b.texts(gid) == [b"one", b"two", b"three", b"four"]  # nothing shown twice
    g = group(sim, "b", gid)
    assert (sim.name_of(g.hub), g.term, g.seq) == ("a", 1, group(sim, "a", gid).seq)
    assert sim.names(gid, "b") == {"a", "b", "c"}
    assert b.c.store.latest_key(gid, b.id) == key  # its own key: no new epoch
    assert {n: b.c.store.latest_key(gid, sim.nodes[n].id) for n in "ac"} == others
    assert b.c._cursor == b.tail > cursor
    assert b.c.store.get_meta("inbox_seq") == b.tail
    sim.send("b", gid, b"five")
    sim.quiet()
    assert sim.nodes["c"].texts(gid)[-1] == b"five"
    assert [(m.seq, m.text) for m in sim.ok("b", gm.History(group_id=gid)).messages] == [
        (s, t.decode()) for s, t in sim.nodes["c"].shown(gid)]


def test_a_message_sent_before_a_crash_is_sent_again_after_it(tmp_path: Path) -> None:
    sim = GroupsSim("a", "b", db={"b": str(tmp_path / "b.db")})
    gid = sim.create("a", members=("b",))
    sim.partition("b")
    mid = sim.send("b", gid, b"survives")
    sim.crash("b")
    sim.held.clear()  # the router gave up on it too
    sim.heal()
    sim.start("b")
    sim.quiet(30)
    assert sim.nodes["a"].texts(gid) == [b"survives"]
    [st] = sim.nodes["b"].of(gm.SendStatus)
    assert (st.id, st.status) == (mid, "ordered")


def test_a_hub_restarted_from_its_file_goes_on_numbering(tmp_path: Path) -> None:
    sim = GroupsSim("a", "b", "c", db={"a": str(tmp_path / "a.db")})
    gid = sim.create("a", members=("b", "c"))
    sim.send("b", gid, b"one")
    sim.quiet()
    seq = group(sim, "a", gid).seq
    sim.restart("a")
    sim.send("c", gid, b"two")
    [first] = sim.nodes["a"].c.store.messages_after(gid, 0, 10)[:1]
    sim.inject("b", "a", "msg", gid, *first.args[1:])  # the same message again
    sim.quiet()
    assert sim.nodes["a"].stats["duplicate_messages"] == 1
    assert group(sim, "a", gid).seq == seq + 1
    for n in "abc":
        assert texts_once(sim, n, gid) == [b"one", b"two"]
    assert log_of(sim, "a", gid)[-2:] == [(seq, 1, "msg"), (seq + 1, 1, "msg")]


def test_a_restarted_hub_reads_a_long_inbox_in_pages(tmp_path: Path) -> None:
    sim = GroupsSim("a", "b", db={"a": str(tmp_path / "a.db")}, resend_s=1000.0,
                    rate_burst=1000.0)
    gid = sim.create("a", members=("b",))
    sim.crash("a")
    for i in range(450):
        sim.send_nowait("b", gid, b"m%d" % i)
    sim.run()
    assert len(sim.nodes["a"].inbox) > 2 * 200
    sim.start("a")
    sim.run(1)
    a = sim.nodes["a"]
    assert a.c._cursor == a.tail
    assert a.stats["ordered_msg"] == 450
    sim.quiet()
    assert len(sim.nodes["b"].texts(gid)) == 450


def test_a_member_restarted_after_the_router_gave_up_on_it_asks_the_hub(
        tmp_path: Path) -> None:
    """The hub's entries to a member that was down were lost (not in its inbox): at its
    start it asks the hub, and follows up until it has the whole log, without waiting for a
    new entry."""
    sim = GroupsSim("a", "b", "c", "d", "e", db={"e": str(tmp_path / "e.db")},
                    rate_burst=1000.0)
    gid = sim.create("a", members=("b", "c", "d", "e"))
    [plain] = [n for n in "bcde" if n not in successors(sim, gid)]
    sim.crash(plain)
    sim.lose = lambda src, dst, raw: dst == plain
    for i in range(450):
        sim.send_nowait("b" if plain != "b" else "c", gid, b"m%d" % i)
    sim.run()
    sim.lose = None
    sim.start(plain)
    sim.run(6)  # three syncs of 200 entries, 2 s apart; nothing new is sent meanwhile
    assert group(sim, plain, gid).seq == group(sim, "a", gid).seq
    assert len(sim.nodes[plain].texts(gid)) == 450


def test_a_message_ordered_but_not_shown_before_a_crash_is_shown_after_it(
        tmp_path: Path) -> None:
    sim = GroupsSim("a", "b", db={"b": str(tmp_path / "b.db")})
    gid = sim.create("a", members=("b",))
    sim.crypto_down.add("b")  # b applies the entry but its crypto never answers
    sim.send("a", gid, b"shown once")
    assert sim.nodes["b"].texts(gid) == [] and group(sim, "b", gid).seq == 3
    sim.crypto_down.clear()
    sim.restart("b")
    sim.run()
    assert sim.nodes["b"].texts(gid) == [b"shown once"]
    sim.restart("b")
    sim.run()
    assert sim.nodes["b"].texts(gid) == [b"shown once"]  # and only once


def test_a_core_whose_inbox_was_purged_while_it_was_down_moves_past_it(
        tmp_path: Path) -> None:
    """The router keeps its inbox 24 h: what was purged meanwhile is gone; the core starts
    after it (and learns the log from its hub)."""
    sim = GroupsSim("a", "b", db={"b": str(tmp_path / "b.db")})
    gid = sim.create("a", members=("b",))
    sim.crash("b")
    b = sim.nodes["b"]
    cursor = b.tail
    for i in range(3):
        sim.send("a", gid, b"m%d" % i)
    assert b.tail == cursor + 3
    b.inbox.clear()
    sim.partition("a")  # nothing new comes meanwhile
    sim.start("b")
    sim.run(0.5)
    assert b.c._cursor == b.tail
    sim.heal()
    sim.quiet()
    assert b.texts(gid) == [b"m0", b"m1", b"m2"]  # from the hub's log


def test_a_crash_before_the_commit_handles_the_payload_again_and_once(
        tmp_path: Path) -> None:
    """What a payload changed and the cursor past it are committed together: a groups
    process that dies in between reads the payload again from its inbox."""
    sim = GroupsSim("a", "b", db={"b": str(tmp_path / "b.db")})
    gid = sim.create("a", members=("b",))
    b = sim.nodes["b"]
    cursor = b.c._cursor
    sim.die_before_flush.add("b")
    sim.send("a", gid, b"once")
    assert b.core is None and b.tail == cursor + 1
    sim.start("b")
    sim.quiet()
    assert b.texts(gid) == [b"once"]
    assert b.c._cursor == b.tail
    assert group(sim, "b", gid).seq == group(sim, "a", gid).seq
    sim.restart("b")
    sim.quiet()
    assert b.texts(gid) == [b"once"]
