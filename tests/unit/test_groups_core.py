"""Groups cores over the in-memory router of groups_sim: membership and the ordered log.

Failover, gap fill and rate limits are in test_groups_failover.py; hostile payloads in
test_groups_hostile.py.
"""

from __future__ import annotations

import pytest

from services.groups.core import GroupsCore
from services.groups.store import Store
from shared.core import Call, Fail, PeerFailed, PeerReplied, Reply, Request
from shared.wire import ErrorCode
from shared.wire.messages import groups as gm
from shared.wire.messages.crypto import NodeIdReply

from .groups_sim import GroupsSim, successors, texts_once


def members(sim: GroupsSim, gid: str, viewer: str) -> set[str]:
    return sim.names(gid, viewer)


def roles(sim: GroupsSim, gid: str, viewer: str) -> dict[str, str]:
    g = sim.nodes[viewer].group(gid)
    assert g is not None
    return {sim.name_of(n): m.role for n, m in g.members.items()}


def fail(sim: GroupsSim, name: str, body: gm.Message, code: ErrorCode) -> str:
    r = sim.call(name, body)
    assert isinstance(r, Fail), r
    assert r.code is code, r
    return r.message


# -- create, invite, join, decline ------------------------------------------------------------

def test_create_invite_and_join_make_the_same_group_on_every_member() -> None:
    sim = GroupsSim("a", "b", "c")
    a, b, c = (sim.nodes[n] for n in "abc")
    gid = sim.create("a", "friends", members=("b", "c"), join=False)
    assert members(sim, gid, "a") == {"a"} and roles(sim, gid, "a") == {"a": "admin"}
    for n in (b, c):
        [inv] = n.of(gm.Invited)
        assert (inv.group_id, inv.name, inv.hub, inv.inviter) == (gid, "friends", a.id, a.id)
        listed = sim.ok(n.name, gm.ListGroups())
        assert [i.group_id for i in listed.invites] == [gid] and listed.groups == []
    sim.ok("b", gm.Join(group_id=gid))
    sim.ok("c", gm.Join(group_id=gid))
    sim.run()
    for n in (a, b, c):
        assert members(sim, gid, n.name) == {"a", "b", "c"}
        assert roles(sim, gid, n.name) == {"a": "admin", "b": "member", "c": "member"}
        g = n.group(gid)
        assert g is not None and (g.hub, g.term, g.seq) == (a.id, 1, 3)
        [info] = sim.ok(n.name, gm.ListGroups()).groups
        assert info.member and info.seq == 3 and info.name == "friends"
        assert sim.ok(n.name, gm.ListGroups()).invites == []
    assert [e.change for e in b.of(gm.GroupChanged)] == ["joined"]
    # those already in see the newcomers, in log order
    assert [(sim.name_of(e.node_id), e.seq) for e in a.of(gm.MemberChanged)] == [
        ("a", 1), ("b", 2), ("c", 3)]
    assert [(sim.name_of(e.node_id), e.seq) for e in b.of(gm.MemberChanged)] == [("c", 3)]
    # every member holds every other member's sender key
    for n in (a, b, c):
        for o in (a, b, c):
            assert n.c.store.latest_key(gid, o.id) is not None, (n.name, o.name)


def test_members_that_reach_only_the_hub_get_each_others_keys_through_it() -> None:
    """A star: every member reaches the hub, no member another (a hub's announcement names
    at most 32 neighbours, so beyond that a member's router knows no path to the others).
    Keys between members name the hub as their relay; every message reaches everyone."""
    names = ("a", "b", "c", "d", "e")
    sim = GroupsSim(*names)
    sim.links = {frozenset(("a", n)) for n in names[1:]}
    gid = sim.create("a", members=names[1:])
    for n in names:
        sim.send(n, gid, n.encode())
    sim.run()
    for n in names:
        assert sorted(texts_once(sim, n, gid)) == [x.encode() for x in names], n
        for o in names:
            assert sim.nodes[n].c.store.latest_key(gid, sim.nodes[o].id) is not None
    assert sim.relayed >= 4 * 3 and not sim.held  # each member's key to the 3 others


def test_a_remote_hub_announces_the_group_to_its_creator() -> None:
    sim = GroupsSim("a", "h")
    gid = sim.create("a", hub="h")
    [ev] = sim.nodes["a"].of(gm.GroupChanged)
    assert (ev.change, ev.hub) == ("created", sim.nodes["h"].id)
    for n in "ah":
        g = sim.nodes[n].group(gid)
        assert g is not None and g.hub == sim.nodes["h"].id and members(sim, gid, n) == {"a"}
    info = sim.ok("h", gm.ListGroups()).groups[0]
    assert not info.member and info.hub == sim.nodes["h"].id


