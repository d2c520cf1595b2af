"""Deliberately wrong implementations of the transport role (see __init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.transport import core, endpoint, shell
from shared.core import Action, Call


def accepts_any_binding() -> None:
    """A peer's binding and proof are taken without checking their signatures."""
    endpoint.verify = lambda *args, **kw: None  # the proof
    endpoint.TransportBinding.verify = lambda self, *a, **kw: None  # type: ignore[method-assign]


def trusts_the_address() -> None:
    """Whoever answers at the address dialled is taken for the node asked for."""
    real = endpoint.Endpoint._authenticate

    def authenticate(self: endpoint.Endpoint, conn: Any, data: bytes, now: float) -> None:
        conn.expect = None
        real(self, conn, data, now)

    endpoint.Endpoint._authenticate = authenticate  # type: ignore[method-assign]


def reorders_deliveries() -> None:
    """The envelopes that arrive together (one datagram carries several) go to the router
    last first."""
    real = core.TransportCore._deliver

    def deliver(self: core.TransportCore, now: float) -> list[Action]:
        return real(self, now)[::-1]

    core.TransportCore._deliver = deliver  # type: ignore[method-assign]


def delivers_nothing() -> None:
    """Envelopes from peers are read and dropped; the router never hears of them."""
    real = core.TransportCore._deliver

    def deliver(self: core.TransportCore, now: float) -> list[Action]:
        actions = real(self, now)
        kept = [a for a in actions if not (isinstance(a, Call) and a.role == "router")]
        self._delivering -= len(actions) - len(kept)
        return kept

    core.TransportCore._deliver = deliver  # type: ignore[method-assign]


def uncounted_auth_failures() -> None:
    """A peer that fails authentication is closed but not counted."""
    real = endpoint.Endpoint._fail

    def fail(self: endpoint.Endpoint, conn: Any, reason: str,
             code: int = endpoint.CLOSE_AUTH_FAILED, count: str = "auth_failures") -> None:
        real(self, conn, reason, code, count)
        if count == "auth_failures":
            self.counters[count] -= 1

    endpoint.Endpoint._fail = fail  # type: ignore[method-assign]


def reads_the_key() -> None:
    """The transport reads identity.key itself at start (it still has crypto sign its
    binding)."""
    real = shell.TransportService.build_core

    def build_core(self: shell.TransportService, context: Any) -> Any:
        (context.data_dir / "identity.key").read_bytes()
        return real(self, context)

    shell.TransportService.build_core = build_core  # type: ignore[method-assign]


def none() -> None:
    """The real service (the control)."""


MUTANTS: dict[str, Callable[[], None]] = {f.__name__: f for f in (
    accepts_any_binding, trusts_the_address, reorders_deliveries, delivers_nothing,
    uncounted_auth_failures, reads_the_key, none)}
