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

Prints a markdown table and the ratios to the targets; writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_router import NODE_TOML, ROOT, node_down, node_status, tom

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


def measure(all_in_one: bool, settle_s: float) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="tbm")) / "node"
    data.mkdir(mode=0o700)
    (data / "node.toml").write_text(NODE_TOML)
    try:
        up = tom(data, "node", "up", *(["--all-in-one"] if all_in_one else []))
        if up.returncode != 0:
            raise RuntimeError(f"node up failed:\n{up.stdout}{up.stderr}")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_memory", description=__doc__.split("\n")[0])
    p.add_argument("--settle", type=float, default=3.0, help="idle seconds before measuring")
    p.add_argument("--runs", type=int, default=1, help="runs of each mode (interleaved)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    runs: list[dict[str, Any]] = []
    for _ in range(args.runs):
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
        summary[mode] = {"rss_mb": rss, "pss_mb": pss, "target_rss_mb": target,
                         "ratio": statistics.median(rss) / target,
                         "met": statistics.median(rss) <= target}
        print(f"{mode}: RSS {' / '.join(f'{x:.1f}' for x in rss)} MB"
              f" ({'with' if key == 'total' else 'without'} supervisord),"
              f" PSS {' / '.join(f'{x:.1f}' for x in pss)} MB;"
              f" target ≤ {target:.0f} MB RSS: {statistics.median(rss) / target:.2f}× "
              f"→ {'met' if summary[mode]['met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], "runs": runs, "summary": summary},
                                   indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
