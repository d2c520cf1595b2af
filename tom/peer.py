"""PEER arguments of the `tom` commands: a node id (64 hex or 52 base32 characters),
optionally ``ID@host:port`` (``ID@[v6]:port``) to introduce the node to the router first."""

from __future__ import annotations

from dataclasses import dataclass

from shared import nodeid

from .node import UsageError


@dataclass(frozen=True)
class Peer:
    node_id: bytes
    host: str = ""
    port: int = 0

    @property
    def address(self) -> tuple[str, int] | None:
        return (self.host, self.port) if self.host else None


def parse_peer(text: str) -> Peer:
    """``ID`` or ``ID@host:port`` (``ID@[v6]:port`` for IPv6); raises UsageError (a
    NodeError: `tom` exits 64)."""
    ident, at, addr = text.strip().partition("@")
    try:
        node_id = nodeid.parse(ident)
    except nodeid.InvalidNodeId as e:
        raise UsageError(f"not a node id: {e}") from None
    if not at:
        return Peer(node_id)
    host, colon, port_text = addr.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not colon or not host or not 1 <= port <= 65535:
        raise UsageError(f"{addr!r}: expected host:port after '@' (port 1-65535)")
    return Peer(node_id, host, port)
