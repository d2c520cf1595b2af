"""Groups benchmark: group message → received by every member, group messages/s, and hub
failover, between whole nodes on loopback, beside the 1:1 message → delivered of the same
nodes in the same run.

    .venv/bin/python -m bench.bench_groups        # quick: 5 members (five-process and
                                                  # all-in-one nodes), 3 fast failovers; ~2 min
    .venv/bin/python -m bench.bench_groups --sizes 5,5aio,20aio,20aio-star,50aio-star \\
        --rounds 100 --tput-n 1000 --rtt-n 200 --tput-1to1 1000 --kills 20 \\
        --failover fast,default                   # the docs/benchmarks.md run; ~25 min

Options: ``--sizes`` (comma list: ``N`` a group of N five-process nodes, ``Naio`` of N
``--all-in-one`` nodes, one process each; 20 and 50 members only fit on 2 cores as
all-in-one nodes; ``-star`` appended: members reach the hub only, see below),
``--rounds`` (timed group messages per size, one at a time, after ``--warmup``),
``--tput-n`` (messages per throughput measurement), ``--window`` (``groups.send``
requests in flight per sender), ``--rtt-n`` /
``--tput-1to1`` (the 1:1 baseline), ``--kills`` (hub kills per failover setting),
``--failover`` (``fast``, ``default`` or both, comma separated; ``none`` to skip),
``--payload``, ``--rate-per-s``, ``--keep``, ``--out``.

Every node is a real one: ``python -m tom.cli --data DIR node up [--all-in-one]`` in a fresh
``/tmp/tbg…`` directory whose ``node.toml`` binds the transport to 127.0.0.1 on a fixed free
UDP port (a restarted node is found where it was). Every node the benchmark started is stopped
in a ``finally`` (also on Ctrl-C or SIGTERM): ``node down``, then whatever is left of it killed
by pid (supervisord from its pid file, the services found in /proc by their ``--data``).

Per size (one set of nodes each):

1. Start N nodes (4 at a time), introduce every member and the hub to each other
   (``router.add_peer`` on both at once, see ``introduce``; in batches of 4: every node is
   127.0.0.1, and a transport gives one address at most 8 half-open handshakes), create
   the group on the first node (the hub, a member) and have every other node accept its
   invitation (``groups.join``). Warm-up: every member sends one message and the benchmark
   waits until every member's ``groups.history`` has all N (the sender keys have reached
   everyone; the routers have found each other).
2. 1:1 baseline between the sender (the second node) and the hub node: ``router.send`` →
   ``router.status`` ``delivered`` one at a time (``bench.bench_router.measure_rtt``, p50/p99
   over ``--rtt-n``), and ``--tput-1to1`` messages with ``--window`` in flight until the
   sender's outbox shows every one ``delivered`` (messages/s).
3. Group latency: the sender sends one message at a time (``groups.send``) and the benchmark
   waits for the ``groups.message`` event of that message on **every** member (the sender
   and the hub included): it is subscribed to each member's ``groups.events`` (PUB) from one
   thread that timestamps every event as it reads it. p50/p99 of send → last member's event
   over ``--rounds`` after ``--warmup``, and of send → ``groups.send`` reply, send → the
   sender's ``groups.status`` ``ordered`` (the hub's entry back at the sender) and send →
   first other member's event.
4. Group messages/s, two ways: one sender (the second node) sends ``--tput-n`` messages with
   ``--window`` requests in flight; then every member sends ``--tput-n / N`` at once (window
   each). Rate = messages / (first send → the last member's event for the last message);
   also member-deliveries/s (× N). Events are the measure; a member whose events are
   incomplete at the end is checked in its history (counted as ``from_history``).
5. CPU seconds of every node process (from /proc) during each phase, summed for the hub
   node, the sender's node and the other members; every node's groups counters that moved.
   Idle CPU of the N nodes over 3 s before the measurements.

Members that exchange sender keys end up connected to each other (their routers dial or
punch a direct path for the keys), so a group of N is a full mesh of N(N-1)/2 QUIC
connections, each kept alive by a PING every second from both ends: on one machine that costs
O(N²) CPU while idle (0.65-0.84 cores for 20 members here; 50 members would need about 4
cores, and did not complete the warm-up on 2). ``-star`` sizes measure the group's own path
without that mesh: members reach the hub only (as root with iptables: UDP on loopback to a
member's port is dropped unless it comes from the hub's, chain ``TOMBENCHSTAR``, removed at
the end; elsewhere ``[transport] max_connections = 1`` for members, which breaks down at 50,
docs/benchmarks.md, Groups), and sender keys go through the hub as the relay the groups
service names. Members join in waves of ``JOIN_WAVE``. A size whose warm-up does not
complete is reported with per-node diagnostics (``warmup_failed`` in the JSON: messages
missing, members without a path, groups counters) and the run goes on.

Every rate phase also records whether a transport throttled a stranger's envelopes
(``throttled_strangers``: a peer introduced after it connected is a stranger there, read at
250 envelopes/s); such figures are marked ‡.

The hub rate-limits each member to ``rate_per_s`` ordered messages per second (default 20,
burst 50; more wait ``resend_s``, 10 s): the benchmark sets ``--rate-per-s`` (default 10 000)
so that the figures are what the hub can order, not the limit.

Failover (``--failover``): five five-process nodes, all introduced to each other, a group of
four (A B C D) hosted by the fifth (E, not a member); ``[groups]`` settings ``fast``
(beat_s 0.5, takeover_after_s 3, claim_wait_s 1, resend_s 2: those of tests/e2e/test_groups.py)
or ``default`` (3 / 12 / 3 / 10). ``--kills`` times: check that one message from every
member reaches every member, kill the current hub's whole node with SIGKILL (supervisord
first, then its five services, by pid), send one message from each survivor at once, and time
kill → every survivor has the ``groups.changed`` ``hub`` event of the new term (also checked
with ``groups.list``: every survivor lists the same new hub), kill → the first post-kill
message's ``ordered`` status at its sender (the new hub ordered it) and → every post-kill
message received by every survivor; then ``node up`` the killed node again and time until it
follows the new hub (a member) or has dropped the group (E). The next kill is of the new hub,
so after the first kill the hub is a member. At the end every member's history must hold
every accepted message once, in one order.

Prints a JSON summary and markdown tables; writes bench/results/groups.json.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import functools
import json
import math
import os
import queue
import shutil
import signal
import socket as pysocket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from bench.bench_bus import cpu_seconds, machine
from bench.bench_router import measure_rtt, tom
from shared import endpoints as ep
from shared.bus import socket as bus_socket
from shared.paths import DataDir
from shared.wire import BusTimeout, DecodeError, RemoteError, WireError, decode
from shared.wire.errors import ErrorCode
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm
from shared.wire.messages.sys import Status, StatusReply
from tom.client import Client

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "groups.json"
RETRYABLE = (ErrorCode.PEER_TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED)
FAILOVER_SETTINGS = {
    "fast": {"beat_s": 0.5, "takeover_after_s": 3.0, "claim_wait_s": 1.0, "resend_s": 2.0},
    "default": {"beat_s": 3.0, "takeover_after_s": 12.0, "claim_wait_s": 3.0,
                "resend_s": 10.0},
}
START_PARALLEL = 4
INTRO_BATCH = 4


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def until(what: str, check: Callable[[], object], timeout_s: float,
          every_s: float = 0.05) -> Any:
    """Poll ``check`` (the nodes' own state) until it is truthy; RuntimeError at the
    deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def free_udp_port() -> int:
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def stats_ms(values_s: list[float]) -> dict[str, float]:
    """p50 / p99 / max / mean of durations in seconds, in ms (nearest rank)."""
    if not values_s:
        return {"n": 0}
    return {"n": len(values_s), "p50_ms": 1000 * pct(values_s, 50),
            "p99_ms": 1000 * pct(values_s, 99), "max_ms": 1000 * max(values_s),
            "mean_ms": 1000 * sum(values_s) / len(values_s), "min_ms": 1000 * min(values_s)}


# -- nodes -------------------------------------------------------------------------------------

def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _env_has(pid: int, item: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return item in f.read().split(b"\0")
    except OSError:
        return False


class BenchNode:
    """One whole node in its own /tmp data directory, on a fixed UDP port."""

    def __init__(self, name: str, tmp: Path, all_in_one: bool,
                 groups: dict[str, float] | None = None,
                 transport: dict[str, float] | None = None) -> None:
        self.name = name
        self.all_in_one = all_in_one
        self.data = tmp / name
        self.port = free_udp_port()
        self.client: Client | None = None
        self.id = b""
        self.data.mkdir(mode=0o700)
        toml = ("[transport]\nhost = \"127.0.0.1\"\n"
                f"port = {self.port}\nport_fallback = false\n")
        toml += "".join(f"{k} = {v}\n" for k, v in (transport or {}).items())
        if groups:
            toml += "[groups]\n" + "".join(f"{k} = {v}\n" for k, v in groups.items())
        (self.data / "node.toml").write_text(toml)

    @property
    def c(self) -> Client:
        assert self.client is not None, f"node {self.name} is not up"
        return self.client

    def start(self) -> None:
        args = ["node", "up"] + (["--all-in-one"] if self.all_in_one else [])
        up = tom(self.data, *args, timeout=120)
        if up.returncode != 0:
            raise RuntimeError(f"node up {self.data} failed:\n{up.stdout}{up.stderr}")
        self.client = Client(DataDir(self.data), timeout_s=30)
        self.id = self.c.node_id()

    def g(self, body: Any, blobs: tuple[bytes, ...] = (), timeout_s: float | None = None
          ) -> Any:
        return self.c.bus.call("groups", body, blobs, timeout_s=timeout_s).body

    def groups(self) -> dict[str, gm.GroupInfo]:
        reply = self.g(gm.ListGroups())
        assert isinstance(reply, gm.ListReply)
        return {g.group_id: g for g in reply.groups}

    def history(self, gid: str) -> list[gm.StoredMessage]:
        out: list[gm.StoredMessage] = []
        after = 0
        while True:
            reply = self.g(gm.History(group_id=gid, after=after, limit=1000))
            assert isinstance(reply, gm.HistoryReply)
            if not reply.messages:
                return out
            out += reply.messages
            after = reply.messages[-1].seq

    def counters(self, role: str = "groups") -> dict[str, int]:
        reply = self.c.bus.request(role, Status())
        assert isinstance(reply, StatusReply)
        return dict(reply.counters)

    def send(self, gid: str, text: bytes, mid: bytes | None = None,
             deadline_s: float = 60) -> bytes:
        """``groups.send`` (same id on every retry); its id once the service stored it."""
        mid = mid or os.urandom(16)
        end = time.monotonic() + deadline_s
        while True:
            try:
                reply = self.g(gm.Send(group_id=gid, id=mid), (text,))
                assert isinstance(reply, gm.SendReply)
                return reply.id
            except BusTimeout:
                if time.monotonic() > end:
                    raise
            except RemoteError as e:
                if e.code not in RETRYABLE or time.monotonic() > end:
                    raise
                time.sleep(0.2)  # the service was restarting or busy

    # -- processes ----------------------------------------------------------------------------

    def supervisord_pid(self) -> int | None:
        try:
            pid = int((self.data / "run" / "supervisord.pid").read_text())
        except (OSError, ValueError):
            return None
        # the pid file may be stale: it must be a supervisord started for this data directory
        ok = any("supervisord" in a for a in _argv(pid)) and \
            _env_has(pid, f"TOM_DATA={self.data.resolve()}".encode())
        return pid if ok else None

    def service_pids(self) -> dict[int, str]:
        """pid → role (``node`` for an all-in-one process) of this node's services."""
        want = str(self.data)
        out: dict[int, str] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = _argv(int(entry))
            if "--data" in argv[:-1] and argv[argv.index("--data") + 1] == want \
                    and "-m" in argv[:-1]:
                module = argv[argv.index("-m") + 1]
                if module == "services" or module.startswith("services."):
                    out[int(entry)] = module.removeprefix("services.") \
                        if module != "services" else "node"
        return out

    def kill(self) -> None:
        """SIGKILL of supervisord (first: it would restart the services), then of every
        service of this node, by pid."""
        sup = self.supervisord_pid()
        if sup is not None:
            try:
                os.kill(sup, signal.SIGKILL)
            except OSError:
                pass
        for pid in self.service_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.client is not None:
            self.client.close()
            self.client = None

    def down(self) -> None:
        """``node down``, then kill whatever is left, and wait until nothing is."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.supervisord_pid() is not None:
            try:
                tom(self.data, "node", "down", timeout=30)
            except Exception:  # noqa: BLE001 - whatever happened, what is left is killed below
                pass
        deadline = time.monotonic() + 15
        clear = 0
        while clear < 2 and time.monotonic() < deadline:  # twice, 0.3 s apart: a supervisord
            if self.supervisord_pid() is not None or self.service_pids():  # still starting
                self.kill()  # may spawn one more service meanwhile
                clear = 0
            else:
                clear += 1
            time.sleep(0.3)  # waiting for the kernel to reap them


def start_all(nodes: list[BenchNode]) -> None:
    with concurrent.futures.ThreadPoolExecutor(START_PARALLEL) as pool:
        for f in [pool.submit(n.start) for n in nodes]:
            f.result()


def down_all(nodes: Iterable[BenchNode]) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(n.down) for n in nodes]:
            try:
                f.result()
            except Exception as e:  # noqa: BLE001 - go on stopping the others
                print(f"stopping a node failed: {e}", file=sys.stderr)


def connected(a: BenchNode, b: BenchNode) -> bool:
    return any(p.node_id == b.id and p.connected for p in a.c.peers())


def introduce(pairs: list[tuple[BenchNode, BenchNode]], timeout_s: float = 60) -> None:
    """``a`` and ``b`` add each other (router.add_peer on both, back to back, before their
    connection is up), a few pairs at a time, until connected.

    Both at once, because only a router that is not yet connected to the peer asks its
    transport to dial (``transport.connect``), and only that makes the transport treat the
    peer as one its owner asked for: added once connected, the peer stays a stranger there,
    whose envelopes are read at 250/s (2 s bursts; ``[transport]
    stranger_envelopes_per_s``)."""
    for i in range(0, len(pairs), INTRO_BATCH):
        batch = pairs[i:i + INTRO_BATCH]
        for a, b in batch:  # both requests leave before either reply is awaited
            reqs = [(x, x.c.bus.send("router", rm.AddPeer(node_id=y.id, host="127.0.0.1",
                                                          port=y.port)))
                    for x, y in ((a, b), (b, a))]
            for x, req in reqs:
                x.c.bus.recv("router", req)
        until("connections " + ", ".join(f"{a.name}→{b.name}" for a, b in batch),
              functools.partial(all_connected, batch), timeout_s, 0.1)


def all_connected(pairs: list[tuple[BenchNode, BenchNode]]) -> bool:
    return all(connected(a, b) for a, b in pairs)


def transport_ready(n: BenchNode) -> bool:
    reply = n.c.bus.request("transport", tm.Info())
    assert isinstance(reply, tm.InfoReply)
    return reply.ready


# -- events ------------------------------------------------------------------------------------

@dataclass
class Seen:
    """What the collector has read, with the perf_counter time it read it."""

    messages: dict[bytes, dict[str, float]] = field(default_factory=dict)
    ordered: dict[bytes, float] = field(default_factory=dict)
    hub: dict[tuple[str, int], dict[str, tuple[float, bytes]]] = field(default_factory=dict)
    ordered_ms: dict[bytes, int] = field(default_factory=dict)
    """When the hub ordered each message (its entry's time, the hub's wall clock, ms)."""
    count: int = 0


class Collector(threading.Thread):
    """Subscribed to the ``groups.events`` of every node, from one thread: timestamps every
    ``groups.message``, ``groups.status`` ``ordered`` and ``groups.changed`` ``hub``."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="groups-events")
        self.ctx: zmq.Context = zmq.Context.instance()
        self.cmds: queue.Queue[tuple[str, Any, threading.Event]] = queue.Queue()
        self.cond = threading.Condition()
        self.seen = Seen()
        self.stopping = False
        self.error: BaseException | None = None

    def add(self, node: BenchNode) -> None:
        self._cmd("add", node)

    def remove(self, node: BenchNode) -> None:
        self._cmd("remove", node)

    def _cmd(self, what: str, arg: Any) -> None:
        done = threading.Event()
        self.cmds.put((what, arg, done))
        if not done.wait(10):
            raise RuntimeError(f"event collector did not {what} a node: {self.error}")

    def stop(self) -> None:
        self.stopping = True
        self.join(5)

    def wait(self, pred: Callable[[Seen], bool], timeout_s: float,
             every_s: float | None = None) -> bool:
        """Until ``pred`` holds: checked at every batch of events, or every ``every_s``
        (a costly check; the events keep the times they were read at either way)."""
        if every_s is None:
            with self.cond:
                return self.cond.wait_for(lambda: pred(self.seen), timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            with self.cond:
                if pred(self.seen):
                    return True
            if time.monotonic() > deadline or self.error is not None:
                return False
            time.sleep(every_s)

    def run(self) -> None:
        socks: dict[str, zmq.Socket] = {}
        names: dict[zmq.Socket, str] = {}
        poller = zmq.Poller()
        try:
            while not self.stopping:
                while not self.cmds.empty():
                    what, node, done = self.cmds.get()
                    if what == "add" and node.name not in socks:
                        s = bus_socket(self.ctx, zmq.SUB, hwm=0)
                        s.setsockopt(zmq.SUBSCRIBE, b"")
                        url = ep.load(DataDir(node.data).endpoints)["groups"].events
                        node.c.bus.connect(s, "groups", url)
                        socks[node.name], names[s] = s, node.name
                        poller.register(s, zmq.POLLIN)
                    elif what == "remove" and node.name in socks:
                        s = socks.pop(node.name)
                        poller.unregister(s)
                        del names[s]
                        s.close(0)
                    done.set()
                if not socks:
                    time.sleep(0.02)  # nothing to read yet: waiting for a command
                    continue
                ready = poller.poll(20)
                if not ready:
                    continue
                got: list[tuple[str, float, Any]] = []
                for s, _ in ready:
                    while True:
                        try:
                            frames = s.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        t = time.perf_counter()
                        try:
                            body = decode(frames[1:]).body
                        except DecodeError:
                            continue
                        got.append((names[s], t, body))
                with self.cond:
                    seen = self.seen
                    for name, t, body in got:
                        seen.count += 1
                        if isinstance(body, gm.MessageReceived):
                            seen.messages.setdefault(body.id, {}).setdefault(name, t)
                            seen.ordered_ms.setdefault(body.id, body.timestamp_ms)
                        elif isinstance(body, gm.SendStatus) and body.status == "ordered":
                            seen.ordered.setdefault(body.id, t)
                        elif isinstance(body, gm.GroupChanged) and body.change == "hub":
                            seen.hub.setdefault((body.group_id, body.term), {}).setdefault(
                                name, (t, body.hub))
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - reported by the waiting thread
            self.error = e
            with self.cond:
                self.cond.notify_all()
        finally:
            for s in socks.values():
                s.close(0)


# -- CPU and counters --------------------------------------------------------------------------

def cpu_snapshot(nodes: list[BenchNode]) -> dict[str, dict[str, float]]:
    """CPU seconds of every service process, per node and role; ``bench`` this process."""
    out: dict[str, dict[str, float]] = {"bench": {"bench": time.process_time()}}
    for n in nodes:
        per: dict[str, float] = {}
        for pid, role in n.service_pids().items():
            try:
                per[role] = per.get(role, 0.0) + cpu_seconds(pid)
            except OSError:
                pass
        out[n.name] = per
    return out


def cpu_used(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], hub: str,
             sender: str, wall_s: float) -> dict[str, Any]:
    """CPU seconds between two snapshots: hub node, sender node, the other members, the
    benchmark; per role summed over every node; % of the 2 cores' wall time."""
    groups: dict[str, float] = collections.defaultdict(float)
    roles: dict[str, float] = collections.defaultdict(float)
    for node, per in b.items():
        for role, sec in per.items():
            used = max(0.0, sec - a.get(node, {}).get(role, sec))
            who = "bench" if node == "bench" else "hub node" if node == hub else \
                "sender node" if node == sender else "other members"
            groups[who] += used
            roles[role] += used
    total = sum(groups.values())
    return {"wall_s": wall_s, "total_cpu_s": total,
            "cores_busy": total / wall_s if wall_s > 0 else 0.0,
            "by_node": dict(groups), "by_role": dict(roles)}


def counters_all(nodes: list[BenchNode], role: str = "groups") -> dict[str, dict[str, int]]:
    out = {}
    for n in nodes:
        try:
            out[n.name] = n.counters(role)
        except WireError:
            out[n.name] = {}
    return out


def counters_moved(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]], hub: str
                   ) -> dict[str, dict[str, int]]:
    """Groups counters that moved: the hub's, and the sum over the other nodes."""
    hub_moved: dict[str, int] = {}
    others: dict[str, int] = collections.defaultdict(int)
    for node, after in b.items():
        before = a.get(node, {})
        for k, v in after.items():
            d = v - before.get(k, 0)
            if d:
                if node == hub:
                    hub_moved[k] = d
                else:
                    others[k] += d
    return {"hub": hub_moved, "members": dict(others)}