def test_decline_drops_the_invitation_and_the_group_stays_without_the_node() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",), join=False)
    sim.ok("b", gm.Decline(group_id=gid))
    assert sim.ok("b", gm.ListGroups()).invites == []
    # without the invitation (and no hub given) there is nothing to join
    fail(sim, "b", gm.Join(group_id=gid), ErrorCode.INVALID)
    assert members(sim, gid, "a") == {"a"}


def test_an_invite_only_group_refuses_a_node_that_was_not_invited() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b",))
    sim.ok("c", gm.Join(group_id=gid, hub=sim.nodes["a"].id))
    sim.run()
    assert members(sim, gid, "a") == {"a", "b"} and sim.nodes["c"].group(gid) is None
    assert sim.nodes["a"].stats["refused_join"] == 1
    assert sim.nodes["c"].stats["refused_by_hub"] == 1
    # the app hears why, and nothing waits for an admission that will not come
    [refused] = sim.nodes["c"].of(gm.Refused)
    assert (refused.group_id, refused.what, refused.reason) == (gid, "join", "not invited")
    assert gid not in sim.nodes["c"].c.member.joining


def test_an_open_group_admits_anyone_who_names_its_hub() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", invite_only=False)
    sim.ok("b", gm.Join(group_id=gid, hub=sim.nodes["a"].id))
    sim.run()
    assert members(sim, gid, "a") == members(sim, gid, "b") == {"a", "b"}


def test_members_invite_in_open_groups_only_admins_in_invite_only_ones() -> None:
    sim = GroupsSim("a", "b", "c", "d")
    d = sim.nodes["d"]
    closed = sim.create("a", "closed", members=("b",))
    fail(sim, "b", gm.InviteMember(group_id=closed, node_id=d.id), ErrorCode.FAILED)
    # and the hub checks it too, for a member that skips its own core's check
    sim.inject("b", "a", "invite", closed, d.id)
    assert sim.nodes["a"].stats["refused_invite"] == 1 and d.of(gm.Invited) == []
    sim.ok("a", gm.InviteMember(group_id=closed, node_id=d.id))
    sim.run()
    assert [i.group_id for i in d.of(gm.Invited)] == [closed]

    opened = sim.create("a", "open", members=("b",), invite_only=False)
    sim.ok("b", gm.InviteMember(group_id=opened, node_id=sim.nodes["c"].id))
    sim.run()
    [inv] = sim.nodes["c"].of(gm.Invited)
    assert inv.group_id == opened and inv.inviter == sim.nodes["b"].id


def test_an_invitation_expires() -> None:
    sim = GroupsSim("a", "b", invite_ttl_s=60)
    gid = sim.create("a", members=("b",), join=False)
    sim.run(61)
    assert sim.ok("b", gm.ListGroups()).invites == []
    fail(sim, "b", gm.Join(group_id=gid), ErrorCode.INVALID)
    # naming the hub does not help: the hub's record of the invitation expired too
    sim.ok("b", gm.Join(group_id=gid, hub=sim.nodes["a"].id))
    sim.run()
    assert members(sim, gid, "a") == {"a"} and sim.nodes["a"].stats["refused_join"] == 1


def test_the_member_limit_refuses_joins_and_invitations_when_full() -> None:
    sim = GroupsSim("a", "b", "c", "d", max_members=3)
    gid = sim.create("a", members=("b", "c", "d"), join=False)
    for n in "bcd":
        sim.ok(n, gm.Join(group_id=gid))
    sim.run()
    assert members(sim, gid, "a") == {"a", "b", "c"}
    assert sim.nodes["d"].group(gid) is None
    assert sim.nodes["a"].stats["refused_join"] == 1
    sim.inject("a", "a", "invite", gid, sim.nodes["d"].id)
    assert sim.nodes["a"].stats["refused_invite"] == 1


def test_a_creator_cannot_ask_for_more_members_than_the_hub_allows() -> None:
    sim = GroupsSim("a", "h", max_members=5)
    sim.inject("a", "h", "create", "gbig", "big", True, 1000, [])
    g = sim.nodes["h"].group("gbig")
    assert g is not None and g.max_members == 5


