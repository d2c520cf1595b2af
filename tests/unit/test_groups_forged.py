"""Groups cores over groups_sim against forged payloads from members and strangers:
control payloads only the hub (or a claiming successor) may send, messages not signed by
their member, answers to claims; each is refused and counted. Garbage bytes are in
test_groups_hostile.py."""

from __future__ import annotations

from shared.wire.messages import groups as gm

from .groups_sim import GroupsSim, group, hub_of, log_of, successors

# -- payloads only the hub may send -----------------------------------------------------------

def five(sim: GroupsSim) -> tuple[str, list[str], str]:
    """A group of five hosted by a: its successors, and the one member that is none."""
    gid = sim.create("a", members=("b", "c", "d", "e"))
    chain = successors(sim, gid)
    [plain] = [n for n in "bcde" if n not in chain]
    sim.send("b", gid, b"real")
    sim.quiet()
    return gid, chain, plain


def forged_entries(sim: GroupsSim, gid: str, forger: str, term: int, seq: int,
                   kind: str = "msg") -> list[list[object]]:
    """One entry as a forger would write it: a hub entry naming itself, or a copy of the
    group's real message under a new id."""
    ts = int(sim.wall * 1000)
    if kind == "hub":
        return [[seq, term, ts, "hub", sim.nodes[forger].id, sim.nodes["a"].id]]
    real = sim.nodes["a"].c.store.messages_after(gid, 0, 1)[0]
    sender, _mid, epoch, ct = real.args
    return [[seq, term, ts, "msg", sender, b"f" * 16, epoch, ct]]


def unchanged(sim: GroupsSim, gid: str, seq: int) -> None:
    for n in "abcde":
        g = group(sim, n, gid)
        assert (sim.name_of(g.hub), g.term, g.seq) == ("a", 1, seq), n
        assert sim.nodes[n].texts(gid) == [b"real"], n


def test_entries_from_a_member_that_is_not_the_hub_are_rejected_and_counted() -> None:
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid, chain, plain = five(sim)
    seq = group(sim, "a", gid).seq
    victim = chain[0]
    for term in (1, 2):  # the current term, and a higher one from a non-successor
        sim.inject(plain, victim, "entries", gid, term, seq + 1,
                   forged_entries(sim, gid, plain, term, seq + 1))
        sim.inject(plain, victim, "entries", gid, term, seq + 1,
                   forged_entries(sim, gid, plain, term, seq + 1, "hub"))
    assert sim.nodes[victim].stats["rejected_not_hub"] == 4
    # an old term, from anyone: rejected, and the sender hears of the current term
    sim.inject(plain, victim, "entries", gid, 0, seq + 1,
               forged_entries(sim, gid, plain, 0, seq + 1))
    assert sim.nodes[victim].stats["rejected_stale_term"] == 1
    assert sim.delivered(plain, "stale", gid)[-1][0] == victim
    sim.quiet()
    unchanged(sim, gid, seq)


def test_a_hub_entry_of_the_current_term_is_refused_even_from_the_hub() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    seq = group(sim, "b", gid).seq
    e = [[seq + 1, 1, int(sim.wall * 1000), "hub", sim.nodes["c"].id, sim.nodes["a"].id]]
    sim.inject("a", "b", "entries", gid, 1, seq + 1, e)
    assert hub_of(sim, "b", gid) == ("a", 1)
    assert sim.nodes["b"].stats["rejected_stale_term"] == 1


def test_a_successor_cannot_hand_the_group_to_a_node_of_its_choice() -> None:
    """The hub is gone; a successor may open a term for itself, but a hub entry it sends
    naming another node (a stranger, or a member that is no successor) as the new hub, or
    another old hub, is refused."""
    sim = GroupsSim("a", "b", "c", "d", "e", "x", takeover_after_s=100.0)  # no real claim
    gid = sim.create("a", members=("b", "c", "d", "e"))
    chain = successors(sim, gid)
    first = chain[0]
    [plain] = [n for n in "bcde" if n not in chain]
    seq = group(sim, chain[1], gid).seq
    sim.partition("a")
    ts = int(sim.wall * 1000)
    forged = [(sim.nodes["x"].id, sim.nodes["a"].id), (sim.nodes[plain].id, sim.nodes["a"].id),
              (sim.nodes[first].id, sim.nodes["x"].id)]
    for new_hub, old_hub in forged:
        e = [[seq + 1, 2, ts, "hub", new_hub, old_hub]]
        sim.inject(first, chain[1], "entries", gid, 2, seq + 1, e)
        sim.run(sim.settings.claim_wait_s + 1)  # (where a member first probes the hub)
        assert hub_of(sim, chain[1], gid) == ("a", 1), sim.name_of(new_hub)
    assert sim.nodes[chain[1]].stats["rejected_hub_entries"] == 3
    sim.heal()
    sim.send("c", gid, b"still a's")
    sim.quiet()
    assert sim.nodes[chain[1]].texts(gid) == [b"still a's"]


