"""The node as a user runs it: `tom node up` under supervisord, status, kill -9, down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import endpoints as ep
from shared.bus import BusClient
from shared.paths import DataDir
from shared.wire import WireError
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.router import NodeInfo, NodeInfoReply
from shared.wire.messages.sys import Ping, PingReply
from tom.node import Supervisor, alive

pytestmark = pytest.mark.slow
RESTART_BOUND_S = 5.0


def tom(data: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                          capture_output=True, text=True, timeout=timeout)


def kill_leftovers(data: Path) -> None:
    """Whatever happened in the test, leave no supervisord or service behind."""
    try:
        tom(data, "node", "down", timeout=30)
    finally:
        try:
            pid = int((data / "run" / "supervisord.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        subprocess.run(["pkill", "-9", "-f", f"services.* --data {data}"], check=False)


@pytest.fixture(scope="module", params=["five-processes", "all-in-one"])
def running(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str, str]]:
    data = Path(tempfile.mkdtemp(prefix="tomn-", dir="/tmp"))
    args = ["node", "up"] + (["--all-in-one"] if request.param == "all-in-one" else [])
    try:
        up = tom(data, *args)
        assert up.returncode == 0, up.stdout + up.stderr
        yield data, request.param, up.stdout
    finally:
        kill_leftovers(data)
        shutil.rmtree(data, ignore_errors=True)


def status(data: Path) -> list[dict[str, object]]:
    out = tom(data, "node", "status", "--json")
    return list(json.loads(out.stdout))


def test_up_prints_node_id_and_healthy_status(running: tuple[Path, str, str]) -> None:
    data, _, out = running
    ident = tom(data, "id")
    assert ident.returncode == 0 and len(ident.stdout.strip()) == 64
    assert f"node {ident.stdout.strip()}" in out
    assert "healthy" in out and "NOT healthy" not in out


def test_status_shows_five_services_answering(running: tuple[Path, str, str]) -> None:
    data, mode, _ = running
    rows = status(data)
    assert [r["service"] for r in rows] == list(ep.ROLES)
    for r in rows:
        assert r["state"] in ("RUNNING", "STARTING"), r
        assert isinstance(r["pid"], int) and isinstance(r["ping_ms"], float), r
        st = r["status"]
        assert isinstance(st, dict) and st["service"] == r["service"] and st["uptime_s"] >= 0
    pids = {r["pid"] for r in rows}
    assert len(pids) == (1 if mode == "all-in-one" else 5)
    text = tom(data, "node", "status")
    assert text.returncode == 0 and "healthy" in text.stdout


def test_a_closed_pipe_ends_a_listing_quietly(running: tuple[Path, str, str]) -> None:
    """`tom peers | head -1` and the like, once head has gone: exit 141, no traceback."""
    data, _, _ = running
    for args in (("peers",), ("node", "status"), ("backup",)):
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), *args],
                               stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w)
        assert (p.returncode, p.stderr) == (141, ""), (args, p.stderr)


def test_ping_command(running: tuple[Path, str, str]) -> None:
    data, _, _ = running
    for role in ep.ROLES:
        r = tom(data, "ping", role, "-c", "3")
        assert r.returncode == 0 and f"{role} answered 3 ping(s)" in r.stdout, r.stderr


def wait_healthy(data: Path, old_pid: int, role: str, program: str, bound_s: float) -> float:
    """Seconds until ``role`` answers ping again from a new process (fails past ``bound_s``)."""
    sup = Supervisor(DataDir(data))
    t0 = time.monotonic()
    with BusClient(ep.load(data / "endpoints.toml"), timeout_s=0.2) as c:
        while (elapsed := time.monotonic() - t0) < bound_s:
            try:
                reply = c.request(role, Ping())
            except WireError:
                continue  # each attempt waits up to 0.2 s for an answer
            assert isinstance(reply, PingReply)
            procs = {p["name"]: p for p in sup.processes()}
            if reply.pid != old_pid and procs[program]["statename"] in ("RUNNING", "STARTING"):
                return elapsed
    raise AssertionError(f"{role} not healthy within {bound_s} s after kill -9")


@pytest.mark.parametrize("role", ep.ROLES)
def test_kill_9_is_restarted_within_5s(running: tuple[Path, str, str], role: str) -> None:
    data, mode, _ = running
    program = "node" if mode == "all-in-one" else role
    sup = Supervisor(DataDir(data))
    t0 = time.monotonic()
    while {p["name"]: p for p in sup.processes()}[program]["statename"] != "RUNNING":
        # a process killed while STARTING counts as a failed start (backoff), which is
        # another scenario; wait until supervisord has seen it run for startsecs
        assert time.monotonic() - t0 < 10, "never reached RUNNING"
        time.sleep(0.05)
    pid = next(r["pid"] for r in status(data) if r["service"] == role)
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    wait_healthy(data, pid, role, program, RESTART_BOUND_S)
    rows = status(data)
    assert all(r["ping_ms"] is not None for r in rows), rows


DOWN_BOUND_S = 3.0
"""`tom node down` of a node holding nothing for others, interpreter start included: it took
5.5-6 s when supervisord's shutdown stopped one program per 1 s turn of its main loop."""
STOPPED_BOUND_S = 2.0
"""`tom node status` of a stopped node, interpreter start included (it took 6 s: two bus
timeouts per service)."""


