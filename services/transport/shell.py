"""Transport shell: the node's one UDP socket, plus the bus (service base).

The socket is read in batches: when it is readable, every datagram waiting (up to
``UDP_BATCH``) goes to the core as one input, so the core builds its acknowledgements and the
service drains the bus and re-arms its timer once per batch instead of once per datagram
(asyncio's datagram transport reads one datagram per loop iteration and would run a whole
service cycle for each). Sends are non-blocking; a datagram the kernel cannot take now is
dropped and counted, and QUIC retransmits it.

On Linux the socket also takes ICMP errors (``IP_RECVERR``): after each read the shell drains
the socket's error queue and hands the core each "port unreachable" or "host unreachable"
with the address it concerns and the quoted datagram (:class:`~.core.Unreachable`), so a dial
to an address where nothing listens fails at once instead of after the authentication
timeout (the endpoint checks that the quote is its own packet).

Such a socket reports POLLERR until its error queue is read, and so does the port-mapping
socket (connected to the gateway) after a "port unreachable" until the error is read. libuv
(the uvloop event loop) answers POLLERR by dropping the descriptor from its watch for good,
after which nothing more was read (under uvloop, nodes behind symmetric NATs, whose punches
meet closed ports, went deaf). So the loop watches these sockets through an epoll descriptor
that holds the socket and reports only "readable" (:func:`watch`); the errors are read where
they always were, under both loops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import ipaddress
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.core import Core, ServiceAction
from shared.service import Service, ServiceContext, StartupError

from .admission import Limits
from .config import TransportConfig, advertised
from .core import (
    DatagramsReceived,
    ExtraSockets,
    PortmapReceived,
    PortmapStart,
    Resolve,
    Resolved,
    SendDatagram,
    SendPortmap,
    TransportCore,
    Unreachable,
)
from .endpoint import where_text
from .events import CloseSockets, OpenSockets
from .portmap import MAX_REPLY, PORT, PortMapper

UDP_BATCH = 256
PORT_FALLBACK_SCAN = 100
"""With ``port_fallback``, ports tried above a taken one before any free port."""
SOCKET_BUFFER = 4 * 1024 * 1024
ERRORS_BATCH = 64
"""ICMP errors taken from the socket's error queue per wake-up (the rest wait for the next)."""
QUOTE_BYTES = 64
"""Bytes of the refused datagram read with its error: enough for a QUIC header."""
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11),       # IP_RECVERR (Linux)
            socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}    # IPV6_RECVERR
_ICMP_ORIGINS = (2, 3)
"""``SO_EE_ORIGIN_ICMP``, ``SO_EE_ORIGIN_ICMP6``: errors reported by the network."""
_NO_SUCH_HOST = frozenset(getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA")
                          if hasattr(socket, n))
MAX_ROUTES = 8
"""Birthday sockets kept as routes to a peer's address (the oldest is closed beyond)."""
RESOLVER_THREADS = 4
"""Threads that run ``getaddrinfo``: a resolver that never answers holds one until the C
library gives up; while all are held, names fail at once (``resolver_busy``)."""


