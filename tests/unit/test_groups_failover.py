"""Groups cores over groups_sim when the network misbehaves: gap fill, rate limits and
resending, sender keys across leaves and joins, hub failover, partitions and the returning
hub. Forged payloads are in test_groups_forged.py, restarts and the inbox in
test_groups_restart.py."""

from __future__ import annotations

from pathlib import Path

from services.groups import wire
from shared.wire.messages import groups as gm

from .groups_sim import GroupsSim, group, hub_of, log_of, successors, texts_once


def test_timings_set_beyond_a_day_still_give_messages_the_router_takes() -> None:
    """Beats live two beat intervals: a beat set above 12 h would ask the router for more
    than the 24 h a message may live (refused `invalid` between two processes)."""
    sim = GroupsSim("a", "b", beat_s=50_000.0, claim_wait_s=50_000.0)
    gid = sim.create("a", members=("b",))
    sim.run(120_000)  # beats, and b's claim when a's beats seem late
    assert sim.nodes["a"].sent and group(sim, "b", gid) is not None


# -- gap fill ---------------------------------------------------------------------------------

def test_a_member_cut_off_fills_the_gap_from_the_hub() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    sim.partition("c")
    for i in range(5):
        sim.send("a" if i % 2 else "b", gid, b"m%d" % i)
    sim.run(1)
    sim.heal(deliver=False)  # the routers gave up: c never gets those entries
    assert group(sim, "c", gid).seq == 3
    sim.send("b", gid, b"m5")  # the next entry shows c the gap
    sim.quiet()
    assert texts_once(sim, "c", gid) == [b"m%d" % i for i in range(6)]
    assert sim.nodes["c"].shown(gid) == sim.nodes["a"].shown(gid)
    assert sim.nodes["a"].stats["syncs_served"] >= 1
    assert log_of(sim, "c", gid) == log_of(sim, "a", gid)[3:]  # c's log from its join on


def test_a_successor_cut_off_hears_of_the_gap_from_the_hubs_beat() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    [first, *_] = [sim.name_of(n) for n in group(sim, "a", gid).successors()]
    sim.partition(first)
    sim.send("a", gid, b"while away")
    sim.run(1)
    sim.heal(deliver=False)
    sim.run(sim.settings.beat_s + 1)  # nothing else is sent: the beat carries the hub's seq
    assert sim.nodes[first].texts(gid) == [b"while away"]


def test_a_gap_longer_than_one_sync_batch_is_filled_in_rounds() -> None:
    sim = GroupsSim("a", "b", "c", rate_per_s=1000.0, rate_burst=1000.0)
    gid = sim.create("a", members=("b", "c"))
    sim.partition("c")
    for i in range(450):
        sim.send_nowait("b", gid, b"m%03d" % i)
    sim.run(1)
    sim.heal(deliver=False)
    sim.send("b", gid, b"last")
    sim.quiet(60)
    assert sim.nodes["c"].texts(gid) == sim.nodes["b"].texts(gid)
    assert len(sim.nodes["c"].texts(gid)) == 451
    assert sim.nodes["a"].stats["syncs_served"] >= 3


def test_large_messages_in_a_burst_are_fanned_out_in_payloads_the_router_takes() -> None:
    sim = GroupsSim("a", "b", "c", rate_burst=100)
    gid = sim.create("a", members=("b", "c"))
    texts = [bytes([65 + i]) * wire.MAX_TEXT for i in range(30)]
    for t in texts:
        sim.send_nowait("b", gid, t)
    sim.quiet()
    assert sorted(sim.nodes["c"].texts(gid)) == texts
    assert sim.nodes["a"].stats.get("sends_failed", 0) == 0


# -- rate limits and resending ----------------------------------------------------------------

