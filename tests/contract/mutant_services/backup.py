"""Deliberately wrong implementations of the backup role (see __init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.backup import core, shell
from shared import envelope
from shared.core import Action, Fail, Request
from shared.wire import ErrorCode


def ignores_signatures() -> None:
    """Envelopes are held without their sender's signature being checked."""
    core.decode = lambda raw: _unverified(envelope.decode(raw))


def _unverified(env: envelope.Envelope) -> Any:
    class Unverified:
        def __getattr__(self, name: str) -> Any:
            return getattr(env, name)

        def verify(self) -> None:
            return None

    return Unverified()


def replies_before_storing() -> None:
    """backup.hold is answered before the copy is committed (the store commits at the next
    purge, every 5 s)."""
    real_timer = core.BackupCore.on_timer

    def flush(self: core.BackupCore, now: float) -> list[Action]:
        held, self._held = self._held, []
        return held

    def on_timer(self: core.BackupCore, now: float) -> list[Action]:
        self.store.commit()
        return real_timer(self, now)

    core.BackupCore.flush = flush  # type: ignore[method-assign]
    core.BackupCore.on_timer = on_timer  # type: ignore[method-assign]


def wrong_error_codes() -> None:
    """A forged envelope is refused with `invalid` instead of `bad_signature`."""
    real = core.BackupCore._hold

    def hold(self: core.BackupCore, req: Request) -> list[Action]:
        return [Fail(a.ctx, ErrorCode.INVALID, a.message)
                if isinstance(a, Fail) and a.code == ErrorCode.BAD_SIGNATURE else a
                for a in real(self, req)]

    core.BackupCore._hold = hold  # type: ignore[method-assign]


def uncounted_refusals() -> None:
    """Refusals are answered but not counted."""
    core.BackupCore._refuse = lambda self, req, why, code, text: [  # type: ignore[method-assign]
        Fail(req.ctx, code, text)]


def deletes_on_any_ack() -> None:
    """Any signed delivery ACK for a copy ends it, whoever signed it."""
    real = core.BackupCore._confirm

    def confirm(self: core.BackupCore, raw: bytes) -> Any:
        refused, origin = real(self, raw)
        if refused is not None and refused[0] == "confirmation_not_recipient":
            ack = envelope.decode(raw)
            payload = envelope.AckPayload.decode(ack.payload)
            h = self.store.get(ack.to, payload.original_id)
            if h is not None:
                self._drop(h.origin, h.id)
                self.store.put_receipt(ack.to, payload.original_id, h.recipient,
                                       h.expires_ms, raw)
                return None, ack.to
        return refused, origin

    core.BackupCore._confirm = confirm  # type: ignore[method-assign]


def never_passes_on() -> None:
    """A node that is back is given nothing (router.path is ignored)."""
    core.BackupCore._push = lambda self, node, now: []  # type: ignore[method-assign]


def keeps_expired() -> None:
    """Copies are kept past their expiry."""
    real = core.BackupCore.on_timer

    def on_timer(self: core.BackupCore, now: float) -> list[Action]:
        self._next_purge = float("inf")
        return real(self, now)

    core.BackupCore.on_timer = on_timer  # type: ignore[method-assign]


def reads_the_key() -> None:
    """The backup service reads identity.key at start."""
    real = shell.BackupService.build_core

    def build_core(self: shell.BackupService, context: Any) -> Any:
        (context.data_dir / "identity.key").read_bytes()
        return real(self, context)

    shell.BackupService.build_core = build_core  # type: ignore[method-assign]


def none() -> None:
    """The real service (the control)."""


MUTANTS: dict[str, Callable[[], None]] = {f.__name__: f for f in (
    ignores_signatures, replies_before_storing, wrong_error_codes, uncounted_refusals,
    deletes_on_any_ack, never_passes_on, keeps_expired, reads_the_key, none)}
