"""The transport's UDP port is the node's address (issue 17): a taken port stops the start
with a message saying what to do, unless ``port_fallback`` lets it take the next free one,
which is counted (``port_fallbacks``, shown by ``tom node status``)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.transport.shell import TransportService
from shared import endpoints as ep
from shared.service import ServiceContext, StartupError
from tom.node import pick_port


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port below the ephemeral range (where port 0 binds land), held by another socket:
    the port after it is not what "any free port" would give."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = random.randrange(10_000, low - 1_000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", pick_port("127.0.0.1", start)[0]))
        yield int(s.getsockname()[1])


def service(tmp_path: Path, port: int, fallback: bool) -> TransportService:
    context = ServiceContext(tmp_path, ep.ipc(tmp_path / "run"), {"transport": {
        "host": "127.0.0.1", "port": port, "port_fallback": fallback}}, env={})
    return TransportService(context)


def test_a_taken_port_stops_the_transport_with_what_to_do(tmp_path: Path,
                                                          held_port: int) -> None:
    svc = service(tmp_path, held_port, fallback=False)
    with pytest.raises(StartupError, match=rf"UDP port {held_port} on 127.0.0.1 is taken.*"
                       r"\[transport\] port in node.toml"):
        svc._open("127.0.0.1", held_port)
    assert not svc.stats["port_fallbacks"]


def test_port_fallback_takes_the_next_free_port_and_counts_it(tmp_path: Path,
                                                              held_port: int) -> None:
    svc = service(tmp_path, held_port, fallback=True)
    expected = pick_port("127.0.0.1", held_port + 1)[0]
    sock = svc._open("127.0.0.1", held_port)
    try:
        assert sock.getsockname()[1] == expected
        assert svc.stats["port_fallbacks"] == 1
    finally:
        sock.close()


def test_a_free_port_is_taken_as_configured(tmp_path: Path, held_port: int) -> None:
    svc = service(tmp_path, 0, fallback=False)
    sock = svc._open("127.0.0.1", 0)
    free = sock.getsockname()[1]
    sock.close()
    svc = service(tmp_path, free, fallback=True)
    sock = svc._open("127.0.0.1", free)
    try:
        assert sock.getsockname()[1] == free and not svc.stats["port_fallbacks"]
    finally:
        sock.close()