def test_messages_over_the_rate_are_not_lost_but_sent_again_and_ordered() -> None:
    sim = GroupsSim("a", "b", "c", rate_per_s=1.0, rate_burst=2.0, resend_s=2.0)
    gid = sim.create("a", members=("b", "c"))
    sent = [b"burst %d" % i for i in range(10)]
    for t in sent:
        sim.send_nowait("b", gid, t)
    sim.run()
    assert sim.nodes["a"].stats["rate_limited"] == 8
    assert len(sim.nodes["c"].texts(gid)) == 2
    took = sim.quiet(60)
    for n in "abc":
        assert sorted(texts_once(sim, n, gid)) == sorted(sent), n
    assert sim.nodes["a"].shown(gid) == sim.nodes["c"].shown(gid)
    assert took >= 6  # at the hub's rate, not at once
    assert sim.nodes["b"].stats["resent"] >= 8


def test_the_rate_is_per_member() -> None:
    sim = GroupsSim("a", "b", "c", rate_per_s=1.0, rate_burst=2.0)
    gid = sim.create("a", members=("b", "c"))
    for i in range(3):
        sim.send_nowait("b", gid, b"b%d" % i)
        sim.send_nowait("c", gid, b"c%d" % i)
    sim.run()
    assert sim.nodes["a"].stats["rate_limited"] == 2
    assert sorted(sim.nodes["a"].texts(gid)) == [b"b0", b"b1", b"c0", b"c1"]


def test_a_message_the_hub_does_not_order_is_sent_again_every_resend_s() -> None:
    sim = GroupsSim("a", "b", takeover_after_s=1000.0, resend_s=10.0)
    gid = sim.create("a", members=("b",))
    sim.partition("a")
    sim.send("b", gid, b"waiting")
    sim.run(35)
    assert sim.nodes["b"].stats["resent"] == 3  # at 10, 20 and 30 s
    sim.heal()
    sim.quiet()
    assert sim.nodes["a"].texts(gid) == [b"waiting"]


# -- sender keys ------------------------------------------------------------------------------

def test_sender_keys_rotate_after_so_many_messages_and_every_epoch_is_read() -> None:
    sim = GroupsSim("a", "b", "c", rotate_messages=3)
    gid = sim.create("a", members=("b", "c"))
    for i in range(10):
        sim.send("b", gid, b"m%d" % i)
    sim.quiet()
    assert sim.nodes["c"].texts(gid) == [b"m%d" % i for i in range(10)]
    epochs = [e.args[2] for e in sim.nodes["a"].c.store.messages_after(gid, 0, 100)]
    assert epochs == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    # the oldest epochs are dropped: history reads what the keys kept open
    hist = sim.ok("c", gm.History(group_id=gid, limit=100)).messages
    assert [m.text for m in hist] == [f"m{i}" for i in range(10)]


def test_a_member_that_leaves_and_comes_back_is_read_by_everyone() -> None:
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    sim.send("b", gid, b"first time")
    sim.quiet()
    c_before_leave = sim.sent_by("c", gid)
    sim.ok("b", gm.Leave(group_id=gid))
    sim.run()
    sim.ok("a", gm.InviteMember(group_id=gid, node_id=sim.nodes["b"].id))
    sim.run()
    before = len(sim.sent_by("b", gid))
    sim.ok("b", gm.Join(group_id=gid))
    sim.run()
    sim.send("b", gid, b"second time")
    sim.quiet()
    for n in "acd":
        assert sim.nodes[n].texts(gid) == [b"first time", b"second time"], n
    # b gave each member its key twice: when it joined, and in answer to theirs; they
    # gave theirs once (when they applied its join), not again in answer to b's
    assert sim.sent_by("b", gid)[before + 1:].count(("c", "key")) == 2
    assert c_before_leave.count(("d", "key")) == 1  # d joined after c
    sim.ok("a", gm.Kick(group_id=gid, node_id=sim.nodes["d"].id))  # everyone rotates
    sim.quiet()
    assert sim.sent_by("b", gid)[before + 1:].count(("c", "key")) == 3  # its own, no answer