class TransportService(Service):
    role = "transport"

    def build_core(self, context: ServiceContext) -> Core:
        self._datagrams: list[SendDatagram] = []
        self._birthday: dict[bytes, tuple[tuple[str, int], list[socket.socket]]] = {}
        """Birthday sockets by punch key: the peer's address they probe, and the sockets."""
        self._routes: dict[tuple[str, int], socket.socket] = {}
        """Peer address -> the birthday socket that reached it (sends to it go there)."""
        self.settings = context.section("transport", TransportConfig)
        # a fresh transport key per start: only a binding signed by crypto gives it meaning
        cfg = self.settings
        limits = Limits(max_connections=cfg.max_connections,
                        reserved_connections=round(cfg.max_connections
                                                   * cfg.reserved_share),
                        max_half_open=cfg.max_half_open,
                        half_open_per_address=cfg.half_open_per_address,
                        retry_above=cfg.retry_above, stranger_grace_s=cfg.stranger_grace_s,
                        stranger_envelopes_per_s=cfg.stranger_envelopes_per_s,
                        stranger_bytes_per_s=cfg.stranger_bytes_per_s)
        return TransportCore(Ed25519PrivateKey.generate(), time.time, ("0.0.0.0", 0),
                             cfg.binding_hours * 3600, cfg.idle_timeout_s, limits)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        cfg = self.settings
        self.udp = self._open(cfg.host, cfg.port)
        assert isinstance(self.core, TransportCore)
        self.core.local = self.udp.getsockname()[:2]
        host, port = self.core.local
        # "::" is dual-stack (IPV6_V6ONLY off): IPv4 peers arrive as ::ffff:a.b.c.d, which
        # the shell turns into a.b.c.d as it reads them, and back as it sends
        self._dual = host == "::"
        ips = interface_addresses() if host == "0.0.0.0" else \
            interface_addresses() + interface_addresses6() if self._dual else [host]
        # the configured outside addresses first (port-mapped, NATed), then the socket's own
        outside = [advertised(a) for a in cfg.advertise]
        self.core.local_candidates[:] = outside + [(ip, port) for ip in ips
                                                   if (ip, port) not in outside]
        if outside:
            self.log.info("advertised addresses %s", outside)
        self.log.info("UDP socket on %s:%d (candidates %s)", host, port, ips)
        self.delay_s = cfg.send_delay_ms / 1000
        self.jitter_s = cfg.send_jitter_ms / 1000
        self._resolver = concurrent.futures.ThreadPoolExecutor(RESOLVER_THREADS, "resolve")
        self._resolver_busy = 0
        self._recverr = recv_errors(self.udp)
        loop = asyncio.get_running_loop()
        watched = watch(loop, self.udp, self._on_readable)
        self._portmap: socket.socket | None = None
        self._portmap_watch: Watch | None = None
        if cfg.port_mapping:
            self._start_portmap(cfg, host, port)
        try:
            await super().run(ready)
        finally:
            unwatch(loop, watched)
            self.udp.close()
            for key in list(self._birthday):
                self._close_sockets(key)
            for sock in self._routes.values():
                loop.remove_reader(sock.fileno())
                sock.close()
            if self._portmap is not None and self._portmap_watch is not None:
                unwatch(loop, self._portmap_watch)
                self._portmap.close()
            self._resolver.shutdown(wait=False, cancel_futures=True)

    def _start_portmap(self, cfg: TransportConfig, host: str, port: int) -> None:
        """Ask the gateway for a port mapping (portmap.py) from a socket of its own,
        connected to the gateway's port 5351 (so only the gateway is heard). Without an
        IPv4 gateway (none, or a socket on one IPv6 or loopback address) there is nothing
        to ask."""
        assert isinstance(self.core, TransportCore)
        gateway = cfg.port_mapping_gateway or default_gateway()
        # (a dual-stack socket, "::", takes IPv4 too: the mapping forwards to its port)
        if gateway is None or (":" in host and host != "::") \
                or ipaddress.ip_address(host).is_loopback:
            self.log.info("port mapping: no IPv4 default gateway to ask")
            self.stats["portmap_no_gateway"] += 1
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if not ipaddress.ip_address(host).is_unspecified:
                sock.bind((host, 0))
            sock.connect((gateway, PORT))  # UDP: picks the route, sends nothing
            internal = sock.getsockname()[0]
        except OSError as e:
            sock.close()
            self.log.info("port mapping: cannot reach the gateway %s: %s", gateway, e)
            self.stats["portmap_no_gateway"] += 1
            return
        self._portmap = sock
        self.core.portmap = PortMapper(internal, port, cfg.port_mapping_lifetime_s)
        loop = asyncio.get_running_loop()
        self._portmap_watch = watch(loop, sock, self._on_portmap)
        loop.call_soon(self.feed_external, PortmapStart())
        self.log.info("port mapping: asking %s:%d for UDP port %d of %s", gateway, PORT,
                      port, internal)

    def _on_portmap(self) -> None:
        """Datagrams from the gateway's port 5351 (a few per minute at most: read them
        all; ICMP errors such as "port unreachable" are counted and dropped)."""
        assert self._portmap is not None
        for _ in range(16):
            try:
                data = self._portmap.recv(MAX_REPLY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # nothing listens on the gateway's 5351
                self.stats["portmap_unreachable"] += 1
                continue
            self.feed_external(PortmapReceived(data))

    def _open(self, host: str, port: int) -> socket.socket:
        """The node's UDP socket on its configured port. The port is the node's address,
        so a taken one stops the start with a message saying what to do, unless
        ``port_fallback`` allows the next free port above it (then any free one), which
        is logged and counted (``port_fallbacks``, shown by ``tom node status``)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        attempts = [port]
        if port and self.settings.port_fallback:
            attempts += [*range(port + 1, min(port + 1 + PORT_FALLBACK_SCAN, 65536)), 0]
        for attempt in attempts:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6 and ipaddress.ip_address(host).is_unspecified:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                sock.bind((host, attempt))
            except OSError as e:
                sock.close()
                if e.errno == errno.EADDRINUSE and attempt != attempts[-1]:
                    continue
                if e.errno == errno.EADDRINUSE and not self.settings.port_fallback:
                    raise StartupError(
                        f"UDP port {port} on {host} is taken (another node, or another "
                        "program: `ss -ulpn` shows which). This node's peers dial that port, "
                        "so it is not changed silently: stop what holds it, or set another "
                        "[transport] port in node.toml (or TOM_TRANSPORT__PORT); "
                        "port_fallback = true takes the next free port instead") from None
                raise StartupError(f"cannot open UDP {host}:{attempt}: {e}") from None
            if attempt != port:
                self.stats["port_fallbacks"] += 1
                self.log.warning("UDP port %d is taken: using %d instead (port_fallback); "
                                 "peers that knew this node at %d learn the new port when "
                                 "it dials them or from its announcements", port,
                                 sock.getsockname()[1], port)
            sock.setblocking(False)
            return sock
        raise AssertionError("unreachable")

    def _on_readable(self) -> None:
        batch: list[tuple[bytes, tuple[str, int]]] = []
        recv = self.udp.recvfrom
        try:
            while len(batch) < UDP_BATCH:
                data, addr = recv(65536)
                host = addr[0]
                if host.startswith("::ffff:"):  # an IPv4 peer on the dual-stack socket
                    host = host[7:]
                batch.append((data, (host, addr[1])))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # an ICMP error reported on the socket (port unreachable...)
            self.stats["udp_errors"] += 1
        if batch:
            self.feed_external(DatagramsReceived(batch))
        if self._recverr and len(batch) < UDP_BATCH:
            self._read_errors()

    def _open_sockets(self, action: OpenSockets) -> None:
        """Birthday probing: ``count`` extra sockets, each sending the probe to the peer's
        address once (a NAT mapping each); fewer if the process runs out of descriptors
        (counted ``birthday_socket_errors``)."""
        if action.key in self._birthday:
            return
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        for _ in range(action.count):
            try:
                sock = socket.socket(self.udp.family, socket.SOCK_DGRAM)
            except OSError:
                self.stats["birthday_socket_errors"] += 1
                break
            try:
                sock.setblocking(False)
                sock.bind((self.settings.host, 0))
                sock.sendto(action.payload, action.dest)
            except OSError:
                self.stats["birthday_socket_errors"] += 1
                sock.close()
                continue
            socks.append(sock)
            loop.add_reader(sock.fileno(), self._on_extra_readable, action.key, sock)
        self._birthday[action.key] = (action.dest, socks)

    def _close_sockets(self, key: bytes) -> None:
        dest, socks = self._birthday.pop(key, (None, []))
        loop = asyncio.get_running_loop()
        for sock in socks:
            loop.remove_reader(sock.fileno())
            sock.close()

    def _on_extra_readable(self, key: bytes | None, sock: socket.socket) -> None:
        """A datagram on a birthday socket (``key``) or a route (``key`` None): the first
        from the peer's IP makes the socket the route to where it came from; datagrams
        from elsewhere are dropped (counted)."""
        batch: list[tuple[bytes, tuple[str, int]]] = []
        try:
            while len(batch) < UDP_BATCH:
                data, addr = sock.recvfrom(65536)
                batch.append((data, addr[:2]))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.stats["udp_errors"] += 1
        if key is not None:
            entry = self._birthday.get(key)
            if entry is None:
                return
            dest, socks = entry
            ok = [(d, a) for d, a in batch if a[0] == dest[0] and a not in self._routes]
            if not ok:
                self.stats["birthday_stray"] += len(batch)
                return
            addr = ok[0][1]
            socks.remove(sock)
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.add_reader(sock.fileno(), self._on_extra_readable, None, sock)
            self._routes[addr] = sock
            self.stats["birthday_routes"] += 1
            while len(self._routes) > MAX_ROUTES:
                old = next(iter(self._routes))
                loop.remove_reader(self._routes[old].fileno())
                self._routes.pop(old).close()
            batch = [(d, a) for d, a in batch if a == addr]
        if batch:
            self.feed_external(DatagramsReceived(batch))

    def _read_errors(self) -> None:
        """Drain the socket's error queue (ICMP errors; left there, they would wake the
        loop again and again): port or host unreachable go to the core."""
        for _ in range(ERRORS_BATCH):
            try:
                quoted, ancillary, _flags, addr = self.udp.recvmsg(
                    QUOTE_BYTES, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats["udp_errors"] += 1
                return
            why = icmp_reason(ancillary, addr)
            self.stats["icmp_errors"] += 1
            if why and isinstance(addr, tuple):
                host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
                self.feed_external(Unreachable((host, addr[1]), quoted, why))

    def perform_extra(self, action: ServiceAction) -> None:
        if isinstance(action, SendDatagram):
            self._datagrams.append(action)
        elif isinstance(action, ExtraSockets):
            if isinstance(action.action, OpenSockets):
                self._open_sockets(action.action)
            elif isinstance(action.action, CloseSockets):
                self._close_sockets(action.action.key)
        elif isinstance(action, Resolve):
            self._start_resolve(action)
        elif isinstance(action, SendPortmap):
            self._send_portmap(action.data)
        else:
            super().perform_extra(action)

    def _start_resolve(self, action: Resolve) -> None:
        """Resolve a host name in a resolver thread, never on the event loop; the answer
        (or a timeout after ``resolve_timeout_s``) comes back to the core as ``Resolved``."""
        loop = asyncio.get_running_loop()
        if self._resolver_busy >= RESOLVER_THREADS:
            self.stats["resolver_busy"] += 1
            loop.call_soon(self.feed_external, Resolved(
                action.token, None, "every resolver thread is waiting on an earlier name"))
            return
        self._resolver_busy += 1

        def done(_: object) -> None:
            loop.call_soon_threadsafe(self._resolver_freed)

        family = socket.AF_UNSPEC if self._dual else self.udp.family  # v6 or v4 there
        job = self._resolver.submit(socket.getaddrinfo, action.host, action.port,
                                    family, socket.SOCK_DGRAM)
        job.add_done_callback(done)
        loop.create_task(self._await_resolve(action, job))

    def _resolver_freed(self) -> None:
        self._resolver_busy -= 1

    async def _await_resolve(self, action: Resolve,
                             job: concurrent.futures.Future[list[Any]]) -> None:
        timeout = self.settings.resolve_timeout_s
        try:
            infos = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), timeout)
            result = Resolved(action.token, tuple(infos[0][4][:2]))
        except TimeoutError:
            result = Resolved(action.token, None, f"no answer within {timeout:g} s",
                              timed_out=True)
        except (OSError, UnicodeError, IndexError) as e:
            error, transient = resolve_error(e)
            result = Resolved(action.token, None, error, timed_out=transient)
        self.feed_external(result)

    def flush_extra(self) -> None:
        """Datagrams leave with the bus flush, after its calls: an envelope that arrived
        goes to the router (``router.deliver``) before the QUIC acknowledgement for it."""
        out, self._datagrams = self._datagrams, []
        for d in out:
            if self.delay_s or self.jitter_s:
                delay = self.delay_s + (random.random() * self.jitter_s if self.jitter_s
                                        else 0.0)
                asyncio.get_running_loop().call_later(delay, self._sendto, d.data, d.addr)
            else:
                self._sendto(d.data, d.addr)

    def _send_portmap(self, data: bytes) -> None:
        if self._portmap is None:
            return
        try:
            self._portmap.send(data)
        except OSError:  # (non-blocking: a full buffer, or the gateway unreachable)
            self.stats["portmap_send_errors"] += 1

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Addresses are literal (checked where they enter the core), so this never waits
        on a resolver; anything unexpected is counted, not raised out of the flush."""
        route = self._routes.get(addr)  # a birthday probe's socket (IPv4) to this address
        if route is None and self._dual and ":" not in addr[0]:
            addr = ("::ffff:" + addr[0], addr[1])
        try:
            (route or self.udp).sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.stats["udp_send_drops"] += 1
        except (OSError, ValueError, TypeError):
            self.stats["udp_errors"] += 1


