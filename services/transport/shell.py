"""Transport shell: the node's one UDP socket, plus the bus (service base).

The socket is read in batches: when it is readable, every datagram waiting (up to
``UDP_BATCH``) goes to the core as one input, so the core builds its acknowledgements and the
service drains the bus and re-arms its timer once per batch instead of once per datagram
(asyncio's datagram transport reads one datagram per loop iteration and would run a whole
service cycle for each). Sends are non-blocking; a datagram the kernel cannot take now is
dropped and counted, and QUIC retransmits it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.core import Core, ServiceAction
from shared.service import Service, ServiceContext, StartupError

from .config import TransportConfig
from .core import DatagramsReceived, SendDatagram, TransportCore

UDP_BATCH = 256
SOCKET_BUFFER = 4 * 1024 * 1024


class TransportService(Service):
    role = "transport"

    def build_core(self, context: ServiceContext) -> Core:
        self.settings = context.section("transport", TransportConfig)
        # a fresh transport key per start: only a binding signed by crypto gives it meaning
        return TransportCore(Ed25519PrivateKey.generate(), time.time, ("0.0.0.0", 0),
                             self.settings.binding_hours * 3600, self.settings.idle_timeout_s)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        cfg = self.settings
        self.udp = self._open(cfg.host, cfg.port)
        assert isinstance(self.core, TransportCore)
        self.core.local = self.udp.getsockname()[:2]
        self.log.info("UDP socket on %s:%d", *self.core.local)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.udp.fileno(), self._on_readable)
        try:
            await super().run(ready)
        finally:
            loop.remove_reader(self.udp.fileno())
            self.udp.close()

    def _open(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in (port, 0):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                sock.bind((host, attempt))
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE or not self.settings.port_fallback \
                        or attempt == 0:
                    raise StartupError(f"cannot open UDP {host}:{attempt}: {e}") from None
                self.log.warning("UDP port %d is taken; using a free port", port)
                continue
            sock.setblocking(False)
            return sock
        raise AssertionError("unreachable")

    def _on_readable(self) -> None:
        batch: list[tuple[bytes, tuple[str, int]]] = []
        recv = self.udp.recvfrom
        try:
            while len(batch) < UDP_BATCH:
                data, addr = recv(65536)
                batch.append((data, addr[:2]))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # an ICMP error reported on the socket (port unreachable...)
            self.stats["udp_errors"] += 1
        if batch:
            self.feed_external(DatagramsReceived(batch))

    def perform_extra(self, action: ServiceAction) -> None:
        if isinstance(action, SendDatagram):
            try:
                self.udp.sendto(action.data, action.addr)
            except (BlockingIOError, InterruptedError):
                self.stats["udp_send_drops"] += 1
            except OSError:
                self.stats["udp_errors"] += 1
        else:
            super().perform_extra(action)


SERVICE = TransportService