def test_down_stops_everything_quickly() -> None:
    data = Path(tempfile.mkdtemp(prefix="tomd-", dir="/tmp"))
    try:
        assert tom(data, "node", "up").returncode == 0
        pids = [r["pid"] for r in status(data)]
        sup_pid = int((data / "run" / "supervisord.pid").read_text())
        t0 = time.monotonic()
        down = tom(data, "node", "down")
        took = time.monotonic() - t0
        assert down.returncode == 0, down.stderr
        for pid in [*pids, sup_pid]:
            assert isinstance(pid, int)
            assert not alive(pid)  # (supervisord, a daemon, may wait for init as a zombie)
        print(f"tom node down: {took:.2f} s")
        assert took < DOWN_BOUND_S, down.stdout
        for args in (("node", "status"), ("peers",), ("ping", "router"), ("node", "down")):
            t0 = time.monotonic()
            st = tom(data, *args)
            took = time.monotonic() - t0
            assert st.returncode == 3, (args, st.stdout, st.stderr)
            assert st.stderr == "tom: the node is not running (start it with `tom node up`)\n"
            assert took < STOPPED_BOUND_S, (args, took)
    finally:
        kill_leftovers(data)
        shutil.rmtree(data, ignore_errors=True)


def holders(path: Path) -> set[int]:
    """Pids of every process on the machine that has ``path`` open."""
    found = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) == str(path):
                    found.add(int(fd_dir.parent.name))
        except OSError:
            continue  # the process ended or is not ours to inspect
    return found


def test_only_crypto_holds_the_key_file(running: tuple[Path, str, str]) -> None:
    data, mode, _ = running
    rows = {r["service"]: r["pid"] for r in status(data)}
    assert holders((data / "identity.key").resolve()) == {rows["crypto"]}
    if mode == "five-processes":
        assert all(isinstance(pid, int) and pid != rows["crypto"]
                   for role, pid in rows.items() if role != "crypto")


def test_identity_survives_restarts(running: tuple[Path, str, str]) -> None:
    """The id printed by `node up` is still the node's after crypto was killed and
    restarted (the kill tests above ran first) and after a full down/up."""
    data, mode, out = running
    ident = tom(data, "id").stdout.strip()
    assert f"node {ident}" in out
    with BusClient(ep.load(data / "endpoints.toml")) as c:
        reply = c.request("router", NodeInfo(), timeout_s=5)
        assert isinstance(reply, NodeInfoReply) and reply.node_id.hex() == ident
        crypto = c.request("crypto", NodeId(), timeout_s=5)
        assert isinstance(crypto, NodeIdReply) and crypto.node_id.hex() == ident
    assert tom(data, "node", "down").returncode == 0
    args = ["node", "up"] + (["--all-in-one"] if mode == "all-in-one" else [])
    again = tom(data, *args)
    assert again.returncode == 0 and f"node {ident}" in again.stdout