def resolve_error(e: BaseException) -> tuple[str, bool]:
    """Why ``getaddrinfo`` failed, and whether it may pass: the resolver saying the name
    does not exist is final (``no such host``); anything else (try again, a resolver
    failure, no network) may pass."""
    if isinstance(e, socket.gaierror):
        if e.errno in _NO_SUCH_HOST:
            return "no such host", False
        return e.strerror or str(e), True
    return str(e) or type(e).__name__, isinstance(e, OSError)


Watch = Union[int, "select.epoll"]  # noqa: UP007 (a string: select.epoll is Linux's only)
"""What :func:`watch` registered with the loop: the socket's descriptor, or an epoll."""


def watch(loop: asyncio.AbstractEventLoop, sock: socket.socket,
          callback: Callable[[], None]) -> Watch:
    """``loop.add_reader`` for a socket that may report POLLERR (ICMP errors), through an
    epoll descriptor holding it where there is epoll (Linux): the loop sees "readable" only,
    and the callback reads the error (see the module docstring)."""
    if not hasattr(select, "epoll"):
        loop.add_reader(sock.fileno(), callback)
        return sock.fileno()
    holder = select.epoll()
    try:
        holder.register(sock.fileno(), select.EPOLLIN)
        loop.add_reader(holder.fileno(), callback)
    except BaseException:
        holder.close()
        raise
    return holder


