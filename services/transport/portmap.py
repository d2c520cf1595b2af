"""Port mapping: ask the home router to forward a public UDP port to the node's socket.

Theory of operation (docs/architecture.md, NAT traversal). Many home routers run a mapping
service on their LAN side, UDP port 5351: PCP (RFC 6887) or its predecessor NAT-PMP
(RFC 6886). Both are one datagram each way, so this is a small client rather than a
library (docs/architecture.md says why none fits). :class:`PortMapper` is sans-I/O: the
transport core feeds it the gateway's answers and the clock, and sends the datagrams it
produces to the gateway from a socket of its own (shell.py). It

1. asks for a PCP ``MAP`` of the node's UDP port (suggesting the same external port);
2. falls back to NAT-PMP when the gateway answers that it speaks only NAT-PMP, or says
   nothing after ``TRIES`` tries (each waits twice as long as the one before, from
   ``FIRST_WAIT_S``); NAT-PMP needs two requests, the external address and the mapping;
3. when mapped, reports the external address and port (:class:`MappingChanged`): the
   transport offers it to peers as a candidate, first (the router announces it);
4. renews the mapping at half its granted lifetime (never more often than ``MIN_RENEW_S``);
   a renewal that fails drops the candidate and starts again from 1;
5. when neither protocol answers, or the gateway refuses, tries again after ``RETRY_S``;
6. at :meth:`stop` (the transport exits), asks for the mapping to be deleted (lifetime 0),
   once, without waiting for the answer.

Everything the gateway says is checked: only answers of the expected size, version, opcode,
internal port and (PCP) nonce count; the external address must be a unicast address;
lifetimes are clamped. Anything else is counted and ignored, and the shell reads only from the
gateway's address (a connected socket), so a stranger on the LAN has to spoof the gateway to
be heard, and then can at most make the node advertise a wrong address, which peers'
dials then fail to authenticate.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .addresses import Addr

PORT = 5351
"""The gateway's PCP and NAT-PMP port."""
PCP_VERSION = 2
PMP_VERSION = 0
PCP_MAP = 1
PMP_ADDRESS = 0
PMP_MAP_UDP = 1
UDP = 17
FIRST_WAIT_S = 0.25
TRIES = 4
"""Tries per protocol (0.25 + 0.5 + 1 + 2 s, then the next protocol or a pause): quicker
than the RFCs' schedules, which are for a device waiting on its only way out."""
RETRY_S = 300.0
"""After neither protocol answered, or the gateway refused: the next attempt."""
MIN_RENEW_S = 10.0
"""A mapping is renewed at half its lifetime, but never more often than this."""
MIN_LIFETIME_S = 1
MAX_LIFETIME_S = 86400
PCP_BYTES = 60
"""A PCP MAP request or response: 24-byte header, 36-byte MAP payload (no options)."""
PMP_ADDRESS_REPLY = 12
PMP_MAP_REPLY = 16
MAX_REPLY = 1100
"""Longest datagram read from the gateway (a PCP message is at most 1100 bytes)."""

PCP_RESULTS = {1: "unsupported version", 2: "not authorized", 3: "malformed request",
               4: "unsupported opcode", 5: "unsupported option", 6: "malformed option",
               7: "network failure", 8: "no resources", 9: "unsupported protocol",
               10: "user quota exceeded", 11: "cannot provide the external port",
               12: "address mismatch", 13: "excessive remote peers"}
PMP_RESULTS = {1: "unsupported version", 2: "not authorized", 3: "network failure",
               4: "out of resources", 5: "unsupported opcode"}


@dataclass(frozen=True, slots=True)
class MappingChanged:
    """The gateway maps ``external`` to our socket (None: no mapping any more)."""

    external: Addr | None
    protocol: str
    """"pcp" or "nat-pmp"."""
    lifetime_s: int = 0
    reason: str = ""
    """Why there is no mapping (when ``external`` is None)."""


