"""Bus benchmark: a real service's ``sys.ping`` RTT and frames/s against raw pyzmq, in one run.

    .venv/bin/python -m bench.bench_bus        (or ``make bench``)

All sockets are ``ipc://`` in a fresh directory under /tmp. Measured in one run, because absolute
figures on the 2-vCPU development machine drift by ±40 % between runs (compare the ratios):

1. raw pyzmq RTT: blocking DEALER client -> blocking ROUTER echo in another process, 200-byte
   payload; p50/p99 over ``--rtt-n`` round trips after warm-up. The same echo is also timed with
   the exact frames of a ``sys.ping`` (tag, header, body), to separate ZeroMQ's per-frame cost
   from the service's Python cost.
2. service RTT: ``sys.ping`` to one real service process (``python -m services.groups``), from a
   blocking client that sends pre-encoded frames and does not decode the reply, and
   end-to-end through ``BusClient.call`` (encode + decode + msgspec on the client side too).
3. raw pyzmq throughput: pipelined DEALER -> ROUTER echo with ``--window`` messages in flight.
4. service frames/s: pipelined pre-encoded ``sys.ping`` with the same window; replies are
   counted, not decoded, so the client is not the bottleneck (CPU use of both sides is shown).

Targets: service ping RTT p50 <= 2x raw RTT p50; >= 50 000 frames/s through one service.
Prints a table and a markdown table (for docs/benchmarks.md); writes bench/results/bus.json.
No sleeps for readiness: the first request is queued by ZeroMQ until the peer binds, and the
benchmark waits for its reply.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import zmq

from shared.bus import BusClient, socket
from shared.endpoints import load as load_endpoints
from shared.ids import MsgIds
from shared.wire import Header, decode, encode
from shared.wire.messages.sys import Ping, PingReply, Status, StatusReply

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "bus.json"
ROLE = "groups"
RTT_TARGET_RATIO = 2.0
FRAMES_TARGET = 50_000
READY_TIMEOUT_S = 30.0

Frames = list[bytes]


# -- the raw echo server (runs in its own process) --------------------------------------------

def echo_server(url: str) -> None:
    """Blocking ROUTER echo: every message goes back as received (identity frame included)."""
    ctx = zmq.Context()
    sock = socket(ctx, zmq.ROUTER)
    sock.bind(url)
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        send(recv())


# -- helpers -----------------------------------------------------------------------------------

def cpu_seconds(pid: int, thread: bool = False) -> float:
    """User + system CPU time of process ``pid``, or of its main thread only (Linux /proc)."""
    with open(f"/proc/{pid}/task/{pid}/stat" if thread else f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    n = len(s)

    def pct(p: float) -> float:
        return s[min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))] / 1000  # nearest rank

    return {"n": n, "p50_us": pct(50), "p99_us": pct(99), "mean_us": sum(s) / n / 1000,
            "min_us": s[0] / 1000}


def wait_first_reply(sock: zmq.Socket, frames: Frames, proc: subprocess.Popen[bytes],
                     what: str) -> Frames:
    """Send one request (queued by ZeroMQ until the peer binds) and wait for its reply."""
    sock.send_multipart(frames)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not sock.poll(100):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {READY_TIMEOUT_S:g} s")
    return sock.recv_multipart()


# The client side of every figure uses the same lean send/receive: the Cython socket methods
# with int flags, because pyzmq's send_multipart/recv_multipart spend ~5 µs each on a 4-5
# frame message (an IntFlag ``|`` per frame, a getsockopt(RCVMORE) per frame), which would
# make the client the bottleneck on 2 cores. Replies are received without copying or decoding.
_send, _recv = zmq.backend.Socket.send, zmq.backend.Socket.recv
_MORE = int(zmq.SNDMORE)


def send_frames(sock: zmq.Socket, frames: Frames) -> None:
    for f in frames[:-1]:
        _send(sock, f, _MORE)
    _send(sock, frames[-1], 0)


def skip_reply(sock: zmq.Socket) -> None:
    """Receive one whole multipart message and drop it."""
    while _recv(sock, 0, copy=False).more:
        pass


def measure_rtt(sock: zmq.Socket, pool: Sequence[Frames], n: int, warmup: int) -> list[int]:
    send, recv, clock = send_frames, skip_reply, time.perf_counter_ns
    k = len(pool)
    for i in range(warmup):
        send(sock, pool[i % k])
        recv(sock)
    out = [0] * n
    for i in range(n):
        frames = pool[i % k]
        t0 = clock()
        send(sock, frames)
        recv(sock)
        out[i] = clock() - t0
    return out


def pipelined(sock: zmq.Socket, pool: Sequence[Frames], n: int, window: int) -> None:
    send, recv = send_frames, skip_reply
    k = len(pool)
    sent = received = 0
    while received < n:
        while sent < n and sent - received < window:
            send(sock, pool[sent % k])
            sent += 1
        recv(sock)
        received += 1


def measure_throughput(sock: zmq.Socket, pool: Sequence[Frames], n: int, window: int,
                       server_pid: int) -> dict[str, float]:
    """Pipelined msgs/s, and CPU used per message by each side (robust to a noisy machine:
    the server's main thread runs the Python code, its ZeroMQ I/O thread the socket work)."""
    pipelined(sock, pool, min(n, 5 * window), window)  # warm-up
    srv0, main0 = cpu_seconds(server_pid), cpu_seconds(server_pid, thread=True)
    cli0 = time.process_time()
    t0 = time.perf_counter()
    pipelined(sock, pool, n, window)
    elapsed = time.perf_counter() - t0
    srv, main = cpu_seconds(server_pid) - srv0, cpu_seconds(server_pid, thread=True) - main0
    cli = time.process_time() - cli0
    return {"n": n, "window": window, "elapsed_s": elapsed, "msgs_per_s": n / elapsed,
            "server_cpu_pct": 100 * srv / elapsed, "server_main_cpu_pct": 100 * main / elapsed,
            "client_cpu_pct": 100 * cli / elapsed,
            "server_cpu_us_per_msg": 1e6 * srv / n, "server_main_us_per_msg": 1e6 * main / n,
            "client_cpu_us_per_msg": 1e6 * cli / n}


def ping_pool(n: int) -> list[Frames]:
    """``n`` distinct pre-encoded sys.ping requests, DEALER-framed like BusClient.send."""
    ids = MsgIds(os.urandom(8))
    body = Ping()
    return [[b"", *encode(body, Header(body.msg_type, ids.next(), None, "bench", time.time()))]
            for _ in range(n)]


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine() -> dict[str, Any]:
    import msgpack

    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
        "msgspec": msgspec.__version__,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f
                               if ln.startswith("model name"))
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        info["git"] = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                     capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