def unwatch(loop: asyncio.AbstractEventLoop, watched: Watch) -> None:
    if isinstance(watched, int):
        loop.remove_reader(watched)
        return
    loop.remove_reader(watched.fileno())
    watched.close()


def recv_errors(sock: socket.socket) -> bool:
    """Ask the kernel for the ICMP errors of this socket (Linux); whether it will give them."""
    if not sys.platform.startswith("linux"):
        return False
    level, option = _RECVERR[sock.family]
    try:
        sock.setsockopt(level, option, 1)
        if sock.family == socket.AF_INET6:  # IPv4 peers of a dual-stack socket
            v4_level, v4_option = _RECVERR[socket.AF_INET]
            sock.setsockopt(v4_level, v4_option, 1)
    except OSError:
        return False
    return True


def icmp_reason(ancillary: list[tuple[int, int, bytes]], addr: Any) -> str:
    """What an error from the queue says, for a person ("" for errors that do not mean
    the destination is unreachable, such as "message too long")."""
    for level, kind, data in ancillary:
        if (level, kind) not in _RECVERR.values() or len(data) < 16:
            continue
        err, origin = struct.unpack_from("IB", data)
        if origin not in _ICMP_ORIGINS or not isinstance(addr, tuple):
            return ""
        where = where_text((str(addr[0]), int(addr[1])))
        if err == errno.ECONNREFUSED:
            return f"nothing listening at {where}"
        if err == errno.EHOSTUNREACH:
            return f"host {where} is unreachable"
        if err == errno.ENETUNREACH:
            return f"no route to the network of {where}"
    return ""


