"""Deliberately wrong implementations of the groups role (see __init__.py): the real service
with one rule broken by a patch applied before it starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.groups import core, hub, member, shell, store
from services.groups.context import Context
from shared.core import Call, Fail, Reply
from shared.envelope import GroupCiphertext
from shared.wire import ErrorCode
from shared.wire.messages import groups as gm
from shared.wire.messages import router as rm


def orders_non_members() -> None:
    """The hub orders a message whoever sends it."""
    real = hub.Hub.message

    def message(self: hub.Hub, sender: bytes, g: Any, mid: bytes, epoch: int, ct: bytes,
                now: float) -> None:
        if sender not in g.members:
            self.append(g, "msg", sender, mid, epoch, ct, now=now)
            return
        real(self, sender, g, mid, epoch, ct, now)

    hub.Hub.message = message  # type: ignore[method-assign]


def ignores_signatures() -> None:
    """The hub orders a member's message without verifying its signature."""

    class Unverified(GroupCiphertext):
        def verify(self) -> None:
            return None

    hub.GroupCiphertext = Unverified  # type: ignore[misc]


def forgets_cursor() -> None:
    """The inbox cursor is kept in memory only: after a restart it reads from the start."""

    def advance(self: core.GroupsCore, seq: int) -> None:
        self._cursor = seq

    core.GroupsCore._advance = advance  # type: ignore[method-assign]


def replies_before_storing() -> None:
    """groups.send is answered as soon as it arrives, before the message is sealed and
    stored (its reply after storing is dropped)."""
    real_send, real_answered = core.GroupsCore._send, core.GroupsCore._answered

    def send(self: core.GroupsCore, req: Any, body: gm.Send, now: float) -> None:
        n = len(self.ctx.actions)
        real_send(self, req, body, now)
        for a in self.ctx.actions[n:]:
            if isinstance(a, Call) and isinstance(a.token, tuple) and a.token[0] == "seal":
                self.ctx.actions.append(Reply(req.ctx, gm.SendReply(id=a.token[3])))

    def answered(self: core.GroupsCore, token: tuple[Any, ...], event: Any,
                 now: float) -> None:
        real_answered(self, token, event, now)
        if token[0] == "seal":
            self.ctx.held = [a for a in self.ctx.held
                             if not (isinstance(a, Reply) and a.ctx == token[1])]

    core.GroupsCore._send = send  # type: ignore[method-assign]
    core.GroupsCore._answered = answered  # type: ignore[method-assign]


def wrong_error_code() -> None:
    """A text over 16 KiB is refused with `invalid` instead of `too_large`."""
    real = core.GroupsCore._send

    def send(self: core.GroupsCore, req: Any, body: gm.Send, now: float) -> None:
        n = len(self.ctx.actions)
        real(self, req, body, now)
        self.ctx.actions[n:] = [Fail(a.ctx, ErrorCode.INVALID, a.message)
                                if isinstance(a, Fail) and a.code == ErrorCode.TOO_LARGE else a
                                for a in self.ctx.actions[n:]]

    core.GroupsCore._send = send  # type: ignore[method-assign]


def admits_uninvited() -> None:
    """The hub admits anyone to an invite-only group."""
    store.Store.is_invited = lambda self, gid, node, now_ms: True  # type: ignore[method-assign]


def keys_in_the_clear() -> None:
    """Sender keys are handed to the router unencrypted (`encrypt=False`)."""
    real = Context.send

    def send(self: Context, to: bytes, kind: str, gid: str, *args: Any,
             lifetime_s: float | None = None) -> None:
        n = len(self.held)  # (payloads leave after the commit)
        real(self, to, kind, gid, *args, lifetime_s=lifetime_s)
        if kind == "key":
            self.held[n:] = [Call(a.role, rm.Send(to=a.body.to, groups=True, encrypt=False),
                                  a.token, blobs=a.blobs)
                             if isinstance(a, Call) and isinstance(a.body, rm.Send) else a
                             for a in self.held[n:]]

    Context.send = send  # type: ignore[method-assign]


def trusts_any_sender_of_entries() -> None:
    """A member applies log entries from any node, not only from its group's hub."""
    member.Member.authorised = lambda self, *args: True  # type: ignore[method-assign]


def uncounted_garbage() -> None:
    """Malformed payloads are dropped without being counted."""
    real = Context.count

    def count(self: Context, what: str) -> None:
        if what != "rejected_malformed":
            real(self, what)

    Context.count = count  # type: ignore[method-assign]


def reads_the_key() -> None:
    """The groups service reads identity.key at start (it still asks crypto to seal)."""
    real = shell.GroupsService.build_core

    def build_core(self: shell.GroupsService, context: Any) -> Any:
        (context.data_dir / "identity.key").read_bytes()
        return real(self, context)

    shell.GroupsService.build_core = build_core  # type: ignore[method-assign]


def none() -> None:
    """The real service (the control)."""


MUTANTS: dict[str, Callable[[], None]] = {f.__name__: f for f in (
    orders_non_members, ignores_signatures, forgets_cursor, replies_before_storing,
    wrong_error_code, admits_uninvited, keys_in_the_clear, trusts_any_sender_of_entries,
    uncounted_garbage, reads_the_key, none)}
