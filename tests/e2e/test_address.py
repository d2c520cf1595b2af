"""A node keeps its address (issue 17): two nodes on one machine, set up the way a user sets
them up (`tom node up` on fresh data directories: `tom init` gives the second one the next
free port and says so), restarted three times each with `tom node down` / `tom node up`:
the same port every time, and a message each way delivered after each restart with no
command from anyone. And when a node's port is changed in node.toml between restarts
anyway, its peer learns the new address (the restarted node dials the peers it knows) and
the messages waiting for it, and new ones, are delivered by themselves, in bounded time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.paths import DataDir
from shared.wire.messages import transport as tm
from shared.wire.messages.sys import Status, StatusReply
from tests.e2e.test_router import until
from tom import node
from tom.client import Client

pytestmark = pytest.mark.slow
ENV = {"TOM_TRANSPORT__HOST": "127.0.0.1", "TOM_BUS__HEARTBEAT_S": "0.5",
       "TOM_ROUTER__GOSSIP_INTERVAL_S": "1.0"}
"""Settings for the test, through the environment (`tom init` writes only the port)."""
DELIVERED_S = 20.0
"""A message each way is delivered within this long of `tom node up` returning."""
RESUME_S = 20.0
"""After a port change: the waiting message is delivered within this long."""
DIAL_S = 6
"""A dial to a node that does not answer lasts ``idle_timeout_s`` (set 1 s below this)."""


def tom(data: Path, *args: str, timeout: float = 90,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV, **(env or {})})


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.env: dict[str, str] = {}
        self.data = Path(tempfile.mkdtemp(prefix=f"toma-{name}-", dir="/tmp"))
        self.client: Client | None = None
        self.id = b""
        self.up_output = ""

    def up(self) -> Client:
        r = tom(self.data, "node", "up", env=self.env)
        assert r.returncode == 0, r.stdout + r.stderr
        self.up_output = r.stdout
        self.client = Client(DataDir(self.data))
        self.id = self.client.node_id()
        return self.client

    def down(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        r = tom(self.data, "node", "down", timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr

    @property
    def c(self) -> Client:
        assert self.client is not None
        return self.client

    def configured_port(self) -> int:
        return int(tomllib.loads((self.data / "node.toml").read_text())["transport"]["port"])

    def bound_port(self) -> int:
        reply = self.c.bus.request("transport", tm.Info())
        assert isinstance(reply, tm.InfoReply)
        return reply.port

    def no_dial_since(self, seconds: float) -> bool:
        """The transport has run longer than ``seconds`` and no dial asked of it is in
        progress: a dial made at its start has given up (or was refused: no binding yet)."""
        st = self.c.bus.request("transport", Status())
        assert isinstance(st, StatusReply)
        return st.uptime_s > seconds and st.queues.get("pending_connects") == 0

    def remove(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
            tom(self.data, "node", "down", timeout=30)
        finally:
            try:
                pid = int((self.data / "run" / "supervisord.pid").read_text())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            subprocess.run(["pkill", "-9", "-f", f"services.* --data {self.data}"],
                           check=False)
            shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    a, b = Node("a"), Node("b")
    try:
        yield a, b
    finally:
        a.remove()
        b.remove()


def delivered(src: Node, msg: bytes) -> bool:
    return src.c.outbox([msg])[0].status in ("delivered", "read")


def exchange(a: Node, b: Node, what: str, bound_s: float = DELIVERED_S) -> float:
    """A message each way; seconds until both are delivered (fails past ``bound_s``)."""
    t0 = time.monotonic()
    to_b = a.c.send(b.id, f"{what}: a to b")
    to_a = b.c.send(a.id, f"{what}: b to a")
    until(f"{what}: both messages delivered",
          lambda: delivered(a, to_b) and delivered(b, to_a), bound_s)
    return time.monotonic() - t0


def introduce(a: Node, b: Node) -> None:
    """A is told where B is, once, as a user does (`tom chat ID@host:port`)."""
    a.c.add_peer(b.id, "127.0.0.1", b.bound_port())


def test_two_nodes_keep_their_ports_across_three_restarts_each(
        pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.up()
    b.up()
    pa, pb = a.configured_port(), b.configured_port()
    assert pb > pa, (pa, pb)  # the second node got a port of its own...
    said = re.search(r"UDP port (\d+): ([\d, .]+) (is|are) taken", b.up_output)
    assert said and int(said.group(1)) == pb and str(pa) in said.group(2), b.up_output
    assert f"address: UDP 127.0.0.1:{pb}" in b.up_output  # ...said clearly, and used
    assert (a.bound_port(), b.bound_port()) == (pa, pb)
    introduce(a, b)
    exchange(a, b, "first")
    timings = []
    for round_ in range(3):
        for n in (a, b):
            n.down()
            n.up()
            assert (n.configured_port(), n.bound_port()) == ((pa, pa) if n is a else (pb, pb))
            timings.append(exchange(a, b, f"round {round_}, {n.name} restarted"))
    print("seconds to a delivery each way after each restart:",
          ", ".join(f"{t:.1f}" for t in timings))
    # node.toml was never rewritten: the port tom init chose is the only value set in it
    for n, port in ((a, pa), (b, pb)):
        assert tomllib.loads((n.data / "node.toml").read_text()) == {
            "transport": {"port": port}, **{s: {} for s in node.CONFIG_SECTIONS
                                           if s != "transport"}}


def set_port(n: Node, port: int) -> None:
    path = n.data / "node.toml"
    text, count = re.subn(r"^port = \d+$", f"port = {port}", path.read_text(), flags=re.M)
    assert count == 1
    path.write_text(text)


def test_a_node_whose_port_changes_is_found_again_by_itself(
        pair: tuple[Node, Node]) -> None:
    """B was told where A is (A is B's bootstrap peer); A knows B as a contact (B connected,
    A sent to it). First B moves to another port while A runs, with a message waiting for
    B: B, back, dials A, and A learns B's new address from the connection and delivers.
    Then both stop, A moves, A starts while B is still down, and B starts only after A's
    first dial of it is over (refused while A's transport had no binding yet, or given up
    after ``idle_timeout_s``, 5 s for A here), knowing only A's old address, and sends to
    A: A, with nothing to send to B, dials its contacts again (backing off) after its
    start, so it reaches B once B is back, and B's message is delivered; no command from
    anyone."""
    a, b = pair
    a.up()
    b.up()
    introduce(b, a)
    exchange(a, b, "before")

    old = b.bound_port()
    b.down()
    waiting = a.c.send(b.id, "sent while b was down")
    new_b = node.pick_port("127.0.0.1", old + 1)[0]
    set_port(b, new_b)
    t0 = time.monotonic()
    b.up()
    assert b.bound_port() == new_b
    until("the message waiting for B delivered at B's new port",
          lambda: delivered(a, waiting), RESUME_S)
    b_moved_s = time.monotonic() - t0
    assert next(p for p in a.c.peers() if p.node_id == b.id).port == new_b
    exchange(a, b, "after b moved")

    old = a.bound_port()
    b.down()
    a.down()
    new_a = node.pick_port("127.0.0.1", old + 1)[0]
    set_port(a, new_a)
    a.env = {"TOM_TRANSPORT__IDLE_TIMEOUT_S": str(DIAL_S - 1)}
    a.up()  # its first dial of B finds nobody, and it has nothing to send to B
    assert a.bound_port() == new_a
    until("A's first dial of B over", lambda: a.no_dial_since(DIAL_S), RESUME_S)
    t0 = time.monotonic()
    b.up()
    to_a = b.c.send(a.id, "to a, whose new address b does not know")
    until("B's message delivered to A at A's new port", lambda: delivered(b, to_a),
          RESUME_S)
    a_moved_s = time.monotonic() - t0
    assert next(p for p in b.c.peers() if p.node_id == a.id).port == new_a
    exchange(a, b, "after a moved")
    print(f"seconds from `tom node up` to the waiting messages delivered: B moved "
          f"{b_moved_s:.1f}, A moved while B was down {a_moved_s:.1f}")
