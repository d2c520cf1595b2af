"""Crypto benchmark: raw libraries, in-process envelope operations and the crypto service.

    .venv/bin/python -m bench.bench_crypto

Every figure is measured in the same run, for payloads of 200 B and 64 KiB, because absolute
figures on the 2-vCPU development machine drift by ±40 % between runs (compare the ratios):

1. raw library calls over the exact bytes an envelope signs (``Envelope.signing_bytes()``):
   Ed25519 sign and verify with PyNaCl (``nacl.bindings`` and ``nacl.signing``) and with
   ``cryptography`` (key object reused, and loaded from the 32 key bytes per call as a node
   must); XChaCha20-Poly1305 encrypt/decrypt (PyNaCl); X25519 with PyNaCl and with
   ``cryptography``; the Ed25519→X25519 key conversion; HKDF-SHA256.
2. in-process node operations: ``Identity.sign(envelope)``, ``decode(raw).verify()`` (and its
   parts), ``Identity.seal(..., encrypt=True)`` + ``encode()``, ``Identity.open(raw)``.
   Steps 1 and 2 of one payload size are timed in interleaved rounds (median of the rounds),
   so that the verify ratio compares figures taken under the same machine load.
3. the crypto service (``python -m services.crypto``, data directory made by ``tom init``):
   ``crypto.sign``, ``crypto.verify``, ``crypto.seal``, ``crypto.open`` one at a time (RTT), then
   rounds of: the in-process operation again, the service's own code path run in-process
   (decode the request frames, ``CryptoCore.handle``, encode the reply: everything but ZeroMQ),
   the service pipelined (``--window`` requests in flight) from a lean client that sends
   pre-encoded frames and only checks each reply's msg_type, and, for seal and open, the same
   through ``BusClient.send``/``recv`` (every reply decoded and validated). Envelopes for
   ``crypto.open`` are sealed in-process by another identity, addressed to the service's node
   id (asked with ``crypto.node_id``, whose reply is also the readiness check: no sleeps).

Targets: in-process verify within 1.2× of the fastest raw library verify (rate ≥ fastest/1.2);
seal+open through the service, pipelined, ≥ 50 % of the in-process seal+open rate measured in
the same round (median of the rounds). A seal+open rate combines the two operations:
1 / (1/seal_rate + 1/open_rate).
Prints three tables, the same in markdown (for docs/benchmarks.md), and writes
bench/results/crypto.json. Every process it starts is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import nacl
import nacl.bindings as sodium
import nacl.signing
import zmq
from cryptography import __version__ as cryptography_version
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bench.bench_bus import machine, send_frames, stop, summary, wait_first_reply
from services.crypto.core import CryptoCore, Identity, e2e_key
from shared import primitives as p
from shared.bus import BusClient, socket
from shared.core import Reply, Request
from shared.endpoints import load as load_endpoints
from shared.envelope import Envelope, decode
from shared.ids import MsgIds
from shared.wire import Header, Message, encode
from shared.wire import decode as decode_frames
from shared.wire.frame import split_routing
from shared.wire.messages import crypto as m
from shared.wire.messages.sys import Status, StatusReply

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "crypto.json"
ROLE = "crypto"
PAYLOADS = (200, 64 * 1024)
VERIFY_TARGET = 1.2
SEAL_OPEN_TARGET = 0.5
SERVICE_OPS = ("sign", "verify", "seal", "open")

Frames = list[bytes]
Op = Callable[[], object]


def schedstat(pid: int, thread: bool = False) -> tuple[float, float]:
    """(CPU time, time runnable but waiting for a CPU) in seconds, of process ``pid``'s live
    threads or of its main thread only.

    Read from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds) rather than ``/proc/<pid>/stat``
    (clock ticks, 10 ms): a pipelined round here lasts 40-400 ms.
    """
    tids = [str(pid)] if thread else os.listdir(f"/proc/{pid}/task")
    run = wait = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
        except FileNotFoundError:  # a thread that just ended
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9


def cpu_seconds(pid: int, thread: bool = False) -> float:
    return schedstat(pid, thread)[0]


# -- timing of in-process calls ----------------------------------------------------------------

def calibrate(fn: Op, round_s: float) -> int:
    """Calls of ``fn`` that take about ``round_s`` seconds."""
    fn()
    fn()
    n, clock = 1, time.perf_counter
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        if dt >= 0.01:
            return max(1, round(n * round_s / dt))
        n *= 2


def time_group(ops: dict[str, Op], rounds: int, round_s: float) -> dict[str, dict[str, float]]:
    """Time every op in ``rounds`` interleaved rounds; ops/s from the median round."""
    ns = {k: calibrate(fn, round_s) for k, fn in ops.items()}
    samples: dict[str, list[float]] = {k: [] for k in ops}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for k, fn in ops.items():
            n = ns[k]
            t0 = clock()
            for _ in range(n):
                fn()
            samples[k].append((clock() - t0) / n / 1000)
    out = {}
    for k, s in samples.items():
        med = statistics.median(s)
        out[k] = {"us_per_op": med, "ops_per_s": 1e6 / med, "min_us": min(s), "max_us": max(s),
                  "calls_per_round": ns[k], "rounds": rounds}
    return out


def combined(rate_a: float, rate_b: float) -> float:
    """Rate of doing a then b (one of each), from the two rates."""
    return 1 / (1 / rate_a + 1 / rate_b)


# -- 1 + 2: raw libraries and in-process node operations --------------------------------------

def make_envelope(sender: bytes, to: bytes, payload: bytes) -> Envelope:
    return Envelope(id=os.urandom(16), sender=sender, to=to, msg_type="Chat", payload=payload,
                    timestamp_ms=int(time.time() * 1000))


def sized_ops(size: int) -> dict[str, Op]:
    """Raw library calls and node operations on an envelope with a ``size``-byte payload."""
    seed_a = os.urandom(32)
    a, b = Identity(seed_a, os.urandom), Identity(os.urandom(32), os.urandom)
    payload = os.urandom(size)
    env = make_envelope(a.node_id, b.node_id, payload)
    signed = a.sign(env)
    raw = signed.encode()
    msg, sig, pk = env.signing_bytes(), signed.signature, a.node_id
    _, sk = sodium.crypto_sign_seed_keypair(seed_a)
    cg_priv = Ed25519PrivateKey.from_private_bytes(seed_a)
    cg_pub = cg_priv.public_key()
    vk = nacl.signing.VerifyKey(pk)
    # the same key, the same deterministic signature, from both libraries
    assert sodium.crypto_sign(msg, sk)[:64] == cg_priv.sign(msg) == sig
    cg_pub.verify(sig, msg)
    vk.verify(msg, sig)
    aad, key, nonce = env.aad(), os.urandom(32), os.urandom(24)
    ct = p.xchacha_seal(key, nonce, payload, aad)
    ts = env.timestamp_ms
    sealed = a.seal(b.node_id, "Chat", payload, ts).encode()
    assert b.open(sealed)[1] == payload
    assert decode(raw) == signed

    sign_open = sodium.crypto_sign_open
    enc = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
    dec = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
    from_pub = Ed25519PublicKey.from_public_bytes
    return {
        "raw.sign.pynacl": lambda: sodium.crypto_sign(msg, sk)[:64],
        "raw.sign.cryptography": lambda: cg_priv.sign(msg),
        "raw.verify.pynacl_bindings": lambda: sign_open(sig + msg, pk),
        "raw.verify.pynacl_signing": lambda: vk.verify(msg, sig),
        "raw.verify.cryptography": lambda: cg_pub.verify(sig, msg),
        "raw.verify.cryptography_load": lambda: from_pub(pk).verify(sig, msg),
        "raw.xchacha_encrypt.pynacl": lambda: enc(payload, aad, nonce, key),
        "raw.xchacha_decrypt.pynacl": lambda: dec(ct, aad, nonce, key),
        "node.sign": lambda: a.sign(env),
        "node.verify": lambda: decode(raw).verify(),
        "node.verify.decode": lambda: decode(raw),
        "node.verify.signing_bytes": lambda: signed.signing_bytes(),
        "node.seal": lambda: a.seal(b.node_id, "Chat", payload, ts).encode(),
        "node.open": lambda: b.open(sealed),
    }


def fixed_ops() -> dict[str, Op]:
    """Size-independent raw calls (the key agreement part of seal and open)."""
    e, other = os.urandom(32), os.urandom(32)
    x_other = sodium.crypto_scalarmult_base(other)
    cg_e = X25519PrivateKey.from_private_bytes(e)
    cg_other = X25519PublicKey.from_public_bytes(x_other)
    assert cg_e.exchange(cg_other) == sodium.crypto_scalarmult(e, x_other)
    assert cg_e.public_key().public_bytes_raw() == sodium.crypto_scalarmult_base(e)
    ed_pk, _ = sodium.crypto_sign_seed_keypair(os.urandom(32))
    shared, eph = os.urandom(32), os.urandom(32)
    return {
        "raw.x25519.pynacl": lambda: sodium.crypto_scalarmult(e, x_other),
        "raw.x25519.cryptography": lambda: cg_e.exchange(cg_other),
        "raw.x25519_base.pynacl": lambda: sodium.crypto_scalarmult_base(e),
        "raw.x25519_base.cryptography":
            lambda: X25519PrivateKey.from_private_bytes(e).public_key().public_bytes_raw(),
        "raw.ed25519_pk_to_x25519.pynacl": lambda: sodium.crypto_sign_ed25519_pk_to_curve25519(
            ed_pk),
        "raw.hkdf_sha256.cryptography": lambda: e2e_key(shared, eph, x_other),
    }


# -- 3: the crypto service ---------------------------------------------------------------------

def recv_checked(sock: zmq.Socket, expect: bytes) -> bool:
    """Receive one whole reply without copying; whether its header names ``expect``."""
    recv = zmq.backend.Socket.recv
    f = recv(sock, 0, copy=False)  # the empty delimiter
    i, ok = 0, False
    while f.more:
        f = recv(sock, 0, copy=False)
        i += 1
        if i == 2:  # [b"", tag, header, body, blobs...]
            ok = expect in f.bytes
    return ok


def rtt(sock: zmq.Socket, pool: Sequence[Frames], n: int, warmup: int,
        expect: bytes) -> dict[str, float]:
    clock, k, bad = time.perf_counter_ns, len(pool), 0
    for i in range(warmup):
        send_frames(sock, pool[i % k])
        bad += not recv_checked(sock, expect)
    out = [0] * n
    for i in range(n):
        frames = pool[(warmup + i) % k]
        t0 = clock()
        send_frames(sock, frames)
        ok = recv_checked(sock, expect)
        out[i] = clock() - t0
        bad += not ok
    if bad:
        raise RuntimeError(f"{bad} replies were not {expect.decode()}")
    s = summary(out)
    s["ops_per_s"] = 1e6 / s["mean_us"]
    return s


def pipelined(sock: zmq.Socket, pool: Sequence[Frames], n: int, window: int,
              expect: bytes) -> int:
    """Keep ``window`` requests in flight until ``n`` replies came; the number of bad replies."""
    k = len(pool)
    sent = received = bad = 0
    while received < n:
        while sent < n and sent - received < window:
            send_frames(sock, pool[sent % k])
            sent += 1
        bad += not recv_checked(sock, expect)
        received += 1
    return bad


def throughput(sock: zmq.Socket, pool: Sequence[Frames], n: int, window: int, expect: bytes,
               server_pid: int) -> dict[str, float]:
    """Pipelined requests/s and CPU per request of each side (as in bench_bus)."""
    srv0 = cpu_seconds(server_pid)
    main0, wait0 = schedstat(server_pid, thread=True)
    cli0 = time.process_time()
    t0 = time.perf_counter()
    bad = pipelined(sock, pool, n, window, expect)
    elapsed = time.perf_counter() - t0
    main1, wait1 = schedstat(server_pid, thread=True)
    srv, main, wait = cpu_seconds(server_pid) - srv0, main1 - main0, wait1 - wait0
    cli = time.process_time() - cli0
    if bad:
        raise RuntimeError(f"{bad} replies were not {expect.decode()}")
    return {"n": n, "window": window, "elapsed_s": elapsed, "ops_per_s": n / elapsed,
            "us_per_op": 1e6 * elapsed / n,
            "server_cpu_pct": 100 * srv / elapsed, "server_main_cpu_pct": 100 * main / elapsed,
            "client_cpu_pct": 100 * cli / elapsed,
            "server_cpu_us_per_op": 1e6 * srv / n, "server_main_us_per_op": 1e6 * main / n,
            "server_main_wait_us_per_op": 1e6 * wait / n,
            "client_cpu_us_per_op": 1e6 * cli / n}


def busclient_throughput(client: BusClient, body: Message, blob: bytes, n: int, window: int,
                         server_pid: int) -> dict[str, float]:
    """Pipelined through BusClient.send/recv (every reply decoded and validated)."""
    inflight: deque[bytes] = deque()
    sent = 0
    srv0, main0 = cpu_seconds(server_pid), cpu_seconds(server_pid, thread=True)
    cli0 = time.process_time()
    t0 = time.perf_counter()
    while sent < n or inflight:
        while sent < n and len(inflight) < window:
            inflight.append(client.send(ROLE, body, (blob,)))
            sent += 1
        client.recv(ROLE, inflight.popleft())
    elapsed = time.perf_counter() - t0
    srv, main = cpu_seconds(server_pid) - srv0, cpu_seconds(server_pid, thread=True) - main0
    cli = time.process_time() - cli0
    return {"n": n, "window": window, "elapsed_s": elapsed, "ops_per_s": n / elapsed,
            "us_per_op": 1e6 * elapsed / n,
            "server_cpu_us_per_op": 1e6 * srv / n, "server_main_us_per_op": 1e6 * main / n,
            "client_cpu_pct": 100 * cli / elapsed, "client_cpu_us_per_op": 1e6 * cli / n}


def request_pool(body: Message, blob: bytes, n: int) -> list[Frames]:
    """``n`` pre-encoded requests with distinct msg_ids, DEALER-framed like BusClient.send."""
    ids = MsgIds(os.urandom(8))
    return [[b"", *encode(body, Header(body.msg_type, ids.next(), None, "bench", time.time()),
                          (blob,))] for _ in range(n)]


def service_requests(svc_id: bytes, other: Identity, payload: bytes
                     ) -> dict[str, tuple[Message, bytes]]:
    """A request body and its blob per service op, for a ``len(payload)``-byte payload."""
    ts = int(time.time() * 1000)
    return {
        "sign": (m.Sign(), make_envelope(svc_id, other.node_id, payload).encode()),
        "verify": (m.Verify(), other.sign(make_envelope(other.node_id, svc_id, payload)).encode()),
        "seal": (m.Seal(to=other.node_id, envelope_type="Chat"), payload),
        "open": (m.Open(), other.seal(svc_id, "Chat", payload, ts).encode()),
    }


def service_path(core: CryptoCore, body: Message, blob: bytes) -> Op:
    """The crypto service's code path for one request, without ZeroMQ: decode the request
    frames, ``CryptoCore.handle``, encode the reply frames (as ``Service._on_request`` and
    ``Service._reply`` do)."""
    ids = MsgIds(os.urandom(8))
    frames = [b"\x00rid", b"", *encode(body, Header(body.msg_type, ids.next(), None, "bench",
                                                        time.time()), (blob,))]

    def step() -> object:
        route, rest = split_routing(frames)
        msg = decode_frames(rest)
        req = Request((route, msg.header.msg_id), msg.body, msg.blobs, msg.header.src)
        out = []
        for a in core.handle(req, 0.0):
            assert isinstance(a, Reply), a
            out.append([*route, *encode(a.body, Header(a.body.msg_type, ids.next(),
                                                       msg.header.msg_id, ROLE, time.time()),
                                        a.blobs)])
        return out

    return step


def check_replies(client: BusClient, svc_id: bytes, other: Identity, payload: bytes,
                  reqs: dict[str, tuple[Message, bytes]]) -> None:
    """One full, decoded round of each request: the service does what the benchmark assumes."""
    body, blob = reqs["sign"]
    r = client.call(ROLE, body, (blob,))
    env = decode(r.blobs[0])
    env.verify()
    assert isinstance(r.body, m.SignReply) and env.sender == svc_id and env.payload == payload
    body, blob = reqs["verify"]
    r = client.call(ROLE, body, (blob,))
    assert isinstance(r.body, m.VerifyReply) and r.body.sender == other.node_id
    body, blob = reqs["seal"]
    r = client.call(ROLE, body, (blob,))
    assert isinstance(r.body, m.SealReply)
    env, plain = other.open(r.blobs[0])
    assert env.sender == svc_id and env.encrypted and plain == payload
    body, blob = reqs["open"]
    r = client.call(ROLE, body, (blob,))
    assert isinstance(r.body, m.OpenReply) and r.body.encrypted and r.blobs == (payload,)


def in_process_op(core: CryptoCore, op: str, blob: bytes, to: bytes) -> Op:
    """The in-process operation of step 2 that a service request stands for."""
    ident = core.identity
    if op == "sign":
        env = decode(blob)
        return lambda: ident.sign(env)
    if op == "verify":
        return lambda: decode(blob).verify()
    if op == "seal":
        ts = int(time.time() * 1000)
        return lambda: ident.seal(to, "Chat", blob, ts).encode()
    if op == "open":
        return lambda: ident.open(blob)
    raise ValueError(op)


def service_size(args: argparse.Namespace, sock: zmq.Socket, client: BusClient, pid: int,
                 reqs: dict[str, tuple[Message, bytes]], core: CryptoCore,
                 local: dict[str, tuple[Message, bytes]]) -> dict[str, Any]:
    """All service figures for one payload size.

    RTT per request type, then ``--service-rounds`` rounds. Each round times, for every
    request type in turn: the in-process operation, the service's code path in-process, the
    service pipelined from the lean client and (seal and open) through BusClient. The figures
    of one round are taken within a few seconds, so they share the machine's state (on this
    VM the speed of the same code switches between two levels 1.5× apart every few seconds);
    medians of the rounds are reported, and ratios are computed within each round.
    """
    out: dict[str, Any] = {op: {} for op in SERVICE_OPS}
    pools, fns, ns = {}, {}, {}
    for op in SERVICE_OPS:
        body, blob = reqs[op]
        expect = f"crypto.{op}_reply".encode()
        pools[op] = pool = request_pool(body, blob, max(args.rtt_n + args.warmup, args.tput_n))
        out[op]["rtt"] = rtt(sock, pool, args.rtt_n, args.warmup, expect)
        lbody, lblob = local[op]
        to = lbody.to if isinstance(lbody, m.Seal) else b""
        fns[op] = {"in_process": in_process_op(core, op, lblob, to),
                   "service_path": service_path(core, lbody, lblob)}
        ns[op] = {k: calibrate(fn, args.round_ms / 1000) for k, fn in fns[op].items()}
        pipelined(sock, pool, min(args.tput_n, 2 * args.window), args.window, expect)  # warm-up
    samples: dict[str, dict[str, list[Any]]] = {
        op: {"in_process": [], "service_path": [], "pipelined": [], "busclient": []}
        for op in SERVICE_OPS}
    clock = time.perf_counter_ns
    for _ in range(args.service_rounds):
        for op in SERVICE_OPS:
            for k, fn in fns[op].items():
                n = ns[op][k]
                t0 = clock()
                for _ in range(n):
                    fn()
                samples[op][k].append((clock() - t0) / n / 1000)
            samples[op]["pipelined"].append(throughput(
                sock, pools[op], args.tput_n, args.window, f"crypto.{op}_reply".encode(), pid))
            if op in ("seal", "open"):
                samples[op]["busclient"].append(busclient_throughput(
                    client, *reqs[op], args.tput_n, args.window, pid))
    for op in SERVICE_OPS:
        o, sm = out[op], samples[op]
        for k in ("in_process", "service_path"):
            v = sm[k]
            med = statistics.median(v)
            o[k] = {"us_per_op": med, "ops_per_s": 1e6 / med, "min_us": min(v),
                    "max_us": max(v), "calls_per_round": ns[op][k], "rounds": v}
        by_rate = sorted(sm["pipelined"], key=lambda t: t["ops_per_s"])
        o["pipelined"] = by_rate[len(by_rate) // 2]
        if sm["busclient"]:
            by_rate = sorted(sm["busclient"], key=lambda t: t["ops_per_s"])
            o["busclient_pipelined"] = by_rate[len(by_rate) // 2]
        o["pipelined_rounds_ops_per_s"] = [t["ops_per_s"] for t in sm["pipelined"]]
        o["pipelined_rounds_main_us_per_op"] = [t["server_main_us_per_op"]
                                                for t in sm["pipelined"]]
    ss, so = samples["seal"], samples["open"]
    out["seal_open_rounds"] = [
        {"in_process_per_s": combined(1e6 / ss["in_process"][i], 1e6 / so["in_process"][i]),
         "service_per_s": combined(ss["pipelined"][i]["ops_per_s"],
                                   so["pipelined"][i]["ops_per_s"]),
         "busclient_per_s": combined(ss["busclient"][i]["ops_per_s"],
                                     so["busclient"][i]["ops_per_s"])}
        for i in range(args.service_rounds)]
    for r in out["seal_open_rounds"]:
        r["ratio"] = r["service_per_s"] / r["in_process_per_s"]
        r["busclient_ratio"] = r["busclient_per_s"] / r["in_process_per_s"]
    return out


# -- the benchmark -----------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    results: dict[str, Any] = {"in_process": {}, "service": {}}
    round_s = args.round_ms / 1000

    print("timing raw library calls and in-process operations ...", flush=True)
    results["fixed"] = time_group(fixed_ops(), args.rounds, round_s)
    for size in PAYLOADS:
        results["in_process"][str(size)] = time_group(sized_ops(size), args.rounds, round_s)

    tmp = Path(tempfile.mkdtemp(prefix="tbc", dir="/tmp"))
    data = tmp / "d"
    log = tmp / "service.log"
    ctx = zmq.Context()
    svc: subprocess.Popen[bytes] | None = None
    client: BusClient | None = None
    sock: zmq.Socket | None = None
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
        sock = socket(ctx, zmq.DEALER)
        sock.connect(endpoints[ROLE].rpc)
        first = wait_first_reply(sock, request_pool(m.NodeId(), b"", 1)[0][:-1], svc,
                                 f"services.{ROLE}")
        reply = decode_frames(first[1:])
        if not isinstance(reply.body, m.NodeIdReply):
            raise RuntimeError(f"unexpected first reply: {reply.body!r}")
        svc_id = reply.body.node_id
        client = BusClient(endpoints, src="bench", ctx=ctx, timeout_s=30)
        other = Identity(os.urandom(32), os.urandom)
        print(f"services.{ROLE} (pid {svc.pid}) answered; node id {svc_id.hex()[:16]}…",
              flush=True)

        core = CryptoCore(os.urandom(32), os.urandom, lambda: int(time.time() * 1000))
        for size in PAYLOADS:
            payload = os.urandom(size)
            reqs = service_requests(svc_id, other, payload)
            check_replies(client, svc_id, other, payload, reqs)
            local = service_requests(core.node_id, other, payload)
            out = service_size(args, sock, client, svc.pid, reqs, core, local)
            assert svc.poll() is None, "the crypto service exited"
            results["service"][str(size)] = out
            print(f"service, {size} B payload: done", flush=True)

        status = client.request(ROLE, Status())
        assert isinstance(status, StatusReply)
        service_status = {k: v for k, v in msgspec.structs.asdict(status).items()
                          if k in {"frames_in", "frames_out", "drops", "decode_errors",
                                   "errors", "counters"}}
    except BaseException:
        if log.exists():
            sys.stderr.write(f"--- service log ({log}) ---\n{log.read_text()[-4000:]}\n")
        raise
    finally:
        if sock is not None:
            sock.close(0)
        if client is not None:
            client.close()
        stop(svc)
        ctx.destroy(0)
        shutil.rmtree(tmp, ignore_errors=True)

    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for size in PAYLOADS:
        s = str(size)
        ip, sv = results["in_process"][s], results["service"][s]
        raw_verify = {k: v["ops_per_s"] for k, v in ip.items() if k.startswith("raw.verify.")}
        fastest = max(raw_verify, key=raw_verify.__getitem__)
        slowdown = raw_verify[fastest] / ip["node.verify"]["ops_per_s"]
        step2_so = combined(ip["node.seal"]["ops_per_s"], ip["node.open"]["ops_per_s"])
        inproc_so = combined(sv["seal"]["in_process"]["ops_per_s"],
                             sv["open"]["in_process"]["ops_per_s"])
        path_so = combined(sv["seal"]["service_path"]["ops_per_s"],
                           sv["open"]["service_path"]["ops_per_s"])
        service_so = combined(sv["seal"]["pipelined"]["ops_per_s"],
                              sv["open"]["pipelined"]["ops_per_s"])
        round_ratios = [x["ratio"] for x in sv["seal_open_rounds"]]
        so_ratio = statistics.median(round_ratios)
        busclient_so = combined(sv["seal"]["busclient_pipelined"]["ops_per_s"],
                                sv["open"]["busclient_pipelined"]["ops_per_s"])
        ratios[s] = {
            "fastest_raw_verify": fastest,
            "verify_fastest_raw_vs_in_process": slowdown,
            "verify_pynacl_raw_vs_in_process": ip["raw.verify.pynacl_bindings"]["ops_per_s"]
            / ip["node.verify"]["ops_per_s"],
            "in_process_seal_open_per_s": inproc_so,
            "in_process_seal_open_per_s_step2": step2_so,
            "service_path_seal_open_per_s": path_so,
            "service_seal_open_per_s": service_so,
            "busclient_seal_open_per_s": busclient_so,
            "seal_open_service_vs_in_process": so_ratio,
            "seal_open_service_vs_in_process_rounds": round_ratios,
            "seal_open_service_vs_in_process_of_medians": service_so / inproc_so,
            "seal_open_service_vs_in_process_step2": service_so / step2_so,
            "seal_open_service_path_vs_in_process": path_so / inproc_so,
            "seal_open_busclient_vs_in_process": statistics.median(
                x["busclient_ratio"] for x in sv["seal_open_rounds"]),
            "sign_pynacl_vs_cryptography": ip["raw.sign.pynacl"]["ops_per_s"]
            / ip["raw.sign.cryptography"]["ops_per_s"],
            "verify_pynacl_vs_cryptography": ip["raw.verify.pynacl_bindings"]["ops_per_s"]
            / ip["raw.verify.cryptography"]["ops_per_s"],
            "verify_pynacl_vs_cryptography_load": ip["raw.verify.pynacl_bindings"]["ops_per_s"]
            / ip["raw.verify.cryptography_load"]["ops_per_s"],
            # per request, µs: service code around the operation (measured in-process), and
            # everything else the service's main thread spends (ZeroMQ, the event loop, and
            # the slowdown of sharing two vCPUs with the client and the I/O threads)
            # (medians of the differences within each round)
            "service_code_overhead_us": {
                op: statistics.median(b - a for a, b in zip(
                    sv[op]["in_process"]["rounds"], sv[op]["service_path"]["rounds"],
                    strict=True)) for op in SERVICE_OPS},
            "service_main_thread_extra_us": {
                op: statistics.median(b - a for a, b in zip(
                    sv[op]["service_path"]["rounds"], sv[op]["pipelined_rounds_main_us_per_op"],
                    strict=True)) for op in SERVICE_OPS},
        }
        targets[f"verify_within_1.2x_raw_{s}"] = {
            "target": VERIFY_TARGET, "value": slowdown, "met": slowdown <= VERIFY_TARGET}
        targets[f"service_seal_open_ge_50pct_{s}"] = {
            "target": SEAL_OPEN_TARGET, "value": so_ratio,
            "met": so_ratio >= SEAL_OPEN_TARGET}

    info = machine()
    info.update({"pynacl": nacl.__version__, "cryptography": cryptography_version})
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        info["openssl"] = backend.openssl_version_text()
    except ImportError:
        pass
    return {
        "bench": "crypto",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "params": {"payloads": list(PAYLOADS), "rounds": args.rounds, "round_ms": args.round_ms,
                   "rtt_n": args.rtt_n, "warmup": args.warmup, "tput_n": args.tput_n,
                   "service_rounds": args.service_rounds,
                   "window": args.window},
        "elapsed_s": time.perf_counter() - t_start,
        **results,
        "ratios": ratios,
        "targets": targets,
        "service_status": service_status,
    }


# -- reporting ---------------------------------------------------------------------------------

RAW_ROWS = [
    ("raw.sign.pynacl", "Ed25519 sign, PyNaCl `crypto_sign`"),
    ("raw.sign.cryptography", "Ed25519 sign, cryptography"),
    ("raw.verify.pynacl_bindings", "Ed25519 verify, PyNaCl `crypto_sign_open`"),
    ("raw.verify.pynacl_signing", "Ed25519 verify, PyNaCl `VerifyKey.verify`"),
    ("raw.verify.cryptography", "Ed25519 verify, cryptography (key object reused)"),
    ("raw.verify.cryptography_load", "Ed25519 verify, cryptography (key loaded per call)"),
    ("raw.xchacha_encrypt.pynacl", "XChaCha20-Poly1305 encrypt, PyNaCl"),
    ("raw.xchacha_decrypt.pynacl", "XChaCha20-Poly1305 decrypt, PyNaCl"),
]
FIXED_ROWS = [
    ("raw.x25519.pynacl", "X25519, PyNaCl `crypto_scalarmult`"),
    ("raw.x25519.cryptography", "X25519, cryptography `exchange`"),
    ("raw.x25519_base.pynacl", "X25519 public key, PyNaCl `crypto_scalarmult_base`"),
    ("raw.x25519_base.cryptography", "X25519 public key, cryptography"),
    ("raw.ed25519_pk_to_x25519.pynacl", "Ed25519→X25519 public key, PyNaCl"),
    ("raw.hkdf_sha256.cryptography", "HKDF-SHA256 (`e2e_key`), cryptography"),
]
NODE_ROWS = [
    ("node.sign", "in-process `Identity.sign(envelope)`"),
    ("node.verify", "in-process `decode(raw).verify()`"),
    ("node.verify.decode", "  of which `decode(raw)`"),
    ("node.verify.signing_bytes", "  of which `signing_bytes()`"),
    ("node.seal", "in-process `Identity.seal(encrypt=True).encode()`"),
    ("node.open", "in-process `Identity.open(raw)`"),
]


def _rate(v: float) -> str:
    return f"{v:,.0f}"


def _us(v: float) -> str:
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def _x(v: float) -> str:
    return f"{v:.2f}×"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def rows(r: dict[str, Any]) -> list[list[str]]:
    """Raw library calls and in-process node operations."""
    sizes = [str(s) for s in PAYLOADS]
    ip, fx = r["in_process"], r["fixed"]
    out: list[list[str]] = []
    for key, label in RAW_ROWS + NODE_ROWS:
        row = [label]
        for s in sizes:
            row += [_rate(ip[s][key]["ops_per_s"]), _us(ip[s][key]["us_per_op"])]
        out.append(row)
    row = ["in-process seal+open (combined)"]
    for s in sizes:
        v = r["ratios"][s]["in_process_seal_open_per_s_step2"]
        row += [_rate(v), _us(1e6 / v)]
    out.append(row)
    for key, label in FIXED_ROWS:
        out.append([label, _rate(fx[key]["ops_per_s"]), _us(fx[key]["us_per_op"]), "″", "″"])
    return out


def service_rows(r: dict[str, Any]) -> list[list[str]]:
    """The crypto service, per request type and payload size."""
    out: list[list[str]] = []
    for size in PAYLOADS:
        s = str(size)
        sv, ra = r["service"][s], r["ratios"][s]
        for op in SERVICE_OPS:
            o = sv[op]
            t = o["pipelined"]
            out.append([f"`crypto.{op}`, {_size(size)}", _us(o["in_process"]["us_per_op"]),
                        _us(o["service_path"]["us_per_op"]),
                        f"{o['rtt']['p50_us']:.0f} / {o['rtt']['p99_us']:.0f}",
                        _rate(t["ops_per_s"]), _us(t["us_per_op"]),
                        _us(t["server_main_us_per_op"]), _us(t["server_main_wait_us_per_op"]),
                        f"{t['client_cpu_pct']:.0f}"])
        out.append([f"seal+open, {_size(size)} (combined)",
                    _us(1e6 / ra["in_process_seal_open_per_s"]),
                    _us(1e6 / ra["service_path_seal_open_per_s"]), "",
                    _rate(ra["service_seal_open_per_s"]),
                    _us(1e6 / ra["service_seal_open_per_s"]), "", "", ""])
        out.append([f"&nbsp;&nbsp;via `BusClient.send`/`recv`, {_size(size)}", "", "", "",
                    _rate(ra["busclient_seal_open_per_s"]),
                    _us(1e6 / ra["busclient_seal_open_per_s"]), "", "", ""])
    return out


def ratio_rows(r: dict[str, Any]) -> list[list[str]]:
    sizes = [str(s) for s in PAYLOADS]
    ra, tg = r["ratios"], r["targets"]
    out = []
    fastest = {s: ra[s]["fastest_raw_verify"].removeprefix("raw.verify.") for s in sizes}
    out.append(["fastest raw verify / in-process verify"]
               + [f"{_x(ra[s]['verify_fastest_raw_vs_in_process'])} ({fastest[s]})"
                  for s in sizes]
               + ["≤ 1.2×", " / ".join(_met(tg[f"verify_within_1.2x_raw_{s}"]["met"])
                                       for s in sizes)])
    out.append(["service seal+open (pipelined) / in-process seal+open, median of rounds "
                "(range)"]
               + [f"{100 * ra[s]['seal_open_service_vs_in_process']:.1f} % ("
                  f"{100 * min(ra[s]['seal_open_service_vs_in_process_rounds']):.0f}–"
                  f"{100 * max(ra[s]['seal_open_service_vs_in_process_rounds']):.0f})"
                  for s in sizes]
               + ["≥ 50 %", " / ".join(_met(tg[f"service_seal_open_ge_50pct_{s}"]["met"])
                                       for s in sizes)])
    out.append(["&nbsp;&nbsp;same, vs the in-process figures of the first table"]
               + [f"{100 * ra[s]['seal_open_service_vs_in_process_step2']:.0f} %"
                  for s in sizes] + ["", ""])
    out.append(["&nbsp;&nbsp;service code path in-process / in-process seal+open"]
               + [f"{100 * ra[s]['seal_open_service_path_vs_in_process']:.0f} %"
                  for s in sizes] + ["", ""])
    out.append(["&nbsp;&nbsp;via BusClient / in-process seal+open (median of rounds)"]
               + [f"{100 * ra[s]['seal_open_busclient_vs_in_process']:.0f} %" for s in sizes]
               + ["", ""])
    out.append(["sign: PyNaCl / cryptography"]
               + [_x(ra[s]["sign_pynacl_vs_cryptography"]) for s in sizes] + ["", ""])
    out.append(["verify: PyNaCl / cryptography (key reused)"]
               + [_x(ra[s]["verify_pynacl_vs_cryptography"]) for s in sizes] + ["", ""])
    out.append(["verify: PyNaCl / cryptography (key loaded per call)"]
               + [_x(ra[s]["verify_pynacl_vs_cryptography_load"]) for s in sizes] + ["", ""])
    fx = r["fixed"]
    out.append(["X25519: PyNaCl / cryptography",
                _x(fx["raw.x25519.pynacl"]["ops_per_s"]
                   / fx["raw.x25519.cryptography"]["ops_per_s"]), "″", "", ""])
    out.append(["service code around the op, µs (sign / verify / seal / open)"]
               + [" / ".join(f"{ra[s]['service_code_overhead_us'][op]:.0f}"
                             for op in SERVICE_OPS) for s in sizes] + ["", ""])
    out.append(["service main thread beyond its code, µs (sign / verify / seal / open)"]
               + [" / ".join(f"{ra[s]['service_main_thread_extra_us'][op]:.0f}"
                             for op in SERVICE_OPS) for s in sizes] + ["", ""])
    return out


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


HEAD = ["measurement", "200 B ops/s", "200 B µs/op", "64 KiB ops/s", "64 KiB µs/op"]
SERVICE_HEAD = ["request", "in-process µs/op", "service code path in-process µs/op",
                "RTT p50 / p99 µs", "pipelined ops/s", "pipelined µs/op",
                "service main thread CPU µs/op", "service main thread waiting for a CPU µs/op",
                "client CPU %"]
RATIO_HEAD = ["ratio", "200 B", "64 KiB", "target", "met (200 B / 64 KiB)"]


def text_table(head: list[str], table_rows: list[list[str]]) -> str:
    table = [head, *([c.replace("&nbsp;", " ").replace("`", "") for c in row]
                     for row in table_rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(head: list[str], table_rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(c.replace("  ", "&nbsp;&nbsp;", 1) if i == 0 else c
                                for i, c in enumerate(row)) + " |" for row in table_rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_crypto", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per in-process op")
    ap.add_argument("--round-ms", type=float, default=50,
                    help="duration of one in-process round (ms)")
    ap.add_argument("--rtt-n", type=int, default=500, help="timed round trips per service op")
    ap.add_argument("--warmup", type=int, default=100, help="untimed round trips before each")
    ap.add_argument("--tput-n", type=int, default=800,
                    help="requests per pipelined round (and per BusClient figure)")
    ap.add_argument("--service-rounds", type=int, default=5,
                    help="rounds of [in-process, service pipelined] for every request type")
    ap.add_argument("--window", type=int, default=200, help="requests in flight (pipelined)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = ap.parse_args(argv)
    result = run(args)
    print()
    print(text_table(HEAD, rows(result)))
    print()
    print(text_table(SERVICE_HEAD, service_rows(result)))
    print()
    print(text_table(RATIO_HEAD, ratio_rows(result)))
    print()
    s = result["service_status"]
    print(f"service counters: frames_in {s.get('frames_in')}, frames_out {s.get('frames_out')}, "
          f"drops {s.get('drops')}, decode_errors {s.get('decode_errors')}; "
          f"run took {result['elapsed_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.out}")
    print()
    print("markdown (docs/benchmarks.md):")
    print()
    print(markdown_table(HEAD, rows(result)))
    print()
    print(markdown_table(SERVICE_HEAD, service_rows(result)))
    print()
    print(markdown_table(RATIO_HEAD, ratio_rows(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
