"""Chaos: three whole nodes, traffic both ways, random SIGKILLs; nothing lost or doubled.

A and C write to each other (every 50 ms each) through R, the relay both were told about
(direct once they punch through). Every round the scheduler, from a seeded random
generator, kills with SIGKILL one of: one service of one node, several services of one
node, the same service on two nodes at once, or a whole node (supervisord and all, which
the harness then starts again with ``tom node up``). After the restarts it requires every
message an app had handed over to reach delivered within ``HEAL_S`` of the last restart,
and each router's view of its peers to match its transport's. At the end each message
must be in its recipient's inbox exactly once. Services: the node's five (groups and
backup are killed like the others).

    .venv/bin/python -m bench.chaos [--rounds 200] [--seed N] [--report bench/results/chaos.md]

(``make chaos``: 200 rounds, about 20 minutes.) The report lists each round: what was
killed, how long until the restarts, how long until everything handed over was delivered.
A failing round can be replayed with the same ``--seed``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import endpoints as ep
from shared.paths import DataDir
from shared.wire import BusTimeout, RemoteError, WireError
from shared.wire.messages import transport as tm
from tests.e2e.test_heal import FixedNode, connected
from tests.e2e.test_router import inbox_counts, tom
from tom.client import Client

HEAL_S = 15.0
SERVICES = list(ep.ROLES)


@dataclass
class Round:
    number: int
    kills: list[tuple[str, str]]
    """(node, service or "node")."""
    restart_s: float = 0.0
    heal_s: float = 0.0
    ok: bool = False
    error: str = ""


class Writer(threading.Thread):
    """An app writing to a peer every 50 ms; keeps the ids its router took."""

    def __init__(self, src: FixedNode, dst: FixedNode) -> None:
        super().__init__(daemon=True)
        self.src, self.dst = src, dst
        self.ids: list[bytes] = []
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        client: Client | None = None
        while not self.halt.is_set():
            try:
                client = client or Client(DataDir(self.src.data), timeout_s=2)
                msg = client.send(self.dst.id, f"{self.src.name} {i}", deadline_s=20)
                with self.lock:
                    self.ids.append(msg)
            except (WireError, OSError):  # not handed over (its node was down): not counted
                if client is not None:
                    client.close()
                client = None
            i += 1
            self.halt.wait(0.05)
        if client is not None:
            client.close()

    def taken(self) -> list[bytes]:
        with self.lock:
            return list(self.ids)


def pids(node: FixedNode) -> dict[str, int]:
    """The node's service processes (``python -m services.ROLE --data DATA``), read from
    /proc: ``tom node status`` pings every service and takes seconds while one is down."""
    out: dict[str, int] = {}
    tail = ["--data", str(node.data)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")[:-1]
        except (OSError, UnicodeDecodeError):
            continue
        if len(args) >= 5 and args[-2:] == tail and args[-4] == "-m" \
                and args[-3].startswith("services."):
            role = args[-3].removeprefix("services.")
            if role in SERVICES:
                out[role] = int(proc.name)
    return out


def supervisord_pid(node: FixedNode) -> int | None:
    try:
        return int((node.data / "run" / "supervisord.pid").read_text())
    except (OSError, ValueError):
        return None


def delivered(node: FixedNode, ids: list[bytes]) -> bool:
    try:
        return all(s.status in ("delivered", "read") for s in node.client.outbox(ids))
    except (BusTimeout, RemoteError):
        return False


def disagreements(node: FixedNode, others: list[FixedNode]) -> list[str]:
    """Where ``node``'s router and transport disagree about a peer being connected."""
    try:
        reply = node.client.bus.request("transport", tm.Peers())
        assert isinstance(reply, tm.PeersReply)
        held = {p.node_id for p in reply.peers}
        return [f"{node.name}->{o.name}: transport {o.id in held}, router {connected(node, o)}"
                for o in others if (o.id in held) != connected(node, o)]
    except (BusTimeout, RemoteError) as e:
        return [f"{node.name}: {e}"]


def views_agree(node: FixedNode, others: list[FixedNode]) -> bool:
    return not disagreements(node, others)


def until(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)  # polling the nodes' own state
    return False


def plan(rng: random.Random, names: list[str]) -> list[tuple[str, str]]:
    kind = rng.choice(["one", "several", "same on two", "whole node"])
    if kind == "one":
        return [(rng.choice(names), rng.choice(SERVICES))]
    if kind == "several":
        node = rng.choice(names)
        return [(node, s) for s in rng.sample(SERVICES, rng.randint(2, 4))]
    if kind == "same on two":
        service = rng.choice(SERVICES)
        return [(n, service) for n in rng.sample(names, 2)]
    return [(rng.choice(names), "node")]


