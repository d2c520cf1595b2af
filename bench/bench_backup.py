"""Backup benchmark (issue 16): entries one holder accepts per second, time from a
recipient's return to all of its held messages delivered, and disk bytes per held message,
between whole nodes on loopback, beside the raw limits measured in the same run.

    .venv/bin/python -m bench.bench_backup                 # the defaults: about 2 minutes
    .venv/bin/python -m bench.bench_backup --payloads 100,10240,65536 --seq-n 1000 \\
        --win-n 5000 --window 128 --redeliver-n 2000      # more

Options: ``--payloads`` (comma list of plaintext bytes, one holder node each),
``--warmup`` (untimed holds first), ``--seq-n`` (``backup.hold`` requests one at a time),
``--win-n`` / ``--window`` (requests with ``--window`` in flight), ``--raw-n`` (iterations
of each raw loop), ``--redeliver-n`` / ``--redeliver-payload`` (``0`` skips the
redelivery), ``--timeout``, ``--skip-hold``, ``--keep``, ``--out``.

Every node is a real one: ``python -m tom.cli --data DIR node up`` (five processes under
supervisord) in a fresh ``/tmp/tbk…`` directory whose ``node.toml`` binds the transport to
127.0.0.1 on a fixed free UDP port (``bench.bench_groups.BenchNode``). Every node the
benchmark started is stopped in a ``finally`` (also on Ctrl-C or SIGTERM): ``node down``,
then whatever is left of it killed by pid.

1. Hold rate, per ``--payloads`` size, one fresh holder node each (its ``[backup]`` capacity
   raised to 4 GiB / 10 M messages, so that no request is refused for the quota; refusals
   are counted anyway). Envelopes are sealed beforehand in this process
   (``services.crypto.core.Identity.seal``: encrypted to a random recipient, signed by one of
   8 senders, each its own quota share) and handed to the node's backup service over its bus
   (``Client.bus`` → ``backup.hold``): ``--warmup`` untimed, then ``--seq-n`` one at a time
   (p50/p99 of each request),
   then ``--win-n`` with ``--window`` requests in flight (the service commits once per batch
   it reads, so in flight means group commit). The backup service's CPU (from /proc) per hold.
   The raw limits, in this process, before and after the nodes (the faster is kept): an
   Ed25519 verify loop over the same envelopes (``shared.primitives.verify`` of their signing
   bytes; also ``decode`` + ``Envelope.verify``, what the service does), and a bare SQLite
   loop with the backup store's schema and settings (``services.backup.store.SCHEMA``, WAL,
   synchronous=NORMAL) inserting the same rows, one commit per row and one per ``--window``
   rows; the floor of a hold is verify + insert + commit back to back. Also the backup core
   in this process, without the bus (``BackupCore.handle`` + ``flush`` per request), with a
   cProfile of it: where a hold's time goes.
2. Disk per held message, on the same holder nodes: ``backup.db`` + ``-wal`` (+ ``-shm``)
   while the node runs, minus their size before the first hold, divided by the messages held;
   then ``node down`` (SQLite checkpoints and removes the WAL when the service closes its
   store) and the ``backup.db`` alone; beside the envelope's own size.
3. Redelivery, as tests/e2e/test_backup.py but with ``--redeliver-n`` messages: a holder H,
   a sender A (``[router] backup_after_s = 2``, bootstrap H) and a recipient C that is
   initialised (``tom init``) but not started. A sends the messages to C (``router.send``,
   ``--window`` in flight); the benchmark waits until A's outbox shows every one held by H
   (``held_by`` ≥ 1) and stops A. Then C is started (bootstrap H): time from ``tom node up``
   of C returning to C's inbox holding all of them (``router.inbox`` polled every 20 ms, the
   first time each message is seen is its arrival), p50/p90 of the arrivals, arrivals per
   second of wall time (the shape of the pushes), then the time until H has deleted every
   copy (C's ACKs), and a check that every message is in C's inbox exactly once.

Prints a JSON summary and markdown tables; writes bench/results/backup.json.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime
import io
import json
import os
import pstats
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_bus import cpu_seconds, machine
from bench.bench_groups import BenchNode, down_all, log, pct, until
from bench.bench_router import tom
from services.backup.core import BackupCore, BackupSettings
from services.backup.store import SCHEMA, Store
from services.crypto.core import Identity
from shared import primitives
from shared.core import Reply, Request
from shared.envelope import MessageType, decode
from shared.paths import DataDir
from shared.wire import RemoteError
from shared.wire.messages import backup as bm
from shared.wire.messages.sys import Status, StatusReply
from tom.client import Client

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "backup.json"
SENDERS = 8
BIG_BACKUP = "[backup]\ncapacity_bytes = 4294967296\ncapacity_messages = 10000000\n"
E2E_TOML = """\
[bus]
heartbeat_s = 0.5
[router]
gossip_interval_s = 1.0
backup_after_s = 2
"""
HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def lat_ms(samples_s: list[float]) -> dict[str, float]:
    return {"n": len(samples_s), "p50_ms": 1000 * pct(samples_s, 50),
            "p99_ms": 1000 * pct(samples_s, 99), "max_ms": 1000 * max(samples_s)}


def db_bytes(data: Path) -> dict[str, int]:
    out = {}
    for suffix in ("", "-wal", "-shm"):
        f = data / f"backup.db{suffix}"
        out["db" + suffix.replace("-", "_")] = f.stat().st_size if f.exists() else 0
    return out


def counters(node: BenchNode, role: str) -> dict[str, int]:
    reply = node.c.bus.request(role, Status())
    assert isinstance(reply, StatusReply)
    return dict(reply.counters)


def moved(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: v - a.get(k, 0) for k, v in b.items() if v != a.get(k, 0)}


def summary(node: BenchNode) -> bm.SummaryReply:
    reply = node.c.bus.request("backup", bm.Summary())
    assert isinstance(reply, bm.SummaryReply)
    return reply


def role_pid(node: BenchNode, role: str) -> int:
    pids = [pid for pid, r in node.service_pids().items() if r == role]
    if not pids:
        raise RuntimeError(f"no {role} process of {node.name}")
    return pids[0]


def write_toml(node: BenchNode, extra: str) -> None:
    """The node's transport on its fixed loopback port, and ``extra`` sections."""
    (node.data / "node.toml").write_text("[transport]\nhost = \"127.0.0.1\"\n"
                                         f"port = {node.port}\nport_fallback = false\n"
                                         + extra)


