"""Transport benchmark: two real nodes over QUIC on loopback against raw aioquic, in one run.

    .venv/bin/python -m bench.bench_transport

Measured in one run, because absolute figures on the 2-vCPU development machine drift between
runs (compare the ratios):

1. raw aioquic baseline: an ``aioquic.asyncio.serve`` echo server in another process and an
   ``aioquic.asyncio.connect`` client here (same Ed25519 self-signed certificate type as the
   transport). (a) RTT: a 200-byte message on a new bidirectional stream, echoed back on it,
   p50/p99 over ``--rtt-n``; (b) bulk: ``--bulk-mib`` MiB on one stream, MB/s until the
   server's acknowledgement.
2. our transport: two real nodes (crypto + transport processes each, as in
   tests/e2e/test_transport.py). (a) RTT: A sends a 200-byte envelope to B
   (``transport.send``, waiting for its reply); a responder process subscribed to B's
   ``transport.delivered`` sends it straight back through B's ``transport.send``; A waits for
   its own ``transport.delivered``. (b) throughput: A sends ``--tput-n`` envelopes of 200 B
   and of 64 KiB with ``--window`` ``transport.send`` requests in flight; this process counts
   B's ``transport.delivered`` events; envelopes/s and MB/s until the last delivery.

CPU seconds of every process involved are read from /proc for each phase (where time goes).
iroh is not measured here (see docs/benchmarks.md).
Targets: transport bulk MB/s >= 0.7x raw aioquic bulk; transport small RTT p50 <= 1.5x raw.
Prints a table and a markdown table; writes bench/results/transport.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import shutil
import signal
import socket as pysocket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from bench.bench_bus import cpu_seconds, machine, stop, summary
from shared.endpoints import load as load_endpoints
from shared.primitives import SigningKey
from shared.wire import decode
from shared.wire.messages import transport as m
from shared.wire.messages.sys import Ping

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "transport.json"
BULK_RATIO_TARGET = 0.7
RTT_RATIO_TARGET = 1.5
ALPN = "tom-bench"
MIB = 1024 * 1024


# -- raw aioquic -------------------------------------------------------------------------------

def _tls(is_client: bool) -> Any:
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.transport.endpoint import self_signed

    cfg = QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN])
    if is_client:
        cfg.verify_mode = ssl.CERT_NONE
    else:
        key = Ed25519PrivateKey.generate()
        cfg.certificate = self_signed(key, datetime.datetime.now(datetime.UTC))
        cfg.private_key = key
    return cfg


def aioquic_server(port: int) -> None:
    """Echo a stream back when it ends; a stream starting with ``B`` (bulk) is counted and
    answered with ``ok`` instead."""
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.events import StreamDataReceived

    class Echo(QuicConnectionProtocol):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.bufs: dict[int, bytearray] = {}
            self.bulk: set[int] = set()

        def quic_event_received(self, ev: Any) -> None:
            if not isinstance(ev, StreamDataReceived):
                return
            sid = ev.stream_id
            if sid in self.bulk or (sid not in self.bufs and ev.data[:1] == b"B"):
                self.bulk.add(sid)
                if ev.end_stream:
                    self._quic.send_stream_data(sid, b"ok", end_stream=True)
                    self.transmit()
                return
            buf = self.bufs.setdefault(sid, bytearray())
            buf += ev.data
            if ev.end_stream:
                self._quic.send_stream_data(sid, bytes(self.bufs.pop(sid)), end_stream=True)
                self.transmit()

    async def main() -> None:
        await serve("127.0.0.1", port, configuration=_tls(False), create_protocol=Echo)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _aioquic_client(port: int, args: argparse.Namespace, srv_pid: int) -> dict[str, Any]:
    from aioquic.asyncio import connect

    payload = b"E" + os.urandom(args.payload - 1)
    async with connect("127.0.0.1", port, configuration=_tls(True)) as client:
        async def echo() -> None:
            r, w = await client.create_stream()
            w.write(payload)
            w.write_eof()
            assert await r.read() == payload

        for _ in range(args.warmup):
            await echo()
        clock = time.perf_counter_ns
        samples = [0] * args.rtt_n
        c0 = cpu_all(srv_pid)
        for i in range(args.rtt_n):
            t0 = clock()
            await echo()
            samples[i] = clock() - t0
        rtt = summary(samples) | {"cpu": cpu_delta(c0, cpu_all(srv_pid), args.rtt_n)}

        async def bulk(n: int) -> float:
            data = b"B" + bytes(n - 1)
            r, w = await client.create_stream()
            t0 = time.perf_counter()
            w.write(data)
            w.write_eof()
            assert await r.read() == b"ok"
            return time.perf_counter() - t0

        await bulk(4 * MIB)  # warm-up (congestion window, allocator)
        n = args.bulk_mib * MIB
        c0 = cpu_all(srv_pid)
        elapsed = await bulk(n)
        bulk_r = {"bytes": n, "elapsed_s": elapsed, "mb_per_s": n / elapsed / 1e6,
                  "cpu": cpu_delta(c0, cpu_all(srv_pid), 1, elapsed)}
    return {"rtt": rtt, "bulk": bulk_r}


def free_udp_port() -> int:
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_aioquic(args: argparse.Namespace) -> dict[str, Any]:
    port = free_udp_port()
    srv = subprocess.Popen([sys.executable, "-m", "bench.bench_transport", "--aioquic-server",
                            str(port)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
        return asyncio.run(_aioquic_client(port, args, srv.pid))
    finally:
        stop(srv)


# -- CPU accounting ----------------------------------------------------------------------------

def cpu_all(*pids: int) -> dict[str, float]:
    """CPU seconds of this process ("client") and of each named pid."""
    out = {"client": time.process_time()}
    for i, pid in enumerate(pids):
        out[f"p{i}"] = cpu_seconds(pid)
    return out


def cpu_delta(a: dict[str, float], b: dict[str, float], n: int,
              elapsed: float | None = None, names: tuple[str, ...] = ("server",)) -> dict[str, Any]:
    """CPU per operation (µs) and, with ``elapsed``, as % of the wall time, per process."""
    label = {"client": "client", **{f"p{i}": nm for i, nm in enumerate(names)}}
    out: dict[str, Any] = {}
    for k in a:
        d = b[k] - a[k]
        out[label[k]] = {"cpu_s": d, "us_per_op": 1e6 * d / n}
        if elapsed:
            out[label[k]]["pct"] = 100 * d / elapsed
    return out


# -- our transport -----------------------------------------------------------------------------

def responder(data: str, peer_hex: str) -> None:
    """Send every envelope delivered to this node's transport straight back to ``peer``."""
    from shared.bus import BusClient, socket

    endpoints = load_endpoints(Path(data) / "endpoints.toml")
    sub = socket(zmq.Context.instance(), zmq.SUB, hwm=100_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"transport.delivered")
    sub.setsockopt(zmq.SUBSCRIBE, b"sys.heartbeat")
    sub.connect(endpoints["transport"].events)
    while sub.recv_multipart()[0] != b"sys.heartbeat":
        pass
    sub.setsockopt(zmq.UNSUBSCRIBE, b"sys.heartbeat")
    client = BusClient(endpoints, src="bench-responder", timeout_s=10)
    body = m.Send(peer=bytes.fromhex(peer_hex))
    print("ready", flush=True)
    while True:
        frames = sub.recv_multipart()
        if frames[0] == b"transport.delivered":
            client.call("transport", body, [decode(frames[1:]).blobs[0]])