def test_join_through_an_invitation_goes_to_the_hub_it_names() -> None:
    sim = GroupsSim("a", "b", "h")
    gid = sim.create("a", members=("b",), hub="h", join=False)
    sim.ok("b", gm.Join(group_id=gid))
    sim.run()
    assert members(sim, gid, "h") == {"a", "b"}
    sent = sim.sent_by("b")
    assert sent[0] == ("h", "join") and set(sent[1:]) == {("a", "key")}  # keys: members only


# -- leave, kick, roles -----------------------------------------------------------------------

def epochs(sim: GroupsSim, gid: str, viewer: str, owner: str) -> int:
    k = sim.nodes[viewer].c.store.latest_key(gid, sim.nodes[owner].id)
    assert k is not None, (viewer, owner)
    return k[0]


def test_a_member_that_leaves_is_gone_everywhere_and_the_others_rotate_their_keys() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    before = {n: epochs(sim, gid, "a", n) for n in "ac"}
    sim.ok("b", gm.Leave(group_id=gid))
    sim.run()
    assert members(sim, gid, "a") == members(sim, gid, "c") == {"a", "c"}
    b = sim.nodes["b"]
    assert b.group(gid) is None and b.c.store.latest_key(gid, b.id) is None
    assert sim.ok("b", gm.ListGroups()).groups == []
    assert b.of(gm.GroupChanged)[-1].change == "left"
    assert [e.change for e in sim.nodes["c"].of(gm.MemberChanged)] == ["left"]
    for n in "ac":
        assert epochs(sim, gid, "a", n) == before[n] + 1 == epochs(sim, gid, "c", n)
        assert sim.nodes[n].c.store.latest_key(gid, b.id) is None  # b's keys are forgotten
    # b cannot send any more
    r = sim.call("b", gm.Send(group_id=gid), (b"late",))
    assert isinstance(r, Fail) and r.code is ErrorCode.INVALID


def test_the_last_admin_cannot_leave_a_group_with_others_in_it() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    assert "last admin" in fail(sim, "a", gm.Leave(group_id=gid), ErrorCode.FAILED)
    # a core that skips the check (an older one, a hostile one) meets the hub's
    sim.inject("a", "a", "leave", gid)
    assert members(sim, gid, "b") == {"a", "b"} and sim.nodes["a"].stats["refused_leave"] == 1
    # once b is admin too, a may go
    sim.ok("a", gm.SetRole(group_id=gid, node_id=sim.nodes["b"].id, role="admin"))
    sim.run()
    assert roles(sim, gid, "b") == {"a": "admin", "b": "admin"}
    sim.ok("a", gm.Leave(group_id=gid))
    sim.run()
    assert members(sim, gid, "b") == {"b"}
    a = sim.nodes["a"]
    g = a.group(gid)  # a still hosts it as a hub, holding no key of it
    assert g is not None and g.hub == a.id and members(sim, gid, "a") == {"b"}
    assert a.of(gm.GroupChanged)[-1].change == "left"
    assert a.c.store.db.execute("SELECT count(*) FROM keys").fetchone()[0] == 0
    sim.send("b", gid, b"still ordered")
    sim.run()
    assert sim.nodes["b"].texts(gid) == [b"still ordered"] and a.texts(gid) == []
    assert a.c.store.has_message(gid, sim.nodes["b"].id, sim.nodes["b"].received[0][0].id)


def test_a_hub_kicked_as_a_member_goes_on_ordering_for_the_others() -> None:
    sim = GroupsSim("a", "b", "c")
    a, b, c = (sim.nodes[n] for n in "abc")
    gid = sim.create("a", members=("b", "c"))
    sim.ok("a", gm.SetRole(group_id=gid, node_id=b.id, role="admin"))
    sim.run()
    sim.ok("b", gm.Kick(group_id=gid, node_id=a.id))
    sim.run()
    assert members(sim, gid, "a") == members(sim, gid, "b") == members(sim, gid, "c") == {
        "b", "c"}
    assert a.of(gm.GroupChanged)[-1].change == "removed"
    assert a.c.store.db.execute("SELECT count(*) FROM keys").fetchone()[0] == 0
    sim.send("c", gid, b"after")
    sim.run()
    assert b.texts(gid) == c.texts(gid) == [b"after"] and a.texts(gid) == []
    g = a.group(gid)
    assert g is not None and g.hub == a.id and g.seq == b.group(gid).seq  # type: ignore[union-attr]


