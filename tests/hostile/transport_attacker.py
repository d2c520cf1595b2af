"""Attackers on a transport's UDP port, run as a process of their own by the hostile tests
(so their CPU does not share the test's interpreter, which measures the legitimate peer):

    python -m tests.hostile.transport_attacker MODE HOST PORT NODE_ID_HEX [options]

Modes (each prints ``ready`` once set up, then ``done <json>`` and exits after --seconds):

  hellos      unanswered ClientHellos from many source addresses (127.0.N.M, as a spoofer
              would: nothing it receives is read), --rate per second
  mute        clients from ONE source address (--source), --rate per second, that answer a
              Retry (their address is real) and are silent otherwise: half-open connections
  identities  --count made-up node identities (fresh Ed25519 seeds, real bindings) that dial
              and stay connected, answering keep-alives
  cycle       one made-up identity opening connection after connection and sending 256 KiB
              envelopes on the one the victim has just retired (the memory attack)
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.crypto.core import Identity
from services.transport.endpoint import ALPN, Endpoint, transport_public


def client() -> QuicConnection:
    return QuicConnection(configuration=QuicConfiguration(is_client=True,
                                                          alpn_protocols=[ALPN]))


def hellos(target: tuple[str, int], rate: float, seconds: float) -> dict[str, int]:
    socks = []
    for n in range(200):  # 200 source addresses, never read
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{n // 100 + 10}.{n % 100 + 1}", 0))
        s.setblocking(False)
        socks.append(s)
    print("ready", flush=True)
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        quic = client()
        quic.connect(target, time.monotonic())
        data = quic.datagrams_to_send(time.monotonic())[0][0]
        try:
            socks[sent % len(socks)].sendto(data, target)
        except BlockingIOError:
            pass
        sent += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return {"sent": sent}


def mute(target: tuple[str, int], source: str, rate: float, seconds: float
         ) -> dict[str, int]:
    """Clients from one address, --rate per second: each sends an Initial, answers a Retry
    if one comes (its address is real), and is silent from then on."""
    retries = sent = 0
    socks: list[socket.socket] = []
    print("ready", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        socks.append(s)
        quic = client()
        quic.connect(target, time.monotonic())
        for data, _ in quic.datagrams_to_send(time.monotonic()):
            s.sendto(data, target)
        sent += 1
        if select.select([s], [], [], 0.05)[0]:
            reply, addr = s.recvfrom(65536)
            header = pull_quic_header(Buffer(data=reply), host_cid_length=8)
            if header.packet_type == QuicPacketType.RETRY:
                quic.receive_datagram(reply, addr, time.monotonic())
                for data, _ in quic.datagrams_to_send(time.monotonic()):
                    s.sendto(data, target)
                retries += 1
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return {"sent": sent, "answered_retries": retries}


class Rogue:
    def __init__(self, seed: bytes) -> None:
        key = Ed25519PrivateKey.generate()
        now = int(time.time())
        binding = Identity(seed, os.urandom).bind_transport(transport_public(key), now + 3600,
                                                            now - 10)
        self.ep = Endpoint(key, binding.encode(), time.time)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def step(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, ConnectionRefusedError):
                break
            self.ep.receive(data, addr[:2], now)
        self.ep.handle_timer(now)
        for data, addr in self.ep.datagrams():
            try:
                self.sock.sendto(data, addr)
            except OSError:
                pass
        self.ep.events()


def pump(rogues: list[Rogue], until: float) -> None:
    while time.monotonic() < until:
        select.select([r.sock for r in rogues], [], [], 0.02)
        for r in rogues:
            r.step()


def identities(target: tuple[str, int], node: bytes, count: int,
               seconds: float) -> dict[str, int]:
    rogues = []
    for _ in range(count):
        r = Rogue(os.urandom(32))
        r.ep.dial(node, target, time.monotonic())
        rogues.append(r)
        pump(rogues, time.monotonic() + 0.05)
    pump(rogues, time.monotonic() + 2)
    connected = sum(1 for r in rogues if node in r.ep.peers)
    print("ready", connected, flush=True)
    pump(rogues, time.monotonic() + seconds)
    return {"connected": connected, "still": sum(1 for r in rogues if node in r.ep.peers)}


def cycle(target: tuple[str, int], node: bytes, seconds: float) -> dict[str, int]:
    """One identity opening connection after connection (a new transport key each time, so
    each new one retires the previous one at the victim), and sending 256 KiB envelopes as
    fast as flow control lets it on the connection the victim has just retired."""
    seed = os.urandom(32)
    print("ready", flush=True)
    end, cycles, frames = time.monotonic() + seconds, 0, 0
    envelope = b"\x92" + os.urandom(256 * 1024 - 1)
    rogues: list[Rogue] = []
    while time.monotonic() < end:
        r = Rogue(seed)
        r.ep.dial(node, target, time.monotonic())
        deadline = time.monotonic() + 3
        while node not in r.ep.peers and time.monotonic() < deadline:
            pump(rogues + [r], time.monotonic() + 0.01)
        for old in rogues[:-1]:
            old.sock.close()
        rogues = rogues[-1:] + [r]
        cycles += 1
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            for x in rogues:  # the retired one first
                while node in x.ep.peers:
                    try:
                        x.ep.send(node, envelope, time.monotonic())
                    except Exception:
                        break
                    frames += 1
            pump(rogues, time.monotonic() + 0.02)
    for r in rogues:
        r.sock.close()
    return {"cycles": cycles, "frames": frames}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["hellos", "mute", "identities", "cycle"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("node", help="the victim's node id, hex")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--source", default="127.0.0.9")
    a = ap.parse_args()
    target, node = (a.host, a.port), bytes.fromhex(a.node)
    if a.mode == "hellos":
        out = hellos(target, a.rate, a.seconds)
    elif a.mode == "mute":
        out = mute(target, a.source, a.rate, a.seconds)
    elif a.mode == "identities":
        out = identities(target, node, a.count, a.seconds)
    else:
        out = cycle(target, node, a.seconds)
    print("done", json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
