"""Whole nodes (`tom node up`, five processes under supervisord each) talking over QUIC on
loopback, driven through the app API as an app would (tom.client)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.crypto import keyfile
from services.crypto.core import Identity
from shared.envelope import Envelope
from shared.paths import DataDir
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm
from tom import node
from tom.client import Client, Message

pytestmark = pytest.mark.slow
NODE_TOML = """\
[bus]
heartbeat_s = 0.5
[transport]
host = "127.0.0.1"
port = 0
[router]
gossip_interval_s = 1.0
"""


def tom(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=timeout)


class RealNode:
    def __init__(self, name: str, toml: str = NODE_TOML) -> None:
        self.name = name
        self.data = Path(tempfile.mkdtemp(prefix=f"tomr-{name}-", dir="/tmp"))
        (self.data / "node.toml").write_text(toml)
        up = tom(self.data, "node", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        self.client = Client(DataDir(self.data))
        self.id = self.client.node_id()
        reply = self.client.bus.request("transport", tm.Info())
        assert isinstance(reply, tm.InfoReply)
        self.host, self.port = reply.host, reply.port

    def introduce(self, other: RealNode) -> None:
        self.client.add_peer(other.id, other.host, other.port)

    def seed(self) -> bytes:
        return keyfile.load(node.key_path(node.load_context(DataDir(self.data))))

    def stop(self) -> None:
        try:
            self.client.close()
            tom(self.data, "node", "down", timeout=30)
        finally:
            try:
                pid = int((self.data / "run" / "supervisord.pid").read_text())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            subprocess.run(["pkill", "-9", "-f", f"services.* --data {self.data}"], check=False)
            shutil.rmtree(self.data, ignore_errors=True)


def until(what: str, check: Callable[[], object], timeout_s: float = 30) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)  # polling the nodes' own state
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def net() -> Iterator[dict[str, RealNode]]:
    """A knows only B; C knows only B; D knows only C."""
    nodes: dict[str, RealNode] = {}
    try:
        for name in "abcd":
            nodes[name] = RealNode(name)
        a, b, c, d = nodes.values()
        a.introduce(b)
        c.introduce(b)
        d.introduce(c)
        yield nodes
    finally:
        for n in nodes.values():
            n.stop()


def statuses(client: Client, msg_id: bytes, until_status: str, timeout_s: float = 30,
             read_by: Client | None = None) -> list[str]:
    """The status events of ``msg_id`` until ``until_status``; ``read_by`` reads incoming
    messages as they arrive (the recipient's app showing them)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while until_status not in seen and time.monotonic() < deadline:
        for ev in client.events(timeout_s=0.05):
            if isinstance(ev, rm.StatusChanged) and ev.id == msg_id:
                seen.append(ev.status)
        if read_by is not None:
            for m in read_by.events(timeout_s=0):
                if isinstance(m, Message) and m.info.id == msg_id:
                    read_by.read(m)
    return seen


def test_direct_and_relayed_messages_reach_delivered_then_read(net: dict[str, RealNode]) -> None:
    a, b, c = net["a"], net["b"], net["c"]
    until("A to learn C, and a path to it through B, from B's gossip",
          lambda: any(p.node_id == c.id and p.route == [b.id] for p in a.client.peers()))
    for dst in (b, c):
        a.client.subscribe()
        dst.client.subscribe()
        msg = a.client.send(dst.id, f"hello {dst.name}")
        seen = statuses(a.client, msg, "read", read_by=dst.client)
        assert seen[-2:] == ["delivered", "read"], seen
        if dst is c:
            assert "relayed" in seen, seen  # A had no connection to C: B carried it
        assert a.client.outbox([msg])[0].status == "read"


def test_a_node_reaches_a_fourth_node_it_was_never_told_about(
        net: dict[str, RealNode]) -> None:
    a, d = net["a"], net["d"]
    until("A to learn D", lambda: any(p.node_id == d.id for p in a.client.peers()))
    d.client.subscribe()
    msg = a.client.send(d.id, "found you")
    seen = statuses(a.client, msg, "delivered")
    assert seen[-1] == "delivered", seen
    got = [m for m in d.client.events(timeout_s=1) if isinstance(m, Message)]
    assert [m.text for m in got] == ["found you"] and got[0].info.sender == a.id


def test_forged_unsigned_and_replayed_envelopes_never_reach_the_app(
        net: dict[str, RealNode]) -> None:
    """A's transport carries hand-made envelopes to B over QUIC; B's router refuses them."""
    a, b = net["a"], net["b"]
    until("A connected to B", lambda: any(p.node_id == b.id and p.connected
                                          for p in a.client.peers()))
    ident = Identity(a.seed(), os.urandom)
    now_ms = int(time.time() * 1000)
    good = ident.sign(Envelope(id=os.urandom(16), sender=a.id, to=b.id, msg_type="Chat",
                               payload=b"replay me", timestamp_ms=now_ms))
    bad = {
        "unsigned": replace(good, id=os.urandom(16), signature=b""),
        "forged": replace(good, id=os.urandom(16), payload=b"tampered"),
        "stale": ident.sign(replace(good, id=os.urandom(16),
                                    timestamp_ms=now_ms - 2 * 86_400_000)),
        "not_for_us": ident.sign(replace(good, id=os.urandom(16), to=net["d"].id)),
        "ttl_exhausted": ident.sign(replace(good, id=os.urandom(16), to=net["d"].id,
                                            via=(b.id,), ttl=0)),
    }
    before = b.client.stats().counters
    b.client.subscribe()
    for env in [good, good, *bad.values()]:
        a.client.bus.call("transport", tm.Send(peer=b.id), (env.encode(),))

    def counted() -> bool:
        c = b.client.stats().counters
        return all(c.get(f"rejected_{k}", 0) > before.get(f"rejected_{k}", 0) for k in bad) \
            and c.get("duplicates", 0) > before.get("duplicates", 0)

    until("B to count every rejection", counted)
    got = [m.payload for m in b.client.events(timeout_s=0.5) if isinstance(m, Message)]
    assert got == [b"replay me"]  # the original once; nothing else


def test_kill_9_of_the_router_mid_burst_loses_and_duplicates_nothing(
        net: dict[str, RealNode]) -> None:
    a, b = net["a"], net["b"]
    b.client.subscribe()
    ids: list[bytes] = []
    killed = False
    for i in range(1000):
        ids.append(a.client.send(b.id, f"burst {i}", deadline_s=60))
        if i == 300 and not killed:
            pid = next(r["pid"] for r in _status(a) if r["service"] == "router")
            os.kill(pid, signal.SIGKILL)  # supervisord restarts it
            killed = True
    received: dict[bytes, int] = {}

    def all_received() -> bool:
        for m in b.client.events(timeout_s=0.2):
            if isinstance(m, Message) and m.text.startswith("burst "):
                received[m.info.id] = received.get(m.info.id, 0) + 1
        return len(received) >= 1000

    until("B's app to receive all 1000", all_received, timeout_s=120)
    assert set(received) == set(ids) and set(received.values()) == {1}

    def all_delivered() -> bool:
        return all(s.status in ("delivered", "read") for s in a.client.outbox(ids))

    until("A's statuses to end delivered", all_delivered, timeout_s=60)
    # the end state, after the statuses settled: each message once in B's inbox (the app's
    # events above stop at the 1,000th distinct message; a later duplicate would hide)
    mine = {k: n for k, n in inbox_counts(b).items() if k[0] == a.id}
    assert set(ids) <= {i for _, i in mine} and set(mine.values()) == {1}


def inbox_counts(node: RealNode) -> dict[tuple[bytes, bytes], int]:
    """How many times each (sender, id) is in ``node``'s inbox."""
    seen: dict[tuple[bytes, bytes], int] = {}
    after = 0
    while page := node.client.inbox(after=after, limit=500):
        for m in page:
            key = (m.info.sender, m.info.id)
            seen[key] = seen.get(key, 0) + 1
        after = page[-1].info.seq
    return seen


def _status(node: RealNode) -> list[dict[str, object]]:
    import json

    out = tom(node.data, "node", "status", "--json")
    return list(json.loads(out.stdout))