SIOCGIFADDR = 0x8915
_IFA_SKIP = 0x01 | 0x20 | 0x40 | 0x08
"""Flags of /proc/net/if_inet6 that rule an address out: temporary (privacy: it changes
and would only be tracked), deprecated, tentative (not usable yet), DAD failed."""


def interface_addresses6(path: str = "/proc/net/if_inet6") -> list[str]:
    """The global IPv6 addresses of this host's interfaces (Linux; empty elsewhere or
    without IPv6): never loopback or link-local, nor temporary, deprecated or tentative
    ones. A dual-stack socket bound to ``::`` is reachable at each."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read(1 << 20).splitlines()
    except OSError:
        return []
    out: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            ip = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            scope, flags = int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if scope == 0 and not flags & _IFA_SKIP and not (ip.is_loopback or ip.is_link_local
                                                          or ip.is_multicast) \
                and ip.ipv4_mapped is None and str(ip) not in out:
            out.append(str(ip))
    return out


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 gateway of the default route (Linux; None without one, or elsewhere). Read
    once at start-up: a small file in procfs, which never blocks."""
    try:
        with open(route_file, encoding="ascii", errors="replace") as f:
            lines = f.read(65536).splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # Iface Destination Gateway Flags ...; RTF_UP 0x1 and RTF_GATEWAY 0x2
        if len(fields) >= 4 and fields[1] == "00000000":
            try:
                gateway, flags = int(fields[2], 16), int(fields[3], 16)
            except ValueError:
                continue
            if flags & 3 == 3 and gateway:
                return socket.inet_ntoa(struct.pack("<I", gateway))
    return None


def interface_addresses() -> list[str]:
    """The IPv4 addresses of this host's interfaces, loopback left out (Linux; empty where
    the ioctl is not available): a socket bound to 0.0.0.0 is reachable at each."""
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it, or not Linux
                continue
            ip = socket.inet_ntoa(res[20:24])
            if not ip.startswith("127."):
                out.append(ip)
    return out


SERVICE = TransportService