def test_the_last_member_leaving_ends_the_group_on_its_hub() -> None:
    sim = GroupsSim("a", "h")
    gid = sim.create("a", hub="h")
    sim.ok("a", gm.Leave(group_id=gid))
    sim.run()
    assert sim.nodes["a"].group(gid) is None and sim.nodes["h"].group(gid) is None
    assert sim.nodes["h"].stats["groups_ended"] == 1
    assert sim.nodes["h"].c.store.entries_after(gid, 0, 10) == []
    assert sim.nodes["a"].of(gm.GroupChanged)[-1].change == "left"  # the hub told it


def test_only_admins_kick_and_the_kicked_member_is_removed_everywhere() -> None:
    sim = GroupsSim("a", "b", "c")
    a, b, c = (sim.nodes[n] for n in "abc")
    gid = sim.create("a", members=("b", "c"))
    assert "admins" in fail(sim, "b", gm.Kick(group_id=gid, node_id=c.id), ErrorCode.FAILED)
    sim.inject("b", "a", "kick", gid, c.id)  # past its own core's check: the hub refuses
    assert members(sim, gid, "a") == {"a", "b", "c"} and a.stats["refused_kick"] == 1
    fail(sim, "a", gm.Kick(group_id=gid, node_id=b"\x01" * 32),
         ErrorCode.INVALID)  # not a member
    sim.ok("a", gm.Kick(group_id=gid, node_id=c.id))
    sim.run()
    assert members(sim, gid, "a") == members(sim, gid, "b") == {"a", "b"}
    assert c.group(gid) is None and c.of(gm.GroupChanged)[-1].change == "removed"
    assert [e.change for e in b.of(gm.MemberChanged)][-1] == "kicked"
    assert c.c.store.entries_after(gid, 0, 100) == [] and c.c.store.outbox(gid) == []


def test_an_admin_cannot_kick_itself() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    sim.inject("a", "a", "kick", gid, sim.nodes["a"].id)
    assert members(sim, gid, "b") == {"a", "b"} and sim.nodes["a"].stats["refused_kick"] == 1


def test_set_role_needs_an_admin_and_the_last_admin_cannot_step_down() -> None:
    sim = GroupsSim("a", "b", "c")
    a, b, c = (sim.nodes[n] for n in "abc")
    gid = sim.create("a", members=("b", "c"))
    fail(sim, "b", gm.SetRole(group_id=gid, node_id=b.id, role="admin"), ErrorCode.FAILED)
    sim.inject("b", "a", "role", gid, b.id, "admin")
    assert roles(sim, gid, "c")["b"] == "member" and a.stats["refused_role"] == 1
    sim.ok("a", gm.SetRole(group_id=gid, node_id=a.id, role="member"))  # the hub refuses
    sim.run()
    assert roles(sim, gid, "c")["a"] == "admin" and a.stats["refused_role"] == 2
    sim.ok("a", gm.SetRole(group_id=gid, node_id=b.id, role="admin"))
    sim.run()
    assert roles(sim, gid, "c") == {"a": "admin", "b": "admin", "c": "member"}
    [ev] = [e for e in c.of(gm.MemberChanged) if e.change == "role"]
    assert (ev.node_id, ev.role) == (b.id, "admin")
    # now b may kick, and a may step down
    sim.ok("b", gm.Kick(group_id=gid, node_id=c.id))
    sim.ok("a", gm.SetRole(group_id=gid, node_id=a.id, role="member"))
    sim.run()
    assert roles(sim, gid, "b") == {"a": "member", "b": "admin"}
    assert roles(sim, gid, "a") == roles(sim, gid, "b")


# -- the ordered log --------------------------------------------------------------------------

def everyone_sees_the_same(sim: GroupsSim, gid: str, readers: str, sent: dict[bytes, str]
                           ) -> list[tuple[int, bytes]]:
    """Every reader was shown every sent text once, at the same seq, in seq order."""
    first = sim.nodes[readers[0]].shown(gid)
    for n in readers:
        shown = sim.nodes[n].shown(gid)
        assert shown == first, n
        assert [s for s, _ in shown] == sorted({s for s, _ in shown}), n  # increasing, once
    assert sorted(t for _, t in first) == sorted(sent)
    for ev, text in sim.nodes[readers[0]].received:
        assert sim.name_of(ev.sender) == sent[text]  # the sender is the one that signed it
    return first


