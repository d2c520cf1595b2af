"""Crypto's signing policy: what the identity key signs, whoever asks.

Whoever reaches the crypto socket can make the node sign. The bus keeps strangers out
(docs/security.md), and this policy bounds what even the node's own services can get
signed, so that a compromised or buggy caller cannot forge what matters most to peers:

- **Callers** (over an authenticated tcp bus, where each request names its key): envelopes
  are signed, sealed and opened only for the router, groups and backup services; transport
  bindings only for the transport; the owner's and apps' keys get the node id and verification.
  Over ipc and inproc the caller is not known (the 0700 run directory and the process are the
  guard) and every service's requests are allowed.
- **Acknowledgements need their proof.** An ``Ack`` or ``ReadReceipt`` is signed only
  together with the envelope it acknowledges (verified here): for ``RecipientReceived`` and
  read receipts an envelope addressed to this node, for ``RelayForwarded`` one that names this
  node in its ``via``; from the node the acknowledgement goes to, with the same id. So no
  caller can make a sender believe a message was delivered, read or relayed when this node
  never had it. (``crypto.open`` with ``ack_via`` signs the delivery ACK of what it has just
  opened, which is the same rule.)
- **Timestamps are current.** This node's envelopes are signed with a timestamp at most
  ``MAX_FUTURE_MS`` ahead and at most ``MAX_AGE_MS`` behind crypto's clock (a re-signed
  message keeps its creation time, up to the 24 h message lifetime): no far-future envelope
  that would outlive every replay window.
- **Bindings are short.** A transport binding lasts at most ``MAX_BINDING_S`` (the transport
  renews it at half-life); it cannot be revoked, so it must not outlive its need.

Refusals are ``refused`` (or ``forbidden`` for the caller) error replies, counted by reason.
"""

from __future__ import annotations

from shared import primitives as p
from shared.envelope import (
    AckPayload,
    AckType,
    Envelope,
    EnvelopeError,
    MessageType,
    ReadReceiptPayload,
    decode,
)
from shared.wire import Message
from shared.wire.messages import crypto as m

MAX_FUTURE_MS = 60_000
"""How far ahead of crypto's clock this node's envelopes may be dated."""
MAX_AGE_MS = (24 * 3600 + 600) * 1000
"""How far behind: the message lifetime (24 h) plus slack; older ones no peer accepts."""
MAX_BINDING_S = 24 * 3600
"""Longest transport binding; the transport asks for 24 h and renews at half-life."""
CLOCK_SLACK_S = 300
"""Tolerance for a transport whose clock runs ahead of crypto's (another host)."""

ENVELOPE_CALLERS = frozenset({"service:router", "service:groups", "service:backup"})
CALLERS: dict[type[Message], frozenset[str] | None] = {
    m.NodeId: None,  # None: any admitted key
    m.Verify: None,
    m.Sign: ENVELOPE_CALLERS,
    m.Seal: ENVELOPE_CALLERS,
    m.Open: ENVELOPE_CALLERS,
    m.GroupSeal: ENVELOPE_CALLERS,
    m.GroupOpen: ENVELOPE_CALLERS,
    m.BindTransport: frozenset({"service:transport"}),
}
ACK_TYPES = frozenset({MessageType.ACK, MessageType.READ_RECEIPT})


class Refused(Exception):
    """The policy refuses to sign this; ``reason`` names the counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Forbidden(Exception):
    """This caller may not make this request."""


def check_caller(req: Message, caller: str | None) -> None:
    if caller is None:
        return  # ipc / inproc: not authenticated by key; the file system is the guard
    allowed = CALLERS.get(type(req))
    if allowed is not None and caller not in allowed:
        raise Forbidden(f"{caller} may not ask crypto for {req.msg_type}")


def check_timestamp(timestamp_ms: int, now_ms: int) -> None:
    if timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise Refused("timestamp", f"timestamp {timestamp_ms} is more than "
                      f"{MAX_FUTURE_MS // 1000} s ahead of crypto's clock ({now_ms})")
    if timestamp_ms < now_ms - MAX_AGE_MS:
        raise Refused("timestamp", f"timestamp {timestamp_ms} is older than the "
                      f"{MAX_AGE_MS // 3_600_000} h message lifetime (now {now_ms})")


def check_ack(node_id: bytes, to: bytes, msg_type: str, payload: bytes,
              proof: bytes | None) -> None:
    """An acknowledgement from this node to ``to`` is signed only with ``proof``: the
    envelope it acknowledges, validly signed by ``to``, in the role the ACK claims."""
    if msg_type not in ACK_TYPES:
        return
    if proof is None:
        raise Refused("ack_without_proof", f"a {msg_type} is signed only together with the "
                      "envelope it acknowledges (a second blob)")
    try:
        if msg_type == MessageType.ACK:
            ack = AckPayload.decode(payload)
            original_id, relayed = ack.original_id, ack.ack_type == AckType.RELAY_FORWARDED
        else:
            original_id, relayed = ReadReceiptPayload.decode(payload).original_id, False
        env: Envelope = decode(proof)
        env.verify()
    except (EnvelopeError, p.BadSignature, p.BadKey, ValueError) as e:
        raise Refused("ack_bad_proof", f"the acknowledged envelope does not verify: {e}") \
            from None
    if env.id != original_id or env.sender != to:
        raise Refused("ack_bad_proof", "the acknowledged envelope is another message, or "
                      "from another node than the one the acknowledgement goes to")
    if relayed and node_id not in env.via:
        raise Refused("ack_bad_proof", "a relay ACK for an envelope whose via does not name "
                      "this node")
    if not relayed and env.to != node_id:
        raise Refused("ack_bad_proof", "a delivery ACK or read receipt for an envelope "
                      "addressed to another node")
