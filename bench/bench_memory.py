"""Memory benchmark: idle RSS, PSS and USS of a node, five-process and all-in-one.

    .venv/bin/python -m bench.bench_memory [--settle 3] [--runs 1] [--out PATH]

For each mode (``tom node up`` and ``tom node up --all-in-one``, each in a fresh ``/tmp``
data directory binding the transport to ``127.0.0.1``), once the node is healthy and has
been idle ``--settle`` seconds: every process's RSS, PSS and USS (private clean + private
dirty) from ``/proc/PID/smaps_rollup``, supervisord included, and their sums.

RSS counts a shared library (libpython's, OpenSSL's, libzmq's pages) once in every process
that maps it, so the five-process RSS sum counts them six times; PSS shares them out and is
what the node costs the machine. The issue's targets are RSS: five processes with supervisord
≤ 150 MB, the all-in-one node ≤ 50 MB (its one service process; with supervisord also shown).

``--soak N`` (issue 21: memory stays flat, ±10 %, over 100,000 messages) then starts two
five-process nodes that know each other (B's inbox quotas raised above N, so that none of the
N messages is refused), sends N encrypted 100-byte messages from A's app to B with 200
``router.send`` requests in flight, and samples every process's RSS and PSS at every tenth of
them and once all are delivered. Growth is reported from the first tenth (caches warm) to the
end, and from idle to the end.

Prints a markdown table and the ratios to the targets; writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_router import (
    NODE_TOML,
    ROOT,
    node_down,
    node_status,
    tom,
    transport_info,
    wait_connected,
)
from shared.paths import DataDir
from shared.wire import RemoteError
from shared.wire.messages import router as rm
from shared.wire.messages.sys import Status, StatusReply
from tom.client import Client

DEFAULT_OUT = ROOT / "bench" / "results" / "memory.json"
FIVE_TARGET_MB = 150.0
AIO_TARGET_MB = 50.0


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of a process in MB (``/proc/PID/smaps_rollup``)."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def node_pids(data: Path) -> dict[str, int]:
    """supervisord's pid and each program's (``tom node status --json``)."""
    pids = {"supervisord": int((data / "run" / "supervisord.pid").read_text())}
    for name, row in node_status(data).items():
        if row.get("pid"):
            pids[name] = int(row["pid"])
    return pids


def up_node(data: Path, all_in_one: bool, timeout_s: float = 90) -> None:
    """``tom node up``, then wait until ``tom node status`` says healthy: on a loaded machine
    node up's own check (1 s per service) can give up before the services have bound."""
    up = tom(data, "node", "up", *(["--all-in-one"] if all_in_one else []))
    deadline = time.monotonic() + timeout_s
    while up.returncode != 0:
        if time.monotonic() > deadline or not (data / "run" / "supervisord.pid").exists():
            raise RuntimeError(f"node up failed:\n{up.stdout}{up.stderr}")
        time.sleep(1)
        up = tom(data, "node", "status")


def measure(all_in_one: bool, settle_s: float) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="tbm")) / "node"
    data.mkdir(mode=0o700)
    (data / "node.toml").write_text(NODE_TOML)
    try:
        up_node(data, all_in_one)
        time.sleep(settle_s)
        pids = node_pids(data)
        # services of an all-in-one node share one pid: count each process once
        names: dict[int, list[str]] = {}
        for name, pid in pids.items():
            names.setdefault(pid, []).append(name)
        per_pid = {"+".join(sorted(n)): smaps(pid) for pid, n in names.items()}
        total = {k: sum(p[k] for p in per_pid.values()) for k in ("rss", "pss", "uss")}
        services = {k: sum(p[k] for n, p in per_pid.items() if n != "supervisord")
                    for k in ("rss", "pss", "uss")}
        return {"mode": "all-in-one" if all_in_one else "five-process", "processes": per_pid,
                "total": total, "services": services}
    finally:
        node_down(data)


