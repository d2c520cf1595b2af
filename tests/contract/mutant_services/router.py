"""Deliberately wrong implementations of the router role (see __init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.router import core, incoming, outgoing, relay, shell
from services.router.context import DELIVERED, Context
from shared import envelope
from shared.core import Action, Call, Fail, Reply, Request
from shared.wire import ErrorCode
from shared.wire.messages import router as rm
from shared.wire.messages import transport as tm


def routes_nothing() -> None:
    """router.send stores the message and answers, but nothing ever leaves."""
    outgoing.Outgoing.attempt = lambda self, msg, now: []  # type: ignore[method-assign]


def ignores_via() -> None:
    """Messages go straight to their recipient, whatever path was chosen and signed."""
    real = outgoing.Outgoing.attempt

    def attempt(self: outgoing.Outgoing, msg: Any, now: float) -> list[Action]:
        return [Call(a.role, tm.Send(peer=msg.to), a.token, a.timeout_s, a.blobs)
                if isinstance(a, Call) and isinstance(a.body, tm.Send) else a
                for a in real(self, msg, now)]

    outgoing.Outgoing.attempt = attempt  # type: ignore[method-assign]


def commits_later() -> None:
    """The store is committed on the next tick (at most 1 s later), not before the replies
    that promise it is stored."""
    real_flush, real_timer = core.RouterCore.flush, core.RouterCore.on_timer

    def flush(self: core.RouterCore, now: float) -> list[Action]:
        held, self.ctx.held = self.ctx.held, []
        return held

    def on_timer(self: core.RouterCore, now: float) -> list[Action]:
        self.ctx.store.commit()
        return real_timer(self, now)

    core.RouterCore.flush = flush  # type: ignore[method-assign]
    core.RouterCore.on_timer = on_timer  # type: ignore[method-assign]
    assert real_flush


def ignores_signatures() -> None:
    """The router takes every envelope's signature for good (crypto.open still checks the
    chats addressed to this node)."""
    envelope.Envelope.verify = lambda self: None  # type: ignore[method-assign]


def no_re_ack() -> None:
    """A duplicate of a delivered chat is dropped silently, not acknowledged again."""
    incoming.Incoming._ack = lambda self, env, holder=None: []  # type: ignore[method-assign]


def never_retries() -> None:
    """A message is sent once; without an ACK it is never sent again."""
    outgoing.backoff = lambda attempts: 1e9


def retries_without_backoff() -> None:
    """A message without an ACK is sent again every 5 s, forever at the same pace."""
    outgoing.backoff = lambda attempts: outgoing.RETRY_FIRST_S


def trusts_any_ack() -> None:
    """A delivery ACK signed by anyone marks the message delivered."""
    real = incoming.Incoming._on_ack

    def on_ack(self: incoming.Incoming, env: envelope.Envelope, now: float) -> list[Action]:
        try:
            ack = envelope.AckPayload.decode(env.payload)
        except envelope.EnvelopeError:
            return real(self, env, now)
        msg = self.outgoing.outgoing(ack.original_id)
        if msg is not None and ack.ack_type == envelope.AckType.RECIPIENT_RECEIVED \
                and env.sender != msg.to and self.ctx.verified(env):
            return self.outgoing.advance(msg, DELIVERED)
        return real(self, env, now)

    incoming.Incoming._on_ack = on_ack  # type: ignore[method-assign]


def open_relay() -> None:
    """A chat for a connected node is passed on whoever sent it and whatever its via."""
    real = incoming.Incoming.deliver

    def deliver(self: incoming.Incoming, req: Request, peer: bytes,
                now: float) -> list[Action]:
        ctx = self.ctx
        try:
            env = envelope.decode(req.blobs[0])
        except (envelope.EnvelopeError, IndexError):
            return real(self, req, peer, now)
        nxt = ctx.topo.peers.get(env.to) if ctx.topo is not None else None
        if env.to != ctx.node_id and ctx.node_id not in env.via and nxt is not None \
                and nxt.connected and env.msg_type == envelope.MessageType.CHAT:
            return [Reply(req.ctx, rm.DeliverReply()),
                    Call("transport", tm.Send(peer=env.to), ("fwd",), blobs=req.blobs)]
        return real(self, req, peer, now)

    incoming.Incoming.deliver = deliver  # type: ignore[method-assign]


def relays_from_any_hop() -> None:
    """An envelope naming this node in its via is relayed whichever peer delivered it."""
    real = relay.Relay.forward

    def forward(self: relay.Relay, env: envelope.Envelope, peer: bytes,
                now: float) -> list[Action]:
        assert self.ctx.node_id is not None
        pos = env.via.index(self.ctx.node_id)
        return real(self, env, env.via[pos - 1] if pos else env.sender, now)

    relay.Relay.forward = forward  # type: ignore[method-assign]


def wrong_error_codes() -> None:
    """A payload over 200 KiB is refused with `invalid` instead of `too_large`."""
    real = outgoing.Outgoing.send

    def send(self: outgoing.Outgoing, req: Request, now: float) -> list[Action]:
        return [Fail(a.ctx, ErrorCode.INVALID, a.message)
                if isinstance(a, Fail) and a.code == ErrorCode.TOO_LARGE else a
                for a in real(self, req, now)]

    outgoing.Outgoing.send = send  # type: ignore[method-assign]


def counters_frozen() -> None:
    """Rejected envelopes are rejected, but never counted."""
    Context.reject = lambda self, reason: None  # type: ignore[method-assign]


def reads_the_key() -> None:
    """The router reads identity.key itself at start (it still asks crypto to sign)."""
    real = shell.RouterService.build_core

    def build_core(self: shell.RouterService, context: Any) -> Any:
        (context.data_dir / "identity.key").read_bytes()
        return real(self, context)

    shell.RouterService.build_core = build_core  # type: ignore[method-assign]


def none() -> None:
    """The real service (the control)."""


MUTANTS: dict[str, Callable[[], None]] = {f.__name__: f for f in (
    routes_nothing, ignores_via, commits_later, ignores_signatures, no_re_ack, never_retries,
    retries_without_backoff, trusts_any_ack, open_relay, relays_from_any_hop, wrong_error_codes,
    counters_frozen, reads_the_key, none)}