# -- sealed envelopes --------------------------------------------------------------------------

def seal_all(n: int, payload: int) -> list[bytes]:
    """``n`` chat envelopes, sealed to a random recipient and signed by ``SENDERS`` senders."""
    senders = [Identity(os.urandom(32), os.urandom) for _ in range(SENDERS)]
    to = Identity(os.urandom(32), os.urandom).node_id
    ts = now_ms()
    return [senders[i % SENDERS].seal(to, MessageType.CHAT, os.urandom(payload), ts).encode()
            for i in range(n)]


# -- the raw limits, in this process -----------------------------------------------------------

def raw_verify(envs: list[bytes]) -> dict[str, float]:
    decoded = [decode(raw) for raw in envs]
    parts = [(e.sender, e.signature, e.signing_bytes()) for e in decoded]
    t = time.perf_counter()
    for pk, sig, msg in parts:
        primitives.verify(pk, sig, msg)
    bare = time.perf_counter() - t
    t = time.perf_counter()
    for raw in envs:
        decode(raw).verify()
    full = time.perf_counter() - t
    return {"verify_per_s": rate(len(envs), bare), "decode_verify_per_s": rate(len(envs), full)}


def raw_sqlite(envs: list[bytes], tmp: Path, batch: int) -> dict[str, float]:
    """Insert the rows the store writes for ``envs``: one commit per row, then one per
    ``batch`` rows (a fresh file each, the store's schema and pragmas)."""
    rows = []
    for raw in envs:
        e = decode(raw)
        rows.append((e.sender, e.id, e.to, e.sender, now_ms() + HOUR_MS, now_ms(), len(raw), raw))
    out = {}
    for name, every in (("commit_each", 1), ("commit_batch", batch)):
        path = tmp / f"raw-{name}.db"
        db = sqlite3.connect(str(path), isolation_level="DEFERRED")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        db.commit()
        t = time.perf_counter()
        for i, row in enumerate(rows, 1):
            db.execute("INSERT INTO held VALUES (?,?,?,?,?,?,?,?)", row)
            if i % every == 0:
                db.commit()
        db.commit()
        out[f"sqlite_{name}_per_s"] = rate(len(rows), time.perf_counter() - t)
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return out


