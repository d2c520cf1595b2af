"""Deliberately wrong implementations of the crypto role (see __init__.py)."""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from typing import Any

import msgspec

from services.crypto import core, keyfile, policy
from shared import service
from shared.wire import ErrorCode


def opens_forgeries() -> None:
    """crypto.open decrypts without verifying the signature first."""

    def open_(self: core.Identity, raw: bytes) -> tuple[Any, bytes]:
        env = core.decode(raw)
        if env.to != self.node_id:
            raise core.WrongRecipient("the envelope is addressed to another node")
        if not env.encrypted:
            return env, env.payload
        enc = core.EncryptedPayload.decode(env.payload)
        key = core.e2e_key(self._key.x25519(enc.ephemeral_pk), enc.ephemeral_pk,
                           self.x_public)
        return env, core.p.xchacha_open(key, enc.nonce, enc.ciphertext, env.aad())

    core.Identity.open = open_  # type: ignore[method-assign]


def signs_for_others() -> None:
    """crypto.sign signs an envelope whatever its ``from``."""
    core.Identity.sign = lambda self, env: env.with_signature(  # type: ignore[method-assign]
        self._key.sign(env.signing_bytes()))


def acks_without_proof() -> None:
    """The signing policy lets an ACK or read receipt through without the envelope it
    acknowledges."""
    policy.check_ack = lambda *args, **kw: None


def signs_any_timestamp() -> None:
    """This node's envelopes are signed whatever their timestamp."""
    policy.check_timestamp = lambda *args, **kw: None


def wrong_error_codes() -> None:
    """An envelope for another node is answered `decrypt_failed`, not `wrong_recipient`."""
    core._ERRORS[:] = [(e, ErrorCode.DECRYPT_FAILED if c == ErrorCode.WRONG_RECIPIENT else c)
                       for e, c in core._ERRORS]


def uncounted_rejections() -> None:
    """Refused envelopes are answered but not counted (`rejected_*` never moves)."""
    real = core.CryptoCore.counters
    core.CryptoCore.counters = lambda self: {  # type: ignore[method-assign]
        k: v for k, v in real(self).items() if not k.startswith("rejected_")}


def loose_key_file() -> None:
    """The key file is used whatever its mode."""
    real = keyfile.os.fstat

    class Strict:
        def __getattr__(self, name: str) -> Any:
            return getattr(keyfile.os, name)

        @staticmethod
        def fstat(fd: int) -> Any:
            st = real(fd)
            return type("Stat", (), {"st_mode": st.st_mode & ~0o077, "st_uid": st.st_uid,
                                     "st_size": st.st_size})()

    keyfile.os = Strict()  # type: ignore[assignment]


def no_key_lock() -> None:
    """The key file is read and held, but not locked: two crypto services can sign at once."""
    keyfile.fcntl = type("NoLock", (), {"flock": staticmethod(lambda fd, op: None),  # type: ignore[assignment]
                                        "LOCK_EX": fcntl.LOCK_EX, "LOCK_NB": fcntl.LOCK_NB})


def frozen_status() -> None:
    """sys.status answers, but its frame counters never move."""
    real = service.Service.status

    def status(self: service.Service) -> Any:
        return msgspec.structs.replace(real(self), frames_in=0, frames_out=0)

    service.Service.status = status  # type: ignore[method-assign]


def none() -> None:
    """The real service (the control)."""


MUTANTS: dict[str, Callable[[], None]] = {f.__name__: f for f in (
    opens_forgeries, signs_for_others, acks_without_proof, signs_any_timestamp,
    wrong_error_codes, uncounted_rejections, loose_key_file, no_key_lock, frozen_status, none)}