# -- one size ----------------------------------------------------------------------------------

FIREWALL_CHAIN = "TOMBENCHSTAR"


def star_firewall(hub_port: int, member_ports: list[int]) -> None:
    """Drop UDP on loopback to each member's port unless it comes from the hub's; with no
    ports, remove the rules (and the chain) again."""
    def ipt(*a: str, check: bool = True) -> None:
        subprocess.run(["iptables", "-w", *a], check=check, capture_output=True)
    jump = ("INPUT", "-i", "lo", "-p", "udp", "-j", FIREWALL_CHAIN)
    ipt("-D", *jump, check=False)
    ipt("-F", FIREWALL_CHAIN, check=False)
    ipt("-X", FIREWALL_CHAIN, check=False)
    if not member_ports:
        return
    ipt("-N", FIREWALL_CHAIN)
    for port in member_ports:
        ipt("-A", FIREWALL_CHAIN, "-p", "udp", "--dport", str(port), "!", "--sport",
            str(hub_port), "-j", "DROP")
    ipt("-I", *jump)


JOIN_WAVE = 10
"""Members that join at once: the next wave joins when the hub has admitted this one (as
people join a group over time; 49 joins in the same second are a storm of 49 × 49 key and
entry deliveries that a hub sharing 2 cores with 49 other nodes does not absorb)."""


