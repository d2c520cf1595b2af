"""Issue 15: group messaging between whole nodes (five processes each, under supervisord),
over QUIC on loopback, driven through the groups app API as an app would.

Every check counts the end state: each member's history is read in full at the end and every
(sender, id) must be there exactly once, in the same order on every member.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.groups import wire
from shared.paths import DataDir
from shared.wire import BusTimeout, RemoteError
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm
from shared.wire.messages.sys import Status, StatusReply
from tests.e2e.test_heal import free_udp_port
from tests.e2e.test_router import NODE_TOML, RealNode, tom, until
from tom.client import Client

pytestmark = pytest.mark.slow
GROUPS_TOML = NODE_TOML + """\
[groups]
beat_s = 0.5
takeover_after_s = 3.0
claim_wait_s = 1.0
resend_s = 2.0
"""
RETRYABLE = (504, 503, 429)
OFFLINE_S = 120.0
"""Acceptance: a member offline this long gets what it missed."""


class GroupNode(RealNode):
    """A node on a fixed UDP port (a restarted node is found where it was)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, GROUPS_TOML.replace(
            "port = 0", f"port = {free_udp_port()}\nport_fallback = false"))

    def g(self, body: object, blobs: tuple[bytes, ...] = ()) -> object:
        if blobs:
            return self.client.bus.call("groups", body, blobs).body  # type: ignore[arg-type]
        return self.client.bus.request("groups", body)  # type: ignore[arg-type]

    def groups(self) -> dict[str, gm.GroupInfo]:
        reply = self.g(gm.ListGroups())
        assert isinstance(reply, gm.ListReply)
        return {g.group_id: g for g in reply.groups}

    def invites(self) -> list[gm.Invite]:
        reply = self.g(gm.ListGroups())
        assert isinstance(reply, gm.ListReply)
        return reply.invites

    def history(self, gid: str) -> list[gm.StoredMessage]:
        out: list[gm.StoredMessage] = []
        after = 0
        while True:
            reply = self.g(gm.History(group_id=gid, after=after, limit=1000))
            assert isinstance(reply, gm.HistoryReply)
            out += reply.messages
            if reply.last >= reply.seq:
                return out
            after = reply.last

    def counters(self, role: str = "groups") -> dict[str, int]:
        reply = self.client.bus.request(role, Status())
        assert isinstance(reply, StatusReply)
        return reply.counters

    def kill(self) -> None:
        """kill -9 of supervisord and every service of this node."""
        try:
            os.kill(int((self.data / "run" / "supervisord.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        subprocess.run(["pkill", "-9", "-f", f"services.* --data {self.data}"], check=False)
        self.client.close()

    def start(self) -> None:
        up = tom(self.data, "node", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        self.client = Client(DataDir(self.data))


class GroupEvents:
    """A subscriber to a node's groups events (what an app listening to the group sees)."""

    def __init__(self, node: GroupNode) -> None:
        import zmq

        from shared import endpoints as ep
        from shared.bus import socket
        self.sub = socket(zmq.Context.instance(), zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"groups.message")
        node.client.bus.connect(self.sub, "groups",
                                ep.load(DataDir(node.data).endpoints)["groups"].events)
        self.seqs: list[int] = []

    def poll(self, gid: str) -> list[int]:
        from shared.wire import decode
        while self.sub.poll(0):
            body = decode(self.sub.recv_multipart()[1:]).body
            if isinstance(body, gm.MessageReceived) and body.group_id == gid:
                self.seqs.append(body.seq)
        return self.seqs

    def close(self) -> None:
        self.sub.close(0)


def send(node: GroupNode, gid: str, text: str, client: Client | None = None) -> bytes:
    """Hand a message over (same id on every retry); its id once the service stored it."""
    mid = os.urandom(16)
    bus = (client or node.client).bus
    deadline = time.monotonic() + 30
    while True:
        try:
            reply = bus.call("groups", gm.Send(group_id=gid, id=mid), (text.encode(),)).body
            assert isinstance(reply, gm.SendReply)
            return reply.id
        except BusTimeout:
            if time.monotonic() > deadline:
                raise
        except RemoteError as e:
            if e.code not in RETRYABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # the service was restarting


def make_group(creator: GroupNode, members: list[GroupNode], hub: GroupNode,
               name: str) -> str:
    reply = creator.g(gm.Create(name=name, members=[m.id for m in members], hub=hub.id))
    assert isinstance(reply, gm.CreateReply)
    gid = reply.group_id
    for m in members:
        until(f"{m.name} invited to {name}",
              lambda m=m: any(i.group_id == gid for i in m.invites()), 30)
        m.g(gm.Join(group_id=gid))
    everyone = [creator, *members]
    until(f"{name} has {len(everyone)} members on every member", lambda: all(
        gid in n.groups() and len(n.groups()[gid].members) == len(everyone)
        for n in everyone), 30)
    return gid


def counts(node: GroupNode, gid: str) -> dict[tuple[bytes, bytes], int]:
    seen: dict[tuple[bytes, bytes], int] = {}
    for m in node.history(gid):
        seen[(m.sender, m.id)] = seen.get((m.sender, m.id), 0) + 1
    return seen


def order(node: GroupNode, gid: str) -> list[tuple[bytes, bytes]]:
    return [(m.sender, m.id) for m in node.history(gid)]


@pytest.fixture(scope="module")
def five() -> Iterator[dict[str, GroupNode]]:
    nodes: dict[str, GroupNode] = {}
    try:
        for name in "abcde":
            nodes[name] = GroupNode(name)
        for name in "bcde":
            nodes[name].introduce(nodes["a"])
        until("every node connected to A",
              lambda: sum(p.connected for p in nodes["a"].client.peers()) >= 4, 30)
        yield nodes
    finally:
        for n in nodes.values():
            n.stop()


def plaintext_in(data: Path, marker: bytes) -> list[str]:
    """Files under ``data`` (databases, their WAL, logs) that contain ``marker``."""
    found = []
    for p in data.rglob("*"):
        if p.is_file() and not p.is_socket():
            try:
                if marker in p.read_bytes():
                    found.append(str(p))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("hub_name", ["a", "e"], ids=["hub-is-member-a", "hub-is-non-member-e"])
def test_every_member_gets_every_message_once_in_one_order(
        five: dict[str, GroupNode], hub_name: str) -> None:
    a, b, c, d = (five[n] for n in "abcd")
    hub = five[hub_name]
    gid = make_group(a, [b, c, d], hub, f"order-{hub_name}")
    members = [a, b, c, d]
    marker = f"secret-{hub_name}-{os.urandom(4).hex()}"
    sent: dict[str, list[bytes]] = {m.name: [] for m in members}
    listening = GroupEvents(b)  # subscribed before anything is sent

    def writer(m: GroupNode) -> None:
        client = Client(DataDir(m.data))
        try:
            for i in range(100):
                sent[m.name].append(send(m, gid, f"{marker} {m.name} {i}", client))
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(len(ids) == 100 for ids in sent.values())
    want = {(m.id, i) for m in members for i in sent[m.name]}
    until("every member has all 400 messages", lambda: all(
        set(counts(m, gid)) >= want for m in members), 120)
    for m in members:
        seen = counts(m, gid)
        assert set(seen) == want, m.name
        assert set(seen.values()) == {1}, f"{m.name} has a message twice"
    orders = {m.name: order(m, gid) for m in members}
    assert all(o == orders["a"] for o in orders.values()), "members disagree on the order"
    # an app listening on B got each message once, in the group's order
    until("B's app got 400 events", lambda: len(listening.poll(gid)) >= 400, 30)
    listening.close()
    assert listening.seqs == sorted(set(listening.seqs)) == [m.seq for m in b.history(gid)]
    # nothing readable on the hub: its databases (with their WAL files) and its logs
    assert plaintext_in(hub.data, marker.encode()) == []


def test_a_kicked_member_reads_nothing_sent_afterwards_and_forged_control_is_refused(
        five: dict[str, GroupNode]) -> None:
    a, b, c, d, e = (five[n] for n in "abcde")
    gid = make_group(a, [b, c, d], e, "kick")
    send(b, gid, "before the kick")
    until("D has the first message", lambda: len(d.history(gid)) == 1, 30)
    d_keys_before = keys_of(d)

    # forged control from B (a member, not the hub): to C, as if B were the hub
    g = c.groups()[gid]
    forged = [
        wire.encode("entries", gid, g.term, g.seq + 1,
                    [[g.seq + 1, g.term, 0, "kicked", a.id, b.id]]),
        wire.encode("entries", gid, g.term + 1, g.seq + 1,
                    [[g.seq + 1, g.term + 1, 0, "hub", b.id, e.id]]),
        wire.encode("entries", gid, g.term, g.seq + 1,
                    [[g.seq + 1, g.term, 0, "role", b.id, "admin", b.id]]),
    ]
    before = c.counters()
    for raw in forged:
        b.client.bus.call("router", rm.Send(to=c.id, groups=True), (raw,))
    # and a kick by a non-admin, through the hub
    b.client.bus.call("router", rm.Send(to=e.id, groups=True), (wire.encode("kick", gid, c.id),))
    until("C refused the three forgeries", lambda: c.counters().get("rejected_not_hub", 0)
          >= before.get("rejected_not_hub", 0) + 3, 30)
    until("the hub refused B's kick", lambda: e.counters().get("refused_kick", 0) >= 1, 30)
    g2 = c.groups()[gid]
    assert g2.hub == e.id and g2.term == g.term and len(g2.members) == 4
    assert {m.node_id: m.role for m in g2.members}[b.id] == "member"

    a.g(gm.Kick(group_id=gid, node_id=d.id))
    until("D removed on every member", lambda: all(
        len(n.groups()[gid].members) == 3 for n in (a, b, c)), 30)
    until("D dropped the group", lambda: gid not in d.groups(), 30)
    after = [send(n, gid, f"after the kick {n.name}") for n in (a, b, c)]
    until("the others have the messages sent after the kick", lambda: all(
        {(m.id) for m in n.history(gid)} >= set(after) for n in (a, b, c)), 30)
    # D holds no key that opens any of them: every key D ever received, tried on each
    cts = ciphertexts_after_kick(b, gid, set(after))
    assert len(cts) == 3
    for key in keys_of(d) | d_keys_before:
        for ct in cts:
            assert not opens(ct, key)


def keys_of(node: GroupNode) -> set[bytes]:
    import sqlite3
    db = sqlite3.connect(node.data / "groups.db")
    try:
        return {bytes(r[0]) for r in db.execute("SELECT key FROM keys")}
    finally:
        db.close()


def ciphertexts_after_kick(node: GroupNode, gid: str, ids: set[bytes]) -> list[bytes]:
    import sqlite3
    db = sqlite3.connect(node.data / "groups.db")
    try:
        return [wire.entry_decode(bytes(r[1])).args[3] for r in db.execute(
            "SELECT mid, entry FROM log WHERE gid=? AND mid IS NOT NULL", (gid,))
            if bytes(r[0]) in ids]
    finally:
        db.close()


def opens(ct: bytes, key: bytes) -> bool:
    from shared import primitives
    from shared.envelope import GroupCiphertext
    g = GroupCiphertext.decode(ct)
    try:
        primitives.xchacha_open(key, g.nonce, g.ciphertext, g.aad())
        return True
    except Exception:  # noqa: BLE001 - any failure means it does not open
        return False


def test_garbage_and_hostile_payloads_leave_the_service_serving(
        five: dict[str, GroupNode]) -> None:
    a, b, c = (five[n] for n in "abc")
    gid = make_group(a, [b, c], a, "hostile")
    hostile = [
        b"\x00garbage", b"\xc1", os.urandom(3000), wire.encode("msg", gid, b"x", 1, b""),
        wire.encode("entries", gid, 1, 2**62, [[2**62, 1, 0, "msg", b.id, b"m" * 16, 1,
                                                b"\x00" * 5000]]),
        wire.encode("sync", "no-such-group", 0), wire.encode("claim", gid, 99, 0),
        wire.encode("state", gid, [1, 1, "x", True, 50, 0, [[b.id, "admin", 0]]]),
        wire.encode("key", gid, 1, b"k" * 32), wire.encode("create", gid, "dup", True, 50, []),
        b"\x92" + b"\xa3msg" * 1 + b"\x00" * (190 * 1024),
    ]
    before = a.counters()
    for raw in hostile:
        b.client.bus.call("router", rm.Send(to=a.id, groups=True), (raw,))
    until("every hostile payload handled", lambda: sum(a.counters().get(f"in_{k}", 0) for k in (
        "msg", "entries", "sync", "claim", "state", "key", "create")) + a.counters().get(
        "rejected_malformed", 0) >= sum(before.get(f"in_{k}", 0) for k in (
            "msg", "entries", "sync", "claim", "state", "key", "create"))
        + before.get("rejected_malformed", 0) + len(hostile), 30)
    after = a.counters()
    assert after.get("rejected_malformed", 0) >= before.get("rejected_malformed", 0) + 4
    mid = send(b, gid, "still serving")
    until("the group still works", lambda: all(
        mid in {m.id for m in n.history(gid)} for n in (a, b, c)), 30)



def test_a_member_offline_for_two_minutes_gets_what_it_missed_once(
        five: dict[str, GroupNode]) -> None:
    a, b, c, d = (five[n] for n in "abcd")
    gid = make_group(a, [b, c, d], a, "offline")
    first = send(b, gid, "before D leaves")
    until("D has the first message", lambda: first in {m.id for m in d.history(gid)}, 30)
    d.kill()
    away_until = time.monotonic() + OFFLINE_S
    missed: list[tuple[bytes, bytes]] = []
    i = 0
    while time.monotonic() < away_until:  # the others talk while D is away
        for n in (a, b, c):
            missed.append((n.id, send(n, gid, f"while D was away {n.name} {i}")))
        i += 1
        time.sleep(1.0)  # the conversation's pace, not a wait for readiness
    d.start()
    want = set(missed) | {(b.id, first)}
    until("D has every message it missed", lambda: set(counts(d, gid)) >= want, 120)
    seen = counts(d, gid)
    assert set(seen) == want and set(seen.values()) == {1}
    assert order(d, gid) == order(a, gid)


class Writer(threading.Thread):
    """A member's app writing one message per 100 ms until stopped; keeps the ids the
    groups service accepted (stored) — those must reach every member."""

    def __init__(self, node: GroupNode, gid: str) -> None:
        super().__init__(daemon=True)
        self.node, self.gid = node, gid
        self.ids: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = Client(DataDir(self.node.data), timeout_s=2)
        try:
            i = 0
            while not self.stop.is_set():
                try:
                    self.ids.append(send(self.node, self.gid, f"{self.node.name} {i}", client))
                except (BusTimeout, RemoteError, OSError):
                    return  # its node is gone: what it accepted is counted
                i += 1
                self.stop.wait(0.1)
        finally:
            client.close()


# last in this module: it kills and restarts nodes of the shared fixture
@pytest.mark.parametrize("hub_name", ["e", "a"], ids=["non-member-hub", "member-hub"])
def test_the_hub_node_killed_mid_conversation_a_successor_takes_over_nothing_lost_no_split(
        five: dict[str, GroupNode], hub_name: str) -> None:
    a, b, c, d = (five[n] for n in "abcd")
    hub = five[hub_name]
    members = [a, b, c, d]
    gid = make_group(a, [b, c, d], hub, f"failover-{hub_name}")
    writers = {m.name: Writer(m, gid) for m in members}
    for w in writers.values():
        w.start()
    until("traffic from every member", lambda: all(len(w.ids) >= 10
                                                   for w in writers.values()), 30)
    hub.kill()
    killed_at = time.monotonic()
    survivors = [m for m in members if m is not hub]
    until("a successor took over", lambda: all(
        s.groups()[gid].hub != hub.id for s in survivors), 60)
    took = time.monotonic() - killed_at
    new = survivors[0].groups()[gid]
    assert new.term == 2 and all(s.groups()[gid].hub == new.hub for s in survivors)
    counts_at = {n: len(w.ids) for n, w in writers.items()}
    until("more traffic in the new term", lambda: all(
        len(writers[s.name].ids) >= counts_at[s.name] + 10 for s in survivors), 30)
    for w in writers.values():
        w.stop.set()
    for w in writers.values():
        w.join(30)

    hub.start()  # the old hub comes back: it must follow, not split the group
    if hub in members:
        until("the old hub follows the new one", lambda: hub.groups()[gid].hub == new.hub
              and hub.groups()[gid].term == 2, 60)
    else:
        until("the old hub dropped the group it no longer hosts",
              lambda: gid not in hub.groups(), 60)
    late = [send(m, gid, f"after the return {m.name}") for m in members]
    want = {(m.id, i) for m in members for i in writers[m.name].ids} | \
        {(m.id, i) for m, i in zip(members, late, strict=True)}
    until("every member has every message accepted by any member", lambda: all(
        set(counts(m, gid)) >= want for m in members), 120)
    for m in members:
        seen = counts(m, gid)
        assert set(seen) == want, m.name
        assert set(seen.values()) == {1}, f"{m.name} has a message twice"
    orders = {m.name: order(m, gid) for m in members}
    assert all(o == orders["b"] for o in orders.values()), "members disagree on the order"
    seqs = [m.seq for m in b.history(gid)]
    assert seqs == sorted(set(seqs)), "a seq was reused"
    print(f"\nhub {hub_name} killed: successor took over after {took:.1f} s")
