"""Transport shell: the node's one UDP socket, plus the bus (service base)."""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.core import Core, ServiceAction
from shared.service import Service, ServiceContext, StartupError

from .config import TransportConfig
from .core import DatagramReceived, SendDatagram, TransportCore


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, service: TransportService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.feed_external(DatagramReceived(data, addr[:2]))

    def error_received(self, exc: Exception) -> None:
        self.service.stats["udp_errors"] += 1


class TransportService(Service):
    role = "transport"

    def build_core(self, context: ServiceContext) -> Core:
        self.settings = context.section("transport", TransportConfig)
        # a fresh transport key per start: only a binding signed by crypto gives it meaning
        return TransportCore(Ed25519PrivateKey.generate(), time.time, ("0.0.0.0", 0),
                             self.settings.binding_hours * 3600, self.settings.idle_timeout_s)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.settings
        try:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(cfg.host, cfg.port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE or not cfg.port_fallback or cfg.port == 0:
                raise StartupError(f"cannot open UDP {cfg.host}:{cfg.port}: {e}") from None
            self.log.warning("UDP port %d is taken; using a free port", cfg.port)
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(cfg.host, 0))
        self.udp = udp
        assert isinstance(self.core, TransportCore)
        self.core.local = udp.get_extra_info("sockname")[:2]
        self.log.info("UDP socket on %s:%d", *self.core.local)
        try:
            await super().run(ready)
        finally:
            udp.close()

    def perform_extra(self, action: ServiceAction) -> None:
        if isinstance(action, SendDatagram):
            self.udp.sendto(action.data, action.addr)
        else:
            super().perform_extra(action)


SERVICE = TransportService