def test_a_rejoining_members_new_key_that_overtakes_its_leave_is_not_lost() -> None:
    """b leaves and joins again at once; its new key (sent straight to c) reaches c before
    the hub's entries with the leave and the join: c must end up with the new key."""
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    held: list[bytes] = []

    def hold(src: str, dst: str, raw: bytes) -> bool:
        if src == "a" and dst == "c":
            held.append(raw)
            return True
        return False

    sim.lose = hold
    sim.ok("b", gm.Leave(group_id=gid))
    sim.run()
    sim.ok("a", gm.InviteMember(group_id=gid, node_id=sim.nodes["b"].id))
    sim.run()
    sim.ok("b", gm.Join(group_id=gid))
    sim.run()
    sim.lose = None
    assert sim.delivered("c", "key", gid)[-1][0] == "b"  # the new key came first
    for raw in held:
        sim.inject_raw("a", "c", raw)
    sim.send("b", gid, b"back again")
    sim.quiet(30)
    assert sim.nodes["c"].texts(gid) == [b"back again"]


# -- a successor takes over -------------------------------------------------------------------

def test_the_first_successor_takes_over_a_silent_hub_and_the_log_goes_on() -> None:
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    for i in range(3):
        sim.send(first, gid, b"before %d" % i)
    sim.quiet()
    base = group(sim, "a", gid).seq
    sim.partition("a")
    sim.send(third, gid, b"to the dead hub")
    took = sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    s = sim.settings
    assert s.takeover_after_s <= took <= s.takeover_after_s + s.claim_wait_s + 1
    sim.quiet(60)
    for n in (first, second, third):
        assert hub_of(sim, n, gid) == (first, 2)
        assert log_of(sim, n, gid)[-2:] == [(base + 1, 2, "hub"), (base + 2, 2, "msg")]
    assert sim.nodes[second].stats.get("claims", 0) == 0  # the second waited longer
    sim.send(second, gid, b"to the new hub")
    sim.quiet(60)
    for n in (first, second, third):
        assert texts_once(sim, n, gid) == [b"before 0", b"before 1", b"before 2",
                                           b"to the dead hub", b"to the new hub"]
        seqs = [s for s, _, _ in log_of(sim, n, gid)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no seq twice
    [ev] = [e for e in sim.nodes[third].of(gm.GroupChanged) if e.change == "hub"]
    assert (ev.hub, ev.term) == (sim.nodes[first].id, 2)


def test_messages_sent_to_a_dead_hub_go_to_the_new_one_at_once() -> None:
    """No waiting for resend_s: the members (the new hub itself too) send their unordered
    messages to the new hub as soon as they apply its hub entry."""
    sim = GroupsSim("a", "b", "c", "d", resend_s=1000.0)
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    sim.partition("a")
    sim.send(first, gid, b"from the first")
    sim.send(third, gid, b"from the third")
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.run(1)
    for n in (first, second, third):
        assert sorted(sim.nodes[n].texts(gid)) == [b"from the first", b"from the third"], n


def test_the_next_successor_takes_over_when_the_first_is_gone_too() -> None:
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    sim.partition("a")
    sim.partition(first)
    took = sim.until(lambda: hub_of(sim, second, gid) == (second, 2), 60)
    assert took >= sim.settings.takeover_after_s * 1.5
    sim.send(third, gid, b"via the second")
    sim.quiet(60)
    assert sim.nodes[second].texts(gid) == sim.nodes[third].texts(gid) == [b"via the second"]


def test_a_successor_that_alone_lost_the_hub_does_not_take_over() -> None:
    """The others still hear the hub: they answer 'alive' and the claim is dropped."""
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    # the hub and the first successor cannot reach each other; everyone else can
    sim.lose = lambda src, dst, raw: {src, dst} == {"a", first}
    sim.run(sim.settings.takeover_after_s + sim.settings.claim_wait_s + 2)
    assert sim.nodes[first].stats["claims"] >= 1
    assert sim.nodes[first].stats["claims_dropped"] >= 1
    for n in "abcd":
        assert hub_of(sim, n, gid) == ("a", 1)
    sim.lose = None
    sim.send(third, gid, b"still a's")
    sim.quiet()
    assert sim.nodes[first].texts(gid) == [b"still a's"]


def test_a_claiming_successor_collects_what_the_old_hub_ordered_but_it_missed() -> None:
    """Entries the hub sent only to some members before it died are passed on by them to
    the successor and keep their numbers."""
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    sim.lose = lambda src, dst, raw: src == "a" and dst == first
    sim.send(third, gid, b"only some saw it")
    assert sim.nodes[first].texts(gid) == []
    sim.partition("a")
    sim.lose = None
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.quiet(60)
    for n in (first, second, third):
        assert sim.nodes[n].texts(gid) == [b"only some saw it"]
    assert log_of(sim, first, gid)[-2:] == log_of(sim, third, gid)[-2:]
    assert [k for _, _, k in log_of(sim, first, gid)[-2:]] == ["msg", "hub"]


def test_claim_answers_with_large_messages_fit_in_what_the_router_carries() -> None:
    """The first successor missed 20 messages of the largest size; the members' answers to
    its claim carry what fits (the rest comes again from its sender), never more than the
    router takes."""
    sim = GroupsSim("a", "b", "c", "d", rate_burst=100)
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    big = [bytes([65 + i]) * wire.MAX_TEXT for i in range(20)]
    sim.lose = lambda src, dst, raw: src == "a" and dst == first
    for t in big:
        sim.send_nowait(third, gid, t)
    sim.run()
    assert sim.nodes[first].texts(gid) == []
    base = group(sim, first, gid).seq
    sim.partition("a")
    sim.lose = None
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.quiet(60)
    for n in "bcd":
        assert sim.nodes[n].stats.get("sends_failed", 0) == 0, n
        assert sorted(texts_once(sim, n, gid)) == big, n
    after = [(s, t, k) for s, t, k in log_of(sim, first, gid) if s > base]
    hub_at = [k for _, _, k in after].index("hub")
    assert hub_at >= 1  # what was collected kept its place, in the old term
    assert after[:hub_at] == [(base + 1 + i, 1, "msg") for i in range(hub_at)]


def test_a_claim_overtaken_by_another_successors_term_is_given_up() -> None:
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, _third = successors(sim, gid)
    seq = group(sim, first, gid).seq
    sim.partition("a")
    sim.until(lambda: sim.nodes[first].c.failover.claims != {}, 60)
    sim.partition(second)  # the second took over meanwhile, on its side; first hears of it
    hub = [[seq + 1, 2, int(sim.wall * 1000), "hub", sim.nodes[second].id, sim.nodes["a"].id]]
    sim.inject(second, first, "entries", gid, 2, seq + 1, hub)
    sim.run(2 * sim.settings.claim_wait_s + 1)  # past the claim's deadline
    assert hub_of(sim, first, gid) == (second, 2)
    assert sim.nodes[first].stats.get("takeovers", 0) == 0
    assert log_of(sim, first, gid)[-1] == (seq + 1, 2, "hub")


def test_members_ahead_of_the_new_hub_get_its_hub_entry() -> None:
    """The old hub ordered a member's leave and died; the first and second successors
    missed that entry, so only one member of the three asked passes it on: not enough to
    take it (test_one_member_alone_cannot_pass...), and the new hub opens its term at the
    same seq. The member that holds the old entry there answered the claim with a seq past
    the new hub's, and must still get the hub entry, which sets its old one aside."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    first, second, third = successors(sim, gid)
    [plain] = [n for n in "bcde" if n not in (first, second, third)]
    base = group(sim, "a", gid).seq
    sim.lose = lambda src, dst, raw: src == "a" and dst in (first, second)
    sim.ok(plain, gm.Leave(group_id=gid))
    sim.run()
    assert group(sim, first, gid).seq == base and group(sim, third, gid).seq == base + 1
    sim.partition("a")
    sim.lose = None
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.run(sim.settings.takeover_after_s * 3)  # long enough for the others to claim too
    for n in (first, second, third):
        assert hub_of(sim, n, gid) == (first, 2), n
        assert log_of(sim, n, gid)[-1] == (base + 1, 2, "hub"), n
    sim.send(third, gid, b"one group")
    sim.quiet(60)
    for n in (first, second, third):
        assert sim.nodes[n].texts(gid) == [b"one group"], n


def test_a_member_that_missed_the_hub_entry_catches_up_from_the_new_hub() -> None:
    """Everything the new hub sent one member at its takeover was lost: the member learns
    of term 2 from the new hub's later entries, and asks the new hub (not the dead one) for
    what it misses."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    chain = successors(sim, gid)
    first = chain[0]
    [plain] = [n for n in "bcde" if n not in chain]
    sim.partition("a")
    sim.lose = lambda src, dst, raw: src == first and dst == plain
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.run(5)
    sim.lose = None
    assert hub_of(sim, plain, gid) == ("a", 1)
    # it has just asked its old hub for the log (a late entries payload of the old term
    # said there was more): the sync it then wants is put off, and must still go to the
    # new hub
    seq = group(sim, plain, gid).seq
    sim.inject("a", plain, "entries", gid, 1, seq + 1, [])
    assert sim.sent_by(plain, gid)[-1] == ("a", "sync")
    sim.send(chain[1], gid, b"in term 2")
    sim.quiet(60)
    assert hub_of(sim, plain, gid) == (first, 2)
    assert sim.nodes[plain].texts(gid) == [b"in term 2"]
    assert log_of(sim, plain, gid)[-2:] == log_of(sim, first, gid)[-2:]


# -- partitions: one group after they heal ----------------------------------------------------

def test_two_successors_cut_off_from_each_other_do_not_both_take_over() -> None:
    """The hub and its first successor drop off the network, each on its own. A successor
    that hears from no other member must not open a term of its own: when the network
    heals, the group would have two hubs of the same term, each rejecting the other's
    entries, for good."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    first, second, third = successors(sim, gid)
    sim.partition("a")
    sim.partition(first)
    t0 = sim.now
    sim.until(lambda: hub_of(sim, second, gid) == (second, 2), 60)
    sim.run(30)
    assert hub_of(sim, first, gid) == ("a", 1)  # it claimed, and gave up, unanswered
    # and claims again only after another whole silence, not at every tick
    assert 1 <= sim.nodes[first].stats["claims"] <= (sim.now - t0) / sim.settings.takeover_after_s
    assert sim.nodes[first].stats["claims_unanswered"] >= 1
    sim.heal()
    sim.quiet(60)
    for n in "abcde":
        assert hub_of(sim, n, gid) == (second, 2), n
    sim.send(first, gid, b"from the first")
    sim.send(third, gid, b"from the third")
    sim.quiet(60)
    for n in "bcde":
        assert sorted(sim.nodes[n].texts(gid)) == [b"from the first", b"from the third"], n


def test_an_even_split_of_the_members_opens_no_term_on_either_side() -> None:
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    first, second, third = successors(sim, gid)
    [plain] = [n for n in "bcde" if n not in (first, second, third)]
    sim.partition("a")
    sim.partition(first, plain)
    sim.partition(second, third)
    sim.run(60)
    for n in "bcde":
        assert hub_of(sim, n, gid) == ("a", 1), n
    sim.heal()
    sim.send(plain, gid, b"still one group")
    sim.quiet(60)
    for n in "abcde":
        assert hub_of(sim, n, gid)[1] == hub_of(sim, "a", gid)[1]
        assert hub_of(sim, n, gid) == hub_of(sim, "a", gid)
        assert sim.nodes[n].texts(gid) == [b"still one group"], n


def test_members_on_the_old_hubs_side_of_a_partition_rejoin_the_new_term() -> None:
    """The hub and one member are cut off from the rest, which hold more than half: the
    first successor takes over there. Both sides go on sending; once healed there is one
    log, and every message is shown once to every member."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    first, second, third = successors(sim, gid)
    [plain] = [n for n in "bcde" if n not in (first, second, third)]
    sim.partition("a", plain)
    sent = []
    for i in range(3):
        for n in ("a", plain, second):
            sent.append(b"%s %d" % (n.encode(), i))
            sim.send_nowait(n, gid, sent[-1])
        sim.run(5)
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    assert hub_of(sim, plain, gid) == ("a", 1) and len(sim.nodes[plain].texts(gid)) >= 6
    sim.heal()
    sim.quiet(120)
    full = log_of(sim, "a", gid)
    for n in "abcde":
        assert hub_of(sim, n, gid) == (first, 2), n
        assert sorted(texts_once(sim, n, gid)) == sorted(sent), n
        assert log_of(sim, n, gid) == full[-len(log_of(sim, n, gid)):], n
    assert sim.nodes[plain].stats["log_truncated"] == 1


def test_a_join_the_new_hub_never_saw_leaves_no_member_in_limbo() -> None:
    """The old hub admitted e and died; the first successor missed the join. The members
    that grant it the new term pass the join on (the old hub's word, confirmed by at least
    half of those asked), so the new term starts with e: one view everywhere."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"), join=False)
    for n in "bcd":
        sim.ok(n, gm.Join(group_id=gid))
    sim.run()
    first = successors(sim, gid)[0]
    sim.lose = lambda src, dst, raw: src == "a" and dst == first
    sim.ok("e", gm.Join(group_id=gid))
    sim.run()
    sim.partition("a")
    sim.lose = None
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.heal()
    sim.quiet(120)
    views = {n: (hub_of(sim, n, gid), sim.names(gid, n)) for n in "bcde"}
    assert len(set(map(str, views.values()))) == 1, views


def test_a_leave_the_new_hub_missed_is_passed_on_by_the_members_that_saw_it() -> None:
    """The old hub ordered a member's leave and died; only the first successor missed it.
    The two members that saw it pass it on with their grants: the new term starts after it,
    nobody's log is set aside, and the member that left is gone everywhere."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    first, second, third = successors(sim, gid)
    [plain] = [n for n in "bcde" if n not in (first, second, third)]
    base = group(sim, "a", gid).seq
    sim.lose = lambda src, dst, raw: src == "a" and dst == first
    sim.ok(plain, gm.Leave(group_id=gid))
    sim.run()
    sim.partition("a")
    sim.lose = None
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.quiet(60)
    for n in (first, second, third):
        assert log_of(sim, n, gid)[-2:] == [(base + 1, 1, "left"), (base + 2, 2, "hub")], n
        assert sim.names(gid, n) == {"a", first, second, third}, n
        assert sim.nodes[n].stats.get("log_truncated", 0) == 0, n


def test_one_member_alone_cannot_pass_a_membership_change_on_to_the_new_hub() -> None:
    """A member's grant that carries a join nobody else confirms (its own invention, or a
    change the others never saw) is not taken into the new term, and is counted."""
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid = sim.create("a", members=("b", "c", "d", "e"))
    first = successors(sim, gid)[0]
    liar = next(n for n in "bcde" if n != first)
    sim.partition("a")
    claims = sim.nodes[first].c.failover.claims
    sim.until(lambda: gid in claims, 60)
    g = group(sim, first, gid)
    forged = wire.Entry(g.seq + 1, g.term, 1, "joined", (b"\x66" * 32,))
    sim.inject(liar, first, "claimed", gid, claims[gid].term, False, g.seq, [forged.pack()])
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.quiet(60)
    for n in "bcde":
        assert sim.names(gid, n) == set("bcde") | {"a"}, n
    assert sim.nodes[first].stats["claim_entries_unconfirmed"] >= 1


# -- the returning hub ------------------------------------------------------------------------

def test_a_returning_hub_steps_down_and_its_isolated_messages_are_ordered_again(
        tmp_path: Path) -> None:
    sim = GroupsSim("a", "b", "c", "d", db={"a": str(tmp_path / "a.db")})
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    sim.send("a", gid, b"before")
    sim.quiet()
    sim.partition("a")
    sim.send("a", gid, b"a alone 1")  # a orders these itself, in its old term
    sim.send("a", gid, b"a alone 2")
    assert sim.nodes["a"].texts(gid) == [b"before", b"a alone 1", b"a alone 2"]
    sim.send(third, gid, b"sent to a")  # waits in the router for a
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.send(second, gid, b"to the new hub")
    sim.quiet(60)
    sim.heal()  # a hears of term 2 and steps down
    sim.quiet(60)
    everyone = {b"before", b"a alone 1", b"a alone 2", b"sent to a", b"to the new hub"}
    for n in "abcd":
        assert hub_of(sim, n, gid) == (first, 2), n
        assert set(texts_once(sim, n, gid)) == everyone, n
    # one log, the same everywhere (each member's from its join on), that a's own
    # messages came back into
    full = log_of(sim, "a", gid)
    assert [s for s, _, _ in full] == list(range(1, len(full) + 1))
    for n in (first, second, third):
        assert log_of(sim, n, gid) == full[-len(log_of(sim, n, gid)):], n
    assert sim.nodes["a"].stats["log_truncated"] == 1
    assert sim.nodes["a"].c.store.outbox(gid) == []
    # the others were shown a's messages once, in the new term's order
    assert sim.nodes[second].shown(gid) == sim.nodes[third].shown(gid)
    assert sim.nodes["a"].stats.get("ordered_msg", 0) >= 2  # it had ordered them once
    statuses = [(s.status, s.seq) for s in sim.nodes["a"].of(gm.SendStatus)]
    assert [st for st, _ in statuses] == ["ordered"] * 5  # before, twice alone, twice again
    assert sim.nodes["a"].stats["resent"] >= 2  # its isolated messages, from its outbox
    sim.send("a", gid, b"after")  # a sends to the new hub now
    sim.quiet()
    assert sim.nodes[third].texts(gid)[-1] == b"after"
    assert hub_of(sim, "a", gid) == (first, 2)
    # what a was shown is recorded as shown, wherever the new term put it
    sim.restart("a")
    sim.quiet()
    assert set(texts_once(sim, "a", gid)) == everyone | {b"after"}
    assert sim.nodes["a"].c.store.unshown(gid) == []


def test_a_returning_hub_that_is_not_a_member_hands_over_and_forgets_the_group() -> None:
    sim = GroupsSim("a", "b", "c", "h")
    gid = sim.create("a", members=("b", "c"), hub="h")
    first = successors(sim, gid)[0]
    sim.send("b", gid, b"before")
    sim.quiet()
    sim.partition("h")
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.send("c", gid, b"after")
    sim.quiet(60)
    sim.heal()
    sim.run(sim.settings.beat_s * 2)
    assert sim.nodes["h"].group(gid) is None  # stepped down: nothing left to host
    for n in "abc":
        assert texts_once(sim, n, gid) == [b"before", b"after"] and hub_of(sim, n, gid) == (
            first, 2)


def test_a_stale_hint_makes_a_returning_hub_catch_up() -> None:
    """The new hub's entries to the old one were lost: a beat of the old term meets a
    successor, which tells it of term 2; it syncs from the new hub and steps down."""
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first = successors(sim, gid)[0]
    sim.partition("a")
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    sim.quiet(60)
    sim.heal(deliver=False)
    assert hub_of(sim, "a", gid) == ("a", 1)
    sim.run(sim.settings.beat_s + 1)
    assert sim.nodes["a"].stats["stale_hints"] >= 1
    assert hub_of(sim, "a", gid) == (first, 2)
    sim.send("a", gid, b"back")
    sim.quiet()
    assert sim.nodes["d"].texts(gid) == [b"back"]


def test_a_returning_hub_that_missed_the_new_term_catches_up_from_a_stale_hint() -> None:
    """The old hub ordered its own messages alone, the new hub more since; every entry of
    the new term to the old hub was lost. It hears of term 2 only as a stale hint (with the
    informer's last seq), and must still set its own entries aside from the new term's
    first one, not lay the new term's entries on top of them."""
    sim = GroupsSim("a", "b", "c", "d")
    gid = sim.create("a", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    sim.partition("a")
    sim.send("a", gid, b"a alone 1")
    sim.send("a", gid, b"a alone 2")
    sim.until(lambda: hub_of(sim, first, gid) == (first, 2), 60)
    for i in range(4):
        sim.send(second, gid, b"new term %d" % i)
    sim.quiet(60)
    sim.heal(deliver=False)
    sim.quiet(60)
    assert hub_of(sim, "a", gid) == (first, 2)
    full = log_of(sim, "a", gid)
    assert [s for s, _, _ in full] == list(range(1, len(full) + 1))
    for n in (first, second, third):
        assert log_of(sim, n, gid) == full[-len(log_of(sim, n, gid)):], n
        assert sorted(texts_once(sim, n, gid)) == sorted(
            [b"a alone 1", b"a alone 2"] + [b"new term %d" % i for i in range(4)]), n
    assert sorted(texts_once(sim, "a", gid)) == sorted(sim.nodes[second].texts(gid))
