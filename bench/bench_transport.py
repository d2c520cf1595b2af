"""Transport benchmark: two real nodes over QUIC on loopback vs raw aioquic and iroh, in one run.

    .venv/bin/python -m bench.bench_transport [--iroh-python /tmp/irohvenv/bin/python]

Measured in one run, because absolute figures on the 2-vCPU development machine drift between
runs (compare the ratios):

1. raw aioquic baseline: an ``aioquic.asyncio.serve`` echo server in another process and an
   ``aioquic.asyncio.connect`` client here (same Ed25519 self-signed certificate type as the
   transport). (a) RTT: a 200-byte message on a new bidirectional stream, echoed back on it,
   p50/p99 over ``--rtt-n``; (b) bulk: ``--bulk-mib`` MiB on one stream, MB/s until the
   server's acknowledgement.
2. our transport: two real nodes (crypto + transport processes each, ``make_node`` from
   tests/e2e/test_transport.py). Each transport hands what it receives to its router with
   ``router.deliver`` calls; the routers are played as in tests/contract/router_side.py: A's
   by this process, B's by a process of its own. (a) RTT: A sends a 200-byte envelope to B
   (``transport.send``, waiting for its reply); B's router answers the ``router.deliver`` and
   sends the envelope straight back through B's ``transport.send``; this process waits for
   A's ``router.deliver``. (b) throughput: A sends ``--tput-n`` envelopes of 200 B and of
   64 KiB with ``--window`` ``transport.send`` requests in flight; when a send fails with
   ``overloaded`` (A's lane to B holds more than 8 MiB not yet acknowledged) the sender pauses
   for ``BACKOFF_S`` (doubling while sends go on failing), halves the requests it keeps in
   flight (growing back by one per success) and retries the same envelope (retries counted).
   B's router counts the envelopes; envelopes/s and MB/s until the last delivery.
3. our endpoint without the bus: our sans-I/O ``Endpoint`` (services/transport/endpoint.py)
   on a UDP socket of its own, driven by a minimal asyncio loop as the transport shell drives
   it (read the socket until empty, feed the batch, handle events, send the datagrams, re-arm
   the timer); echo server in another process, client here, both authenticated with real
   bindings. RTT as in 1(a), a 200-byte envelope echoed: our QUIC code without the bus hops.
4. iroh, with ``--iroh-python`` (or ``TOM_IROH_PYTHON``): bench/bench_iroh.py run by that
   interpreter in a network namespace with only loopback (``unshare -n``); its figures go
   beside ours (its bulk figure is bound by the Python bindings, see its docstring).

CPU seconds of every process involved are read from /proc for each phase (where time goes).
Targets: transport bulk MB/s >= 0.7x raw aioquic bulk; small RTT p50 <= 1.5x raw (end to end
and endpoint only).
Prints a table and a markdown table; writes bench/results/transport.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import os
import select
import shlex
import shutil
import signal
import socket as pysocket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.bench_bus import cpu_seconds, machine, stop, summary
from shared.primitives import SigningKey
from shared.wire import RemoteError
from shared.wire.messages import transport as m
from shared.wire.messages.sys import Ping, Status, StatusReply

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "transport.json"
BULK_RATIO_TARGET = 0.7
RTT_RATIO_TARGET = 1.5
ALPN = "tom-bench"
MIB = 1024 * 1024
BACKOFF_S = 0.002  # pause after a transport.send fails with `overloaded`, doubled while it
MAX_BACKOFF_S = 0.05  # goes on failing, up to this


# -- raw aioquic -------------------------------------------------------------------------------

def _tls(is_client: bool) -> Any:
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from services.transport.quic import self_signed

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

        rtt = await timed_rtt(echo, args, srv_pid)

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


async def timed_rtt(echo: Callable[[], Awaitable[None]], args: argparse.Namespace,
                    srv_pid: int) -> dict[str, Any]:
    """``--warmup`` untimed then ``--rtt-n`` timed ``echo()`` round trips; CPU per op."""
    for _ in range(args.warmup):
        await echo()
    clock = time.perf_counter_ns
    samples = [0] * args.rtt_n
    c0 = cpu_all(srv_pid)
    for i in range(args.rtt_n):
        t0 = clock()
        await echo()
        samples[i] = clock() - t0
    return summary(samples) | {"cpu": cpu_delta(c0, cpu_all(srv_pid), args.rtt_n)}


def free_udp_port() -> int:
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_server(flag: str, client: Callable[[int, int], Coroutine[Any, Any, dict[str, Any]]]
                ) -> dict[str, Any]:
    """Run ``client(port, server pid)`` against this module started with ``flag port``."""
    port = free_udp_port()
    srv = subprocess.Popen([sys.executable, "-m", "bench.bench_transport", flag, str(port)],
                           cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
        return asyncio.run(client(port, srv.pid))
    finally:
        stop(srv)


# -- our endpoint without the bus --------------------------------------------------------------

ENDPOINT_SEEDS = (b"\x2a" * 32, b"\x2b" * 32)  # client, echo server


class EndpointLoop:
    """Our sans-I/O ``Endpoint`` on a non-blocking UDP socket, driven as the transport shell
    drives it, without the bus: read the socket until it is empty and feed the whole batch,
    then hand ``events()`` to ``on_event`` (which may ``send``), send ``datagrams()`` (the
    batch's ACKs and replies share packets) and re-arm the timer from ``next_timer()``."""

    def __init__(self, seed: bytes, port: int, on_event: Callable[[Any], None]) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from services.crypto.core import Identity
        from services.transport.endpoint import Endpoint, transport_public

        key, now = Ed25519PrivateKey.generate(), int(time.time())
        binding = Identity(seed, os.urandom).bind_transport(transport_public(key), now + 3600,
                                                            now - 10)
        self.ep = Endpoint(key, binding.encode(), time.time)
        self.sock = pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.loop, self.on_event = asyncio.get_running_loop(), on_event
        self.timer: asyncio.TimerHandle | None = None
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        now = self.loop.time()  # the monotonic clock, as the endpoint expects
        try:
            while True:
                data, addr = self.sock.recvfrom(65536)
                self.ep.receive(data, addr, now)
        except BlockingIOError:
            pass
        self.flush()

    def _on_timer(self) -> None:
        self.ep.handle_timer(self.loop.time())
        self.flush()

    def flush(self) -> None:
        for ev in self.ep.events():
            self.on_event(ev)
        for data, addr in self.ep.datagrams():
            self.sock.sendto(data, addr)
        if self.timer:
            self.timer.cancel()
        when = self.ep.next_timer()
        self.timer = None if when is None else self.loop.call_at(when, self._on_timer)


def endpoint_server(port: int) -> None:
    """Echo every envelope back to the peer that sent it."""
    from services.transport.endpoint import Received

    async def main() -> None:
        def echo(ev: Any) -> None:
            if isinstance(ev, Received):
                el.ep.send(ev.node_id, ev.data, el.loop.time())

        el = EndpointLoop(ENDPOINT_SEEDS[1], port, echo)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _endpoint_client(port: int, args: argparse.Namespace, srv_pid: int) -> dict[str, Any]:
    from services.transport.endpoint import PeerAuthenticated, Received

    got: asyncio.Queue[Any] = asyncio.Queue()

    def on_event(ev: Any) -> None:
        if isinstance(ev, PeerAuthenticated | Received):
            got.put_nowait(ev)

    el, peer = EndpointLoop(ENDPOINT_SEEDS[0], 0, on_event), SigningKey(ENDPOINT_SEEDS[1]).public
    el.ep.dial(peer, ("127.0.0.1", port), el.loop.time())
    el.flush()
    assert isinstance(await asyncio.wait_for(got.get(), 10), PeerAuthenticated)
    payload = b"E" + os.urandom(args.payload - 1)

    async def echo() -> None:
        el.ep.send(peer, payload, el.loop.time())
        el.flush()
        assert (await got.get()).data == payload

    return {"rtt": await timed_rtt(echo, args, srv_pid)}


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

def send_retrying(client: Any, body: m.Send, envelope: bytes) -> None:
    """``transport.send``, retried after ``BACKOFF_S`` while it fails with ``overloaded``."""
    while True:
        try:
            client.call("transport", body, [envelope])
            return
        except RemoteError as e:
            if e.name != "overloaded":
                raise
            time.sleep(BACKOFF_S)


def b_router(data: str, peer_hex: str, batch: str) -> None:
    """Play B's router: answer every ``router.deliver``; send envelopes starting with ``E``
    back to ``peer`` through B's transport; count the others, printing "count time" each
    time ``batch`` more have arrived."""
    from tests.contract.harness import Node
    from tests.contract.router_side import RouterSide

    node = Node("", Path(data))
    side, client = RouterSide(node), node.client(timeout_s=10)
    body, every, counted = m.Send(peer=bytes.fromhex(peer_hex)), int(batch), 0
    print("ready", flush=True)
    while True:
        side.pump(1000)
        for _, envelope in side.got:
            if envelope[:1] == b"E":
                send_retrying(client, body, envelope)
            else:
                counted += 1
                if counted % every == 0:
                    print(counted, time.monotonic(), flush=True)
        side.got.clear()


def wait_count(proc: subprocess.Popen[bytes], count: int, deadline: float) -> float | None:
    """When B's router had counted ``count`` envelopes (monotonic), or None at ``deadline``."""
    pipe = proc.stdout
    assert pipe is not None
    while (left := deadline - time.monotonic()) > 0 and select.select([pipe], [], [], left)[0]:
        counted, at = pipe.readline().split()
        if int(counted) >= count:
            return float(at)
    return None


def counters(client: Any) -> collections.Counter[str]:
    status = client.request("transport", Status())
    assert isinstance(status, StatusReply)
    return collections.Counter(status.counters)


def run_transport(args: argparse.Namespace) -> dict[str, Any]:
    from tests.e2e.test_transport import info, make_node

    seeds = (b"\x1a" * 32, b"\x1b" * 32)
    a_id, b_id = (SigningKey(s).public for s in seeds)
    made = []
    rb_proc: subprocess.Popen[bytes] | None = None
    try:
        made = [make_node(s) for s in seeds]
        (a, ra), (b, rb) = made
        rb.close()  # B's router is played by a process of its own (b_router)
        rb_proc = subprocess.Popen([sys.executable, "-m", "bench.bench_transport", "--b-router",
                                    str(b.data), a_id.hex(), str(args.tput_n)],
                                   cwd=ROOT, stdout=subprocess.PIPE, bufsize=0)
        assert rb_proc.stdout is not None and rb_proc.stdout.readline().strip() == b"ready"
        ia, ib = info(a), info(b)
        assert ia.ready and ib.ready, "transport binding not signed"
        pids = (a.procs["transport"].pid, b.procs["transport"].pid, rb_proc.pid)
        names = ("transport A", "transport B", "router B")
        ca, cb = a.client(timeout_s=30), b.client(timeout_s=30)
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

        # (a) RTT through both transports, echoed by B's router; A's router is this process
        pad = os.urandom(args.payload - 8)
        to_b = m.Send(peer=b_id)

        def once(i: int) -> None:
            envelope = b"E%07d" % i + pad
            ca.call("transport", to_b, [envelope])
            ra.wait_for(1, 10)
            assert ra.envelopes() == [envelope], "echo not delivered within 10 s"
            ra.got.clear()

        for i in range(args.warmup):
            once(i)
        c0 = cpu_all(*pids)
        for i in range(args.rtt_n):
            t0 = clock()
            once(args.warmup + i)
            samples[i] = clock() - t0
        out["rtt"] = summary(samples) | {"cpu": cpu_delta(c0, cpu_all(*pids), args.rtt_n,
                                                          names=names)}

        # (b) pipelined throughput A -> B, counted by B's router
        for k, size in enumerate((args.payload, 64 * 1024), 1):
            out[f"tput_{size}"] = blast(ca, cb, b_id, rb_proc, k * args.tput_n, size, args,
                                        pids, names)
        ca.close()
        cb.close()
        return out
    except BaseException:
        for n, _ in made:
            sys.stderr.write(n.log_tail()[-3000:] + "\n")
        raise
    finally:
        stop(rb_proc)
        for n, r in made:
            r.close()
            n.stop()
            shutil.rmtree(n.data, ignore_errors=True)


def blast(ca: Any, cb: Any, peer: bytes, rb_proc: subprocess.Popen[bytes], total: int,
          size: int, args: argparse.Namespace, pids: tuple[int, ...],
          names: tuple[str, ...]) -> dict[str, Any]:
    """Send ``--tput-n`` envelopes of ``size`` bytes, ``--window`` in flight, until B's router
    has counted ``total`` since it started."""
    n, window = args.tput_n, args.window
    pool = [b"T%07d" % i + os.urandom(size - 8) for i in range(16)]
    todo = collections.deque(pool[i % 16] for i in range(n))
    body = m.Send(peer=peer)
    inflight: collections.deque[tuple[bytes, bytes, float]] = collections.deque()
    retries, delay, resume, limit = 0, BACKOFF_S, 0.0, window
    a0, b0, c0 = counters(ca), counters(cb), cpu_all(*pids)
    t0 = time.monotonic()
    while todo or inflight:
        if todo and len(inflight) < limit and time.monotonic() >= resume:
            envelope = todo.popleft()
            inflight.append((ca.send("transport", body, [envelope]), envelope,
                             time.monotonic()))
            continue
        if not inflight:  # backing off
            time.sleep(max(0.0, resume - time.monotonic()))
            continue
        msg_id, envelope, sent = inflight.popleft()
        try:
            ca.recv("transport", msg_id)
            delay, limit = BACKOFF_S, min(window, limit + 1)
        except RemoteError as e:
            if e.name != "overloaded":
                raise
            retries += 1
            todo.appendleft(envelope)
            if sent >= resume:  # the first refusal since the last back-off: pause, and
                resume = time.monotonic() + delay  # halve the requests in flight
                delay, limit = min(2 * delay, MAX_BACKOFF_S), max(1, limit // 2)
    t_sent = time.monotonic() - t0
    done = wait_count(rb_proc, total, t0 + args.deliver_timeout)
    elapsed = (done or time.monotonic()) - t0
    cpu = cpu_delta(c0, cpu_all(*pids), n, elapsed, names=names)
    a1, b1 = counters(ca), counters(cb)
    got = n if done else b1["delivered"] - b0["delivered"]
    return {"n": n, "size": size, "window": window, "delivered": got, "elapsed_s": elapsed,
            "send_replies_s": t_sent, "overloaded_retries": retries,
            "env_per_s": got / elapsed, "mb_per_s": got * size / elapsed / 1e6, "cpu": cpu,
            "counters": {"A send_backpressure": a1["send_backpressure"] - a0["send_backpressure"],
                         **{f"B {k}": b1[k] - b0[k] for k in ("paused_reading",
                                                              "deliver_retries")}}}


# -- iroh --------------------------------------------------------------------------------------

def run_iroh(python: str | None, args: argparse.Namespace) -> dict[str, Any] | None:
    """bench/bench_iroh.py's JSON, run by ``python`` in a loopback-only network namespace;
    None (with a note) if there is no such interpreter or the run fails."""
    if not python or not shutil.which(python):
        why = f"{python} not found" if python else "no --iroh-python or TOM_IROH_PYTHON"
        print(f"iroh skipped: {why}", flush=True)
        return None
    cmd = (f"ip link set lo up && {shlex.quote(python)} bench/bench_iroh.py --json"
           f" --rtt-n {args.rtt_n}")
    try:
        r = subprocess.run(["unshare", "-n", "sh", "-c", cmd], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        result: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return result
    except (OSError, subprocess.TimeoutExpired) as e:
        why = repr(e)
    except (ValueError, IndexError):
        why = f"status {r.returncode}: {r.stderr.strip()[-500:]}"
    print(f"iroh skipped: unshare -n sh -c '{cmd}' failed: {why}", flush=True)
    return None


# -- reporting ---------------------------------------------------------------------------------

def rows(r: dict[str, Any]) -> list[list[str]]:
    q, t, ra, ir = r["aioquic"], r["transport"], r["ratios"], r["iroh"] or {}
    e = r["endpoint"]["rtt"]
    t200, t64 = t[f"tput_{r['params']['payload']}"], t["tput_65536"]

    def iv(key: str, fmt: str = ".0f") -> str:
        return format(ir[key], fmt) if key in ir else "–"

    def sent(tp: dict[str, Any]) -> str:
        return (f"delivered {tp['delivered']} of {tp['n']}, {tp['overloaded_retries']} "
                f"`overloaded` retries")

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    return [
        ["small RTT p50 (µs), end to end", f"{q['rtt']['p50_us']:.0f}",
         f"{t['rtt']['p50_us']:.0f}", iv("rtt_p50_us"), f"{ra['rtt_p50']:.2f}×", "≤ 1.5×",
         met(ra["rtt_p50"] <= RTT_RATIO_TARGET)],
        ["small RTT p99 (µs), end to end", f"{q['rtt']['p99_us']:.0f}",
         f"{t['rtt']['p99_us']:.0f}", iv("rtt_p99_us"), f"{ra['rtt_p99']:.2f}×", "", ""],
        ["small RTT p50 (µs), our endpoint without the bus", "", f"{e['p50_us']:.0f}", "",
         f"{ra['endpoint_rtt_p50']:.2f}×", "≤ 1.5×",
         met(ra["endpoint_rtt_p50"] <= RTT_RATIO_TARGET)],
        ["small RTT p99 (µs), our endpoint without the bus", "", f"{e['p99_us']:.0f}", "",
         f"{ra['endpoint_rtt_p99']:.2f}×", "", ""],
        ["small RTT p50 / p99 on one framed stream (µs)", "", "",
         f"{iv('rtt_framed_p50_us')} / {iv('rtt_framed_p99_us')}", "", "", ""],
        ["bulk MB/s (raw, iroh: one stream; ours: 64 KiB envelopes)",
         f"{q['bulk']['mb_per_s']:.1f}", f"{t64['mb_per_s']:.1f}", iv("bulk_mb_s", ".1f"),
         f"{ra['bulk']:.2f}×", "≥ 0.7×", met(ra["bulk"] >= BULK_RATIO_TARGET)],
        [f"64 KiB envelopes/s ({sent(t64)})", "", f"{t64['env_per_s']:,.0f}", "", "", "", ""],
        [f"{t200['size']} B envelopes/s, window {t200['window']} ({sent(t200)})", "",
         f"{t200['env_per_s']:,.0f}", "", "", "", ""],
        [f"{t200['size']} B envelopes MB/s", "", f"{t200['mb_per_s']:.2f}", "", "", "", ""],
        ["connect p50, fresh endpoint (ms)", "", "", iv("connect_p50_ms", ".2f"), "", "", ""],
        ["bus sys.ping RTT p50 to one transport (µs)", "", f"{t['bus_ping']['p50_us']:.0f}",
         "", "", "", ""],
    ]


HEAD = ["measurement", "raw aioquic", "our transport", "iroh", "ours / raw", "target", "met"]


def text_table(r: dict[str, Any]) -> str:
    table = [HEAD, *rows(r)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(r: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * 5 + ":---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(r)]
    return "\n".join(lines)


def cpu_lines(r: dict[str, Any]) -> str:
    out = []
    t = r["transport"]
    for name, cpu in (("raw aioquic RTT", r["aioquic"]["rtt"]["cpu"]),
                      ("raw aioquic bulk", r["aioquic"]["bulk"]["cpu"]),
                      ("endpoint RTT", r["endpoint"]["rtt"]["cpu"]),
                      ("transport RTT", t["rtt"]["cpu"]),
                      ("transport 200 B tput", t[f"tput_{r['params']['payload']}"]["cpu"]),
                      ("transport 64 KiB tput", t["tput_65536"]["cpu"])):
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
    p.add_argument("--iroh-python", default=os.environ.get("TOM_IROH_PYTHON"),
                   help="interpreter with the iroh bindings for bench/bench_iroh.py "
                        "(default: $TOM_IROH_PYTHON; skipped if unset)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--aioquic-server", type=int, help=argparse.SUPPRESS)
    p.add_argument("--b-router", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--endpoint-server", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.aioquic_server:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        aioquic_server(args.aioquic_server)
        return 0
    if args.b_router:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        b_router(*args.b_router)
        return 0
    if args.endpoint_server:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        endpoint_server(args.endpoint_server)
        return 0

    t0 = time.monotonic()
    raw = with_server("--aioquic-server", lambda port, pid: _aioquic_client(port, args, pid))
    print(f"raw aioquic done ({time.monotonic() - t0:.0f} s)", flush=True)
    endpoint = with_server("--endpoint-server",
                           lambda port, pid: _endpoint_client(port, args, pid))
    print(f"endpoint done ({time.monotonic() - t0:.0f} s)", flush=True)
    ours = run_transport(args)
    print(f"transport done ({time.monotonic() - t0:.0f} s)", flush=True)
    iroh = run_iroh(args.iroh_python, args)
    if iroh:
        print(f"iroh done ({time.monotonic() - t0:.0f} s)", flush=True)
    ratios = {"rtt_p50": ours["rtt"]["p50_us"] / raw["rtt"]["p50_us"],
              "rtt_p99": ours["rtt"]["p99_us"] / raw["rtt"]["p99_us"],
              "endpoint_rtt_p50": endpoint["rtt"]["p50_us"] / raw["rtt"]["p50_us"],
              "endpoint_rtt_p99": endpoint["rtt"]["p99_us"] / raw["rtt"]["p99_us"],
              "bulk": ours["tput_65536"]["mb_per_s"] / raw["bulk"]["mb_per_s"]}
    if iroh:
        ratios |= {"iroh_rtt_p50": iroh["rtt_p50_us"] / raw["rtt"]["p50_us"],
                   "iroh_bulk": iroh["bulk_mb_s"] / raw["bulk"]["mb_per_s"]}
    result = {
        "bench": "transport",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {k: getattr(args, k) for k in ("rtt_n", "warmup", "payload", "bulk_mib",
                                                   "tput_n", "window")},
        "aioquic": raw, "endpoint": endpoint, "transport": ours, "iroh": iroh, "ratios": ratios,
        "targets": {"bulk_ge_0.7x_raw": {"value": ratios["bulk"],
                                         "met": ratios["bulk"] >= BULK_RATIO_TARGET},
                    "rtt_p50_le_1.5x_raw": {"value": ratios["rtt_p50"],
                                            "met": ratios["rtt_p50"] <= RTT_RATIO_TARGET},
                    "endpoint_rtt_p50_le_1.5x_raw": {
                        "value": ratios["endpoint_rtt_p50"],
                        "met": ratios["endpoint_rtt_p50"] <= RTT_RATIO_TARGET}},
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