def test_beats_claims_and_answers_from_the_wrong_nodes_are_rejected_and_counted() -> None:
    sim = GroupsSim("a", "b", "c", "d", "e")
    gid, chain, plain = five(sim)
    seq = group(sim, "a", gid).seq
    first = chain[0]
    # a beat from a member that is not the hub
    sim.run(1)
    heard = sim.nodes[first].c.ctx.heard[gid]
    assert heard < sim.now
    sim.inject(plain, first, "beat", gid, 1, seq + 50)
    assert sim.nodes[first].stats["rejected_not_hub"] == 1
    assert sim.nodes[first].c.ctx.heard[gid] == heard  # the hub's silence goes on counting
    # a claim of a new term from a member that is no successor
    for n in "abcde":
        if n != plain:
            sim.inject(plain, n, "claim", gid, 2, seq)
            assert sim.nodes[n].stats["rejected_claims"] == 1, n
    # a claim of the current term, even from a successor
    sim.inject(first, chain[1], "claim", gid, 1, seq)
    assert sim.nodes[chain[1]].stats["rejected_claims"] == 2
    # answers to a claim nobody made
    sim.inject(plain, first, "claimed", gid, 2, False, seq, [])
    assert sim.nodes[first].stats["claimed_ignored"] == 1
    # a snapshot nobody asked for
    snap = group(sim, "a", gid).snapshot()
    sim.inject(plain, "c" if plain != "c" else "d", "state", "gother", snap.pack())
    sim.run(1)
    unchanged(sim, gid, seq)
    assert sum(sim.nodes[n].stats.get("rejected_unasked_state", 0) for n in "cd") == 1


def test_a_forged_stale_hint_only_causes_a_sync() -> None:
    sim = GroupsSim("a", "b", "c", "d", "e", "f")
    gid, chain, plain = five(sim)
    seq = group(sim, "a", gid).seq
    # naming a hub that is no successor: rejected
    sim.inject(plain, "a", "stale", gid, 5, sim.nodes[plain].id, 1)
    assert sim.nodes["a"].stats["rejected_stale"] == 1
    # from a stranger: rejected
    sim.inject("f", "a", "stale", gid, 5, sim.nodes[chain[0]].id, 1)
    assert sim.nodes["a"].stats["rejected_stale"] == 2
    # of a term that is not newer: rejected
    sim.inject(plain, "a", "stale", gid, 1, sim.nodes[chain[0]].id, 1)
    assert sim.nodes["a"].stats["rejected_stale"] == 3
    # naming a successor: the hub asks that successor for the log, which has nothing newer
    # (or, where a hub needs two members' word, only notes it)
    sim.inject(plain, "a", "stale", gid, 5, sim.nodes[chain[0]].id, 1)
    a = sim.nodes["a"].stats
    assert a.get("stale_hints", 0) + a.get("stale_heard", 0) == 1
    if a.get("stale_hints"):
        assert [(s, p.args) for s, p in sim.delivered(chain[0], "sync", gid)][-1] == (
            "a", (0,))
        sim.quiet()
        assert sim.nodes[chain[0]].stats["not_hub"] == 1  # it answered 'stale' with term 1
    sim.quiet()
    unchanged(sim, gid, seq)


def test_a_snapshot_from_another_node_than_the_hub_asked_is_refused() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"), join=False)
    sim.partition("a")  # b's join waits; c sends b a snapshot that would let it in
    sim.ok("b", gm.Join(group_id=gid))
    snap = group(sim, "a", gid).snapshot()
    forged = snap.pack()
    forged[6] = [*forged[6], [sim.nodes["b"].id, "admin", 0]]
    sim.inject("c", "b", "state", gid, forged)
    assert sim.nodes["b"].group(gid) is None
    assert sim.nodes["b"].stats["rejected_unasked_state"] == 1
    # from the hub it asked, but a snapshot without it: not a welcome
    sim.inject("a", "b", "state", gid, snap.pack())
    assert sim.nodes["b"].group(gid) is None
    assert sim.nodes["b"].stats["rejected_unasked_state"] == 2
    sim.heal()
    assert sim.names(gid, "b") == {"a", "b"}  # from the hub it asked


# -- messages ---------------------------------------------------------------------------------

def test_the_hub_orders_only_messages_signed_by_their_member_for_this_group() -> None:
    sim = GroupsSim("a", "b", "c", "x")
    gid = sim.create("a", members=("b", "c"))
    other = sim.create("a", "other", members=("b", "c"))
    sim.send("c", gid, b"c's")
    sim.send("b", gid, b"b's")
    sim.send("b", other, b"b's elsewhere")
    sim.quiet()
    a = sim.nodes["a"]
    c_msg, b_msg = a.c.store.messages_after(gid, 0, 10)
    [b_other] = a.c.store.messages_after(other, 0, 10)
    tampered = bytearray(b_msg.args[3])
    tampered[-70] ^= 1  # in the ciphertext, under the signature
    forgeries = [
        c_msg.args[2:],  # c's, passed off as b's
        b_other.args[2:],  # b's, of another group
        (b_msg.args[2], bytes(tampered)),  # b's, altered
        (b_msg.args[2], b"not a ciphertext"),
    ]
    for i, (epoch, ct) in enumerate(forgeries):
        sim.inject("b", "a", "msg", gid, bytes([i]) * 16, epoch, ct)
    assert a.stats["rejected_forged"] == 4
    # well signed, by a node that is not a member
    x = sim.nodes["x"]
    ct = x.crypto.identity.group_seal(gid, b"k" * 32, b"let me in").encode()
    sim.inject("x", "a", "msg", gid, b"x" * 16, 1, ct)
    assert a.stats["refused_msg"] == 1
    sim.quiet()
    assert a.c.store.messages_after(gid, 0, 10) == [c_msg, b_msg]