@pytest.mark.parametrize("hub", ["a", "h"])
def test_every_member_sees_every_message_once_in_the_same_order(hub: str) -> None:
    sim = GroupsSim("a", "b", "c", "d", "h")
    gid = sim.create("a", members=("b", "c", "d"), hub=hub)
    sent: dict[bytes, str] = {}
    for i in range(12):  # senders interleaved, several messages in flight at once
        for n in "abcd"[: 1 + i % 4]:
            text = b"%s-%d" % (n.encode(), i)
            sent[text] = n
            sim.send_nowait(n, gid, text)
        sim.run(0.1 * (i % 3))
    sim.quiet()
    shown = everyone_sees_the_same(sim, gid, "abcd", sent)
    # per sender, its messages keep the order it sent them in
    for n in "abcd":
        mine = [t for _, t in shown if sent[t] == n]
        assert mine == sorted(mine, key=lambda t: int(t.split(b"-")[1]))
    for n in "abcd":  # the sender was told of each message's place
        statuses = sim.nodes[n].of(gm.SendStatus)
        assert len(statuses) == sum(1 for s in sent.values() if s == n)
        assert all(s.status == "ordered" for s in statuses)
        assert sim.nodes[n].c.store.outbox(gid) == []
    history = sim.ok("c", gm.History(group_id=gid, limit=1000))
    assert [(m.seq, m.text.encode()) for m in history.messages] == shown


def test_a_send_with_the_same_id_is_ordered_once() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    mid = b"m" * 16
    sim.partition("a")  # not ordered yet: the second send finds it in the outbox
    assert sim.send("b", gid, b"once", mid=mid) == mid
    assert sim.send("b", gid, b"once", mid=mid) == mid
    assert sim.nodes["b"].stats["sent"] == 1
    sim.heal()
    sim.quiet()
    assert sim.send("b", gid, b"once", mid=mid) == mid  # ordered: found in the log
    sim.quiet()
    assert sim.nodes["b"].stats["sent"] == 1
    assert sim.nodes["a"].texts(gid) == sim.nodes["b"].texts(gid) == [b"once"]


def test_a_hub_that_is_not_a_member_orders_but_cannot_read() -> None:
    sim = GroupsSim("a", "b", "c", "h")
    h = sim.nodes["h"]
    gid = sim.create("a", members=("b", "c"), hub="h")
    sent = {}
    for n in "abc":
        for i in range(3):
            sent[b"secret %s %d" % (n.encode(), i)] = n
            sim.send(n, gid, b"secret %s %d" % (n.encode(), i))
    sim.quiet()
    everyone_sees_the_same(sim, gid, "abc", sent)
    assert h.received == [] and h.stats["ordered_msg"] == 9
    assert sim.delivered("h", "key") == []  # no member ever sent it a key
    db = h.c.store.db
    assert db.execute("SELECT count(*) FROM keys").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM log WHERE mid IS NOT NULL").fetchone()[0] == 9
    dump = "\n".join(db.iterdump()).encode()
    rows = b"".join(bytes(v) for row in db.execute("SELECT entry FROM log") for v in row)
    for text in sent:
        assert text not in dump and text not in rows
    # its own app cannot read the group either
    r = sim.call("h", gm.History(group_id=gid))
    assert isinstance(r, Fail) and r.code is ErrorCode.INVALID
    # a key sent to it anyway (by a confused or hostile member) is refused, not kept
    sim.inject("a", "h", "key", gid, 9, b"k" * 32)
    assert h.stats["keys_refused"] == 1
    assert db.execute("SELECT count(*) FROM keys").fetchone()[0] == 0
    # and a member takes no key of epoch 0 (epochs start at 1)
    sim.inject("a", "b", "key", gid, 0, b"k" * 32)
    assert sim.nodes["b"].stats["keys_refused"] == 1
    assert sim.nodes["b"].c.store.key(gid, sim.nodes["a"].id, 0) is None