def make_group(hub: BenchNode, members: list[BenchNode], name: str, timeout_s: float) -> str:
    """``hub`` creates the group (and hosts it) and invites ``members``; they join in waves
    of ``JOIN_WAVE``."""
    reply = hub.g(gm.Create(name=name, members=[m.id for m in members]))
    assert isinstance(reply, gm.CreateReply)
    gid = reply.group_id
    for i in range(0, len(members), JOIN_WAVE):
        wave = members[i:i + JOIN_WAVE]
        for m in wave:
            until(f"{m.name} invited to {name}", functools.partial(invited, m, gid),
                  timeout_s, 0.1)
            m.g(gm.Join(group_id=gid))
        admitted = 1 + i + len(wave)
        until(f"the hub admitted {admitted} members", lambda n=admitted: gid in (
            gs := hub.groups()) and len(gs[gid].members) == n, timeout_s, 0.2)
    everyone = [hub, *members]
    until(f"{name} has {len(everyone)} members on every member", lambda: all(
        gid in (gs := n.groups()) and len(gs[gid].members) == len(everyone)
        for n in everyone), timeout_s, 0.2)
    return gid


def make_group_hosted(creator: BenchNode, members: list[BenchNode], hub: BenchNode,
                      name: str, timeout_s: float) -> str:
    """``creator`` creates a group hosted by ``hub`` (not a member) and invites ``members``."""
    reply = creator.g(gm.Create(name=name, members=[m.id for m in members], hub=hub.id))
    assert isinstance(reply, gm.CreateReply)
    gid = reply.group_id
    for m in members:
        until(f"{m.name} invited to {name}", functools.partial(invited, m, gid), timeout_s, 0.1)
        m.g(gm.Join(group_id=gid))
    everyone = [creator, *members]
    until(f"{name} has {len(everyone)} members on every member", lambda: all(
        gid in (gs := n.groups()) and len(gs[gid].members) == len(everyone)
        for n in everyone), timeout_s, 0.2)
    return gid