def _delivered(sub: zmq.Socket, timeout_ms: int) -> bytes | None:
    while sub.poll(timeout_ms):
        frames = sub.recv_multipart()
        if frames[0] == b"transport.delivered":
            return decode(frames[1:]).blobs[0]
    return None


def run_transport(args: argparse.Namespace) -> dict[str, Any]:
    from tests.e2e.test_transport import info, make_node, subscriber

    seeds = (b"\x1a" * 32, b"\x1b" * 32)
    a_id, b_id = (SigningKey(s).public for s in seeds)
    nodes = []
    resp: subprocess.Popen[bytes] | None = None
    try:
        nodes = [make_node(s) for s in seeds]
        a, b = nodes
        ia, ib = info(a), info(b)
        assert ia.ready and ib.ready, "transport binding not signed"
        ta, tb = a.procs["transport"].pid, b.procs["transport"].pid
        ca = a.client(timeout_s=30)
        ca.request("transport", m.Connect(peer=b_id, host=ib.host, port=ib.port))
        out: dict[str, Any] = {}

        # bus RTT alone (sys.ping to A's transport), for context
        clock = time.perf_counter_ns
        for _ in range(args.warmup):
            ca.call("transport", Ping())
        samples = [0] * args.rtt_n
        for i in range(args.rtt_n):
            t0 = clock()
            ca.call("transport", Ping())
            samples[i] = clock() - t0
        out["bus_ping"] = summary(samples)

        # (a) RTT through both transports, echoed by a responder process on B
        resp = subprocess.Popen([sys.executable, "-m", "bench.bench_transport", "--responder",
                                 str(b.data), a_id.hex()], cwd=ROOT, stdout=subprocess.PIPE)
        assert resp.stdout is not None and resp.stdout.readline().strip() == b"ready"
        sub_a = subscriber(a)
        pad = os.urandom(args.payload - 8)
        send = m.Send(peer=b_id)

        def once(i: int) -> None:
            env = b"%08d" % i + pad
            ca.call("transport", send, [env])
            while (got := _delivered(sub_a, 10_000)) != env:
                assert got is not None, "echo not delivered within 10 s"

        for i in range(args.warmup):
            once(i)
        c0 = cpu_all(ta, tb, resp.pid)
        for i in range(args.rtt_n):
            t0 = clock()
            once(args.warmup + i)
            samples[i] = clock() - t0
        out["rtt"] = summary(samples) | {"cpu": cpu_delta(
            c0, cpu_all(ta, tb, resp.pid), args.rtt_n,
            names=("transport A", "transport B", "responder"))}
        stop(resp)
        resp = None
        sub_a.close(0)

        # (b) pipelined throughput A -> B, deliveries counted on B's PUB
        sub_b = subscriber(b)
        for size in (args.payload, 64 * 1024):
            out[f"tput_{size}"] = blast(ca, b_id, sub_b, size, args, ta, tb)
        ca.close()
        return out
    except BaseException:
        for n in nodes:
            sys.stderr.write(n.log_tail()[-3000:] + "\n")
        raise
    finally:
        stop(resp)
        for n in nodes:
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)


