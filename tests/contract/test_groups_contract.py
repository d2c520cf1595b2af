"""Contract of the groups role: the generic bus contract, then the role's behaviour with its
router and crypto played by the suite (tests/contract/groups_side.py).

The groups service under test runs as a real process; everything it says to other nodes
leaves through ``router.send`` (``groups=True``) and everything from them arrives as a
``router.group_envelope`` event backed by ``router.inbox`` (``groups=True``), so the suite
plays the other nodes (members, a hub, strangers) by putting payloads of
services/groups/wire.py in the inbox it serves and reading what the service sends. Checks
that something did *not* happen are closed by a later payload whose effect is awaited: the
service handles its inbox in order. docs/contract.md lists what is required.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from services.crypto.core import Identity
from services.groups import wire
from shared.bus import socket
from shared.envelope import GroupCiphertext
from shared.wire import Header, RemoteError, decode, encode
from shared.wire.messages import Message
from shared.wire.messages import crypto as cm
from shared.wire.messages import groups as gm
from shared.wire.messages.sys import Heartbeat, Ping, PingReply, Status, StatusReply

from .generic import RoleContract, only_crypto_opened_the_key
from .groups_side import NODE, Peers, payload, wait_for
from .harness import NODE_TOML, Node, prepare

ROLE = "groups"
GROUPS_TOML = NODE_TOML + """
[groups]
resend_s = 1.0
takeover_after_s = 600
"""
"""Messages the hub has not ordered go again after 1 s (the default is 10 s, which the
deadlines below also allow); failover stays out of the way (it is not checked here)."""
GID = re.compile(r"^[0-9a-z-]{1,64}$")
WAIT_S = 10.0
RESEND_WAIT_S = 20.0


class TestGroupsContract(RoleContract):
    role = ROLE


# -- the other nodes ---------------------------------------------------------------------------

class Other:
    """Another node's groups service, played by the test: its identity and sender key."""

    def __init__(self, seed_byte: int) -> None:
        self.identity = Identity(bytes([seed_byte]) * 32, os.urandom)
        self.id = self.identity.node_id
        self.key = os.urandom(32)
        self.epoch = 1

    def ciphertext(self, gid: str, text: bytes) -> bytes:
        return self.identity.group_seal(gid, self.key, text).encode()

    def msg(self, gid: str, text: bytes, ct: bytes | None = None) -> tuple[bytes, bytes]:
        """(message id, the ``msg`` payload to the hub)."""
        mid = os.urandom(16)
        return mid, payload("msg", gid, mid, self.epoch, ct or self.ciphertext(gid, text))


A, B, C = Other(0x51), Other(0x52), Other(0x53)
"""A and B become members; C is a stranger."""


# -- the node under test -----------------------------------------------------------------------

