"""Another node on the network, as the transport under test sees it: a QUIC endpoint driven by
hand in the test process (the sans-I/O endpoint of services/transport/endpoint.py, which
speaks protocol.md §8.6), on its own UDP socket on loopback.

It proves a node id with a transport binding signed by that node's test identity, or, to be
refused, a binding for another TLS key (``binding_key``) or one signed by another node
(``signed_by``). It records what arrives (:attr:`QuicPeer.events`).
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.crypto.core import Identity
from services.transport.endpoint import Endpoint, transport_public
from services.transport.events import PeerClosed, Received


class QuicPeer:
    def __init__(self, seed: bytes, binding_key: bytes | None = None,
                 signed_by: bytes | None = None) -> None:
        key = Ed25519PrivateKey.generate()
        now = int(time.time())
        me = Identity(seed, os.urandom)
        binding = me.bind_transport(binding_key or transport_public(key), now + 3600,
                                    now - 10)
        if signed_by is not None:  # this node's id, another node's signature
            other = Identity(signed_by, os.urandom).bind_transport(
                binding.transport_key, binding.not_after_s, now - 10)
            binding = replace(binding, signature=other.signature)
        self.id = me.node_id
        self.ep = Endpoint(key, binding.encode(), time.time)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.events: list[object] = []

    def step(self, wait_s: float = 0.02) -> None:
        """Send what is due, read what came (waiting up to ``wait_s``), run the timers."""
        for data, addr in self.ep.datagrams():
            self.sock.sendto(data, addr)
        self.events += self.ep.events()
        timer = self.ep.next_timer()
        wait = wait_s if timer is None else max(0.0, min(wait_s, timer - time.monotonic()))
        while select.select([self.sock], [], [], wait)[0]:
            data, addr = self.sock.recvfrom(65536)
            self.ep.receive(data, addr, time.monotonic())
            wait = 0
        self.ep.handle_timer(time.monotonic())
        for data, addr in self.ep.datagrams():
            self.sock.sendto(data, addr)
        self.events += self.ep.events()

    def run(self, until: Callable[[], object], what: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"within {timeout_s:g} s: {what}")
            self.step()

    def received(self) -> list[bytes]:
        return [ev.data for ev in self.events if isinstance(ev, Received)]

    def closed(self) -> list[PeerClosed]:
        return [ev for ev in self.events if isinstance(ev, PeerClosed)]

    def close(self) -> None:
        self.sock.close()
