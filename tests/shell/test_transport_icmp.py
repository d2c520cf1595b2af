"""The transport shell's reading of ICMP errors (Linux ``IP_RECVERR``) on a real UDP socket:
a datagram to a loopback port where nothing listens comes back as "nothing listening at"
with the datagram quoted, which is what lets a dial fail at once (issue 17); and what it
makes of the resolver's failures."""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys

import pytest

from services.transport.shell import QUOTE_BYTES, icmp_reason, recv_errors, resolve_error

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