def core_in_process(envs: list[bytes], tmp: Path, profile: bool) -> dict[str, Any]:
    """The backup core without the bus: ``handle`` + ``flush`` (the commit) per request."""
    path = tmp / f"core-{os.getpid()}-{time.monotonic_ns()}.db"
    core = BackupCore(Store(path), time.time, BackupSettings(4 << 30, 10_000_000))
    exp = now_ms() + HOUR_MS
    prof = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    for i, raw in enumerate(envs):
        out = core.handle(Request(i, bm.Hold(expires_ms=exp), (raw,)), 0.0) + core.flush(0.0)
        if not (out and isinstance(out[0], Reply)):
            raise RuntimeError(f"the core refused a hold: {out}")
    if prof:
        prof.disable()
    took = time.perf_counter() - t
    core.close(0.0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    res: dict[str, Any] = {"holds_per_s": rate(len(envs), took)}
    if prof:
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
        top = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:10]  # type: ignore[attr-defined]
        res["profile_tottime_share"] = {
            f"{Path(k[0]).name}:{k[1]}({k[2]})": round(v[2] / total, 3) for k, v in top}
    return res


def raw_limits(envs: list[bytes], tmp: Path, batch: int) -> dict[str, Any]:
    out: dict[str, Any] = raw_verify(envs) | raw_sqlite(envs, tmp, batch)
    out["core_holds_per_s"] = core_in_process(envs, tmp, False)["holds_per_s"]
    return out


