"""Why a send fails, said at once (issue 17), with whole nodes (`tom node up`, five
processes under supervisord each) over QUIC on loopback: `tom send` prints each way a
delivery goes wrong with its own reason within 5 s of its start, and exits 0 delivered,
1 failed, 2 still pending at --timeout, 3 the node is not running, 64 usage error
(tom/cli.py, ``EX_*``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.primitives import SigningKey
from shared.wire.messages import transport as tm

from .test_router import RealNode, tom, until

pytestmark = pytest.mark.slow
TOML = """\
[bus]
heartbeat_s = 0.5
[transport]
host = "127.0.0.1"
port = 0
[router]
gossip_interval_s = 1.0
backup_after_s = 1
"""
WITHIN_S = 5.0
"""The acceptance: each reason within 5 s of the send's start (process start included)."""
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """A `tom send` run: its exit status, stdout, and each stderr line with when it came
    (seconds from the process's start)."""

    rc: int
    out: str
    lines: list[tuple[float, str]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def err(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, text: str) -> float:
        """When a stderr line containing ``text`` came."""
        for t, line in self.lines:
            if text in line:
                return t
        raise AssertionError(f"no line with {text!r} in:\n{self.err}\n{self.out}")


def send(data: Path, *args: str) -> Run:
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "tom.cli", "--data", str(data), "send", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    run = Run(0, "")

    def read_err() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            run.lines.append((time.monotonic() - t0, line.rstrip("\n")))

    reader = threading.Thread(target=read_err)
    reader.start()
    assert p.stdout is not None
    out = p.stdout.read()  # (not communicate(): it would read stderr too)
    p.wait(timeout=60)
    reader.join(timeout=10)
    run.rc, run.out, run.elapsed = p.returncode, out, time.monotonic() - t0
    return run


def nobody() -> str:
    """A valid node id that no node has."""
    return SigningKey(os.urandom(32)).public.hex()


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def ready(n: RealNode) -> None:
    def bound() -> bool:
        reply = n.client.bus.request("transport", tm.Info())
        return isinstance(reply, tm.InfoReply) and reply.ready
    until(f"{n.name}'s transport binding", bound, 20)


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, RealNode]]:
    """A sends; C is another node (and A's holder); B is A's contact, stopped later."""
    made: dict[str, RealNode] = {}
    try:
        for name in "abc":
            made[name] = RealNode(name, TOML)
            ready(made[name])
        a, b, c = made["a"], made["b"], made["c"]
        a.introduce(b)
        a.introduce(c)
        until("A connected to B and C", lambda: {p.node_id for p in a.client.peers()
                                                 if p.connected} >= {b.id, c.id})
        yield made
    finally:
        for n in made.values():
            n.stop()


def test_a_node_nobody_knows(nodes: dict[str, RealNode]) -> None:
    """(a) No address, no path: pending, saying so at once; exit 2 at --timeout."""
    r = send(nodes["a"].data, nobody(), "hello?", "--timeout", "4")
    assert r.rc == 2, r.err
    assert r.first("pending: unreachable: no route") < WITHIN_S
    assert "timeout after 4 s: last status pending: unreachable: no route" in r.err


def test_nothing_listening_at_the_address(nodes: dict[str, RealNode]) -> None:
    """(b) The ICMP port unreachable comes back at once (not after the 10 s dial)."""
    port = closed_udp_port()
    r = send(nodes["a"].data, f"{nobody()}@127.0.0.1:{port}", "hello?", "--timeout", "4")
    assert r.rc == 2, r.err
    reason = f"unreachable: nothing listening at 127.0.0.1:{port}"
    assert r.first(f"pending: {reason}") < WITHIN_S, r.err
    assert f"last status pending: {reason}" in r.err


def test_a_host_name_that_does_not_resolve(nodes: dict[str, RealNode]) -> None:
    """(c) Resolved off the transport's loop; a name that does not exist is final."""
    r = send(nodes["a"].data, f"{nobody()}@no-such-host.invalid:4433", "hello?")
    assert (r.rc, r.err.splitlines()[-1]) == (
        1, "failed: dns: cannot resolve no-such-host.invalid: no such host"), r.err
    assert r.elapsed < WITHIN_S


def test_a_different_node_at_the_address(nodes: dict[str, RealNode]) -> None:
    """(d) C answers at the address given for another id: failed at once, naming C, and
    the address is forgotten (not dialled again for that id)."""
    a, c = nodes["a"], nodes["c"]
    ghost = nobody()
    r = send(a.data, f"{ghost}@127.0.0.1:{c.port}", "hello?")
    assert (r.rc, r.err.splitlines()[-1]) == (
        1, f"failed: refused: a different node ({c.id.hex()[:16]}) answers at "
           f"127.0.0.1:{c.port}"), r.err
    assert r.elapsed < WITHIN_S
    entry = next(p for p in a.client.peers() if p.node_id.hex() == ghost)
    assert (entry.host, entry.port) == ("", 0)  # nothing left to retry against
    # C took A's dial as A's new connection; A kept it too: they still talk both ways
    a_c = a.client.send(c.id, "still there?")
    until("A's message to C delivered", lambda: a.client.outbox([a_c])[0].status in (
        "delivered", "read"), 10)
    assert any(p.node_id == a.id and p.connected for p in c.client.peers())


def test_a_recipient_that_is_down_then_a_stopped_node(nodes: dict[str, RealNode]) -> None:
    """(e) B was A's peer and is stopped: pending, saying where the message is held and
    until when, within 5 s; then the holder (C) that took a copy is counted. And `tom
    send` on the stopped node itself says so at once."""
    a, b = nodes["a"], nodes["b"]
    down = tom(b.data, "node", "down", timeout=30)
    assert down.returncode == 0, down.stderr
    until("A to see B gone", lambda: not any(p.node_id == b.id and p.connected
                                             for p in a.client.peers()))
    r = send(a.data, b.id.hex(), "are you there?", "--timeout", "10")
    assert r.rc == 2, r.err
    held = "pending: recipient offline: held for delivery until "
    assert r.first(held) < WITHIN_S, r.err
    line = next(x for _, x in r.lines if x.startswith(held))
    assert ", on this node (last try: nothing listening at 127.0.0.1:" in line, line
    assert r.first("on this node and by 1 holder") < 10 + WITHIN_S, r.err  # C took a copy
    assert "timeout after 10 s: last status pending: recipient offline" in r.err

    stopped = send(b.data, a.id.hex(), "hi")
    assert (stopped.rc, stopped.err.strip()) == (
        3, "tom: the node is not running (start it with `tom node up`)")
    assert stopped.elapsed < WITHIN_S


def test_usage_errors_exit_64(nodes: dict[str, RealNode]) -> None:
    a = nodes["a"]
    for args, said in ((("not-a-node", "x"), "not a node id"),
                       ((f"{nobody()}@host", "x"), "expected host:port"),
                       ((nobody(), "x", "--timeout", "0"), "must be positive")):
        r = send(a.data, *args)
        assert r.rc == 64 and said in r.err, (args, r.rc, r.err)