def test_a_kicked_member_gets_no_key_of_the_new_epoch_and_no_entry_after_the_kick() -> None:
    sim = GroupsSim("a", "b", "c")
    a, b, c = (sim.nodes[n] for n in "abc")
    gid = sim.create("a", members=("b", "c"))
    sim.send("b", gid, b"before")
    sim.quiet()
    old = {n: epochs(sim, gid, "a", n) for n in "ab"}
    keys_before = len(sim.delivered("c", "key"))
    entries_before = len(sim.delivered("c", "entries"))
    sim.ok("a", gm.Kick(group_id=gid, node_id=c.id))
    sim.run()
    kick_seq = a.group(gid).seq  # type: ignore[union-attr]
    for i in range(5):
        sim.send("a" if i % 2 else "b", gid, b"after %d" % i)
    sim.quiet()
    assert a.texts(gid) == b.texts(gid) == [b"before"] + [b"after %d" % i for i in range(5)]
    assert c.texts(gid) == [b"before"]
    # c received one more entries payload: the one with its kick, nothing after it
    [(_, last)] = sim.delivered("c", "entries")[entries_before:]
    assert [e.kind for e in last.args[2]] == ["kicked"] and last.args[2][-1].seq == kick_seq
    assert len(sim.delivered("c", "key")) == keys_before  # no key of the new epochs
    for n in "ab":
        assert epochs(sim, gid, "a", n) == epochs(sim, gid, "b", n) == old[n] + 1
    # the messages after the kick were sealed with the new keys
    for e in a.c.store.messages_after(gid, kick_seq, 100):
        assert e.args[2] == old[sim.name_of(e.args[0])] + 1
    # and c, asking the hub for the log, is refused
    sim.inject("c", "a", "sync", gid, 0)
    assert a.stats["refused_sync"] == 1


def test_a_joiner_reads_what_is_sent_after_it_joined_not_before() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b",))
    sim.send("a", gid, b"before c")
    sim.quiet()
    sim.ok("a", gm.InviteMember(group_id=gid, node_id=sim.nodes["c"].id))
    sim.run()
    sim.ok("c", gm.Join(group_id=gid))
    sim.send("b", gid, b"welcome")  # may overtake c's key on its way: c waits for the key
    sim.quiet()
    assert sim.nodes["c"].texts(gid) == [b"welcome"]
    assert sim.nodes["a"].texts(gid) == [b"before c", b"welcome"]
    assert [m.text for m in sim.ok("c", gm.History(group_id=gid)).messages] == ["welcome"]


# -- plumbing ---------------------------------------------------------------------------------

def test_requests_wait_for_the_node_id_and_fail_when_crypto_does_not_answer() -> None:
    core = GroupsCore(Store(":memory:"), lambda: 1_800_000_000.0)
    [ask] = core.on_timer(0.0)
    assert isinstance(ask, Call) and ask.role == "crypto"
    assert core.handle(Request("r", gm.ListGroups()), 0.1) == []  # waits
    assert core.on_timer(0.2) == [] and core.next_deadline() is None  # asked once
    out = core.handle(PeerFailed(ask.token, ErrorCode.PEER_TIMEOUT, "no crypto"), 1.0)
    assert len(out) == 1 and isinstance(out[0], Fail) and out[0].ctx == "r"
    assert out[0].code is ErrorCode.UNAVAILABLE
    # asked again at the next tick, and the requests waiting meanwhile are answered then
    assert core.handle(Request("s", gm.ListGroups()), 1.5)[0].token == ask.token  # type: ignore[union-attr]
    out = core.handle(PeerReplied(ask.token, NodeIdReply(node_id=b"\x05" * 32)), 2.0)
    out += core.flush(2.0)
    replies = [a for a in out if isinstance(a, Reply)]
    assert [r.ctx for r in replies] == ["s"] and isinstance(replies[0].body, gm.ListReply)
    pulls = [a for a in out if isinstance(a, Call) and a.role == "router"]
    assert len(pulls) == 1  # and it reads what its inbox holds


# -- the app API's edges ----------------------------------------------------------------------

def test_send_refuses_non_members_missing_and_oversize_texts() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b",))
    r = sim.call("c", gm.Send(group_id=gid), (b"x",))
    assert isinstance(r, Fail) and r.code is ErrorCode.INVALID
    for blobs in ((), (b"x", b"y")):
        r = sim.call("b", gm.Send(group_id=gid), blobs)
        assert isinstance(r, Fail) and r.code is ErrorCode.INVALID
    r = sim.call("b", gm.Send(group_id=gid), (b"x" * (16 * 1024 + 1),))
    assert isinstance(r, Fail) and r.code is ErrorCode.TOO_LARGE
    sim.send("b", gid, b"x" * 16 * 1024)  # the limit itself is fine
    sim.quiet()
    assert sim.nodes["a"].texts(gid) == [b"x" * 16 * 1024]