def best(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The faster of two runs of each raw loop (both kept)."""
    return {k: max(a[k], b[k]) for k in a} | {"runs": [a, b]}


# -- 1 and 2: hold rate and disk per message ---------------------------------------------------

def hold(node: BenchNode, envs: list[bytes], window: int) -> dict[str, Any]:
    """Hand ``envs`` to the node's backup service, ``window`` requests in flight."""
    bus = node.c.bus
    exp = now_ms() + HOUR_MS
    pid = role_pid(node, "backup")
    c0, b0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    samples: list[float] = []
    refused: collections.Counter[str] = collections.Counter()
    inflight: collections.deque[tuple[bytes, float]] = collections.deque()
    todo = collections.deque(envs)
    while todo or inflight:
        if todo and len(inflight) < window:
            inflight.append((bus.send("backup", bm.Hold(expires_ms=exp), (todo.popleft(),),
                                      timeout_s=30), time.perf_counter()))
            continue
        req, sent = inflight.popleft()
        try:
            r = bus.recv("backup", req, timeout_s=30)
            assert isinstance(r.body, bm.HoldReply) and not r.body.already
        except RemoteError as e:
            refused[e.name] += 1
        samples.append(time.perf_counter() - sent)
    took = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - c0
    return {"n": len(envs), "window": window, "s": took, "holds_per_s": rate(len(envs), took),
            "latency": lat_ms(samples), "refused": dict(refused),
            "backup_cpu_us_per_hold": 1e6 * cpu / len(envs),
            "backup_cpu_busy": cpu / took,
            "bench_cpu_us_per_hold": 1e6 * (time.process_time() - b0) / len(envs)}


def run_hold(payload: int, args: argparse.Namespace, tmp: Path,
             registry: list[BenchNode]) -> dict[str, Any]:
    log(f"hold, {payload} B: sealing envelopes")
    envs = seal_all(args.warmup + args.seq_n + args.win_n, payload)
    warm, envs = envs[:args.warmup], envs[args.warmup:]
    raw_envs = seal_all(args.raw_n, payload)
    sizes = [len(e) for e in envs]
    out: dict[str, Any] = {"payload": payload, "envelope_bytes": sum(sizes) / len(sizes)}
    before = raw_limits(raw_envs, tmp, args.window)
    node = BenchNode(f"h{payload}", tmp, all_in_one=False)
    registry.append(node)
    write_toml(node, BIG_BACKUP)
    try:
        node.start()
        empty = db_bytes(node.data)
        out["db_empty"] = empty
        k0 = counters(node, "backup")
        if warm:  # untimed: the first requests of a fresh node and bus connection
            out["warmup"] = {k: v for k, v in hold(node, warm, args.window).items()
                             if k in ("n", "holds_per_s", "refused")}
        log(f"hold, {payload} B: {args.seq_n} one at a time")
        out["sequential"] = hold(node, envs[:args.seq_n], 1)
        log(f"hold, {payload} B: {args.win_n} with {args.window} in flight")
        out["windowed"] = hold(node, envs[args.seq_n:], args.window)
        out["counters"] = moved(k0, counters(node, "backup"))
        s = summary(node)
        out["summary"] = {"messages": s.messages, "bytes": s.bytes}
        running = db_bytes(node.data)
        out["db_running"] = running
        node.down()
        out["db_closed"] = db_bytes(node.data)
        held = s.messages
        out["disk"] = {
            "held": held,
            "running_per_msg": (sum(running.values()) - sum(empty.values())) / held,
            "running_db_wal_per_msg": (running["db"] + running["db_wal"] - empty["db"]
                                       - empty["db_wal"]) / held,
            "closed_per_msg": (out["db_closed"]["db"] - empty["db"]) / held,
            "stored_bytes_per_msg": s.bytes / held}
    finally:
        node.down()
    after = raw_limits(raw_envs, tmp, args.window)
    raw = best(before, after)
    raw["profile"] = core_in_process(raw_envs, tmp, True)["profile_tottime_share"]
    out["raw"] = raw
    # the floors: verify, then insert and commit, back to back on one core
    out["floor_each_per_s"] = 1 / (1 / raw["verify_per_s"] + 1 / raw["sqlite_commit_each_per_s"])
    out["floor_batch_per_s"] = 1 / (1 / raw["verify_per_s"]
                                    + 1 / raw["sqlite_commit_batch_per_s"])
    log(f"hold, {payload} B: {out['sequential']['holds_per_s']:.0f}/s one at a time, "
        f"{out['windowed']['holds_per_s']:.0f}/s windowed; floor "
        f"{out['floor_each_per_s']:.0f} / {out['floor_batch_per_s']:.0f}/s")
    return out


# -- 3: redelivery -----------------------------------------------------------------------------

def run_redeliver(args: argparse.Namespace, tmp: Path,
                  registry: list[BenchNode]) -> dict[str, Any]:
    n = args.redeliver_n
    h, a, c = (BenchNode(name, tmp, all_in_one=False) for name in ("rh", "ra", "rc"))
    registry += [h, a, c]
    out: dict[str, Any] = {"n": n, "payload": args.redeliver_payload}
    try:
        write_toml(h, E2E_TOML)
        h.start()
        boot = f'[router]\nbootstrap = ["{h.id.hex()}@127.0.0.1:{h.port}"]\n'
        for x in (a, c):
            write_toml(x, E2E_TOML.replace("[router]\n", boot))
        init = tom(c.data, "init")
        if init.returncode != 0:
            raise RuntimeError(f"tom init failed: {init.stdout}{init.stderr}")
        c_id = bytes.fromhex(tom(c.data, "id").stdout.split()[0])
        a.start()
        until("a connected to h", lambda: any(p.node_id == h.id and p.connected
                                              for p in a.c.peers()), 60)
        tag = os.urandom(4).hex()
        pad = max(0, args.redeliver_payload - 20)
        payloads = [f"{tag} {i:08d} ".encode() + b"x" * pad for i in range(n)]
        log(f"redelivery: a sends {n} messages to c (offline)")
        t0 = time.monotonic()
        ids = a.c.send_many(c_id, payloads, args.window)
        out["send_s"] = time.monotonic() - t0
        until(f"every message held by h ({n})", lambda: all(
            s.held_by >= 1 for s in a.c.outbox(ids)), args.timeout)
        out["all_held_s"] = time.monotonic() - t0
        out["a_statuses"] = dict(collections.Counter(s.status for s in a.c.outbox(ids)))
        held = summary(h).messages
        out["held_at_h"] = held
        log(f"redelivery: all {n} held by h after {out['all_held_s']:.1f} s; a goes down")
        a.down()
        h0 = {r: counters(h, r) for r in ("backup", "router", "transport")}

        log("redelivery: c comes up")
        t_call = time.monotonic()
        up = tom(c.data, "node", "up", timeout=120)
        t_up = time.monotonic()
        if up.returncode != 0:
            raise RuntimeError(f"node up of c failed:\n{up.stdout}{up.stderr}")
        out["c_node_up_s"] = t_up - t_call
        c.client = Client(DataDir(c.data), timeout_s=30)
        c.id = c_id
        arrivals: dict[bytes, float] = {}
        counts: collections.Counter[bytes] = collections.Counter()
        after = 0
        connected_s = None
        deadline = t_up + args.timeout
        while len(arrivals) < n and time.monotonic() < deadline:
            page = c.c.inbox(after=after, limit=1000)
            now = time.monotonic() - t_up
            for m in page:
                key = m.payload[:18]
                counts[key] += 1
                arrivals.setdefault(key, now)
            if page:
                after = page[-1].info.seq
                continue
            if connected_s is None and any(p.node_id == h.id and p.connected
                                           for p in c.c.peers()):
                connected_s = time.monotonic() - t_up
            time.sleep(0.02)
        times = sorted(arrivals.values())
        out["received"] = len(arrivals)
        out["c_connected_to_h_s"] = connected_s
        if times:
            out["to_all_s"] = times[-1] if len(arrivals) == n else None
            out["first_s"], out["p50_s"], out["p90_s"] = \
                times[0], pct(times, 50), pct(times, 90)
            per_s = collections.Counter(int(t) for t in times)
            out["arrivals_per_s"] = {str(k): per_s[k] for k in sorted(per_s)}
        done = f"all after {times[-1]:.1f} s" if len(arrivals) == n else "timed out"
        log(f"redelivery: c has {len(arrivals)} of {n} ({done})")
        try:
            until("h deleted every copy", lambda: summary(h).messages == 0, 60, 0.1)
            out["h_empty_s"] = time.monotonic() - t_up
        except RuntimeError:
            out["h_empty_s"] = None
            out["h_left"] = summary(h).messages
        time.sleep(1.0)  # anything late would have arrived by now
        whole: collections.Counter[bytes] = collections.Counter()
        after = 0
        while page := c.c.inbox(after=after, limit=1000):
            whole.update(m.payload[:18] for m in page)
            after = page[-1].info.seq
        expected = {p[:18] for p in payloads}
        out["check"] = {"distinct": len(whole), "missing": len(expected - set(whole)),
                        "duplicates": sum(v - 1 for v in whole.values() if v > 1),
                        "unexpected": len(set(whole) - expected),
                        "exactly_once": set(whole) == expected and
                        set(whole.values()) == {1}}
        out["h_counters"] = {r: moved(h0[r], counters(h, r))
                             for r in ("backup", "router", "transport")}
        out["c_counters"] = {r: counters(c, r) for r in ("router", "transport")}
        return out
    finally:
        down_all([h, a, c])


# -- reporting ---------------------------------------------------------------------------------

def f(x: float | None, fmt: str = ",.0f") -> str:
    return "–" if x is None else format(x, fmt)


def markdown(r: dict[str, Any]) -> str:
    lines = []
    if r["hold"]:
        w = r["params"]["window"]
        lines += [
            "| payload (B) / envelope (B) | holds/s, one at a time (p50 ms) | "
            f"holds/s, {w} in flight (p50 ms) | backup CPU µs per hold (one / {w}) | "
            "core in-process, no bus (holds/s) | Ed25519 verify/s (decode + verify) | "
            f"SQLite insert+commit/s (commit per {w}) | floor verify+commit/s "
            f"(commit per {w}) | one at a time / floor | {w} in flight / floor |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for h in r["hold"]:
            s, wd, raw = h["sequential"], h["windowed"], h["raw"]
            lines.append(
                f"| {h['payload']:,} / {h['envelope_bytes']:,.0f} | "
                f"{f(s['holds_per_s'])} ({s['latency']['p50_ms']:.2f}) | "
                f"{f(wd['holds_per_s'])} ({wd['latency']['p50_ms']:.1f}) | "
                f"{s['backup_cpu_us_per_hold']:.0f} / {wd['backup_cpu_us_per_hold']:.0f} | "
                f"{f(raw['core_holds_per_s'])} | "
                f"{f(raw['verify_per_s'])} ({f(raw['decode_verify_per_s'])}) | "
                f"{f(raw['sqlite_commit_each_per_s'])} ({f(raw['sqlite_commit_batch_per_s'])})"
                f" | {f(h['floor_each_per_s'])} ({f(h['floor_batch_per_s'])}) | "
                f"{s['holds_per_s'] / h['floor_each_per_s']:.0%} | "
                f"{wd['holds_per_s'] / h['floor_batch_per_s']:.0%} |")
        lines += ["", "| payload (B) | envelope (B) | held | disk per message, running: "
                  "db + wal + shm (B) | after `node down`: db only (B) | "
                  "disk / envelope (running / closed) |", "|---:|---:|---:|---:|---:|---:|"]
        for h in r["hold"]:
            d = h.get("disk")
            if not d:
                continue
            env = h["envelope_bytes"]
            lines.append(f"| {h['payload']:,} | {env:,.0f} | {d['held']:,} | "
                         f"{d['running_per_msg']:,.0f} | {d['closed_per_msg']:,.0f} | "
                         f"{d['running_per_msg'] / env:.2f} / {d['closed_per_msg'] / env:.2f} |")
    rd = r.get("redeliver")
    if rd and "received" in rd:
        chk = rd.get("check", {})
        lines += ["", "| messages held (payload) | `node up` of C (s) | up → C connected to H "
                  "(s) | up → first / p50 / p90 / all delivered (s) | up → H deleted every "
                  "copy (s) | each once | sender → all held by H (s) |",
                  "|---|---:|---:|---:|---:|:---:|---:|"]
        lines.append(
            f"| {rd['n']:,} ({rd['payload']} B) | {rd['c_node_up_s']:.1f} | "
            f"{f(rd.get('c_connected_to_h_s'), '.2f')} | "
            f"{f(rd.get('first_s'), '.2f')} / {f(rd.get('p50_s'), '.2f')} / "
            f"{f(rd.get('p90_s'), '.2f')} / {f(rd.get('to_all_s'), '.2f')} | "
            f"{f(rd.get('h_empty_s'), '.1f')} | "
            f"{'yes' if chk.get('exactly_once') else '**no** ' + json.dumps(chk)} | "
            f"{rd['all_held_s']:.1f} |")
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_backup",
                                description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--payloads", type=parse_sizes, default=[100, 10240],
                   help="plaintext bytes per held message, comma separated (one holder "
                   "node each; default 100,10240)")
    p.add_argument("--warmup", type=int, default=200, help="untimed holds first (held too)")
    p.add_argument("--seq-n", type=int, default=1000, help="holds one at a time")
    p.add_argument("--win-n", type=int, default=3000, help="holds with --window in flight")
    p.add_argument("--window", type=int, default=32, help="requests in flight")
    p.add_argument("--raw-n", type=int, default=2000, help="iterations of each raw loop")
    p.add_argument("--redeliver-n", type=int, default=1000,
                   help="messages held for the returning recipient (0: skip)")
    p.add_argument("--redeliver-payload", type=int, default=100, help="their bytes")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for the hand-off and for the redelivery")
    p.add_argument("--skip-hold", action="store_true", help="only the redelivery")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = p.parse_args(argv)

    def stop_on_signal(signum: int, _frame: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up
        raise KeyboardInterrupt(f"signal {signum}")  # the finally blocks stop every node

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop_on_signal)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tbk", dir="/tmp"))
    registry: list[BenchNode] = []
    result: dict[str, Any] = {
        "bench": "backup",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python -m bench.bench_backup",
                             *(argv if argv is not None else sys.argv[1:])]),
        "params": {k: getattr(args, k) for k in ("payloads", "warmup", "seq_n", "win_n", "window",
                                                   "raw_n", "redeliver_n",
                                                   "redeliver_payload")},
        "hold": [], "loadavg_start": os.getloadavg()}
    try:
        if not args.skip_hold:
            for size in args.payloads:
                result["hold"].append(run_hold(size, args, tmp, registry))
        if args.redeliver_n > 0:
            try:
                result["redeliver"] = run_redeliver(args, tmp, registry)
            except Exception as e:  # noqa: BLE001 - recorded with what was measured
                log(f"redelivery FAILED: {e}")
                result["redeliver"] = {"error": repr(e)}
    finally:
        down_all([n for n in registry if n.supervisord_pid() is not None or n.service_pids()])
        result["wall_s"] = time.monotonic() - t0
        result["loadavg_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    brief = {
        "hold": [{"payload": h["payload"], "envelope_bytes": h["envelope_bytes"],
                  "one_at_a_time_per_s": h["sequential"]["holds_per_s"],
                  "windowed_per_s": h["windowed"]["holds_per_s"],
                  "floor_each_per_s": h["floor_each_per_s"],
                  "floor_batch_per_s": h["floor_batch_per_s"],
                  "raw": {k: v for k, v in h["raw"].items() if k not in ("runs", "profile")},
                  "core_profile": h["raw"]["profile"],
                  "refused": [h["sequential"]["refused"], h["windowed"]["refused"]],
                  "disk": h.get("disk")} for h in result["hold"]],
        "redeliver": {k: v for k, v in (result.get("redeliver") or {}).items()
                      if k not in ("h_counters", "c_counters")},
    }
    print(json.dumps(brief, indent=2))
    print(f"\nresults written to {args.out} ({result['wall_s']:.0f} s)\n\n"
          "markdown (docs/benchmarks.md):\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