def blast(ca: Any, peer: bytes, sub: zmq.Socket, size: int, args: argparse.Namespace,
          ta: int, tb: int) -> dict[str, Any]:
    n, window = args.tput_n, args.window
    pool = [b"%08d" % i + os.urandom(size - 8) for i in range(16)]
    body = m.Send(peer=peer)
    inflight: collections.deque[bytes] = collections.deque()
    got = 0

    def drain() -> None:
        nonlocal got
        while sub.poll(0):
            if sub.recv_multipart(copy=False)[0].bytes == b"transport.delivered":
                got += 1

    c0 = cpu_all(ta, tb)
    t0 = time.perf_counter()
    for i in range(n):
        if len(inflight) >= window:
            ca.recv("transport", inflight.popleft())
            drain()
        inflight.append(ca.send("transport", body, [pool[i % 16]]))
    while inflight:
        ca.recv("transport", inflight.popleft())
    t_sent = time.perf_counter() - t0
    deadline = time.monotonic() + args.deliver_timeout
    while got < n and time.monotonic() < deadline:
        if sub.poll(200):
            drain()
    elapsed = time.perf_counter() - t0
    cpu = cpu_delta(c0, cpu_all(ta, tb), n, elapsed, names=("transport A", "transport B"))
    return {"n": n, "size": size, "window": window, "delivered": got, "elapsed_s": elapsed,
            "send_replies_s": t_sent, "env_per_s": got / elapsed,
            "mb_per_s": got * size / elapsed / 1e6, "cpu": cpu}


# -- reporting ---------------------------------------------------------------------------------