@dataclass
class Chaos:
    nodes: dict[str, FixedNode]
    rng: random.Random
    rounds: list[Round] = field(default_factory=list)

    def kill(self, kills: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
        before = {n: pids(self.nodes[n]) for n, _ in kills}
        for name, service in kills:  # at once: pids were read first
            node = self.nodes[name]
            targets = [before[name].get(service)] if service != "node" else \
                [supervisord_pid(node), *before[name].values()]
            for pid in targets:
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        return before

    def restarted(self, kills: list[tuple[str, str]],
                  before: dict[str, dict[str, int]]) -> bool:
        for name, service in kills:
            now = pids(self.nodes[name])
            if service == "node":
                if set(now) != set(SERVICES):
                    return False
            elif now.get(service, before[name].get(service)) == before[name].get(service):
                return False
        return True

    def round(self, number: int, writers: list[Writer]) -> Round:
        kills = plan(self.rng, list(self.nodes))
        r = Round(number, kills)
        t0 = time.monotonic()
        before = self.kill(kills)
        for name, service in kills:
            if service == "node":
                up = tom(self.nodes[name].data, "node", "up", timeout=120)
                if up.returncode != 0:
                    r.error = f"tom node up failed: {up.stdout + up.stderr}"
                    return r
        if not until(lambda: self.restarted(kills, before), 60):
            r.error = "the services were not restarted within 60 s"
            return r
        r.restart_s = time.monotonic() - t0
        last = time.monotonic()
        handed = {w.src.name: w.taken() for w in writers}
        ok = until(lambda: all(delivered(w.src, handed[w.src.name]) for w in writers)
                   and all(views_agree(n, [o for o in self.nodes.values() if o is not n])
                           for n in self.nodes.values()), HEAL_S)
        r.heal_s = time.monotonic() - last
        r.ok = ok
        if not ok:
            r.error = "; ".join(d for n in self.nodes.values() for d in disagreements(
                n, [o for o in self.nodes.values() if o is not n])) + " " + ", ".join(
                f"{w.src.name}: {sum(s.status not in ('delivered', 'read') for s in w.src.client.outbox(handed[w.src.name]))} not delivered"  # noqa: E501
                for w in writers)
        return r


def run(rounds: int, seed: int, report: Path | None = None,
        pause_s: tuple[float, float] = (1.0, 3.0)) -> tuple[list[Round], list[str]]:
    """Run ``rounds`` rounds; returns them and the end-state problems (empty: all good)."""
    rng = random.Random(seed)
    nodes: dict[str, FixedNode] = {}
    writers: list[Writer] = []
    problems: list[str] = []
    done: list[Round] = []
    try:
        for name in ("a", "r", "c"):
            nodes[name] = FixedNode(name)
        a, r, c = nodes["a"], nodes["r"], nodes["c"]
        a.introduce(r)
        c.introduce(r)
        until(lambda: connected(a, r) and connected(c, r), 30)
        writers = [Writer(a, c), Writer(c, a)]
        for w in writers:
            w.start()
        until(lambda: all(len(w.taken()) >= 5 for w in writers), 60)
        chaos = Chaos(nodes, rng)
        for i in range(1, rounds + 1):
            result = chaos.round(i, writers)
            done.append(result)
            print(f"round {i:3}: {'ok ' if result.ok else 'BAD'} "
                  f"{' '.join(f'{n}:{s}' for n, s in result.kills):40} "
                  f"restarted in {result.restart_s:5.1f} s, converged in "
                  f"{result.heal_s:5.1f} s {result.error}", flush=True)
            time.sleep(rng.uniform(*pause_s))  # traffic between rounds
        for w in writers:
            w.halt.set()
            w.join(30)
        for w in writers:
            ids = w.taken()
            if not until(lambda: delivered(w.src, ids), HEAL_S):  # noqa: B023
                problems.append(f"{w.src.name}'s messages not all delivered at the end")
            counts = {k: n for k, n in inbox_counts(w.dst).items() if k[0] == w.src.id}
            lost = [i for i in ids if (w.src.id, i) not in counts]
            doubled = [k for k, n in counts.items() if n > 1]
            if lost:
                problems.append(f"{len(lost)} of {w.src.name}'s {len(ids)} messages lost")
            if doubled:
                problems.append(f"{len(doubled)} of {w.src.name}'s messages duplicated")
        if report is not None:
            write_report(report, seed, done, writers, problems)
        return done, problems
    finally:
        for w in writers:
            w.halt.set()
        for n in nodes.values():
            n.stop()


def write_report(path: Path, seed: int, rounds: list[Round], writers: list[Writer],
                 problems: list[str]) -> None:
    bad = [r for r in rounds if not r.ok]
    heal = sorted(r.heal_s for r in rounds) or [0.0]
    lines = [
        "# Chaos soak (`make chaos`)", "",
        f"Seed {seed}, {len(rounds)} rounds, three nodes (A, C writing to each other every "
        "50 ms each, R the relay both know). Generated by `bench/chaos.py`.", "",
        f"- messages handed over: {', '.join(f'{w.src.name} {len(w.taken())}' for w in writers)}",
        f"- end state: {'; '.join(problems) or '0 lost, 0 duplicated'}",
        f"- rounds not converged within {HEAL_S:g} s: {len(bad)}",
        f"- time to converge after the last restart: p50 {heal[len(heal) // 2]:.1f} s, "
        f"max {heal[-1]:.1f} s", "",
        "| round | killed (node:service) | restarted after (s) | converged after (s) | |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.number} | {' '.join(f'{n}:{s}' for n, s in r.kills)} | "
              f"{r.restart_s:.1f} | {r.heal_s:.1f} | {'ok' if r.ok else r.error} |"
              for r in rounds]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    ap.add_argument("--report", type=Path, default=Path("bench/results/chaos.md"))
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    rounds, problems = run(args.rounds, args.seed, args.report)
    bad = [r for r in rounds if not r.ok]
    print(f"{len(rounds)} rounds, {len(bad)} not converged; "
          f"{'; '.join(problems) or '0 lost, 0 duplicated'}; report: {args.report}")
    return 1 if bad or problems else 0


if __name__ == "__main__":
    sys.exit(main())