def diagnose(nodes: list[BenchNode], gid: str, warm: set[bytes]) -> dict[str, Any]:
    """Why the warm-up did not complete: per node, the warm-up messages it lacks, its
    groups counters and queues, its connected peers, load average."""
    out: dict[str, Any] = {"loadavg": os.getloadavg()}
    for n in nodes:
        row: dict[str, Any] = {}
        try:
            row["missing"] = len(warm - {m.id for m in n.history(gid)})
            reply = n.c.bus.request("groups", Status())
            assert isinstance(reply, StatusReply)
            row["groups"] = {"counters": dict(reply.counters), "queues": dict(reply.queues)}
            peers = {p.node_id: p for p in n.c.peers()}
            names = {m.id: m.name for m in nodes}
            row["connected"] = sum(p.connected for p in peers.values())
            row["connected_to"] = sorted(names.get(p.node_id, p.node_id.hex()[:8])
                                         for p in peers.values() if p.connected)
            row["unknown"] = sorted(m.name for m in nodes if m is not n and m.id not in peers)
            row["no_path"] = sorted(m.name for m in nodes if m is not n and m.id in peers
                                    and peers[m.id].path == "none")
            row["no_path_to"] = len(row["unknown"]) + len(row["no_path"])
            row["transport"] = n.counters("transport")
        except (WireError, AssertionError) as e:
            row["error"] = repr(e)
        out[n.name] = row
    lacking = {k: v.get("missing") for k, v in out.items() if isinstance(v, dict)
               and v.get("missing")}
    no_path = {k: v.get("no_path_to") for k, v in out.items() if isinstance(v, dict)
               and v.get("no_path_to")}
    log(f"warm-up incomplete: messages missing per node {lacking}; members a node has no "
        f"path to {no_path}; load {out['loadavg']}")
    return out


def connections(nodes: list[BenchNode]) -> dict[str, float]:
    """Peers each node's router lists as connected: min / mean / max over the nodes."""
    counts = [sum(p.connected for p in n.c.peers()) for n in nodes]
    return {"min": min(counts), "mean": sum(counts) / len(counts), "max": max(counts)}


def has_all(node: BenchNode, gid: str, ids: set[bytes]) -> bool:
    return ids <= {m.id for m in node.history(gid)}


def invited(node: BenchNode, gid: str) -> bool:
    reply = node.g(gm.ListGroups())
    return any(i.group_id == gid for i in reply.invites)


def received_by(mid: bytes, n: int, seen: Seen) -> bool:
    return len(seen.messages.get(mid, ())) == n


def one_to_one_tput(ca: Client, b_id: bytes, n: int, window: int, payload: int
                    ) -> dict[str, Any]:
    """``n`` encrypted ``router.send`` with ``window`` in flight; until the sender's outbox
    shows every one delivered (the last ACK's ``updated_ms``)."""
    pad = os.urandom(payload)
    inflight: collections.deque[tuple[bytes, bytes]] = collections.deque()
    ids: list[bytes] = []
    todo = n
    t0 = time.time()
    while todo or inflight:
        if todo and len(inflight) < window:
            msg_id = os.urandom(16)
            inflight.append((ca.bus.send("router", rm.Send(to=b_id, id=msg_id, encrypt=True),
                                         (pad,)), msg_id))
            todo -= 1
            continue
        req, msg_id = inflight.popleft()
        try:
            ca.bus.recv("router", req)
            ids.append(msg_id)
        except RemoteError as e:
            if e.code not in RETRYABLE:
                raise
            todo += 1
            time.sleep(0.01)
    def all_delivered() -> list[rm.MessageState] | None:
        states = ca.outbox(ids)
        ok = len(states) == n and all(m.status in ("delivered", "read") for m in states)
        return states if ok else None

    states = until("every 1:1 message delivered", all_delivered, 120, 0.2)
    last = max(m.updated_ms for m in states) / 1000
    return {"n": n, "window": window, "delivered_s": last - t0,
            "delivered_per_s": n / (last - t0)}


class Sender:
    """One member sending ``groups.send`` with a window of requests in flight."""

    def __init__(self, node: BenchNode, gid: str, mids: list[bytes], text: bytes) -> None:
        self.node, self.gid, self.text = node, gid, text
        self.todo = collections.deque(mids)
        self.inflight: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.retries = 0

    def top_up(self, window: int) -> None:
        bus = self.node.c.bus
        while self.todo and len(self.inflight) < window:
            mid = self.todo.popleft()
            self.inflight.append((bus.send("groups", gm.Send(group_id=self.gid, id=mid),
                                           (self.text,)), mid))

    def settle_one(self) -> None:
        req, mid = self.inflight.popleft()
        try:
            self.node.c.bus.recv("groups", req)
        except (RemoteError, BusTimeout) as e:
            if isinstance(e, RemoteError) and e.code not in RETRYABLE:
                raise
            self.retries += 1
            self.todo.appendleft(mid)  # the same id: the service keeps it once
            time.sleep(0.01)


