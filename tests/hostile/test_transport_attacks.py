"""Attacks on the transport, run against real crypto + transport processes on loopback (the
test plays each node's router, tests/contract/router_side.py). Each test reproduces one
attack of issue 13, checks that the node refuses or bounds it and counts it, and that a
legitimate peer A keeps being served by the victim B meanwhile. A's round trip (A's
transport -> B's router -> B's transport -> A's router) is measured idle and during the
attack and printed (``-s``); the suite asserts service, not timings."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket as pysocket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from services.transport.endpoint import CONTROL, PeerClosed
from shared.bus import BusClient
from shared.primitives import SigningKey
from shared.testing.prereq import missing, require_command, require_root
from shared.wire import RemoteError
from shared.wire.messages import transport as m
from shared.wire.messages.sys import Status, StatusReply
from tests.contract.harness import IMPLEMENTATIONS, Node, prepare
from tests.contract.router_side import RouterSide
from tests.e2e.test_transport import Rogue, info

pytestmark = pytest.mark.slow
NODE_TOML = """\
[bus]
heartbeat_s = 0.5
[transport]
host = "127.0.0.1"
port = 0
"""
A_SEED, B_SEED = b"\x1a" * 32, b"\x1b" * 32
A_ID, B_ID = SigningKey(A_SEED).public, SigningKey(B_SEED).public


class World:
    """Legitimate A connected to the victim B; both routers played by the test."""

    def __init__(self, b_toml: str = "", b_template: str | None = None) -> None:
        self.nodes: list[tuple[Node, RouterSide]] = []
        self.clients: list[BusClient] = []
        self.a, self.ra = self._node(A_SEED, NODE_TOML)
        self.b, self.rb = self._node(B_SEED, NODE_TOML + b_toml, b_template)
        self.ia, self.ib = info(self.a), info(self.b)
        assert self.ia.ready and self.ib.ready
        self.ca, self.cb = self.client(self.a), self.client(self.b)
        self.ca.request("transport", m.Connect(peer=B_ID, host=self.ib.host,
                                               port=self.ib.port))
        self.n = 0

    def _node(self, seed: bytes, toml: str, template: str | None = None
              ) -> tuple[Node, RouterSide]:
        node = prepare(template or IMPLEMENTATIONS["services"], seed, toml)
        try:
            node.start("crypto", "transport")
        except Exception:
            print(node.log_tail())
            node.stop()
            raise
        side = RouterSide(node)
        self.nodes.append((node, side))
        return node, side

    def client(self, node: Node) -> BusClient:
        c = node.client(timeout_s=10)
        self.clients.append(c)
        return c

    def rtt(self, timeout_s: float = 10) -> float:
        """One envelope A -> B and its answer B -> A, through both transports and both
        (test-played) routers: seconds."""
        self.n += 1
        ping, pong = b"ping%d" % self.n, b"pong%d" % self.n
        start = time.perf_counter()
        self.ca.call("transport", m.Send(peer=B_ID), [ping], timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        while ping not in self.rb.envelopes() and time.monotonic() < deadline:
            self.rb.pump(20)
        assert ping in self.rb.envelopes(), "B never got A's envelope"
        self.cb.call("transport", m.Send(peer=A_ID), [pong], timeout_s=timeout_s)
        while pong not in self.ra.envelopes() and time.monotonic() < deadline:
            self.ra.pump(20)
        assert pong in self.ra.envelopes(), "A never got B's answer"
        return time.perf_counter() - start

    def p50(self, samples: int = 15, during: Callable[[], None] | None = None) -> float:
        times = []
        for _ in range(samples):
            times.append(self.rtt())
            if during:
                during()
        return statistics.median(times)

    def counters(self, node: Node | None = None) -> dict[str, int]:
        status = self.client(node or self.b).request("transport", Status())
        assert isinstance(status, StatusReply)
        return status.counters | status.queues

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for n, r in self.nodes:
            r.close()
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)


@contextlib.contextmanager
def world(b_toml: str = "", b_template: str | None = None) -> Iterator[World]:
    w = World(b_toml, b_template)
    try:
        yield w
    finally:
        w.close()


def report(what: str, idle: float, attacked: float) -> None:
    print(f"\n{what}: legit A<->B round trip p50 idle {idle * 1000:.2f} ms, during the "
          f"attack {attacked * 1000:.2f} ms ({attacked / idle:.2f}x)")


def send_control(rogue: Rogue, peer: bytes, msg: list[object]) -> None:
    """The rogue writes a control frame on its lane, past every check of its endpoint."""
    conn = rogue.ep.peers[peer]
    assert conn.lane is not None
    body = bytes([CONTROL]) + msgpack.packb(msg, use_bin_type=True)
    conn.quic.send_stream_data(conn.lane, len(body).to_bytes(4, "big") + body)
    rogue.ep._pump(conn, time.monotonic())


def connected_rogue(w: World, seed: bytes) -> Rogue:
    rogue = Rogue(seed)
    rogue.ep.dial(B_ID, (w.ib.host, w.ib.port), time.monotonic())
    rogue.run(lambda: B_ID in rogue.ep.peers)
    assert B_ID in rogue.ep.peers
    return rogue


def wait_for(cond: Callable[[], bool], timeout_s: float = 10, step: Callable[[], None]
             | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        if step:
            step()
        else:
            time.sleep(0.05)
    return True


# -- 1. names and malformed hosts -----------------------------------------------------------


def test_host_names_from_peers_are_refused_and_bad_hosts_answered_not_raised() -> None:
    """A peer's address report names a host (a resolver that never answers would freeze the
    loop): refused, counted. The router asks to connect to a host with a NUL byte or an
    over-long label (sendto raised out of the drain loop and the batch was lost): answered
    `invalid`, and the requests pipelined behind it are answered too."""
    with world() as w:
        for host in ("evil\x00.example", "x" * 64 + ".example"):
            bad = w.cb.send("transport", m.Connect(peer=b"\x33" * 32, host=host, port=4433))
            behind = [w.cb.send("transport", m.Info()) for _ in range(20)]
            with pytest.raises(RemoteError) as err:
                w.cb.recv("transport", bad)
            assert err.value.name == "invalid"
            for msg_id in behind:
                assert isinstance(w.cb.recv("transport", msg_id).body, m.InfoReply)
        c = w.counters()
        assert c.get("invalid_hosts") == 2 and not c.get("internal_errors"), c
        rogue = connected_rogue(w, b"\x2e" * 32)
        try:
            for host in ("never-answers.example", "a\x00b"):
                send_control(rogue, B_ID, ["addr", [host, 4433], [["lan.example", 1]]])
            rogue.run(lambda: False, 0.5)
            c = w.counters()
            assert c.get("names_refused") == 1 and c.get("malformed_control") == 1, c
        finally:
            rogue.close()
        w.rtt()


SILENT_DNS = ("127.0.0.77", 53)


def test_a_name_whose_resolver_never_answers_does_not_freeze_the_transport(
        tmp_path: Path) -> None:
    """B's transport runs with a resolver that never answers (its own mount namespace sees
    a resolv.conf naming a silent server). The router asks it to connect to host names:
    B keeps serving A meanwhile, and each connect fails after `resolve_timeout_s`."""
    require_root("give the transport its own mount namespace and resolv.conf")
    require_command("unshare", "run the transport in its own mount namespace "
                    "(apt-get install util-linux)")
    silent = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM)
    try:
        silent.bind(SILENT_DNS)
    except OSError as e:
        silent.close()
        missing(f"cannot bind the silent resolver at {SILENT_DNS}: {e}")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SILENT_DNS[0]}\noptions timeout:4 attempts:2\n")
    os.chmod(tmp_path, 0o755)
    template = (f"unshare -m sh -c 'mount --bind {resolv} /etc/resolv.conf && exec "
                "{python} -m services.{role} --data {data} --endpoints {endpoints}'")
    check = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {resolv} "
                            "/etc/resolv.conf && cat /etc/resolv.conf"],
                           capture_output=True, text=True, timeout=10)
    if SILENT_DNS[0] not in check.stdout:
        silent.close()
        missing(f"cannot bind-mount resolv.conf here: {check.stderr.strip()}")
    try:
        with world("resolve_timeout_s = 2.0\n", template) as w:
            idle = w.p50()
            names = [w.cb.send("transport", m.Connect(
                peer=bytes([i]) * 32, host=f"n{i}.never-answers.example", port=4433),
                timeout_s=30) for i in range(12)]
            attacked = w.p50()
            report("12 host names, a resolver that never answers", idle, attacked)
            codes = []
            for msg_id in names:
                with pytest.raises(RemoteError) as err:
                    w.cb.recv("transport", msg_id, timeout_s=30)
                codes.append(err.value.name)
            assert set(codes) <= {"peer_timeout", "failed", "overloaded"}, codes
            c = w.counters()
            assert c.get("resolve_failures", 0) >= 4, c
            assert c.get("resolves_refused", 0) + c.get("resolve_failures", 0) == 12, c
            assert c.get("resolver_busy") == 4, c  # 8 at once in the core, 4 threads
            w.rtt()
    finally:
        silent.close()


# -- 2. inbound starvation ------------------------------------------------------------------


class Attacker:
    """tests/hostile/transport_attacker.py in a process of its own."""

    def __init__(self, mode: str, w: World, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile.transport_attacker", mode, w.ib.host,
             str(w.ib.port), B_ID.hex(), *args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ready = self.proc.stdout.readline().split()
        assert self.ready[:1] == ["ready"], self.ready

    def result(self, timeout_s: float = 60) -> dict[str, int]:
        out, _ = self.proc.communicate(timeout=timeout_s)
        line = [x for x in out.splitlines() if x.startswith("done ")]
        assert line, out
        return json.loads(line[0][5:])  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def newcomer(w: World, seed: bytes) -> tuple[Node, bytes]:
    """Another legitimate node, connecting to B for the first time (its dial is timed)."""
    node, _ = w._node(seed, NODE_TOML)
    assert info(node).ready
    return node, SigningKey(seed).public


def connects_to_b(w: World, seed: bytes, timeout_s: float = 15) -> float:
    """A new legitimate node dials B for the first time: seconds it took (raises if not)."""
    node, _ = newcomer(w, seed)
    with node.client(timeout_s=timeout_s) as c:
        start = time.monotonic()
        c.request("transport", m.Connect(peer=B_ID, host=w.ib.host, port=w.ib.port),
                  timeout_s=timeout_s)
        return time.monotonic() - start


def test_a_spoofed_client_hello_flood_leaves_room_for_new_peers() -> None:
    """~150 unanswered ClientHellos per second from 200 source addresses (a spoofer: it
    reads nothing) filled the 64 half-open slots for good: no new peer could connect. Now
    state is kept for 32 at most and the rest get a stateless Retry: a new peer connects
    during the flood (its client answers the Retry), and A keeps being served."""
    with world() as w:
        idle = w.p50()
        flood = Attacker("hellos", w, "--rate", "150", "--seconds", "15")
        try:
            assert wait_for(lambda: sum(w.counters().get(k, 0) for k in (
                "accepted", "retries_sent", "refused_half_open")) >= 200)
            attacked = w.p50()
            report("unanswered ClientHello flood, 150/s", idle, attacked)
            took = connects_to_b(w, b"\x1c" * 32)
            print(f"a new peer connected during the flood in {took * 1000:.1f} ms")
            c = w.counters()
            assert c["half_open"] <= 32 and c.get("retries_sent", 0) > 50, c
            assert not c.get("refused_half_open"), c
        finally:
            flood.kill()


def test_one_address_cannot_hold_the_half_open_slots() -> None:
    """A real address (it answers the Retry, so its tokens are valid) opens 100 connections
    a second and is silent otherwise: it held all 64 half-open slots and no new peer could
    connect. Now it holds 16 (8 before the Retry, 8 proven), the rest are refused, and a new
    peer connects."""
    with world() as w:
        idle = w.p50()
        mute = Attacker("mute", w, "--rate", "100", "--seconds", "12")
        try:
            assert wait_for(lambda: sum(w.counters().get(k, 0) for k in (
                "accepted", "refused_half_open", "refused_half_open_per_address")) >= 80, 20)
            attacked = w.p50()
            report("one address holding half-open connections", idle, attacked)
            took = connects_to_b(w, b"\x1c" * 32)
            print(f"a new peer connected during the attack in {took * 1000:.1f} ms")
            c = w.counters()
            assert c["half_open"] <= 2 * 8, c
            assert c.get("refused_half_open_per_address", 0) >= 50, c
        finally:
            mute.kill()


CAP_TOML = "max_connections = 12\nreserved_share = 0.17\nstranger_grace_s = 300\n"  # 2


def test_made_up_identities_cannot_take_the_node_s_own_dials_slots() -> None:
    """30 made-up identities connect to B (cap 12 here, 2 reserved): they get the strangers'
    share (10, A included), the rest are refused; B's own dials still get in, evicting the
    newest idle stranger once the cap is reached, and A keeps being served."""
    with world(CAP_TOML) as w:
        idle = w.p50()
        crowd = Attacker("identities", w, "--count", "30", "--seconds", "30")
        try:
            assert wait_for(lambda: w.counters().get("refused_strangers", 0) >= 20, 15)
            attacked = w.p50()
            report("30 made-up identities at the connection cap", idle, attacked)
            c = w.counters()
            assert c["peers"] == 10, c  # A and 9 of them: the strangers' share
            dials = []
            for i in range(3):  # B's router asks for three nodes: each gets in
                node, node_id = newcomer(w, bytes([0x50 + i]) * 32)
                ni = info(node)
                w.cb.request("transport", m.Connect(peer=node_id, host=ni.host,
                                                    port=ni.port), timeout_s=15)
                dials.append(node_id)
            assert wait_for(lambda: w.counters()["peers"] == 12)  # the evicted one is gone
            c = w.counters()
            assert c.get("evicted_strangers") == 1, c
            peers = w.cb.request("transport", m.Peers())
            assert isinstance(peers, m.PeersReply)
            ids = {p.node_id for p in peers.peers}
            assert A_ID in ids and set(dials) <= ids
            w.rtt()
        finally:
            crowd.kill()


# -- 3. memory ------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_connection_churn_cannot_grow_the_delivery_queue_past_its_budget() -> None:
    """B's router is slow (here: it answers nothing for the attack's 8 s). A peer reconnects
    every half second and sends on the connection B has just retired: that connection was
    parsed whatever the budget, with a window that kept growing (592 MiB queued). Now all
    of a peer's connections draw on the one 8 MiB budget, plus at most 8 MiB handed over
    from connections that end; the rest is dropped at close, counted. A's envelope sent
    meanwhile arrives once the router answers."""
    from services.transport.core import DELIVER_QUEUE_COST
    from services.transport.endpoint import OVERDRAFT

    with world() as w:
        pid = w.b.proc("transport").pid
        w.rtt()
        before = rss_mib(pid)
        churn = Attacker("cycle", w, "--seconds", "8")
        peak_cost, peak_rss = 0, before
        try:
            w.ca.call("transport", m.Send(peer=B_ID), [b"sent during the attack"])
            deadline = time.monotonic() + 9
            while churn.proc.poll() is None and time.monotonic() < deadline:
                c = w.counters()
                peak_cost = max(peak_cost, c["deliver_queue_cost"])
                peak_rss = max(peak_rss, rss_mib(pid))
                time.sleep(0.2)
            result = churn.result()
        finally:
            churn.kill()
        c = w.counters()
        print(f"\n{result['cycles']} connections, {result['frames']} envelopes of 256 KiB "
              f"accepted by the attacker's endpoints; B's delivery queue peaked at "
              f"{peak_cost / 2**20:.1f} MiB, its RSS {before:.0f} -> {peak_rss:.0f} MiB; "
              f"dropped at close: {c.get('frames_dropped_at_close', 0)}")
        assert result["cycles"] >= 5, result
        assert peak_cost <= DELIVER_QUEUE_COST + OVERDRAFT + 256 * 1024, peak_cost
        assert peak_rss - before < 120, (before, peak_rss)
        assert c.get("retired", 0) >= 4, c
        assert wait_for(lambda: b"sent during the attack" in w.rb.envelopes(), 60,
                        lambda: w.rb.pump(50))
        w.rtt()


# -- 4. NAT signalling ----------------------------------------------------------------------


def test_a_forged_introduction_cannot_aim_probes_or_dials() -> None:
    """A connected peer poses as a relay introducing a node that wants a path: it listed
    public addresses of its choice as candidates (400 probes per control frame went to
    them) and forged probes carrying its token to make B dial where they came from. Now B
    takes one public candidate (the relay's own observation) and private ones, sends at
    most PUNCH_PROBES probes for the introduction, and answers or dials only at a
    candidate's address. A keeps being served."""
    from services.transport.endpoint import PROBE_MAGIC, PUNCH_PROBES, TOKEN_BYTES

    with world() as w:
        idle = w.p50()
        rogue = connected_rogue(w, b"\x2e" * 32)
        fake, token = b"\xff" * 32, os.urandom(TOKEN_BYTES)  # B's id is smaller: B dials
        try:
            send_control(rogue, B_ID, ["intro", fake, token, [
                ["100.64.77.1", 4000], ["100.64.77.2", 4000], ["198.18.0.1", 4000],
                ["10.77.0.1", 4000]]])
            rogue.run(lambda: w.counters().get("probes_sent", 0) > 0, 3)
            for _ in range(50):  # forged probes from the rogue's own address
                rogue.sock.sendto(PROBE_MAGIC + token + fake, (w.ib.host, w.ib.port))
            attacked = w.p50()
            report("a forged introduction and forged probes", idle, attacked)
            assert wait_for(lambda: w.counters().get("punches_failed", 0) == 1, 10,
                            lambda: rogue.run(lambda: False, 0.2))
            c = w.counters()
            assert 0 < c["probes_sent"] <= PUNCH_PROBES + 2, c  # (+ the last round)
            assert not c.get("punch_dials") and c.get("stray_probes") == 50, c
            assert c.get("intro_candidates_refused") == 1, c  # 100.64.77.2
        finally:
            rogue.close()
        w.rtt()


def test_address_reports_are_rate_limited() -> None:
    """Each address report a peer makes can publish `transport.reflexive`, which resets the
    router's punch backoff: one connection gets ADDR_BURST per 10 s."""
    from services.transport.endpoint import ADDR_BURST

    with world() as w:
        rogue = connected_rogue(w, b"\x2e" * 32)
        try:
            for port in range(20):
                send_control(rogue, B_ID, ["addr", ["10.66.0.1", 5000 + port], []])
            assert wait_for(lambda: w.counters().get("control_ignored", 0)
                            + ADDR_BURST - 1 >= 20, 5, lambda: rogue.run(lambda: False, 0.1))
            assert w.counters()["control_ignored"] == 20 - (ADDR_BURST - 1)
        finally:
            rogue.close()
        w.rtt()


def test_a_departed_stranger_is_not_redialled_or_remembered() -> None:
    """A peer that connected to B unasked leaves: B re-dialled it (8 times, with backoff)
    and kept its address for ever. Now it is forgotten; a node B's router asked for is
    still re-dialled (tests/e2e/test_transport.py)."""
    with world() as w:
        rogue = connected_rogue(w, b"\x2e" * 32)
        rogue.ep.close(B_ID, time.monotonic(), "leaving")
        rogue.run(lambda: False, 0.2)
        rogue.close()
        assert wait_for(lambda: w.counters()["peers"] == 1)
        assert not wait_for(lambda: w.counters().get("dials", 0) > 0, 2.5)  # 1st at 1 s
        c = w.counters()
        assert c["redial_addresses"] == 0 and not c.get("redials"), c
        w.rtt()


# -- 5. authentication checks, end to end ---------------------------------------------------


def test_a_copied_proof_does_not_pass_as_another_node() -> None:
    """M gets A to dial it and keeps A's binding and proof, then presents them on its own
    connection to B: the proof signs A's connection's channel binding, so B refuses it
    and keeps A's real connection."""
    with world() as w:
        stolen: list[bytes] = []
        m_rogue = Rogue(b"\x2e" * 32)
        real = m_rogue.ep._authenticate

        def keep(conn, data, now):  # type: ignore[no-untyped-def]
            stolen.append(data)
            real(conn, data, now)

        m_rogue.ep._authenticate = keep  # type: ignore[method-assign]
        m_id = m_rogue.ep.node_id
        host, port = m_rogue.sock.getsockname()
        try:
            connect = w.ca.send("transport", m.Connect(peer=m_id, host=host, port=port))
            m_rogue.run(lambda: bool(stolen) and A_ID in m_rogue.ep.peers)
            m_rogue.run(lambda: False, 0.3)  # M's own proof goes out: A's connect succeeds
            w.ca.recv("transport", connect)
            assert stolen
        finally:
            m_rogue.close()
        m2 = Rogue(b"\x2e" * 32)

        def replay(conn) -> None:  # type: ignore[no-untyped-def]
            conn.lane = conn.quic.get_next_available_stream_id(is_unidirectional=True)
            conn.quic.send_stream_data(conn.lane, len(stolen[0]).to_bytes(4, "big")
                                       + stolen[0])

        m2.ep._prove = replay  # type: ignore[method-assign]
        try:
            m2.ep.dial(B_ID, (w.ib.host, w.ib.port), time.monotonic())
            # M2 knows B from B's first flight; B's verdict on the copied proof ends it
            m2.run(lambda: any(isinstance(e, PeerClosed) for e in m2.events), 10)
            assert [e.reason for e in m2.events if isinstance(e, PeerClosed)] == [
                "authentication failed: signature does not verify"], m2.events
            c = w.counters()
            assert c.get("auth_failures") == 1 and not c.get("replaced"), c
        finally:
            m2.close()
        w.rtt()


def test_a_node_told_to_connect_to_itself_refuses() -> None:
    with world() as w:
        with pytest.raises(RemoteError) as err:
            w.cb.request("transport", m.Connect(peer=B_ID, host=w.ib.host, port=w.ib.port),
                         timeout_s=15)
        assert err.value.name in ("failed", "peer_timeout")
        peers = w.cb.request("transport", m.Peers())
        assert isinstance(peers, m.PeersReply)
        assert [p.node_id for p in peers.peers] == [A_ID]
        assert w.counters().get("auth_failures", 0) >= 1
        w.rtt()