def test_a_send_fails_when_crypto_cannot_seal() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    sim.crypto_down.add("b")
    ctx = sim.send_nowait("b", gid, b"x")
    sim.run()
    assert ctx not in sim.nodes["b"].replies  # waits for crypto
    [(_, call)] = sim.unanswered
    sim.feed("b", PeerFailed(call.token, ErrorCode.PEER_TIMEOUT, "no crypto"))
    sim.run()
    r = sim.nodes["b"].replies[ctx]
    assert isinstance(r, Fail) and r.code is ErrorCode.PEER_TIMEOUT
    assert sim.nodes["b"].c.store.outbox(gid) == [] and sim.sent_by("b", gid)[-1][1] != "msg"


def test_history_pages_through_the_log() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    for i in range(7):
        sim.send("a" if i % 2 else "b", gid, b"m%d" % i)
    sim.quiet()
    page = sim.ok("b", gm.History(group_id=gid, limit=3))
    assert [m.text for m in page.messages] == ["m0", "m1", "m2"]
    assert page.seq == sim.nodes["b"].group(gid).seq  # type: ignore[union-attr]
    page = sim.ok("b", gm.History(group_id=gid, after=page.messages[-1].seq, limit=3))
    assert [m.text for m in page.messages] == ["m3", "m4", "m5"]
    assert [sim.name_of(m.sender) for m in page.messages] == ["a", "b", "a"]
    page = sim.ok("b", gm.History(group_id=gid, after=page.messages[-1].seq))
    assert [m.text for m in page.messages] == ["m6"]
    assert sim.ok("b", gm.History(group_id=gid, after=page.messages[-1].seq)).messages == []
    r = sim.call("b", gm.History(group_id="gnone"))
    assert isinstance(r, Fail) and r.code is ErrorCode.INVALID


def test_join_refuses_a_malformed_group_id_and_is_done_for_a_member() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    r = sim.call("b", gm.Join(group_id="Not_An_Id", hub=sim.nodes["a"].id))
    assert isinstance(r, Fail) and r.code is ErrorCode.INVALID
    before = len(sim.nodes["b"].sent)
    assert isinstance(sim.ok("b", gm.Join(group_id=gid)), gm.Done)
    assert len(sim.nodes["b"].sent) == before  # already in: nothing sent


def test_a_create_delivered_twice_gets_the_group_again_another_creator_is_refused() -> None:
    sim = GroupsSim("a", "b", "h")
    gid = sim.create("a", hub="h")
    [(_, create)] = [(s, p) for s, p in sim.delivered("h", "create")]
    sim.inject("a", "h", "create", gid, *create.args)  # the same request again
    assert sim.delivered("a", "state", gid)[-1][0] == "h"
    assert len(sim.delivered("a", "state", gid)) == 2
    assert sim.nodes["h"].stats.get("refused_create", 0) == 0
    sim.inject("b", "h", "create", gid, *create.args)  # someone else, same id
    assert sim.nodes["h"].stats["refused_create"] == 1
    assert sim.names(gid, "h") == {"a"}


def test_a_hub_hosts_at_most_max_hosted_groups_for_others() -> None:
    sim = GroupsSim("a", "h", max_hosted=2)
    for i in range(3):
        sim.ok("a", gm.Create(name=f"g{i}", hub=sim.nodes["h"].id))
        sim.run()
    assert len(sim.nodes["h"].c.ctx.groups) == 2
    assert sim.nodes["h"].stats["refused_create"] == 1
    assert len(sim.ok("a", gm.ListGroups()).groups) == 2


def test_a_node_keeps_at_most_max_invites_invitations() -> None:
    sim = GroupsSim("a", "b", max_invites=2)
    for i in range(3):
        sim.create("a", f"g{i}", members=("b",), join=False)
    assert len(sim.ok("b", gm.ListGroups()).invites) == 2
    assert sim.nodes["b"].stats["invites_refused"] == 1


def test_expired_invitations_make_room_for_new_ones() -> None:
    sim = GroupsSim("a", "b", max_invites=1, invite_ttl_s=60)
    sim.create("a", "old", members=("b",), join=False)
    sim.run(61)
    new = sim.create("a", "new", members=("b",), join=False)
    assert [i.group_id for i in sim.ok("b", gm.ListGroups()).invites] == [new]
    assert sim.nodes["b"].stats.get("invites_refused", 0) == 0
    assert sim.nodes["a"].c.store.db.execute("SELECT count(*) FROM invited").fetchone()[0] == 1