def test_a_message_the_hub_ordered_from_a_non_member_is_kept_in_order_but_never_shown() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    sim.send("b", gid, b"b's")
    sim.quiet()
    real = sim.nodes["a"].c.store.messages_after(gid, 0, 1)[0]
    seq = group(sim, "c", gid).seq
    stranger = b"s" * 32
    e = [seq + 1, 1, int(sim.wall * 1000), "msg", stranger, b"z" * 16, *real.args[2:]]
    sim.inject("a", "c", "entries", gid, 1, seq + 1, [e])  # from the hub itself
    assert group(sim, "c", gid).seq == seq + 1
    assert sim.nodes["c"].stats["rejected_not_member"] == 1
    assert sim.nodes["c"].texts(gid) == [b"b's"]
    assert sim.nodes["c"].c.store.unshown(gid) == []


# -- claims -----------------------------------------------------------------------------------

def test_a_successor_collects_only_genuine_messages_from_the_claim_answers() -> None:
    """Members answering the claim pass on forged entries (messages not signed by their
    member, of another group, altered, or by a non-member) at the next seqs: none is
    ordered."""
    sim = GroupsSim("a", "b", "c", "d", "x")
    gid = sim.create("a", members=("b", "c", "d"))
    other = sim.create("a", "other", members=("b", "c", "d"))
    first, second, third = successors(sim, gid)
    sim.send(second, gid, b"real")
    sim.send(second, other, b"elsewhere")
    sim.quiet()
    [real] = sim.nodes["a"].c.store.messages_after(gid, 0, 1)
    [elsewhere] = sim.nodes["a"].c.store.messages_after(other, 0, 1)
    seq = group(sim, first, gid).seq
    sim.partition("a")
    sim.until(lambda: sim.nodes[first].c.failover.claims != {}, 60)
    term = sim.nodes[first].c.failover.claims[gid].term
    s2, x = sim.nodes[second].id, sim.nodes["x"]
    _s, _m, epoch, ct = real.args
    altered = bytearray(ct)
    altered[-70] ^= 1
    by_x = x.crypto.identity.group_seal(gid, b"k" * 32, b"not a member").encode()
    ts = int(sim.wall * 1000)
    forged = [
        [seq + 1, 1, ts, "msg", sim.nodes[third].id, b"f" * 16, epoch, ct],  # second's
        [seq + 1, 1, ts, "msg", s2, b"g" * 16, epoch, elsewhere.args[3]],  # other group's
        [seq + 1, 1, ts, "msg", s2, b"h" * 16, epoch, bytes(altered)],
        [seq + 1, 1, ts, "msg", x.id, b"i" * 16, 1, by_x],
    ]
    for f in forged:
        sim.inject(third, first, "claimed", gid, term, False, seq, [f])
    assert sim.nodes[first].stats["rejected_forged"] == 4
    sim.until(lambda: hub_of(sim, first, gid) == (first, term), 30)
    sim.quiet(30)
    assert log_of(sim, first, gid)[-1] == (seq + 1, term, "hub")
    assert sim.nodes[third].texts(gid) == [b"real"]


def test_answers_to_a_claim_count_only_from_the_members_asked_for_that_term() -> None:
    sim = GroupsSim("a", "b", "c", "d", "x")
    gid = sim.create("a", members=("b", "c", "d"))
    first = successors(sim, gid)[0]
    sim.partition("a", "x")  # x can still talk to a, not to the others
    sim.until(lambda: sim.nodes[first].c.failover.claims != {}, 60)
    term = sim.nodes[first].c.failover.claims[gid].term
    sim.partition("x")
    sim.inject("x", first, "claimed", gid, term, True, 0, [])  # 'alive' from a stranger
    sim.inject("a", first, "claimed", gid, term, True, 0, [])  # from the hub, not asked
    other = next(n for n in "bcd" if n != first)
    sim.inject(other, first, "claimed", gid, term + 1, True, 0, [])  # another term
    assert sim.nodes[first].stats["claimed_ignored"] == 3
    assert sim.nodes[first].c.failover.claims != {}
    sim.until(lambda: hub_of(sim, first, gid) == (first, term), 30)


def test_a_claim_that_reaches_the_hub_is_answered_alive() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    first = successors(sim, gid)[0]
    sim.run(60)  # long after the hub last heard of anything
    sim.inject(first, "a", "claim", gid, 2, group(sim, "a", gid).seq)
    [(_, answer)] = sim.delivered(first, "claimed", gid)
    assert answer.args[:2] == (2, True)
