"""The transport shell's reading of ICMP errors (Linux ``IP_RECVERR``) on a real UDP socket:
a datagram to a loopback port where nothing listens comes back as "nothing listening at"
with the datagram quoted, which is what lets a dial fail at once (issue 17); and what it
makes of the resolver's failures."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from services.transport.shell import (
    QUOTE_BYTES,
    TransportService,
    icmp_reason,
    recv_errors,
    resolve_error,
)
from shared import endpoints as ep
from shared.bus import BusClient
from shared.runner import loop_factory
from shared.service import ServiceContext
from shared.wire.messages.sys import Status, StatusReply

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR is Linux's")


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there now


@linux
def test_a_datagram_to_a_closed_port_comes_back_as_nothing_listening() -> None:
    port = closed_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        assert recv_errors(s)
        packet = b"\xc0\x00\x00\x00\x01\x08" + b"D" * 8 + b"rest of an Initial"
        s.sendto(packet, ("127.0.0.1", port))
        assert select.select([s], [], [], 5.0)[0], "no ICMP error within 5 s"
        with pytest.raises(ConnectionRefusedError):  # reported once on the socket...
            s.recvfrom(2048)
        quoted, ancillary, _, addr = s.recvmsg(QUOTE_BYTES, 512, socket.MSG_ERRQUEUE)
    # ... and queued with the address and the datagram it concerns
    assert addr[:2] == ("127.0.0.1", port) and quoted == packet
    assert icmp_reason(ancillary, addr) == f"nothing listening at 127.0.0.1:{port}"


def extended_error(err: int, origin: int) -> list[tuple[int, int, bytes]]:
    return [(socket.IPPROTO_IP, 11, struct.pack("IBBBBII", err, origin, 3, 3, 0, 0, 0)
             + b"\x00" * 16)]


@pytest.mark.parametrize("err,origin,expected", [
    (errno.ECONNREFUSED, 2, "nothing listening at 10.0.0.2:4433"),
    (errno.EHOSTUNREACH, 2, "host 10.0.0.2:4433 is unreachable"),
    (errno.ENETUNREACH, 2, "no route to the network of 10.0.0.2:4433"),
    (errno.EMSGSIZE, 2, ""),  # path MTU: not a reason to give up a dial
    (errno.ECONNREFUSED, 1, ""),  # a local error, not the network's word
])
def test_what_each_error_says(err: int, origin: int, expected: str) -> None:
    assert icmp_reason(extended_error(err, origin), ("10.0.0.2", 4433)) == expected
    assert icmp_reason([(0, 0, b"short")], ("10.0.0.2", 4433)) == ""


def test_a_name_that_does_not_exist_is_final_other_resolver_failures_may_pass() -> None:
    gone = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert resolve_error(gone) == ("no such host", False)
    assert resolve_error(again) == ("Temporary failure in name resolution", True)
    assert resolve_error(UnicodeError("label too long")) == ("label too long", False)
    assert resolve_error(IndexError()) == ("IndexError", False)  # no address at all


@linux
@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_the_transport_keeps_reading_its_socket_after_an_icmp_error(
        tmp_path: Path, event_loop: str) -> None:
    """An ICMP error makes the socket report POLLERR until its error queue is read. libuv
    (uvloop) answers POLLERR on a watched descriptor by stopping the watch for good, so the
    transport read nothing more after the first "port unreachable": under uvloop, nodes
    behind symmetric NATs, whose punches meet closed ports, stopped hearing anyone; and the
    port-mapping socket (connected to a gateway where nothing may listen) stopped hearing the
    gateway. Under both loops the transport must go on reading: each error of three is read
    (and counted) only while its socket is still watched."""
    factory = loop_factory(event_loop)
    loop = factory() if factory is not None else asyncio.new_event_loop()
    context = ServiceContext(tmp_path, ep.ipc(tmp_path / "run"), {"transport": {
        "host": "0.0.0.0", "port": 0, "port_mapping_gateway": "127.0.0.1"}}, env={})
    zctx = zmq.Context()
    svc = TransportService(context, zctx=zctx)
    ready = threading.Event()
    t = threading.Thread(target=loop.run_until_complete, args=(svc.run(ready.set),),
                         daemon=True)
    t.start()
    client = BusClient(context.endpoints, timeout_s=5)

    def counters() -> dict[str, int]:
        status = client.request("transport", Status())
        assert isinstance(status, StatusReply)
        return status.counters

    def until(what: str, n: int) -> None:
        deadline = time.monotonic() + 10
        while counters().get(what, 0) < n:
            assert time.monotonic() < deadline, f"{what} stayed below {n}: {counters()}"
            time.sleep(0.02)

    try:
        assert ready.wait(10)
        assert svc._recverr
        for n in range(1, 4):
            svc.udp.sendto(b"\x00probe", ("127.0.0.1", closed_port()))
            until("icmp_errors", n)
        # nothing listens on 127.0.0.1:5351 (the lab's gateways run in namespaces): the PCP
        # tries (0.25, 0.5, 1 s apart) each come back as "port unreachable"
        until("portmap_unreachable", 3)
    finally:
        client.close()
        loop.call_soon_threadsafe(svc.request_stop)
        t.join(10)
        assert not t.is_alive()
        loop.close()
        zctx.destroy(linger=0)