def test_an_invitation_lasts_no_longer_than_this_node_allows() -> None:
    sim = GroupsSim("a", "b", invite_ttl_s=60)
    sim.inject("a", "b", "invited", "glong", "long", sim.nodes["a"].id,
               int(sim.wall * 1000) + 10**9)
    [inv] = sim.ok("b", gm.ListGroups()).invites
    assert inv.expires_ms == int(sim.wall * 1000) + 60_000
    sim.inject("a", "b", "invited", "gpast", "past", sim.nodes["a"].id, 5)
    assert sim.nodes["b"].stats["invites_refused"] == 1


def test_the_log_is_kept_history_s_and_an_unordered_message_then_fails() -> None:
    sim = GroupsSim("a", "b", history_s=100.0, takeover_after_s=10_000.0)
    gid = sim.create("a", members=("b",))
    sim.send("b", gid, b"old")
    sim.quiet()
    sim.partition("a")
    mid = sim.send("b", gid, b"never ordered")
    sim.run(101)
    for n in "ab":
        assert [e.kind for e in sim.nodes[n].c.store.entries_after(gid, 0, 10)] == [], n
    assert sim.ok("b", gm.History(group_id=gid)).messages == []
    [st] = [s for s in sim.nodes["b"].of(gm.SendStatus) if s.status == "failed"]
    assert st.id == mid and sim.nodes["b"].c.store.outbox(gid) == []


@pytest.mark.parametrize("code", [ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE,
                                  ErrorCode.OVERLOADED])
def test_a_router_send_that_fails_for_now_is_tried_again(code: ErrorCode) -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    refused: list[bytes] = []

    def once(src: str, dst: str, raw: bytes) -> ErrorCode | None:
        if src == "b" and not refused:
            refused.append(raw)
            return code
        return None

    sim.refuse_send = once
    sim.send("b", gid, b"again")
    assert sim.nodes["a"].texts(gid) == []
    sim.run(1.5)
    assert sim.nodes["a"].texts(gid) == [b"again"]
    assert sim.nodes["b"].stats["sends_failed"] == 1


def test_a_router_send_refused_for_good_or_with_a_lifetime_is_not_tried_again() -> None:
    sim = GroupsSim("a", "b")
    gid = sim.create("a", members=("b",))
    sim.refuse_send = lambda src, dst, raw: ErrorCode.INVALID if src == "b" else None
    sim.send("b", gid, b"refused")
    sim.run(3)
    assert sim.sent_by("b", gid).count(("a", "msg")) == 1  # (the outbox has it: resend_s)
    sim.refuse_send = None
    # a beat (it has a lifetime) that fails for now is not tried again either
    first = successors(sim, gid)[0]
    sim.refuse_send = lambda src, dst, raw: ErrorCode.UNAVAILABLE if src == "a" else None
    sim.run(sim.settings.beat_s)
    sim.refuse_send = None
    beats = sim.sent_by("a", gid).count((first, "beat"))
    assert beats >= 1
    sim.run(1.5)
    assert sim.sent_by("a", gid).count((first, "beat")) == beats


def test_history_pages_go_on_past_messages_this_node_cannot_read() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    for i in range(5):
        sim.send("b", gid, f"m{i}".encode())
    sim.run()
    c = sim.nodes["c"]
    c.c.ctx.store.forget_keys(gid, sim.nodes["b"].id)  # as if B's keys never came
    page = sim.ok("c", gm.History(group_id=gid, after=0, limit=3))
    assert page.messages == [] and 0 < page.last < page.seq  # not the end: go on from last
    rest = sim.ok("c", gm.History(group_id=gid, after=page.last, limit=3))
    assert rest.last == rest.seq


def test_the_hub_change_event_names_the_entry_that_opened_the_term() -> None:
    sim = GroupsSim("a", "b", "c")
    gid = sim.create("a", members=("b", "c"))
    first = successors(sim, gid)[0]
    sim.partition("a")
    sim.until(lambda: sim.nodes[first].group(gid).term == 2, 120)  # type: ignore[union-attr]
    sim.run(5)
    other = "c" if first == "b" else "b"
    [ev] = [e for e in sim.nodes[other].of(gm.GroupChanged) if e.change == "hub"]
    entry = [e for e in sim.nodes[other].c.ctx.store.entries_after(gid, 0, 100)
             if e.kind == "hub"]
    assert ev.seq == entry[0].seq and ev.term == 2