SOAK_B_TOML = """
[router]
inbox_max_messages = {n}
inbox_max_bytes = {bytes}
inbox_sender_max_messages = {n}
inbox_sender_max_bytes = {bytes}
inbox_hop_max_messages = {n}
inbox_hop_max_bytes = {bytes}
"""


def all_pids(nodes: dict[str, Path]) -> dict[str, int]:
    return {f"{n} {svc}": pid for n, data in nodes.items()
            for svc, pid in node_pids(data).items()}


def sample(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    return {name: smaps(pid) for name, pid in pids.items()}


def open_messages(ca: Client) -> int:
    """A's undelivered messages (its router's ``open_messages`` queue)."""
    reply = ca.bus.request("router", Status())
    assert isinstance(reply, StatusReply)
    return int(reply.queues.get("open_messages", 0))


def soak(n: int, window: int = 200, payload: int = 100, max_open: int = 2000
         ) -> dict[str, Any]:
    """Two five-process nodes; ``n`` messages A → B; RSS/PSS samples every ``n // 10``.

    The app waits whenever more than ``max_open`` of its messages are accepted but not yet
    delivered: ``router.send`` answers once a message is on disk, faster than B takes them,
    so an unpaced sender measures a growing backlog (up to ``max_open_messages``), not
    whether the node's memory stays flat."""
    tmp = Path(tempfile.mkdtemp(prefix="tbm"))
    nodes = {"A": tmp / "a", "B": tmp / "b"}
    clients: list[Client] = []
    try:
        for name, data in nodes.items():
            data.mkdir(mode=0o700)
            extra = SOAK_B_TOML.format(n=2 * n, bytes=2 * n * (payload + 1024))
            (data / "node.toml").write_text(NODE_TOML + (extra if name == "B" else ""))
            up_node(data, False)
        ca = Client(DataDir(nodes["A"]), timeout_s=30)
        cb = Client(DataDir(nodes["B"]), timeout_s=30)
        clients += [ca, cb]
        a_id, b_id = ca.node_id(), cb.node_id()
        ib, ia = transport_info(nodes["B"]), transport_info(nodes["A"])
        cb.add_peer(a_id, ia.host, ia.port)  # first: see bench_router.run_nodes
        ca.add_peer(b_id, ib.host, ib.port)
        wait_connected(ca, b_id)
        wait_connected(cb, a_id)
        time.sleep(2)
        pids = all_pids(nodes)
        samples = [{"sent": 0, "t": 0.0, "mem": sample(pids)}]
        pad = os.urandom(payload)
        inflight: collections.deque[Any] = collections.deque()
        sent = accepted = retries = 0
        step = max(1, n // 10)
        t0 = time.monotonic()
        while accepted < n:
            if sent < n and len(inflight) < window:
                body = rm.Send(to=b_id, id=os.urandom(16), encrypt=True)
                inflight.append(ca.bus.send("router", body, (pad,)))
                sent += 1
                continue
            req = inflight.popleft()
            try:
                ca.bus.recv("router", req)
            except RemoteError as e:
                if e.name != "overloaded":
                    raise
                retries += 1
                sent -= 1
                time.sleep(0.01)
                continue
            accepted += 1
            if accepted % 500 == 0:
                waited = time.monotonic()
                while open_messages(ca) > max_open:
                    if time.monotonic() - waited > 300:
                        raise RuntimeError(f"A's open messages stayed above {max_open}")
                    time.sleep(0.05)
            if accepted % step == 0:
                samples.append({"sent": accepted, "t": time.monotonic() - t0,
                                "open": open_messages(ca), "mem": sample(pids)})
                print(f"{accepted} accepted, {time.monotonic() - t0:.0f} s", flush=True)
        # wait until A's outbox has nothing open (every message delivered)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = ((node_status(nodes["A"]).get("router") or {}).get("status") or {})
            if not (status.get("queues") or {}).get("open_messages", 0):
                break
            time.sleep(1)
        time.sleep(2)
        samples.append({"sent": n, "t": time.monotonic() - t0, "mem": sample(pids),
                        "after_delivery": True})
        if set(all_pids(nodes).items()) != set(pids.items()):
            raise RuntimeError("a process restarted during the soak")
        return {"n": n, "window": window, "payload": payload, "overloaded_retries": retries,
                "max_open": max_open,
                "samples": samples}
    finally:
        for c in clients:
            c.close()
        for data in nodes.values():
            if data.exists():
                node_down(data)


def soak_report(r: dict[str, Any]) -> dict[str, Any]:
    first, warm, last = r["samples"][0], r["samples"][1], r["samples"][-1]
    print(f"\nsoak: {r['n']} messages A → B in {last['t']:.0f} s "
          f"({r['overloaded_retries']} overloaded retries)")
    print("| process | idle RSS | after 1/10 | end | growth from 1/10 | from idle |")
    print("|---|---:|---:|---:|---:|---:|")
    growth = {}
    for name in first["mem"]:
        a, b, c = (s["mem"][name]["rss"] for s in (first, warm, last))
        growth[name] = {"idle": a, "warm": b, "end": c, "from_warm": c / b - 1,
                        "from_idle": c / a - 1}
        print(f"| {name} | {a:.1f} | {b:.1f} | {c:.1f} | {c / b - 1:+.1%} | {c / a - 1:+.1%} |")
    print("A's open messages at each tenth: "
          + ", ".join(str(s.get("open", "-")) for s in r["samples"][1:]))
    worst = max(abs(g["from_warm"]) for g in growth.values())
    print(f"largest change from 1/10 to the end: {worst:.1%} (target ±10 %: "
          f"{'met' if worst <= 0.10 else 'NOT met'})")
    return {"growth": growth, "worst_from_warm": worst, "met": worst <= 0.10}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_memory", description=__doc__.split("\n")[0])
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds before measuring")
    p.add_argument("--runs", type=int, default=1, help="runs of each mode (interleaved)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--soak", type=int, default=0, metavar="N",
                   help="also send N messages between two nodes and sample memory")
    p.add_argument("--no-idle", action="store_true", help="only the soak")
    args = p.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for _ in range(0 if args.no_idle else args.runs):
        for aio in (False, True):
            runs.append(measure(aio, args.settle))
    print("| mode | process | RSS MB | PSS MB | USS MB |\n|---|---|---:|---:|---:|")
    for r in runs:
        for name, m in r["processes"].items():
            print(f"| {r['mode']} | {name} | {m['rss']:.1f} | {m['pss']:.1f} | {m['uss']:.1f} |")
        t = r["total"]
        print(f"| {r['mode']} | **total** | **{t['rss']:.1f}** | {t['pss']:.1f} | {t['uss']:.1f} |")
    summary: dict[str, Any] = {}
    for mode, target, key in (("five-process", FIVE_TARGET_MB, "total"),
                              ("all-in-one", AIO_TARGET_MB, "services")):
        rss = [r[key]["rss"] for r in runs if r["mode"] == mode]
        pss = [r[key]["pss"] for r in runs if r["mode"] == mode]
        if not rss:
            continue
        summary[mode] = {"rss_mb": rss, "pss_mb": pss, "target_rss_mb": target,
                         "ratio": statistics.median(rss) / target,
                         "met": statistics.median(rss) <= target}
        print(f"{mode}: RSS {' / '.join(f'{x:.1f}' for x in rss)} MB"
              f" ({'with' if key == 'total' else 'without'} supervisord),"
              f" PSS {' / '.join(f'{x:.1f}' for x in pss)} MB;"
              f" target ≤ {target:.0f} MB RSS: {statistics.median(rss) / target:.2f}× "
              f"→ {'met' if summary[mode]['met'] else 'NOT met'}")
    soaked = None
    if args.soak:
        soaked = soak(args.soak)
        summary["soak"] = soak_report(soaked)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], "runs": runs, "summary": summary,
                                    "soak": soaked}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