class Bench:
    """The groups service under test, its played router and crypto, and a client."""

    def __init__(self, node: Node, peers: Peers) -> None:
        self.node = node
        self.peers = peers

    def start(self) -> None:
        subscribed, asked = self.peers.subscribed(), len(self.peers.inbox_asks)
        self.node.start(ROLE)
        wait_for(lambda: self.peers.subscribed() > subscribed, WAIT_S,
                 "the groups service subscribes to router.group_envelope")
        wait_for(lambda: any(isinstance(b, cm.NodeId) for b, _ in self.peers.crypto_asks),
                 WAIT_S, "the groups service asks crypto.node_id")
        wait_for(lambda: len(self.peers.inbox_asks) > asked, WAIT_S,
                 "the groups service reads router.inbox (groups=True) at start")
        self.settle()

    def kill(self) -> None:
        """kill -9: nothing is flushed, nothing is closed."""
        p = self.node.proc(ROLE)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()

    def settle(self) -> None:
        """Two round trips: what reached the service before has been read (it reads
        requests and replies in the same pass)."""
        self.status()
        self.status()

    def call(self, body: Message, *blobs: bytes) -> tuple[Message, tuple[bytes, ...]]:
        with self.node.client(timeout_s=WAIT_S) as c:
            msg = c.call(ROLE, body, blobs)
        return msg.body, msg.blobs

    def error(self, body: Message, *blobs: bytes) -> RemoteError:
        with pytest.raises(RemoteError) as info:
            self.call(body, *blobs)
        return info.value

    def status(self) -> StatusReply:
        reply, _ = self.call(Status())
        assert isinstance(reply, StatusReply)
        return reply

    def counter(self, name: str) -> int:
        return self.status().counters.get(name, 0)

    def groups(self) -> gm.ListReply:
        reply, _ = self.call(gm.ListGroups())
        assert isinstance(reply, gm.ListReply)
        return reply

    def group(self, gid: str) -> gm.GroupInfo:
        found = [g for g in self.groups().groups if g.group_id == gid]
        assert len(found) == 1, f"group {gid} in groups.list"
        return found[0]

    # -- building groups ----------------------------------------------------------------------

    def create(self, members: tuple[Other, ...] = (), hub: Other | None = None,
               name: str = "friends") -> str:
        reply, _ = self.call(gm.Create(name=name, members=[m.id for m in members],
                                       hub=hub.id if hub else None))
        assert isinstance(reply, gm.CreateReply)
        return reply.group_id

    def state_to(self, who: Other, gid: str) -> wire.Snapshot:
        """Wait for the hub's ``state`` payload admitting ``who``."""
        found = wait_for(lambda: [p for _, p in self.peers.payloads("state", who.id)
                                  if p.group_id == gid], WAIT_S,
                         f"a state payload to {who.id.hex()[:8]} for {gid}")
        snap = found[-1].args[0]
        assert isinstance(snap, wire.Snapshot)
        return snap

    def hosted(self, joined: tuple[Other, ...] = (A, B), invited: tuple[Other, ...] = ()
               ) -> str:
        """A group hosted by this node, with ``joined`` admitted and ``invited`` invited."""
        gid = self.create(members=joined + invited)
        for m in joined:
            self.peers.deliver(m.id, payload("join", gid))
            self.state_to(m, gid)
        return gid

    def ordered(self, to: Other, gid: str, mid: bytes) -> wire.Entry:
        """Wait for the ``msg`` entry of ``mid`` in what the hub sent ``to``."""
        found = wait_for(lambda: [e for e in self.peers.entries(to.id, gid)
                                  if e.kind == "msg" and e.args[1] == mid], WAIT_S,
                         "the message is ordered and sent to the member")
        return found[0]

    def joined_under(self, hub: Other, name: str = "remote") -> str:
        """A group this node created on another node's hub (``hub``, played by the test)."""
        gid = self.create(hub=hub, name=name)
        ask = wait_for(lambda: [p for _, p in self.peers.payloads("create", hub.id)
                                if p.group_id == gid], WAIT_S,
                       "groups.create with a remote hub sends it a create payload")[0]
        assert ask.args[0] == name
        now = int(time.time() * 1000)
        snap = wire.Snapshot(1, 1, name, True, 50, now, ((NODE, "admin", now),))
        self.peers.deliver(hub.id, payload("state", gid, snap.pack()))
        wait_for(lambda: any(g.group_id == gid and g.member for g in self.groups().groups),
                 WAIT_S, "the hub's state makes the group appear")
        return gid