def _v6(ip: str) -> bytes:
    """16 bytes of an address, IPv4 as IPv4-mapped IPv6 (PCP's encoding)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _from_v6(raw: bytes) -> str:
    """An address from 16 bytes, an IPv4-mapped one as plain IPv4."""
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


def usable_external(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return not (addr.is_unspecified or addr.is_multicast or addr.is_loopback
                or addr.is_link_local or ip == "255.255.255.255")


def pcp_map_request(client_ip: str, internal_port: int, external_port: int,
                    lifetime_s: int, nonce: bytes) -> bytes:
    """A PCP MAP request for UDP (RFC 6887 §7.1, §11.1), no options."""
    header = struct.pack("!BBHI16s", PCP_VERSION, PCP_MAP, 0, lifetime_s, _v6(client_ip))
    zeros = _v6("0.0.0.0") if ":" not in client_ip else bytes(16)
    payload = struct.pack("!12sB3xHH16s", nonce, UDP, internal_port, external_port, zeros)
    return header + payload


def pmp_address_request() -> bytes:
    return struct.pack("!BB", PMP_VERSION, PMP_ADDRESS)


def pmp_map_request(internal_port: int, external_port: int, lifetime_s: int) -> bytes:
    return struct.pack("!BBHHHI", PMP_VERSION, PMP_MAP_UDP, 0, internal_port,
                       external_port, lifetime_s)


class PortMapper:
    """One UDP mapping for ``internal_ip:internal_port``, kept while the transport runs.

    Drive it with :meth:`start`, :meth:`receive` (each datagram from the gateway),
    :meth:`handle_timer` (once :meth:`next_timer` has passed) and :meth:`stop`; then send
    :meth:`datagrams` to the gateway and take :meth:`events`.
    """

    def __init__(self, internal_ip: str, internal_port: int, lifetime_s: int = 7200,
                 nonce: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.internal_ip = internal_ip
        self.internal_port = internal_port
        self.lifetime_s = max(MIN_LIFETIME_S, min(int(lifetime_s), MAX_LIFETIME_S))
        self.nonce = nonce(12)
        self.protocol = "pcp"
        self.state = "idle"
        """idle, requesting, mapped, waiting (to try again), stopped."""
        self.external: Addr | None = None
        self.counters: Counter[str] = Counter()
        self._pmp_ip: str | None = None
        self._pmp_port: int | None = None
        self._pmp_lifetime = 0
        self._tries = 0
        self._next: float | None = None
        self._out: list[bytes] = []
        self._events: list[MappingChanged] = []
        self._suggest = internal_port

    # -- inputs ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.protocol = "pcp"
        self._request(now)

    def stop(self, now: float) -> None:
        """Ask the gateway to delete the mapping (once, no answer awaited); stop."""
        if self.state == "stopped":
            return
        if self.external is not None or self.state == "requesting":
            self.counters["portmap_deletes"] += 1
            if self.protocol == "pcp":
                self._out.append(pcp_map_request(self.internal_ip, self.internal_port, 0, 0,
                                                 self.nonce))
            else:
                self._out.append(pmp_map_request(self.internal_port, 0, 0))
        self.state, self._next = "stopped", None
        if self.external is not None:
            self._lose("the transport stopped")

    def handle_timer(self, now: float) -> None:
        if self._next is None or now < self._next:
            return
        if self.state == "mapped":  # renew (same nonce: the same mapping)
            self.counters["portmap_renewals"] += 1
            self._request(now)
        elif self.state == "waiting":
            self.protocol = "pcp"
            self._request(now)
        elif self.state == "requesting":
            if self._tries < TRIES:
                self._send(now)
            elif self.protocol == "pcp":
                self.protocol = "nat-pmp"  # no PCP answer: perhaps a NAT-PMP-only gateway
                self._request(now)
            else:
                self.counters["portmap_timeouts"] += 1
                self._give_up(now, "the gateway did not answer (no PCP or NAT-PMP there)")

    def receive(self, data: bytes, now: float) -> None:
        """A datagram from the gateway's port 5351."""
        if self.state != "requesting" or len(data) > MAX_REPLY or len(data) < 2:
            self.counters["portmap_ignored"] += 1
            return
        if data[0] == PCP_VERSION and self.protocol == "pcp":
            self._pcp_reply(data, now)
        elif data[0] == PMP_VERSION:
            self._pmp_reply(data, now)
        else:
            self.counters["portmap_ignored"] += 1

    # -- outputs -----------------------------------------------------------------------------

    def datagrams(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[MappingChanged]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        return self._next

    # -- internals ---------------------------------------------------------------------------

    def _request(self, now: float) -> None:
        self.state = "requesting"
        self._tries = 0
        self._pmp_ip = self._pmp_port = None
        self._send(now)

    def _send(self, now: float) -> None:
        self._tries += 1
        self.counters["portmap_requests"] += 1
        if self.protocol == "pcp":
            self._out.append(pcp_map_request(self.internal_ip, self.internal_port,
                                             self._suggest, self.lifetime_s, self.nonce))
        else:
            if self._pmp_ip is None:
                self._out.append(pmp_address_request())
            if self._pmp_port is None:
                self._out.append(pmp_map_request(self.internal_port, self._suggest,
                                                 self.lifetime_s))
        self._next = now + FIRST_WAIT_S * 2 ** (self._tries - 1)

    def _pcp_reply(self, data: bytes, now: float) -> None:
        if len(data) < PCP_BYTES or data[1] != 0x80 | PCP_MAP:
            self.counters["portmap_ignored"] += 1
            return
        result, lifetime = data[3], struct.unpack_from("!I", data, 4)[0]
        nonce, proto, internal, port, raw_ip = struct.unpack_from("!12sB3xHH16s", data, 24)
        if nonce != self.nonce or proto != UDP or internal != self.internal_port:
            self.counters["portmap_ignored"] += 1  # not the answer to our request
            return
        if result == 1:  # a NAT-PMP-only gateway would answer in NAT-PMP; a PCPv1 one so
            self.protocol = "nat-pmp"
            self._request(now)
            return
        if result != 0:
            self.counters["portmap_refused"] += 1
            self._give_up(now, f"PCP: {PCP_RESULTS.get(result, f'result {result}')}")
            return
        self._mapped(_from_v6(raw_ip), port, lifetime, now)

    def _pmp_reply(self, data: bytes, now: float) -> None:
        op = data[1]
        if len(data) < 4:
            self.counters["portmap_ignored"] += 1
            return
        result = struct.unpack_from("!H", data, 2)[0]
        if result == 1 and self.protocol == "pcp":
            # a NAT-PMP gateway answering our PCP request: "unsupported version"
            self.protocol = "nat-pmp"
            self._request(now)
            return
        if self.protocol != "nat-pmp" or op not in (0x80 | PMP_ADDRESS, 0x80 | PMP_MAP_UDP):
            self.counters["portmap_ignored"] += 1
            return
        if result != 0:
            self.counters["portmap_refused"] += 1
            self._give_up(now, f"NAT-PMP: {PMP_RESULTS.get(result, f'result {result}')}")
            return
        if op == 0x80 | PMP_ADDRESS and len(data) >= PMP_ADDRESS_REPLY:
            self._pmp_ip = str(ipaddress.IPv4Address(data[8:12]))
        elif op == 0x80 | PMP_MAP_UDP and len(data) >= PMP_MAP_REPLY:
            internal, port, lifetime = struct.unpack_from("!HHI", data, 8)
            if internal != self.internal_port:
                self.counters["portmap_ignored"] += 1
                return
            self._pmp_port, self._pmp_lifetime = port, lifetime
        else:
            self.counters["portmap_ignored"] += 1
            return
        if self._pmp_ip is not None and self._pmp_port is not None:
            self._mapped(self._pmp_ip, self._pmp_port, self._pmp_lifetime, now)

    def _mapped(self, ip: str, port: int, lifetime: int, now: float) -> None:
        if not usable_external(ip) or not 0 < port < 65536 or lifetime <= 0:
            self.counters["portmap_refused"] += 1
            self._give_up(now, f"the gateway gave an unusable mapping {ip}:{port} "
                          f"for {lifetime} s")
            return
        lifetime = min(lifetime, MAX_LIFETIME_S)
        external = (ip, port)
        self._suggest = port  # ask for the same one at renewal
        self.state = "mapped"
        self._next = now + max(lifetime / 2, MIN_RENEW_S)
        if external != self.external:
            self.counters["portmap_mapped"] += 1
            self.external = external
            self._events.append(MappingChanged(external, self.protocol, lifetime))

    def _give_up(self, now: float, reason: str) -> None:
        self.state = "waiting"
        self._next = now + RETRY_S
        self._suggest = self.internal_port
        if self.external is not None:
            self._lose(reason)
        else:
            self._events.append(MappingChanged(None, self.protocol, 0, reason))

    def _lose(self, reason: str) -> None:
        self.external = None
        self.counters["portmap_lost"] += 1
        self._events.append(MappingChanged(None, self.protocol, 0, reason))
