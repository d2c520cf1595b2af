"""``crypto.*``: requests to the only process that holds the identity secret.

Envelopes, payloads and ciphertexts travel as raw blob frames, never re-packed.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from .base import U64, Message, message

NodeIdBytes = Annotated[bytes, Meta(min_length=32, max_length=32)]
Key32 = Annotated[bytes, Meta(min_length=32, max_length=32)]


@message("crypto.node_id_reply", "reply")
class NodeIdReply(Message):
    """The node's identity."""

    node_id: NodeIdBytes
    """32-byte Ed25519 public key: the NodeId."""


@message("crypto.node_id", "request", reply=NodeIdReply)
class NodeId(Message):
    """Ask for the node's id (its Ed25519 public key)."""


class EnvelopeInfo(Message):
    """The clear fields of an envelope (its header), as reported after verification."""

    id: bytes
    """16-byte envelope id."""
    sender: NodeIdBytes
    """The envelope's `from`: the signing node."""
    to: NodeIdBytes
    """Final recipient."""
    via: list[NodeIdBytes] = []
    """Relay chain, first hop first."""
    envelope_type: str
    """The envelope's msg_type, e.g. `Chat`."""
    timestamp_ms: U64
    """Sender's creation time, Unix milliseconds."""
    ttl: U64
    """Remaining hop budget."""
    encrypted: bool
    """Whether the payload was end-to-end encrypted."""


@message("crypto.sign_reply", "reply", blobs="1: the signed envelope")
class SignReply(Message):
    """The envelope, signed by this node."""


@message("crypto.sign", "request", reply=SignReply, blobs="1: an envelope whose `from` is "
         "this node (any signature in it is replaced)")
class Sign(Message):
    """Sign an envelope built elsewhere (for example after its `via` changed)."""


@message("crypto.seal_reply", "reply", blobs="1: the envelope, encoded")
class SealReply(Message):
    """The new envelope, encrypted (if asked) and signed."""

    id: bytes
    """The new envelope's id."""


@message("crypto.seal", "request", reply=SealReply, blobs="1: the payload (plaintext); 2: "
         "for an `Ack` or `ReadReceipt`, the signed envelope it acknowledges (required: "
         "crypto's signing policy, docs/security.md)")
class Seal(Message):
    """Build an envelope from this node: encrypt the payload to `to` (encrypt-then-sign)
    unless `encrypt` is false, then sign it."""

    to: NodeIdBytes
    """Recipient node id."""
    envelope_type: Annotated[str, Meta(min_length=1, max_length=32)]
    """The envelope's msg_type, e.g. `Chat`."""
    via: Annotated[list[NodeIdBytes], Meta(max_length=4)] = []
    """Relay chain (at most 4)."""
    ttl: Annotated[int, Meta(ge=0, le=4)] = 4
    """Hop budget (at most 4)."""
    encrypt: bool = True
    """Encrypt the payload end to end."""
    timestamp_ms: U64 | None = None
    """Creation time; default: now."""
    id: Annotated[bytes, Meta(min_length=16, max_length=16)] | None = None
    """Envelope id; default: 16 random bytes."""


@message("crypto.open_reply", "reply", blobs="1: the payload (plaintext); 2: the signed "
         "`Ack` envelope, only when `ack_via` was given")
class OpenReply(EnvelopeInfo):
    """The verified envelope's header and its decrypted payload (and, when asked, the
    delivery ACK for it, signed by this node)."""


@message("crypto.open", "request", reply=OpenReply, blobs="1: an envelope addressed to "
         "this node")
class Open(Message):
    """Verify an envelope's signature (always first), then decrypt its payload if encrypted.
    Fails with `unsigned`, `bad_signature`, `wrong_recipient`, `decrypt_failed`,
    `bad_key`, `bad_envelope`, `too_large` or `invalid` (no blob).

    With `ack_via`, and only once the envelope is verified and opened, the reply also
    carries a signed, unencrypted `Ack` envelope (`recipient_received` for the envelope's
    id, addressed to its sender, with that `via`), so the router needs no `crypto.seal`
    for it. An implementation that ignores `ack_via` answers with one blob; the router
    then seals the ACK itself."""

    ack_via: Annotated[list[NodeIdBytes], Meta(max_length=4)] | None = None
    """Relay chain for the ACK (usually the envelope's `via` reversed; `[]`: direct). Omitted: no
    ACK."""


@message("crypto.verify_reply", "reply")
class VerifyReply(EnvelopeInfo):
    """The envelope's signature is valid; here is its header."""


@message("crypto.verify", "request", reply=VerifyReply, blobs="1: an envelope (any "
         "recipient)")
class Verify(Message):
    """Verify an envelope's signature without decrypting it."""


@message("crypto.group_seal_reply", "reply", blobs="1: the group ciphertext, encoded")
class GroupSealReply(Message):
    """The group message, encrypted with the sender key and signed by this node."""


@message("crypto.group_seal", "request", reply=GroupSealReply, blobs="1: the plaintext")
class GroupSeal(Message):
    """Encrypt a group message with a sender key and sign it."""

    group_id: Annotated[str, Meta(min_length=1, max_length=64)]
    """The group's id."""
    key: Key32
    """The 32-byte sender key (XChaCha20-Poly1305)."""


@message("crypto.group_open_reply", "reply", blobs="1: the plaintext")
class GroupOpenReply(Message):
    """The group message's sender (verified) and its plaintext."""

    group_id: str
    """The group's id."""
    sender: NodeIdBytes
    """The node that signed the message."""


@message("crypto.group_open", "request", reply=GroupOpenReply,
         blobs="1: a group ciphertext, encoded")
class GroupOpen(Message):
    """Verify a group message's signature, check that it is from `sender` in `group_id`
    (`bad_signature` otherwise), then decrypt it with that sender's key."""

    group_id: Annotated[str, Meta(min_length=1, max_length=64)]
    """The expected group."""
    sender: NodeIdBytes
    """The member whose sender key `key` is."""
    key: Key32
    """The sender key of that member."""


@message("crypto.bind_transport_reply", "reply")
class BindTransportReply(Message):
    """The signed binding, to be shown to peers inside the QUIC connection."""

    binding: bytes
    """Encoded transport binding (see §8.5)."""


@message("crypto.bind_transport", "request", reply=BindTransportReply)
class BindTransport(Message):
    """Sign a statement that `transport_key` speaks for this node until `not_after_s`,
    which must lie in the next 7 days (`invalid` otherwise)."""

    transport_key: Annotated[bytes, Meta(min_length=1, max_length=512)]
    """The transport's public key (e.g. its TLS key)."""
    not_after_s: U64
    """Expiry, Unix seconds."""