class Events:
    """The service's events, from a subscription known to be live (a heartbeat came)."""

    def __init__(self, node: Node) -> None:
        self.sock = socket(zmq.Context.instance(), zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(node.endpoints[ROLE].events)
        self.got: list[tuple[Message, tuple[bytes, ...]]] = []
        self.raw: list[bytes] = []
        self.heartbeats(1)

    def pump(self, wait_ms: int = 0) -> None:
        while self.sock.poll(wait_ms):
            wait_ms = 0
            frames = self.sock.recv_multipart()
            self.raw.append(b"".join(frames))
            msg = decode(frames[1:])
            self.got.append((msg.body, msg.blobs))

    def heartbeats(self, n: int) -> None:
        """Wait for ``n`` more heartbeats: the loop has come round that often."""
        start = sum(isinstance(b, Heartbeat) for b, _ in self.got)

        def enough() -> bool:
            self.pump(50)
            return sum(isinstance(b, Heartbeat) for b, _ in self.got) >= start + n
        wait_for(enough, WAIT_S, f"{n} sys.heartbeat from the groups service")

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture()
def bench(template: str) -> Iterator[Bench]:
    if "{role}" not in template:
        pytest.skip("the suite plays the router and crypto, so the groups role must run alone "
                    "(a command template with {role})")
    node = prepare(template, node_toml=GROUPS_TOML)
    node.watch_key()  # the suite plays crypto: nothing in this node may open the key file
    peers = Peers(node)
    b = Bench(node, peers)
    try:
        b.start()
        yield b
        assert not peers.errors, peers.errors
    finally:
        node.stop()
        peers.close()
        shutil.rmtree(node.data, ignore_errors=True)


# -- the checks --------------------------------------------------------------------------------

class TestGroupsRole:
    """What the groups role does, seen from its router, its crypto and the other nodes."""

    # start-up

    def test_start_asks_crypto_for_the_node_id_subscribes_and_reads_the_group_inbox(
            self, bench: Bench) -> None:
        first = bench.peers.inbox_asks[0]
        assert first.groups and first.after == 0
        assert b"\x01" + b"router.group_envelope" in bench.peers.subscriptions

    # the app API

    def test_create_with_this_node_as_hub_lists_the_group_with_this_node_as_admin(
            self, bench: Bench) -> None:
        gid = bench.create(name="friends")
        assert GID.match(gid), gid
        g = bench.group(gid)
        assert (g.name, g.hub, g.member, g.invite_only) == ("friends", NODE, True, True)
        assert [(m.node_id, m.role) for m in g.members] == [(NODE, "admin")]
        assert bench.create(name="friends") != gid, "each group gets its own id"

    def test_create_sends_an_invitation_to_each_invitee_through_router_send(
            self, bench: Bench) -> None:
        gid = bench.create(members=(A, B), name="trip")
        found = wait_for(lambda: len([p for _, p in bench.peers.payloads("invited")
                                      if p.group_id == gid]) >= 2, WAIT_S,
                         "an invited payload to each invitee")
        assert found
        sent = [s for s in bench.peers.sent if s.kind() == "invited"]
        assert sorted(s.to for s in sent) == sorted([A.id, B.id])
        assert all(s.groups and s.encrypt for s in sent), "group payloads, sealed"
        for s in sent:
            name, inviter, expires_ms = s.payload.args
            assert (name, inviter) == ("trip", NODE) and expires_ms > time.time() * 1000
        assert {m.node_id for m in bench.group(gid).members} == {NODE}, "invited, not members"

    def test_send_to_a_group_this_node_is_not_in_fails_invalid(self, bench: Bench) -> None:
        err = bench.error(gm.Send(group_id="nosuchgroup"), b"hello")
        assert (err.code, err.name) == (422, "invalid"), err

    def test_send_checks_its_text_16_kib_is_accepted_more_is_too_large(
            self, bench: Bench) -> None:
        gid = bench.create()
        err = bench.error(gm.Send(group_id=gid), b"x" * (16 * 1024 + 1))
        assert (err.code, err.name) == (413, "too_large"), err
        reply, _ = bench.call(gm.Send(group_id=gid), b"x" * (16 * 1024))
        assert isinstance(reply, gm.SendReply) and len(reply.id) == 16
        err = bench.error(gm.Send(group_id=gid))
        assert (err.code, err.name) == (422, "invalid"), "the text blob is required"

    def test_requests_about_a_group_fail_with_the_documented_errors(
            self, bench: Bench) -> None:
        gid = bench.hosted(joined=(A,))
        cases: list[tuple[Message, tuple[int, str]]] = [
            (gm.Leave(group_id=gid), (520, "failed")),  # the last admin, with a member left
            (gm.Kick(group_id=gid, node_id=C.id), (422, "invalid")),  # not a member
            (gm.SetRole(group_id=gid, node_id=C.id, role="admin"), (422, "invalid")),
            (gm.InviteMember(group_id=gid, node_id=A.id), (422, "invalid")),  # a member already
            (gm.Kick(group_id="nosuchgroup", node_id=A.id), (422, "invalid")),
            (gm.Leave(group_id="nosuchgroup"), (422, "invalid")),
            (gm.History(group_id="nosuchgroup"), (422, "invalid")),
            (gm.Join(group_id="nosuchgroup"), (422, "invalid")),  # no invitation, no hub
            (gm.Join(group_id="Not-A-Group-Id", hub=A.id), (422, "invalid")),
        ]
        for body, expected in cases:
            err = bench.error(body)
            assert (err.code, err.name) == expected, (body, err)
        assert {m.node_id for m in bench.group(gid).members} == {NODE, A.id}

    def test_an_invitation_is_listed_and_joining_asks_the_hub_that_sent_it(
            self, bench: Bench) -> None:
        hub, gid = A, "g-invited-here"
        expires = int(time.time() * 1000) + 60_000
        bench.peers.deliver(hub.id, payload("invited", gid, "club", B.id, expires))
        invites = wait_for(lambda: bench.groups().invites, WAIT_S, "the invitation is listed")
        assert [(i.group_id, i.name, i.hub, i.inviter) for i in invites] == [
            (gid, "club", hub.id, B.id)]
        done, _ = bench.call(gm.Join(group_id=gid))
        assert isinstance(done, gm.Done)
        wait_for(lambda: [p for _, p in bench.peers.payloads("join", hub.id)
                          if p.group_id == gid], WAIT_S, "a join payload to the hub")
        now = int(time.time() * 1000)
        snap = wire.Snapshot(1, 2, "club", True, 50, now, ((B.id, "admin", now),
                                                          (NODE, "member", now)))
        bench.peers.deliver(C.id, payload("state", gid, snap.pack()))  # not the hub asked
        bench.peers.deliver(hub.id, payload("state", gid, snap.pack()))
        g = wait_for(lambda: [g for g in bench.groups().groups if g.group_id == gid],
                     WAIT_S, "the hub's state makes this node a member")[0]
        assert (g.hub, g.member, g.seq) == (hub.id, True, 2)
        assert bench.groups().invites == [], "an accepted invitation is gone"
        # a plain member may not do what admins do
        for body in (gm.Kick(group_id=gid, node_id=B.id),
                     gm.SetRole(group_id=gid, node_id=B.id, role="member"),
                     gm.InviteMember(group_id=gid, node_id=C.id)):
            err = bench.error(body)
            assert (err.code, err.name) == (520, "failed"), (body, err)

    # the hub

    def test_a_join_from_an_invited_node_is_ordered_and_sent_to_the_members(
            self, bench: Bench) -> None:
        gid = bench.create(members=(A, B))
        created = bench.group(gid).seq
        bench.peers.deliver(A.id, payload("join", gid))
        snap_a = bench.state_to(A, gid)
        assert snap_a.seq == created + 1
        assert {n for n, _, _ in snap_a.members} == {NODE, A.id}
        bench.peers.deliver(B.id, payload("join", gid))
        snap_b = bench.state_to(B, gid)
        assert snap_b.seq == created + 2
        joined = wait_for(lambda: [e for e in bench.peers.entries(A.id, gid)
                                   if e.kind == "joined"], WAIT_S,
                          "the joined entry is sent to the members")
        assert [(e.seq, e.args) for e in joined] == [(created + 2, (B.id,))]
        g = bench.group(gid)
        assert {m.node_id for m in g.members} == {NODE, A.id, B.id} and g.seq == created + 2

    def test_a_join_to_an_open_group_needs_no_invitation(self, bench: Bench) -> None:
        reply, _ = bench.call(gm.Create(name="open", invite_only=False))
        assert isinstance(reply, gm.CreateReply)
        gid = reply.group_id
        assert bench.group(gid).invite_only is False
        bench.peers.deliver(C.id, payload("join", gid))
        assert C.id in {n for n, _, _ in bench.state_to(C, gid).members}

    def test_a_kicked_member_is_told_and_its_messages_are_refused_afterwards(
            self, bench: Bench) -> None:
        gid = bench.hosted(joined=(A, B))
        done, _ = bench.call(gm.Kick(group_id=gid, node_id=A.id))
        assert isinstance(done, gm.Done)
        def kicked(to: Other) -> list[wire.Entry]:
            return [e for e in bench.peers.entries(to.id, gid)
                    if e.kind == "kicked" and e.args[0] == A.id]
        wait_for(lambda: kicked(A) and kicked(B), WAIT_S,
                 "the kicked entry goes to the members and to the one kicked")
        assert {m.node_id for m in bench.group(gid).members} == {NODE, B.id}
        _, late = A.msg(gid, b"still here?")
        bench.peers.deliver(A.id, late)
        wait_for(lambda: [p for _, p in bench.peers.payloads("refused", A.id)
                          if p.args[0] == "msg"], WAIT_S, "a refused payload to the kicked node")
        assert not [e for e in bench.peers.entries(B.id, gid) if e.kind == "msg"]

    def test_a_join_from_a_node_not_invited_is_refused_and_not_ordered(
            self, bench: Bench) -> None:
        gid = bench.create(members=(A,))
        created = bench.group(gid).seq
        bench.peers.deliver(C.id, payload("join", gid))
        refused = wait_for(lambda: bench.peers.payloads("refused", C.id), WAIT_S,
                           "a refused payload to the node that was not invited")
        assert refused[0][1].group_id == gid and refused[0][1].args[0] == "join"
        bench.peers.deliver(A.id, payload("join", gid))  # closes the check
        snap = bench.state_to(A, gid)
        assert snap.seq == created + 1, "the refused join took no place in the log"
        assert C.id not in {n for n, _, _ in snap.members}
        assert not bench.peers.payloads("state", C.id)
        assert C.id not in {m.node_id for m in bench.group(gid).members}

    def test_messages_from_a_member_are_ordered_1_2_3_and_sent_to_every_member(
            self, bench: Bench) -> None:
        gid = bench.hosted()
        base = bench.group(gid).seq
        sent = [A.msg(gid, text) for text in (b"one", b"two", b"three")]
        for _, raw in sent:
            bench.peers.deliver(A.id, raw)
        for member in (A, B):  # the sender learns its message's place too
            entries = [bench.ordered(member, gid, mid) for mid, _ in sent]
            assert [e.seq for e in entries] == [base + 1, base + 2, base + 3]
            for e, (mid, raw) in zip(entries, sent, strict=True):
                assert e.args[0] == A.id and e.args[1] == mid
                assert e.args[3] == wire.decode(raw).args[2], "the sender's ciphertext as is"
            msgs = [e for e in bench.peers.entries(member.id, gid) if e.kind == "msg"]
            assert [e.seq for e in msgs] == sorted(e.seq for e in msgs), "sent in order"
        assert bench.group(gid).seq == base + 3
        assert not bench.peers.payloads("entries", C.id)

    def test_a_message_sent_again_is_ordered_once_and_the_sender_learns_its_place_again(
            self, bench: Bench) -> None:
        gid = bench.hosted(joined=(A, B))
        mid, raw = A.msg(gid, b"once")
        bench.peers.deliver(A.id, raw)
        first = bench.ordered(A, gid, mid)
        bench.peers.deliver(A.id, raw)  # its sender did not hear back: it sends it again
        wait_for(lambda: len([e for e in bench.peers.entries(A.id, gid)
                              if e.kind == "msg" and e.args[1] == mid]) >= 2, WAIT_S,
                 "the sender is told the message's place again")
        again = [e for e in bench.peers.entries(A.id, gid) if e.kind == "msg"
                 and e.args[1] == mid]
        assert [e.seq for e in again] == [first.seq, first.seq]
        closing, closer = A.msg(gid, b"next")
        bench.peers.deliver(A.id, closer)
        assert bench.ordered(B, gid, closing).seq == first.seq + 1
        assert [e.seq for e in bench.peers.entries(B.id, gid) if e.kind == "msg"] == [
            first.seq, first.seq + 1], "the others get it once"

    def test_a_message_from_a_non_member_is_refused_not_ordered_and_counted(
            self, bench: Bench) -> None:
        gid = bench.hosted(joined=(A, B))
        base = bench.group(gid).seq
        before = bench.counter("refused_msg")
        stranger_mid, stranger = C.msg(gid, b"let me in")
        bench.peers.deliver(C.id, stranger)
        mid, raw = A.msg(gid, b"after it")
        bench.peers.deliver(A.id, raw)
        e = bench.ordered(B, gid, mid)
        assert e.seq == base + 1, "the stranger's message took no place in the log"
        for member in (A, B):
            assert not [x for x in bench.peers.entries(member.id, gid)
                        if x.kind == "msg" and x.args[1] == stranger_mid]
        assert bench.counter("refused_msg") == before + 1
        assert [p.args[0] for _, p in bench.peers.payloads("refused", C.id)] == ["msg"]

    @pytest.mark.parametrize("forgery", ["bad_signature", "another_senders_ciphertext",
                                         "another_groups_ciphertext"])
    def test_a_forged_message_from_a_member_is_not_ordered_and_counted_rejected_forged(
            self, bench: Bench, forgery: str) -> None:
        gid = bench.hosted(joined=(A, B))
        base = bench.group(gid).seq
        before = bench.counter("rejected_forged")
        genuine = GroupCiphertext.decode(A.ciphertext(gid, b"mine"))
        ct = {
            "bad_signature": GroupCiphertext(
                genuine.group_id, genuine.sender, genuine.nonce, genuine.ciphertext,
                bytes([genuine.signature[0] ^ 1]) + genuine.signature[1:]).encode(),
            "another_senders_ciphertext": B.ciphertext(gid, b"B said this"),
            "another_groups_ciphertext": A.ciphertext("othergroup", b"elsewhere"),
        }[forgery]
        forged_mid, forged = A.msg(gid, b"", ct=ct)
        bench.peers.deliver(A.id, forged)
        mid, raw = A.msg(gid, b"genuine")
        bench.peers.deliver(A.id, raw)
        assert bench.ordered(B, gid, mid).seq == base + 1, "the forgery took no place"
        assert not [x for x in bench.peers.entries(B.id, gid) if x.kind == "msg"
                    and x.args[1] == forged_mid]
        assert bench.counter("rejected_forged") == before + 1

    def test_garbage_payloads_are_counted_rejected_malformed_and_the_service_keeps_serving(
            self, bench: Bench) -> None:
        gid = bench.create(members=(A,))
        before = bench.counter("rejected_malformed")
        mid = os.urandom(16)
        garbage = [
            b"", os.urandom(50), b"\xc1", msgpack.packb(7), msgpack.packb({"join": gid}),
            msgpack.packb(["join"]), msgpack.packb(["nosuch", gid]),
            msgpack.packb(["join", "Not-A-Group-Id"]), msgpack.packb(["join", gid, "extra"]),
            msgpack.packb(["invite", gid, b"\x00" * 31]),
            msgpack.packb(["msg", gid, mid, -1, b"ct"]), msgpack.packb(["msg", gid, mid[:8], 1,
                                                                       b"ct"]),
            msgpack.packb(["entries", gid, 1, 1, [[0, 1, 1, "joined", A.id]]]),
            msgpack.packb(["state", gid, [1, 2, 3]]),
            msgpack.packb(["msg", gid, mid, 1, b"x" * (wire.MAX_CIPHERTEXT + 1)]),
            b"\x92" + b"\xa4join",  # truncated
        ]
        for raw in garbage:
            bench.peers.deliver(A.id, raw)
        bench.peers.deliver(A.id, payload("join", gid))
        bench.state_to(A, gid)
        assert bench.counter("rejected_malformed") == before + len(garbage)
        with bench.node.client() as c:
            assert isinstance(c.request(ROLE, Ping()), PingReply)
        assert {m.node_id for m in bench.group(gid).members} == {NODE, A.id}

    def test_a_members_messages_are_published_as_groups_message_in_group_order(
            self, bench: Bench) -> None:
        gid = bench.hosted(joined=(A, B))
        events = Events(bench.node)
        try:
            bench.peers.deliver(A.id, payload("key", gid, A.epoch, A.key))
            base = bench.group(gid).seq
            sent = [A.msg(gid, text) for text in (b"one", b"two", b"three")]
            for _, raw in sent:
                bench.peers.deliver(A.id, raw)

            def shown() -> list[tuple[gm.MessageReceived, tuple[bytes, ...]]]:
                events.pump(50)
                got = [(b, blobs) for b, blobs in events.got
                       if isinstance(b, gm.MessageReceived)]
                return got if len(got) >= 3 else []
            got = wait_for(shown, WAIT_S, "three groups.message events")
            assert [(b.group_id, b.seq, b.id, b.sender, blobs) for b, blobs in got] == [
                (gid, base + i + 1, mid, A.id, (text,))
                for i, ((mid, _), text) in enumerate(zip(sent, (b"one", b"two", b"three"),
                                                         strict=True))]
        finally:
            events.close()

    # keys

    def test_sender_keys_go_sealed_through_router_send_to_members_only(
            self, bench: Bench) -> None:
        events = Events(bench.node)
        try:
            gid = bench.hosted(joined=(A, B), invited=(C,))
            given = wait_for(lambda: {to: p for to, p in bench.peers.payloads("key")
                                      if p.group_id == gid}.keys() >= {A.id, B.id},
                             WAIT_S, "this node's sender key is given to each member")
            assert given
            keys = [s for s in bench.peers.sent if s.kind() == "key"]
            assert {s.to for s in keys} == {A.id, B.id}, "to members only"
            assert all(s.groups and s.encrypt for s in keys), "sealed by the router"
            epoch, key = keys[0].payload.args
            assert all(s.payload.args == (epoch, key) for s in keys)
            reply, _ = bench.call(gm.Send(group_id=gid), b"for members")
            assert isinstance(reply, gm.SendReply)
            e = bench.ordered(B, gid, reply.id)
            assert e.args[2] == epoch
            _, text = Identity.group_open(key, e.args[3], gid, NODE)
            assert text == b"for members", "the key given is the key the messages use"

            bench.peers.deliver(A.id, payload("leave", gid))  # A leaves: a new key, not for A
            fresh = wait_for(lambda: [s for s in bench.peers.sent if s.kind() == "key"
                                      and s.payload.args[0] > epoch], WAIT_S,
                             "a new sender key after a member left")
            assert {s.to for s in fresh} == {B.id} and all(s.encrypt for s in fresh)
            new_key = fresh[0].payload.args[1]
            assert new_key != key

            events.pump(100)
            leaks = [s for s in bench.peers.sent if s.kind() != "key"
                     and (key in s.raw or new_key in s.raw)]
            assert not leaks, "a sender key only ever travels in a key payload"
            assert len(events.got) > 1
            assert not [r for r in events.raw if key in r or new_key in r], \
                "no event carries a sender key"
        finally:
            events.close()

    # the inbox

    def test_the_inbox_cursor_survives_a_kill_and_nothing_is_handled_twice(
            self, bench: Bench) -> None:
        gid = bench.hosted(joined=(A, B))
        mid, raw = A.msg(gid, b"before")
        last = bench.peers.deliver(A.id, raw)
        first = bench.ordered(B, gid, mid)
        before = len(bench.peers.sent)
        bench.kill()
        bench.start()
        ask = bench.peers.inbox_asks[-1]
        assert ask.groups and ask.after == last, "it reads the inbox after the last it handled"
        mid2, raw2 = A.msg(gid, b"after")
        bench.peers.deliver(A.id, raw2)
        e = bench.ordered(B, gid, mid2)
        bench.ordered(A, gid, mid2)
        again = [s for s in bench.peers.sent[before:] if s.kind() != "beat"]
        assert {s.kind() for s in again} == {"entries"}, [s.kind() for s in again]
        assert {x.args[1] for s in again for x in s.payload.args[2]} == {mid2}, \
            "nothing handled before the kill is handled again"
        assert e.seq == first.seq + 1 == bench.group(gid).seq, "the log goes on where it was"

    def test_a_missed_envelope_is_read_from_the_inbox_in_order(self, bench: Bench) -> None:
        gid = bench.create(members=(A, B))
        bench.peers.store_only(A.id, payload("join", gid))  # its event was missed
        bench.peers.skip_seq(2)  # the apps' messages take seqs too
        bench.peers.deliver(B.id, payload("join", gid))
        snap_b = bench.state_to(B, gid)
        snap_a = bench.state_to(A, gid)
        assert snap_b.seq == snap_a.seq + 1, "handled in inbox order"

    def test_a_router_restart_makes_it_read_the_inbox_again(self, bench: Bench) -> None:
        gid = bench.create(members=(A,))
        bench.peers.heartbeat(b"router-1")
        bench.settle()
        asked = len(bench.peers.inbox_asks)
        bench.peers.store_only(A.id, payload("join", gid))  # announced by the old router
        bench.peers.heartbeat(b"router-2")
        wait_for(lambda: len(bench.peers.inbox_asks) > asked, WAIT_S,
                 "router.inbox again after the router's incarnation changed")
        bench.state_to(A, gid)

    def test_an_envelope_announced_during_an_inbox_read_is_not_left_behind(
            self, bench: Bench) -> None:
        gid = bench.create(members=(A, B))
        events = Events(bench.node)
        try:
            bench.peers.hold_inbox = True
            asked = len(bench.peers.inbox_asks)
            bench.peers.skip_seq()  # a gap: the service reads the inbox
            bench.peers.deliver(A.id, payload("join", gid))
            wait_for(lambda: len(bench.peers.inbox_asks) > asked, WAIT_S,
                     "a gap makes the service read the inbox")
            bench.peers.deliver(B.id, payload("join", gid))  # arrives after the read's answer
            events.heartbeats(2)  # ... and has been read before it
            bench.peers.release_inbox()
            bench.state_to(A, gid)
            bench.state_to(B, gid)
        finally:
            events.close()

    # the member side

    def test_a_member_applies_only_its_hubs_entries_and_in_their_order(
            self, bench: Bench) -> None:
        hub = A
        gid = bench.joined_under(hub)
        created = bench.group(gid).seq
        now = int(time.time() * 1000)

        def entries(sender: Other, *es: wire.Entry) -> None:
            last = max(e.seq for e in es)
            bench.peers.deliver(sender.id, payload("entries", gid, 1, last,
                                                   [e.pack() for e in es]))

        def msg(seq: int, text: bytes) -> wire.Entry:
            return wire.Entry(seq, 1, now, "msg", (B.id, os.urandom(16), B.epoch,
                                                   B.ciphertext(gid, text)))

        entries(hub, wire.Entry(created + 1, 1, now, "joined", (B.id,)))
        wait_for(lambda: bench.peers.payloads("key", B.id), WAIT_S,
                 "a new member gets this node's sender key")
        bench.peers.deliver(B.id, payload("key", gid, B.epoch, B.key))
        before = bench.counter("rejected_not_hub")
        entries(hub, msg(created + 3, b"two"))  # ahead of its turn
        entries(C, msg(created + 2, b"not from the hub"))
        entries(B, msg(created + 2, b"nor from a member"))
        entries(hub, msg(created + 2, b"one"))

        def shown() -> list[gm.StoredMessage]:
            reply, _ = bench.call(gm.History(group_id=gid))
            assert isinstance(reply, gm.HistoryReply)
            return reply.messages if len(reply.messages) >= 2 else []
        got = wait_for(shown, WAIT_S, "both of the hub's messages in groups.history")
        assert [(m.seq, m.text, m.sender) for m in got] == [
            (created + 2, "one", B.id), (created + 3, "two", B.id)]
        assert bench.counter("rejected_not_hub") == before + 2

    def test_a_sent_message_goes_to_the_hub_and_is_ordered_when_the_hub_sends_its_entry(
            self, bench: Bench) -> None:
        hub = A
        gid = bench.joined_under(hub)
        events = Events(bench.node)
        try:
            reply, _ = bench.call(gm.Send(group_id=gid), b"hello hub")
            assert isinstance(reply, gm.SendReply)
            sent = wait_for(lambda: [p for _, p in bench.peers.payloads("msg", hub.id)
                                     if p.args[0] == reply.id], WAIT_S,
                            "the message goes to the hub")[0]
            _, epoch, ct = sent.args
            gc = GroupCiphertext.decode(ct)
            gc.verify()
            assert (gc.group_id, gc.sender) == (gid, NODE), "sealed and signed by this node"
            assert b"hello hub" not in ct
            seq = bench.group(gid).seq + 1
            entry = wire.Entry(seq, 1, int(time.time() * 1000), "msg", (NODE, reply.id, epoch,
                                                                       ct))
            bench.peers.deliver(hub.id, payload("entries", gid, 1, seq, [entry.pack()]))

            def status() -> list[gm.SendStatus]:
                events.pump(50)
                return [b for b, _ in events.got if isinstance(b, gm.SendStatus)]
            st = wait_for(status, WAIT_S, "groups.status once the hub ordered it")
            assert [(s.group_id, s.id, s.status, s.seq) for s in st] == [
                (gid, reply.id, "ordered", seq)]
            history, _ = bench.call(gm.History(group_id=gid))
            assert isinstance(history, gm.HistoryReply)
            assert [(m.seq, m.id, m.sender, m.text) for m in history.messages] == [
                (seq, reply.id, NODE, "hello hub")]
        finally:
            events.close()

    def test_send_stores_before_it_replies_kill_9_after_the_reply_and_it_still_goes_out(
            self, bench: Bench) -> None:
        hub = A
        gid = bench.joined_under(hub)
        bench.peers.hold_seals = True
        sock = socket(zmq.Context.instance(), zmq.DEALER)
        sock.connect(bench.node.endpoints[ROLE].rpc)
        try:
            body = gm.Send(group_id=gid)
            header = Header(body.msg_type, os.urandom(16), None, "contract", time.time())
            sock.send_multipart([b"", *encode(body, header, (b"keep me",))])
            wait_for(lambda: sock.poll(0) or bench.peers.seal_asks(), WAIT_S,
                     "groups.send asks crypto.group_seal (or answers)")
            if not sock.poll(500):  # a reply that would come before the seal shows here
                bench.peers.release_seals()
            assert sock.poll(int(WAIT_S * 1000)), "groups.send answers"
            reply = decode(sock.recv_multipart()[1:]).body
        finally:
            sock.close(0)
        bench.kill()  # at once, after the reply
        assert isinstance(reply, gm.SendReply), reply
        bench.peers.hold_seals = False
        bench.peers.release_seals()
        sent_before = len(bench.peers.sent)
        bench.start()
        wait_for(lambda: [s for s in bench.peers.sent[sent_before:]
                          if s.to == hub.id and s.kind() == "msg"
                          and s.payload.args[0] == reply.id], RESEND_WAIT_S,
                 "after the restart the message goes to the hub: it was stored before the "
                 "reply")

    # the key file

    def test_only_crypto_opens_the_identity_key(self, bench: Bench) -> None:
        """Nothing here needs the identity secret: crypto signs and seals for the service."""
        gid = bench.hosted()
        mid, raw = A.msg(gid, b"signed by crypto, not by groups")
        bench.peers.deliver(A.id, raw)
        bench.ordered(B, gid, mid)
        only_crypto_opened_the_key(bench.node)