def rows(r: dict[str, Any]) -> list[list[str]]:
    q, t, ra = r["aioquic"], r["transport"], r["ratios"]
    t200, t64 = t[f"tput_{r['params']['payload']}"], t["tput_65536"]
    return [
        ["small RTT p50 (µs)", f"{q['rtt']['p50_us']:.0f}", f"{t['rtt']['p50_us']:.0f}",
         f"{ra['rtt_p50']:.2f}×", "≤ 1.5×",
         "yes" if ra["rtt_p50"] <= RTT_RATIO_TARGET else "**no**"],
        ["small RTT p99 (µs)", f"{q['rtt']['p99_us']:.0f}", f"{t['rtt']['p99_us']:.0f}",
         f"{ra['rtt_p99']:.2f}×", "", ""],
        ["bulk MB/s (raw: one stream; ours: 64 KiB envelopes)",
         f"{q['bulk']['mb_per_s']:.1f}", f"{t64['mb_per_s']:.2f}",
         f"{ra['bulk']:.2f}×", "≥ 0.7×", "yes" if ra["bulk"] >= BULK_RATIO_TARGET else "**no**"],
        [f"64 KiB envelopes/s (delivered {t64['delivered']} of {t64['n']})", "",
         f"{t64['env_per_s']:,.1f}", "", "", ""],
        [f"{t200['size']} B envelopes/s, window {t200['window']} (delivered "
         f"{t200['delivered']} of {t200['n']})", "", f"{t200['env_per_s']:,.0f}", "", "", ""],
        [f"{t200['size']} B envelopes MB/s", "", f"{t200['mb_per_s']:.2f}", "", "", ""],
        ["bus sys.ping RTT p50 to one transport (µs)", "", f"{t['bus_ping']['p50_us']:.0f}",
         "", "", ""],
    ]


HEAD = ["measurement", "raw aioquic", "our transport", "ours / raw", "target", "met"]


def text_table(r: dict[str, Any]) -> str:
    table = [HEAD, *rows(r)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(r: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * 4 + ":---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(r)]
    return "\n".join(lines)


def cpu_lines(r: dict[str, Any]) -> str:
    out = []
    for name, cpu in (("raw aioquic RTT", r["aioquic"]["rtt"]["cpu"]),
                      ("raw aioquic bulk", r["aioquic"]["bulk"]["cpu"]),
                      ("transport RTT", r["transport"]["rtt"]["cpu"]),
                      ("transport 200 B tput", r["transport"][f"tput_{r['params']['payload']}"]
                       ["cpu"]),
                      ("transport 64 KiB tput", r["transport"]["tput_65536"]["cpu"])):
        parts = [f"{k} {v['us_per_op']:.0f} µs/op" + (f" ({v['pct']:.0f} %)" if "pct" in v
                                                        else "") for k, v in cpu.items()]
        out.append(f"- {name}: " + ", ".join(parts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_transport",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rtt-n", type=int, default=1000, help="timed round trips per RTT figure")
    p.add_argument("--warmup", type=int, default=100, help="untimed round trips before each")
    p.add_argument("--payload", type=int, default=200, help="small message bytes")
    p.add_argument("--bulk-mib", type=int, default=32, help="raw aioquic bulk stream MiB")
    p.add_argument("--tput-n", type=int, default=5000, help="envelopes per throughput figure")
    p.add_argument("--window", type=int, default=200, help="transport.send requests in flight")
    p.add_argument("--deliver-timeout", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--aioquic-server", type=int, help=argparse.SUPPRESS)
    p.add_argument("--responder", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.aioquic_server:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        aioquic_server(args.aioquic_server)
        return 0
    if args.responder:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        responder(*args.responder)
        return 0

    t0 = time.monotonic()
    raw = run_aioquic(args)
    print(f"raw aioquic done ({time.monotonic() - t0:.0f} s)", flush=True)
    ours = run_transport(args)
    print(f"transport done ({time.monotonic() - t0:.0f} s)", flush=True)
    ratios = {"rtt_p50": ours["rtt"]["p50_us"] / raw["rtt"]["p50_us"],
              "rtt_p99": ours["rtt"]["p99_us"] / raw["rtt"]["p99_us"],
              "bulk": ours["tput_65536"]["mb_per_s"] / raw["bulk"]["mb_per_s"]}
    result = {
        "bench": "transport",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {k: getattr(args, k) for k in ("rtt_n", "warmup", "payload", "bulk_mib",
                                                   "tput_n", "window")},
        "aioquic": raw, "transport": ours, "ratios": ratios,
        "targets": {"bulk_ge_0.7x_raw": {"value": ratios["bulk"],
                                         "met": ratios["bulk"] >= BULK_RATIO_TARGET},
                    "rtt_p50_le_1.5x_raw": {"value": ratios["rtt_p50"],
                                            "met": ratios["rtt_p50"] <= RTT_RATIO_TARGET}},
        "wall_s": time.monotonic() - t0,
    }
    print()
    print(text_table(result))
    print()
    print("CPU per operation by process:")
    print(cpu_lines(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults written to {args.out}\n\nmarkdown (docs/benchmarks.md):\n")
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
