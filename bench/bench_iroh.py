"""iroh comparison benchmark: raw iroh QUIC connections/streams between two endpoints on loopback.

    python bench/bench_iroh.py [--seconds N] [--rtt-n N] [--json]

Needs an interpreter with the ``iroh`` PyPI bindings (tested with iroh==1.2.0), which are not a
project dependency, e.g. ``python3.11 -m venv /tmp/irohvenv && /tmp/irohvenv/bin/pip install
iroh==1.2.0``. Exits with status 2 if ``iroh`` is not importable.

Two endpoints in this process, bound to 127.0.0.1 with ``preset_minimal()`` (crypto provider
only: no n0 DNS/pkarr discovery) and ``RelayMode.disabled()``; the client dials the server's
``EndpointAddr`` built from its id and bound loopback socket, so no network is needed besides
loopback (``unshare -n sh -c 'ip link set lo up && python bench/bench_iroh.py'`` works). The
bindings do not expose Rust's ``portmapper_config``, so each bind still multicasts one UPnP SSDP
probe on the LAN (it fails silently without a network). ALPN
``tom-bench/1``, plain ``Endpoint``/``Connection`` streams (no blobs/docs/gossip). The first
byte of each bidirectional stream selects what the server does with it. Measured:

1. RTT, one stream per message (as the raw aioquic baseline in bench_transport.py): open a bidi
   stream, send 200 bytes and finish, the server echoes them and finishes; p50/p99 in us over
   ``--rtt-n`` round trips after 200 warm-up ones.
2. RTT, one long-lived stream: 4-byte big-endian length + 200 bytes, echoed back framed the
   same way; p50/p99 as above.
3. Bulk: 64 MiB (fewer if ``--seconds`` runs out first) in 1 MiB writes on one stream; the
   server reads it all in chunks and answers with the byte count; MB/s (1e6 bytes) up to that
   answer. This is bound by the bindings themselves, not by iroh/QUIC: the uniffi-generated
   ``_UniffiRustBufferBuilder.write`` copies every ``bytes`` argument into the Rust buffer one
   byte per Python loop iteration (~7 MB/s here; swapping in a ``ctypes.memmove`` gave ~220 MB/s).
4. Connect: 20 handshakes, each from a freshly bound client endpoint (nothing cached from an
   earlier connection), timed around ``Endpoint.connect``; p50 in ms.

Prints one line per measurement; with ``--json`` the last line of stdout is one JSON object
(``rtt_p50_us``/``rtt_p99_us`` are the stream-per-message figures).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import statistics
import sys
import time

try:
    import iroh
except ImportError:
    print("bench_iroh: 'iroh' is not importable (pip install iroh==1.2.0)", file=sys.stderr)
    sys.exit(2)

ALPN = b"tom-bench/1"
MSG = b"m" * 200
WARMUP = 200
MIB = 1024 * 1024
BULK_BYTES = 64 * MIB
CONNECTS = 20
ONE_SHOT, FRAMED, BULK = b"S", b"F", b"B"


async def bind() -> iroh.Endpoint:
    return await iroh.Endpoint.bind(
        iroh.EndpointOptions(
            preset=iroh.preset_minimal(),
            relay_mode=iroh.RelayMode.disabled(),
            bind_addr="127.0.0.1:0",
            alpns=[ALPN],
        )
    )


def loopback_addr(ep: iroh.Endpoint) -> iroh.EndpointAddr:
    sockets = [s for s in ep.bound_sockets() if s.startswith("127.0.0.1:")]
    return iroh.EndpointAddr(ep.id(), None, sockets)


async def read_frame(recv: iroh.RecvStream) -> bytes:
    size = int.from_bytes(await recv.read_exact(4), "big")
    return await recv.read_exact(size)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def serve_stream(bi: iroh.BiStream) -> None:
    recv, send = bi.recv(), bi.send()
    mode = await recv.read_exact(1)
    if mode == ONE_SHOT:
        await send.write_all(await recv.read_to_end(MIB))
    elif mode == FRAMED:
        while msg := await read_frame(recv):
            await send.write_all(frame(msg))
    elif mode == BULK:
        total = 0
        while chunk := await recv.read(MIB):
            total += len(chunk)
        await send.write_all(total.to_bytes(8, "big"))
    await send.finish()


async def serve_connection(incoming: iroh.Incoming, tasks: set[asyncio.Task]) -> None:
    conn = await (await incoming.accept()).connect()
    try:
        while True:
            task = asyncio.create_task(serve_stream(await conn.accept_bi()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except iroh.IrohError:  # connection closed by the client
        pass


async def serve(server: iroh.Endpoint) -> None:
    tasks: set[asyncio.Task] = set()
    while incoming := await server.accept_next():
        task = asyncio.create_task(serve_connection(incoming, tasks))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def rtt_one_shot(conn: iroh.Connection) -> float:
    start = time.perf_counter()
    bi = await conn.open_bi()
    send = bi.send()
    await send.write_all(ONE_SHOT + MSG)
    await send.finish()
    assert await bi.recv().read_to_end(MIB) == MSG
    return time.perf_counter() - start


async def rtt_samples(conn: iroh.Connection, n: int, framed: bool) -> list[float]:
    if not framed:
        return [await rtt_one_shot(conn) for _ in range(n)]
    bi = await conn.open_bi()
    recv, send = bi.recv(), bi.send()
    await send.write_all(FRAMED)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await send.write_all(frame(MSG))
        assert await read_frame(recv) == MSG
        samples.append(time.perf_counter() - start)
    await send.write_all(frame(b""))
    await send.finish()
    return samples


def percentiles_us(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


async def bulk_mb_s(conn: iroh.Connection, seconds: float) -> tuple[float, int]:
    chunk = b"b" * MIB
    start = time.perf_counter()
    bi = await conn.open_bi()
    send = bi.send()
    await send.write_all(BULK)
    sent = 0
    while sent < BULK_BYTES and time.perf_counter() - start < seconds:
        await send.write_all(chunk)
        sent += len(chunk)
    await send.finish()
    assert int.from_bytes(await bi.recv().read_to_end(8), "big") == sent
    return sent / (time.perf_counter() - start) / 1e6, sent


async def connect_p50_ms(server: iroh.Endpoint) -> float:
    samples = []
    for _ in range(CONNECTS):
        client = await bind()
        start = time.perf_counter()
        conn = await client.connect(loopback_addr(server), ALPN)
        samples.append(time.perf_counter() - start)
        conn.close(0, b"done")
        await client.close()
    return statistics.median(samples) * 1e3


async def run(seconds: float, rtt_n: int) -> dict:
    server, client = await bind(), await bind()
    server_task = asyncio.create_task(serve(server))
    conn = await client.connect(loopback_addr(server), ALPN)
    result: dict = {"iroh_version": importlib.metadata.version("iroh")}
    print(f"iroh {result['iroh_version']}, relays disabled, preset_minimal, loopback")

    for framed, label in ((False, "stream per message"), (True, "one framed stream")):
        await rtt_samples(conn, WARMUP, framed)
        p50, p99 = percentiles_us(await rtt_samples(conn, rtt_n, framed))
        print(f"RTT 200 B, {label}: p50 {p50:.0f} us, p99 {p99:.0f} us (n={rtt_n})")
        key = "rtt_framed" if framed else "rtt"
        result[f"{key}_p50_us"], result[f"{key}_p99_us"] = round(p50, 1), round(p99, 1)

    mb_s, sent = await bulk_mb_s(conn, seconds)
    print(f"bulk one stream: {mb_s:.1f} MB/s ({sent / MIB:.0f} MiB)")
    result["bulk_mb_s"] = round(mb_s, 1)

    conn.close(0, b"done")
    result["connect_p50_ms"] = round(await connect_p50_ms(server), 2)
    print(f"connect (fresh client endpoint): p50 {result['connect_p50_ms']} ms (n={CONNECTS})")

    await client.close()
    await server.close()
    await server_task  # accept_next() returns None once the endpoint is closed
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap of the bulk transfer")
    parser.add_argument("--rtt-n", type=int, default=2000, help="measured round trips per RTT mode")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    result = asyncio.run(run(args.seconds, args.rtt_n))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