# -- the benchmark -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    data = tmp / "d"
    echo_url = f"ipc://{tmp}/echo.ipc"
    ctx = zmq.Context()
    echo: subprocess.Popen[bytes] | None = None
    svc: subprocess.Popen[bytes] | None = None
    client: BusClient | None = None
    log = tmp / "service.log"
    try:
        subprocess.run([sys.executable, "-m", "tom.cli", "--data", str(data), "init"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        endpoints_file = data / "endpoints.toml"
        endpoints = load_endpoints(endpoints_file)
        with open(log, "wb") as logf:
            svc = subprocess.Popen(
                [sys.executable, "-m", f"services.{ROLE}", "--data", str(data),
                 "--endpoints", str(endpoints_file), "--log-level", "warning"],
                cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT)
        echo = subprocess.Popen([sys.executable, "-m", "bench.bench_bus", "--echo", echo_url],
                                cwd=ROOT)

        n_pool = max(args.rtt_n + args.warmup, args.tput_n)
        pings = ping_pool(n_pool)
        payload = [[b"", os.urandom(args.payload)]]

        raw = socket(ctx, zmq.DEALER)
        raw.connect(echo_url)
        wait_first_reply(raw, payload[0], echo, "the echo server")

        svc_sock = socket(ctx, zmq.DEALER)
        svc_sock.connect(endpoints[ROLE].rpc)
        first = wait_first_reply(svc_sock, pings[0], svc, f"services.{ROLE}")
        reply = decode(first[1:])
        if not isinstance(reply.body, PingReply) or reply.body.pid != svc.pid:
            raise RuntimeError(f"unexpected first reply: {reply.body!r}")
        client = BusClient(endpoints, src="bench", ctx=ctx, timeout_s=10)

        ping_bytes = sum(len(f) for f in pings[0][1:])
        reply_bytes = sum(len(f) for f in first[1:])
        print(f"ping frames {len(pings[0]) - 1} ({ping_bytes} B), reply frames "
              f"{len(first) - 1} ({reply_bytes} B); raw payload {args.payload} B", flush=True)

        # 1 + 2: round-trip times
        rtt = {
            "raw": summary(measure_rtt(raw, payload, args.rtt_n, args.warmup)),
            "raw_ping_frames": summary(measure_rtt(raw, pings, args.rtt_n, args.warmup)),
            "service": summary(measure_rtt(svc_sock, pings, args.rtt_n, args.warmup)),
        }
        assert svc.poll() is None
        for _ in range(args.warmup):
            client.call(ROLE, Ping())
        samples = [0] * args.rtt_n
        clock = time.perf_counter_ns
        for i in range(args.rtt_n):
            t0 = clock()
            client.call(ROLE, Ping())
            samples[i] = clock() - t0
        rtt["service_busclient"] = summary(samples)

        # 3 + 4: pipelined throughput
        tput = {
            "raw": measure_throughput(raw, payload, args.tput_n, args.window, echo.pid),
            "raw_ping_frames": measure_throughput(raw, pings, args.tput_n, args.window,
                                                  echo.pid),
            "service": measure_throughput(svc_sock, pings, args.tput_n, args.window, svc.pid),
        }
        status = client.request(ROLE, Status())
        assert isinstance(status, StatusReply)
        service_status = {k: v for k, v in msgspec.structs.asdict(status).items()
                          if k in {"frames_in", "frames_out", "drops", "decode_errors",
                                   "errors"}}
        raw.close(0)
        svc_sock.close(0)
    except BaseException:
        if log.exists():
            sys.stderr.write(f"--- service log ({log}) ---\n{log.read_text()[-4000:]}\n")
        raise
    finally:
        if client is not None:
            client.close()
        stop(svc)
        stop(echo)
        ctx.destroy(0)
        shutil.rmtree(tmp, ignore_errors=True)

    rtt_ratio = rtt["service"]["p50_us"] / rtt["raw"]["p50_us"]
    fps = tput["service"]["msgs_per_s"]
    return {
        "bench": "bus",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": {"role": ROLE, "payload_bytes": args.payload, "rtt_n": args.rtt_n,
                   "warmup": args.warmup, "tput_n": args.tput_n, "window": args.window,
                   "ping_bytes": ping_bytes, "reply_bytes": reply_bytes},
        "rtt": rtt,
        "throughput": tput,
        "ratios": {
            "rtt_p50_service_vs_raw": rtt_ratio,
            "rtt_p99_service_vs_raw": rtt["service"]["p99_us"] / rtt["raw"]["p99_us"],
            "rtt_p50_busclient_vs_raw": rtt["service_busclient"]["p50_us"]
            / rtt["raw"]["p50_us"],
            "rtt_p50_service_vs_raw_ping_frames": rtt["service"]["p50_us"]
            / rtt["raw_ping_frames"]["p50_us"],
            "throughput_service_vs_raw": fps / tput["raw"]["msgs_per_s"],
            "throughput_service_vs_raw_ping_frames": fps
            / tput["raw_ping_frames"]["msgs_per_s"],
        },
        "targets": {
            "ping_rtt_p50_le_2x_raw": {"target": RTT_TARGET_RATIO, "value": rtt_ratio,
                                       "met": rtt_ratio <= RTT_TARGET_RATIO},
            "frames_per_s_ge_50k": {"target": FRAMES_TARGET, "value": fps,
                                    "met": fps >= FRAMES_TARGET},
        },
        "service_status": service_status,
    }


# -- reporting ---------------------------------------------------------------------------------

def _x(v: float) -> str:
    return f"{v:.2f}×"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def rows(r: dict[str, Any]) -> list[list[str]]:
    rtt, tp, ra, tg = r["rtt"], r["throughput"], r["ratios"], r["targets"]
    w = r["params"]["window"]
    return [
        ["RTT p50 (µs)", f"{rtt['raw']['p50_us']:.0f}", f"{rtt['raw_ping_frames']['p50_us']:.0f}",
         f"{rtt['service']['p50_us']:.0f}", _x(ra["rtt_p50_service_vs_raw"]), "≤ 2×",
         _met(tg["ping_rtt_p50_le_2x_raw"]["met"])],
        ["RTT p99 (µs)", f"{rtt['raw']['p99_us']:.0f}", f"{rtt['raw_ping_frames']['p99_us']:.0f}",
         f"{rtt['service']['p99_us']:.0f}", _x(ra["rtt_p99_service_vs_raw"]), "", ""],
        ["RTT p50 via BusClient.call (µs)", f"{rtt['raw']['p50_us']:.0f}", "",
         f"{rtt['service_busclient']['p50_us']:.0f}", _x(ra["rtt_p50_busclient_vs_raw"]), "",
         ""],
        ["RTT p99 via BusClient.call (µs)", f"{rtt['raw']['p99_us']:.0f}", "",
         f"{rtt['service_busclient']['p99_us']:.0f}",
         _x(rtt["service_busclient"]["p99_us"] / rtt["raw"]["p99_us"]), "", ""],
        [f"throughput, {w} in flight (msgs/s)", f"{tp['raw']['msgs_per_s']:,.0f}",
         f"{tp['raw_ping_frames']['msgs_per_s']:,.0f}", f"{tp['service']['msgs_per_s']:,.0f}",
         _x(ra["throughput_service_vs_raw"]), "≥ 50 000/s",
         _met(tg["frames_per_s_ge_50k"]["met"])],
        ["server CPU during throughput (%)", f"{tp['raw']['server_cpu_pct']:.0f}",
         f"{tp['raw_ping_frames']['server_cpu_pct']:.0f}",
         f"{tp['service']['server_cpu_pct']:.0f}", "", "", ""],
        ["server CPU per message, all threads (µs)", f"{tp['raw']['server_cpu_us_per_msg']:.1f}",
         f"{tp['raw_ping_frames']['server_cpu_us_per_msg']:.1f}",
         f"{tp['service']['server_cpu_us_per_msg']:.1f}",
         _x(tp["service"]["server_cpu_us_per_msg"] / tp["raw"]["server_cpu_us_per_msg"]), "",
         ""],
        ["server CPU per message, main thread (µs)",
         f"{tp['raw']['server_main_us_per_msg']:.1f}",
         f"{tp['raw_ping_frames']['server_main_us_per_msg']:.1f}",
         f"{tp['service']['server_main_us_per_msg']:.1f}",
         _x(tp["service"]["server_main_us_per_msg"] / tp["raw"]["server_main_us_per_msg"]), "",
         ""],
        ["client CPU during throughput (%)", f"{tp['raw']['client_cpu_pct']:.0f}",
         f"{tp['raw_ping_frames']['client_cpu_pct']:.0f}",
         f"{tp['service']['client_cpu_pct']:.0f}", "", "", ""],
    ]


HEAD = ["measurement", "raw pyzmq, 200 B", "raw pyzmq, ping frames", "service sys.ping",
        "service / raw 200 B", "target", "met"]


def text_table(r: dict[str, Any]) -> str:
    table = [HEAD, *rows(r)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(r: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" + "---:|" * 5 + ":---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(r)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_bus", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    p.add_argument("--rtt-n", type=int, default=5000, help="timed round trips per RTT figure")
    p.add_argument("--warmup", type=int, default=500, help="untimed round trips before each")
    p.add_argument("--tput-n", type=int, default=100_000, help="messages per throughput figure")
    p.add_argument("--window", type=int, default=1000, help="messages in flight (throughput)")
    p.add_argument("--payload", type=int, default=200, help="raw echo payload bytes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--echo", metavar="URL", help=argparse.SUPPRESS)  # internal: echo server
    args = p.parse_args(argv)
    if args.echo:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        echo_server(args.echo)
        return 0
    result = run(args)
    print()
    print(text_table(result))
    print()
    s = result["service_status"]
    print(f"service counters: frames_in {s['frames_in']}, frames_out {s['frames_out']}, "
          f"drops {s['drops']}, decode_errors {s['decode_errors']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.out}")
    print()
    print("markdown (docs/benchmarks.md):")
    print()
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