def group_tput(col: Collector, members: list[BenchNode], senders: list[BenchNode], gid: str,
               n: int, window: int, text: bytes, timeout_s: float) -> dict[str, Any]:
    per = max(1, n // len(senders))
    plan = {s.name: [os.urandom(16) for _ in range(per)] for s in senders}
    all_ids = [m for ids in plan.values() for m in ids]
    names = [m.name for m in members]
    work = [Sender(s, gid, plan[s.name], text) for s in senders]
    t0 = time.perf_counter()
    while any(w.todo or w.inflight for w in work):
        for w in work:
            w.top_up(window)
        for w in work:
            if w.inflight:
                w.settle_one()
    t_accepted = time.perf_counter()

    pending = set(all_ids)

    def done(seen: Seen) -> bool:
        for m in list(pending):
            if len(seen.messages.get(m, ())) == len(names):
                pending.discard(m)
        return not pending

    complete = col.wait(done, timeout_s, 0.02)
    with col.cond:
        got = {m: dict(col.seen.messages.get(m, {})) for m in all_ids}
        ordered = [col.seen.ordered.get(m) for m in all_ids]
    from_history = 0
    if not complete:  # events missed (or messages lost): the histories say which
        ids = set(all_ids)
        for node in members:
            missing = {m for m in all_ids if node.name not in got[m]}
            if missing:
                held = ids & {h.id for h in node.history(gid)}
                lost = missing - held
                if lost:
                    raise RuntimeError(f"{node.name} lacks {len(lost)} of {len(ids)} messages "
                                       f"after {timeout_s:g} s")
                from_history += len(missing)
    t_last = max(t for per_m in got.values() for t in per_m.values())
    t_ordered = max((t for t in ordered if t is not None), default=float("nan"))
    elapsed = t_last - t0
    return {"senders": len(senders), "n": len(all_ids), "window": window,
            "accepted_s": t_accepted - t0, "ordered_s": t_ordered - t0, "all_received_s": elapsed,
            "msgs_per_s": len(all_ids) / elapsed,
            "member_deliveries_per_s": len(all_ids) * len(names) / elapsed,
            "send_retries": sum(w.retries for w in work), "from_history": from_history,
            "t0": t0}


def group_latency(col: Collector, members: list[BenchNode], sender: BenchNode, gid: str,
                  rounds: int, warmup: int, text: bytes) -> dict[str, Any]:
    names = [m.name for m in members]
    last, reply, ordered, first_other, at_hub, hub_to_last = [], [], [], [], [], []
    for i in range(warmup + rounds):
        mid = os.urandom(16)
        t0_wall = time.time()
        t0 = time.perf_counter()
        sender.send(gid, text, mid)
        t_reply = time.perf_counter()
        if not col.wait(functools.partial(received_by, mid, len(names)), 60):
            with col.cond:
                got = sorted(col.seen.messages.get(mid, {}))
            raise RuntimeError(f"group message {i} not received by every member within 60 s "
                               f"(events from {got}); collector error: {col.error}")
        with col.cond:
            at = dict(col.seen.messages[mid])
            t_ord = col.seen.ordered.get(mid)
            hub_ms = col.seen.ordered_ms[mid]
        if i < warmup:
            continue
        last.append(max(at.values()) - t0)
        reply.append(t_reply - t0)
        if t_ord is not None:
            ordered.append(t_ord - t0)
        others = [t for n, t in at.items() if n != sender.name]
        first_other.append(min(others) - t0)
        at_hub.append(hub_ms / 1000 - t0_wall)  # same machine: one wall clock (ms)
        hub_to_last.append(last[-1] - at_hub[-1])
    return {"to_last_member": stats_ms(last), "send_reply": stats_ms(reply),
            "ordered_at_sender": stats_ms(ordered), "to_first_other": stats_ms(first_other),
            "ordered_by_hub": stats_ms(at_hub), "hub_to_last_member": stats_ms(hub_to_last),
            "rounds": rounds, "warmup": warmup}


def idle_cpu(nodes: list[BenchNode], seconds: float = 3.0) -> dict[str, Any]:
    a, t = cpu_snapshot(nodes), time.monotonic()
    time.sleep(seconds)  # measuring what idle nodes cost over this window
    return cpu_used(a, cpu_snapshot(nodes), nodes[0].name, nodes[1].name,
                    time.monotonic() - t)


def run_size(size: int, aio: bool, star: bool, args: argparse.Namespace, col: Collector,
             registry: list[BenchNode], out: dict[str, Any]) -> dict[str, Any]:
    """Fills ``out`` (kept by the caller also when this raises)."""
    kind = "all-in-one nodes (one process each)" if aio else "five-process nodes"
    label = f"{size} members, {kind}" + (", members connected to the hub only" if star else "")
    tmp = Path(tempfile.mkdtemp(prefix="tbg", dir="/tmp"))
    groups_cfg = {"rate_per_s": args.rate_per_s, "rate_burst": args.rate_per_s}
    # star: members reach the hub only; member-to-member envelopes (sender keys) go through
    # the hub as a relay. As root with iptables, UDP between members is dropped (as between
    # members behind NATs that punching does not open); else a member's transport holds one
    # connection, the one to the hub (but a punch can take that one slot while the hub's
    # connection is being replaced, and the member then refuses the hub)
    firewall = star and os.geteuid() == 0 and shutil.which("iptables") is not None
    limit = {"max_connections": 1} if star and not firewall else None
    nodes = [BenchNode(f"n{i:02d}", tmp, aio, groups_cfg, limit if i else None)
             for i in range(size)]
    registry += nodes
    out.update({"label": label, "size": size, "all_in_one": aio, "star": star,
                "star_by": ("iptables" if firewall else "max_connections = 1") if star else None,
                "processes": size * (1 if aio else 5)})
    if firewall:
        star_firewall(nodes[0].port, [n.port for n in nodes[1:]])
    try:
        t = time.monotonic()
        log(f"{label}: starting {size} nodes (load average {os.getloadavg()[0]:.1f})")
        out["loadavg_start"] = os.getloadavg()
        start_all(nodes)
        out["start_s"] = time.monotonic() - t
        log(f"{label}: up in {out['start_s']:.0f} s")
        hub, sender = nodes[0], nodes[1]
        members = nodes[1:]
        t = time.monotonic()
        until("every transport ready", lambda: all(transport_ready(n) for n in nodes), 60)
        introduce([(m, hub) for m in members], 120)
        out["connect_s"] = time.monotonic() - t
        out["idle_before_group"] = idle_cpu(nodes)  # every member connected to the hub only
        log(f"{label}: connected to the hub in {out['connect_s']:.0f} s")
        t = time.monotonic()
        gid = make_group(hub, members, f"bench-{size}", 60 + 4 * size)
        out["group_s"] = time.monotonic() - t
        log(f"{label}: group of {size} in {out['group_s']:.0f} s")
        for n in nodes:
            col.add(n)
        sender.c.subscribe()  # router events, for the 1:1 baseline (connected long before it)
        # warm-up: a message from every member, in every member's history
        t = time.monotonic()
        text = b"x" * args.payload
        warm = {n.send(gid, text) for n in nodes}
        try:
            for n in nodes:
                until(f"{n.name} has every warm-up message",
                      functools.partial(has_all, n, gid, warm), 60 + 6 * size, 0.25)
        except RuntimeError:
            out["warmup_failed"] = diagnose(nodes, gid, warm)
            raise
        out["warmup_s"] = time.monotonic() - t
        log(f"{label}: up {out['start_s']:.0f} s, connected {out['connect_s']:.0f} s, group "
            f"{out['group_s']:.0f} s, warm {out['warmup_s']:.0f} s")
        out["idle"] = idle_cpu(nodes)  # the group formed: the members have found each other
        out["connections"] = connections(nodes)
        log(f"{label}: idle CPU {out['idle_before_group']['cores_busy']:.2f} cores before the "
            f"group, {out['idle']['cores_busy']:.2f} after; connected peers per node "
            f"{out['connections']}")
        transport0 = counters_all(nodes, "transport")

        def phase(name: str, fn: Callable[[], dict[str, Any]], n_msgs: int) -> None:
            t0 = counters_all(nodes, "transport")
            c0, k0, w0 = cpu_snapshot(nodes), counters_all(nodes), time.monotonic()
            try:
                res = fn()
            except Exception as e:  # noqa: BLE001 - recorded; the next phases still run
                log(f"{label}: {name} FAILED: {e}")
                out.setdefault("errors", {})[name] = repr(e)
                return
            w1 = time.monotonic()
            res["cpu"] = cpu_used(c0, cpu_snapshot(nodes), hub.name, sender.name, w1 - w0)
            cpu = res["cpu"]
            cpu["ms_per_msg"] = 1000 * cpu["total_cpu_s"] / n_msgs
            # what the messages cost beyond the nodes' idle work (keep-alives, beats, gossip)
            idle_rate = {k: v / out["idle"]["wall_s"] for k, v in out["idle"]["by_node"].items()}
            cpu["above_idle_ms_per_msg"] = {
                k: 1000 * max(0.0, v - idle_rate.get(k, 0.0) * cpu["wall_s"]) / n_msgs
                for k, v in cpu["by_node"].items()}
            res["counters"] = counters_moved(k0, counters_all(nodes), hub.name)
            moved = counters_moved(t0, counters_all(nodes, "transport"), hub.name)
            res["throttled_strangers"] = sum(m.get("throttled_strangers", 0)
                                             for m in moved.values())
            if res["throttled_strangers"]:
                log(f"{label}: {name}: a transport read a stranger's envelopes at its rate "
                    f"limit ({res['throttled_strangers']} times): the rate is capped")
            out[name] = res
            log(f"{label}: {name} done ({w1 - w0:.1f} s)")

        rtt_args = argparse.Namespace(payload=args.payload, warmup=args.rtt_warmup,
                                      rtt_n=args.rtt_n)
        phase("one_to_one_rtt", lambda: measure_rtt(sender.c, hub.id, rtt_args),
              args.rtt_warmup + args.rtt_n)
        phase("one_to_one_tput", lambda: one_to_one_tput(sender.c, hub.id, args.tput_1to1,
                                                         args.window, args.payload),
              args.tput_1to1)
        phase("latency", lambda: group_latency(col, nodes, sender, gid, args.rounds,
                                               args.warmup, text), args.warmup + args.rounds)
        timeout = 120 + args.tput_n * size * 0.05
        phase("tput_one_sender", lambda: group_tput(col, nodes, [sender], gid, args.tput_n,
                                                    args.window, text, timeout), args.tput_n)
        per = max(1, args.tput_n // size)
        phase("tput_all_members", lambda: group_tput(col, nodes, nodes, gid, args.tput_n,
                                                     args.window, text, timeout), per * size)
        out["transport_counters"] = counters_moved(
            transport0, counters_all(nodes, "transport"), hub.name)
        throttled = out["transport_counters"]["hub"].get("throttled_strangers", 0) + \
            out["transport_counters"]["members"].get("throttled_strangers", 0)
        if throttled:
            log(f"{label}: transports throttled strangers {throttled} times (the rates are "
                "capped at 250 envelopes/s per sender)")
        return out
    finally:
        for n in nodes:
            try:
                col.remove(n)
            except RuntimeError:
                pass
        log(f"{label}: stopping {size} nodes")
        down_all(nodes)
        if firewall:
            star_firewall(0, [])
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


# -- failover ----------------------------------------------------------------------------------

@dataclass
class FailoverGroup:
    """The failover group: four members, the nodes, what was sent (every accepted message
    must end up on every member once)."""

    gid: str
    cfg: dict[str, float]
    members: list[BenchNode]
    nodes: list[BenchNode]
    col: Collector
    text: bytes
    sent: list[tuple[BenchNode, bytes]] = field(default_factory=list)

    def names(self, nodes: list[BenchNode]) -> set[str]:
        return {n.name for n in nodes}

    def health(self, timeout_s: float) -> None:
        """One message from every member reaches every member."""
        ids = [(m, m.send(self.gid, self.text)) for m in self.members]
        self.sent += ids
        want = {mid for _, mid in ids}
        names = self.names(self.members)
        if self.col.wait(functools.partial(everywhere, want, names, False), timeout_s):
            return
        for m in self.members:  # an event may have been lost with a restart: the histories
            until(f"{m.name} has the health-check messages",
                  functools.partial(has_all, m, self.gid, want), timeout_s, 0.25)

    def kill(self, k: int, hub: BenchNode) -> tuple[dict[str, Any], BenchNode]:
        """Kill ``hub``'s node, time the takeover, restart it; the row and the new hub."""
        gid, cfg, col = self.gid, self.cfg, self.col
        term = next(m for m in self.members if m is not hub).groups()[gid].term
        survivors = [m for m in self.members if m is not hub]
        names = self.names(survivors)
        col.remove(hub)
        t_kill = time.perf_counter()
        hub.kill()
        mids = []
        for s in survivors:  # one message from each survivor, at once
            mid = s.send(gid, self.text)
            mids.append(mid)
            self.sent.append((s, mid))
        key = (gid, term + 1)
        wait_s = 3 * (cfg["takeover_after_s"] * 2 + cfg["claim_wait_s"] * 3) + 30
        if not col.wait(functools.partial(hub_changed, key, names), wait_s):
            raise RuntimeError(f"kill {k}: no new hub on every survivor within {wait_s} s")
        with col.cond:
            changed = {n: v for n, v in col.seen.hub[key].items() if n in names}
        # confirmed with groups.list: every survivor lists the same new hub
        until("every survivor lists the new hub",
              functools.partial(lists_new_hub, survivors, gid, hub.id, term + 1), 30)
        t_listed_poll = time.perf_counter()
        infos = [s.groups()[gid] for s in survivors]
        new_ids = {i.hub for i in infos}
        if len(new_ids) != 1 or new_ids != {h for _, h in changed.values()}:
            raise RuntimeError(f"kill {k}: survivors disagree on the new hub")
        new_hub = next(n for n in self.nodes if n.id == infos[0].hub)
        if not col.wait(functools.partial(everywhere, set(mids), names, True), 120):
            raise RuntimeError(f"kill {k}: post-kill messages not ordered and received by "
                               "every survivor within 120 s")
        with col.cond:
            ordered_at = [col.seen.ordered[m] for m in mids]
            received_at = [max(t for n, t in col.seen.messages[m].items() if n in names)
                           for m in mids]
        t_restart = time.perf_counter()  # the old node comes back
        hub.start()
        t_up = time.perf_counter()
        col.add(hub)
        if hub in self.members:
            until(f"{hub.name} follows the new hub",
                  functools.partial(follows, hub, gid, new_hub.id, term + 1), 120)
        else:
            until(f"{hub.name} dropped the group it no longer hosts",
                  functools.partial(dropped, hub, gid), 120)
        t_follow = time.perf_counter()
        row = {
            "kill": k + 1, "old_hub": hub.name, "old_hub_member": hub in self.members,
            "new_hub": new_hub.name, "term": term + 1,
            "to_every_survivor_new_hub_s": max(t for t, _ in changed.values()) - t_kill,
            "to_first_survivor_new_hub_s": min(t for t, _ in changed.values()) - t_kill,
            "to_listed_poll_s": t_listed_poll - t_kill,
            "to_first_post_kill_ordered_s": ordered_at[0] - t_kill,
            "to_every_post_kill_ordered_s": max(ordered_at) - t_kill,
            "to_every_post_kill_received_s": max(received_at) - t_kill,
            "restart_up_s": t_up - t_restart, "restart_follow_s": t_follow - t_up,
        }
        return row, new_hub

    def check(self) -> dict[str, Any]:
        """Every accepted message once, in one order, on every member."""
        want = {(s.id, mid) for s, mid in self.sent}
        for m in self.members:
            until(f"{m.name} has every message",
                  functools.partial(holds, m, self.gid, want), 120, 0.5)
        orders = {m.name: [(h.sender, h.id) for h in m.history(self.gid)]
                  for m in self.members}
        return {"messages": len(want),
                "duplicates": {n: len(o) - len(set(o)) for n, o in orders.items()},
                "same_order": len({tuple(o) for o in orders.values()}) == 1,
                "extra": {n: len(set(o) - want) for n, o in orders.items()}}


def everywhere(mids: set[bytes], names: set[str], ordered: bool, seen: Seen) -> bool:
    return all((not ordered or m in seen.ordered) and
               names <= seen.messages.get(m, {}).keys() for m in mids)


def hub_changed(key: tuple[str, int], names: set[str], seen: Seen) -> bool:
    return key in seen.hub and names <= seen.hub[key].keys()


def lists_new_hub(survivors: list[BenchNode], gid: str, old: bytes, term: int) -> bool:
    for s in survivors:
        g = s.groups()[gid]
        if g.hub == old or g.term != term:
            return False
    return True


def follows(node: BenchNode, gid: str, hub: bytes, term: int) -> bool:
    g = node.groups().get(gid)
    return g is not None and g.hub == hub and g.term == term


def dropped(node: BenchNode, gid: str) -> bool:
    return gid not in node.groups()


def holds(node: BenchNode, gid: str, want: set[tuple[bytes, bytes]]) -> bool:
    return {(h.sender, h.id) for h in node.history(gid)} >= want


def run_failover(setting: str, args: argparse.Namespace, col: Collector,
                 registry: list[BenchNode]) -> dict[str, Any]:
    cfg = FAILOVER_SETTINGS[setting]
    tmp = Path(tempfile.mkdtemp(prefix="tbg", dir="/tmp"))
    nodes = [BenchNode(name, tmp, False, {**cfg, "rate_per_s": args.rate_per_s,
                                          "rate_burst": args.rate_per_s})
             for name in "abcde"]
    registry += nodes
    kills: list[dict[str, Any]] = []
    out: dict[str, Any] = {"setting": setting, "config": cfg, "kills": kills}
    try:
        log(f"failover ({setting}: {cfg}): starting 5 nodes")
        start_all(nodes)
        until("every transport ready", lambda: all(transport_ready(n) for n in nodes), 60)
        introduce([(a, b) for i, a in enumerate(nodes) for b in nodes[:i]], 120)
        a, e = nodes[0], nodes[4]
        gid = make_group_hosted(a, nodes[1:4], e, f"failover-{setting}", 60)
        for n in nodes:
            col.add(n)
        fg = FailoverGroup(gid, cfg, nodes[:4], nodes, col, b"f" * args.payload)
        fg.health(60)
        hub = e
        try:
            for k in range(args.kills):
                row, hub = fg.kill(k, hub)
                kills.append(row)
                log(f"failover {setting} kill {k + 1}/{args.kills}: {row['old_hub']} → "
                    f"{row['new_hub']}, new hub on every survivor "
                    f"{row['to_every_survivor_new_hub_s']:.2f} s, first post-kill message "
                    f"ordered {row['to_first_post_kill_ordered_s']:.2f} s, {row['old_hub']} "
                    f"following {row['restart_follow_s']:.1f} s after it was up again")
                fg.health(120)
        except Exception as err:  # noqa: BLE001 - the kills so far are kept and reported
            log(f"failover {setting}: FAILED after {len(kills)} kills: {err}")
            out["error"] = repr(err)
            return out
        out["check"] = fg.check()
        c = out["check"]
        if any(c["duplicates"].values()) or not c["same_order"] or any(c["extra"].values()):
            log(f"failover {setting}: CHECK FAILED {c}")
        return out
    finally:
        for n in nodes:
            try:
                col.remove(n)
            except RuntimeError:
                pass
        log(f"failover {setting}: stopping 5 nodes")
        down_all(nodes)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def failover_summary(f: dict[str, Any]) -> dict[str, Any]:
    rows = f["kills"]
    out: dict[str, Any] = {"kills": len(rows)}
    for key in ("to_every_survivor_new_hub_s", "to_first_post_kill_ordered_s",
                "to_every_post_kill_received_s", "restart_follow_s"):
        vals = [r[key] for r in rows]
        if vals:
            out[key] = {"p50": pct(vals, 50), "max": max(vals), "min": min(vals)}
    return out


# -- reporting ---------------------------------------------------------------------------------

def size_name(s: dict[str, Any]) -> str:
    return f"{s['size']} ({'all-in-one' if s['all_in_one'] else '5-process'}" + \
        (", members connected to the hub only)" if s.get("star") else ")")


def dig(d: Any, *path: str) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def size_rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in r["sizes"]:
        l50, l99 = dig(s, "latency", "to_last_member", "p50_ms"), \
            dig(s, "latency", "to_last_member", "p99_ms")
        r50, r99 = dig(s, "one_to_one_rtt", "p50_us"), dig(s, "one_to_one_rtt", "p99_us")
        r50, r99 = (r50 / 1000 if r50 else None), (r99 / 1000 if r99 else None)
        one, every = dig(s, "tput_one_sender", "msgs_per_s"), \
            dig(s, "tput_all_members", "msgs_per_s")
        deliveries = dig(s, "tput_all_members", "member_deliveries_per_s")
        t1 = dig(s, "one_to_one_tput", "delivered_per_s")
        capped = [k for k in ("one_to_one_tput", "tput_one_sender", "tput_all_members")
                  if dig(s, k, "throttled_strangers")]
        ordered = dig(s, "latency", "ordered_at_sender", "p50_ms")
        cpu = dig(s, "tput_all_members", "cpu", "ms_per_msg")

        def f(x: float | None, fmt: str = ".1f") -> str:
            return "–" if x is None else format(x, fmt)

        def ratio(a: float | None, b: float | None, fmt: str = ".1f") -> str:
            return "–" if a is None or not b else format(a / b, fmt) + "×"

        idle = [dig(s, k, "cores_busy") for k in ("idle_before_group", "idle")]
        rows.append([
            size_name(s),
            f"{f(l50)} / {f(l99)}", f"{f(r50)} / {f(r99)}",
            f"{ratio(l50, r50)} / {ratio(l99, r99)}", f(ordered),
            f(one, ",.0f") + ("‡" if "tput_one_sender" in capped else ""),
            f(every, ",.0f") + ("‡" if "tput_all_members" in capped else ""),
            f(deliveries, ",.0f"), f(t1, ",.0f") + ("‡" if "one_to_one_tput" in capped else ""),
            f"{ratio(one, t1, '.2f')} / {ratio(every, t1, '.2f')}", f(cpu),
            " / ".join("–" if x is None else f"{100 * x / 2:.0f} %" for x in idle),
            f(dig(s, "connections", "mean"), ".0f"),
        ])
    return rows


SIZE_HEADER = ["members (nodes)", "group msg → every member p50 / p99 (ms)",
               "1:1 msg → delivered p50 / p99 (ms)", "group / 1:1",
               "→ ordered at sender p50 (ms)", "msgs/s, one sender",
               "msgs/s, every member sending", "member deliveries/s (every member sending)",
               "1:1 delivered/s", "group msgs/s / 1:1 (one / every)",
               "CPU ms per group msg (every member sending)",
               "idle CPU of the nodes, of 2 cores (before the group / group formed)",
               "connected peers per node"]


def markdown(r: dict[str, Any]) -> str:
    lines = []
    if r["sizes"]:
        lines += ["| " + " | ".join(SIZE_HEADER) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(SIZE_HEADER) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in size_rows(r)]
        if any("‡" in cell for row in size_rows(r) for cell in row):
            lines += ["", "‡ capped: a transport read a stranger's envelopes at its rate "
                      "limit (250/s, `throttled_strangers`) during that measurement"]
    if r["sizes"]:
        lines += ["", "| members (nodes), p50 ms after `groups.send` → | its reply | "
                  "ordered by the hub (its clock) | first other member | `ordered` back at the "
                  "sender | last member | 1:1 `sent` / `delivered` | CPU per msg beyond idle, "
                  "one sender: hub / sender / each other member (ms) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s in r["sizes"]:
            lat = s.get("latency", {})

            def p50(key: str, lat: dict[str, Any] = lat) -> str:
                v = dig(lat, key, "p50_ms")
                return "–" if v is None else f"{v:.1f}"

            sent, dlv = dig(s, "one_to_one_rtt", "sent_event", "p50_us"), \
                dig(s, "one_to_one_rtt", "p50_us")
            above = dig(s, "tput_one_sender", "cpu", "above_idle_ms_per_msg") or {}
            others = max(1, s["size"] - 2)
            cpu = " / ".join("–" if k not in above else
                             f"{above[k] / (others if k == 'other members' else 1):.2f}"
                             for k in ("hub node", "sender node", "other members"))
            lines.append(
                f"| {size_name(s)} | "
                f"{p50('send_reply')} | {p50('ordered_by_hub')} | {p50('to_first_other')} | "
                f"{p50('ordered_at_sender')} | {p50('to_last_member')} | "
                + ("–" if sent is None or dlv is None else f"{sent / 1000:.1f} / {dlv / 1000:.1f}")
                + f" | {cpu} |")
    if r["failover"]:
        lines += ["", "| setting (beat / takeover after / claim wait, s) | kills | kill → every "
                  "survivor lists the new hub p50 / max (s) | kill → first post-kill message "
                  "ordered p50 / max (s) | kill → post-kill messages at every survivor "
                  "p50 / max (s) | old node back → following p50 / max (s) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for f in r["failover"]:
            s, c = f["summary"], f["config"]

            def pm(key: str, s: dict[str, Any] = s) -> str:
                return f"{s[key]['p50']:.2f} / {s[key]['max']:.2f}" if key in s else "–"

            lines.append(f"| {f['setting']} ({c['beat_s']:g} / {c['takeover_after_s']:g} / "
                         f"{c['claim_wait_s']:g}) | {s['kills']} | "
                         f"{pm('to_every_survivor_new_hub_s')} | "
                         f"{pm('to_first_post_kill_ordered_s')} | "
                         f"{pm('to_every_post_kill_received_s')} | {pm('restart_follow_s')} |")
    return "\n".join(lines)


def cpu_lines(r: dict[str, Any]) -> str:
    out = []
    for s in r["sizes"]:
        for phase in ("latency", "tput_one_sender", "tput_all_members", "one_to_one_tput"):
            if phase not in s:
                continue
            c = s[phase]["cpu"]
            n = s[phase].get("n") or (s[phase].get("rounds", 0) + s[phase].get("warmup", 0))
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(
                c["by_node"].items(), key=lambda kv: -kv[1]))
            roles = ", ".join(f"{k} {v:.1f}" for k, v in sorted(
                c["by_role"].items(), key=lambda kv: -kv[1]) if k != "bench")
            out.append(f"- {s['size']}{' aio' if s['all_in_one'] else ''} {phase} "
                       f"({n} msgs, {c['wall_s']:.1f} s, {c['cores_busy']:.2f} cores busy, "
                       f"{c['ms_per_msg']:.1f} ms CPU/msg): {parts}; by role (s): {roles}")
    return "\n".join(out)


def parse_sizes(text: str) -> list[tuple[int, bool, bool]]:
    """``N``, ``Naio``, ``Naio-star``, ``N-star`` → (N, all-in-one, star)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        star = part.endswith("-star")
        part = part.removesuffix("-star")
        aio = part.endswith("aio")
        try:
            n = int(part.removesuffix("aio"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: N, Naio, N-star or Naio-star") \
                from None
        if not 3 <= n <= 50:
            raise argparse.ArgumentTypeError(f"group size {n}: 3 to 50 (the hub's default "
                                             "max_members)")
        out.append((n, aio, star))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_groups",
                                description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("5,5aio"),
                   help="group sizes: N (five-process nodes) or Naio (all-in-one nodes), "
                   "comma separated (default 5,5aio; the docs run: 5,5aio,20aio,50aio)")
    p.add_argument("--rounds", type=int, default=30, help="timed group messages per size")
    p.add_argument("--warmup", type=int, default=5, help="untimed ones before them")
    p.add_argument("--tput-n", type=int, default=200, help="messages per throughput run")
    p.add_argument("--window", type=int, default=20, help="requests in flight per sender")
    p.add_argument("--rtt-n", type=int, default=50, help="1:1 messages, one at a time")
    p.add_argument("--rtt-warmup", type=int, default=10)
    p.add_argument("--tput-1to1", type=int, default=300, help="1:1 messages for the rate")
    p.add_argument("--payload", type=int, default=100, help="message bytes")
    p.add_argument("--rate-per-s", type=float, default=10_000.0,
                   help="[groups] rate_per_s and rate_burst of every node (default 10000: "
                   "off; the node's default is 20/s, burst 50)")
    p.add_argument("--failover", default="fast",
                   help="failover settings to measure: fast, default, both comma separated, "
                   "or none")
    p.add_argument("--kills", type=int, default=3, help="hub kills per failover setting")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = p.parse_args(argv)
    failover = [] if args.failover == "none" else [s.strip() for s in args.failover.split(",")]
    for s in failover:
        if s not in FAILOVER_SETTINGS:
            p.error(f"--failover: {s!r} is not one of {', '.join(FAILOVER_SETTINGS)} or none")

    def stop_on_signal(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        raise KeyboardInterrupt(f"signal {signum}")  # the finally blocks stop every node

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # also when started in the
        signal.signal(sig, stop_on_signal)  # background, where SIGINT is ignored
    t0 = time.monotonic()
    registry: list[BenchNode] = []
    col = Collector()
    col.start()
    result: dict[str, Any] = {
        "bench": "groups",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "command": " ".join(["python -m bench.bench_groups",
                                                   *(argv if argv is not None else
                                                     sys.argv[1:])]),
        "params": {k: getattr(args, k) for k in ("rounds", "warmup", "tput_n", "window",
                                                   "rtt_n", "tput_1to1", "payload",
                                                   "rate_per_s", "kills")},
        "sizes": [], "failover": [], "loadavg_start": os.getloadavg()}
    try:
        for size, aio, star in args.sizes:
            name = f"{size}{'aio' if aio else ''}{'-star' if star else ''}"
            out: dict[str, Any] = {"label": name, "size": size, "all_in_one": aio,
                                   "star": star}
            result["sizes"].append(out)
            try:
                run_size(size, aio, star, args, col, registry, out)
            except Exception as e:  # noqa: BLE001 - recorded; the other sizes still run
                log(f"size {name} FAILED: {e}")
                out.setdefault("errors", {})["setup"] = repr(e)
        for setting in failover:
            f = run_failover(setting, args, col, registry)
            f["summary"] = failover_summary(f)
            result["failover"].append(f)
    finally:
        col.stop()
        down_all([n for n in registry if n.supervisord_pid() is not None or n.service_pids()])
        result["wall_s"] = time.monotonic() - t0
        result["loadavg_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    summary = {
        "sizes": [{"label": s["label"],
                   "group_to_every_member_ms": dig(s, "latency", "to_last_member"),
                   "one_to_one_delivered_us": {k: dig(s, "one_to_one_rtt", k)
                                               for k in ("p50_us", "p99_us")},
                   "msgs_per_s_one_sender": dig(s, "tput_one_sender", "msgs_per_s"),
                   "msgs_per_s_every_member": dig(s, "tput_all_members", "msgs_per_s"),
                   "one_to_one_delivered_per_s": dig(s, "one_to_one_tput", "delivered_per_s"),
                   "idle_cores_busy": [dig(s, k, "cores_busy")
                                       for k in ("idle_before_group", "idle")],
                   "errors": s.get("errors")}
                  for s in result["sizes"]],
        "failover": [{"setting": f["setting"], "config": f["config"], **f["summary"],
                      "check": f.get("check")} for f in result["failover"]],
    }
    print(json.dumps(summary, indent=2))
    if result["sizes"]:
        print("\nCPU by phase (node processes from /proc):")
        print(cpu_lines(result))
    print(f"\nresults written to {args.out} ({result['wall_s']:.0f} s)\n\n"
          "markdown (docs/benchmarks.md):\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
