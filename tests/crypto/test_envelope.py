"""Envelopes: golden vectors of our encoding, round trips, and tamper detection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.crypto.core import Identity, NotOurs, WrongRecipient
from shared import envelope as e
from shared import primitives as p

GOLDEN = Path(__file__).parent / "golden" / "envelopes.json"
SEED_A, SEED_B, SEED_C = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
A, B, C = (p.SigningKey(s).public for s in (SEED_A, SEED_B, SEED_C))
TS = 1_764_000_000_000


def fixed_rng(*chunks: bytes) -> Callable[[int], bytes]:
    """Hands out the given chunks in order (golden vectors pin every random byte)."""
    queue = list(chunks)

    def rng(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, (len(chunk), n)
        return chunk

    return rng


def vectors() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    cases = [
        ("V1_signed_chat", SEED_A, B, "Chat", b"hello", (), False,
         [b"\x11" * 16]),
        ("V2_relayed_read_receipt", SEED_B, A, "ReadReceipt",
         e.ReadReceiptPayload(b"\x11" * 16, TS + 5000).encode(), (C,), False, [b"\x12" * 16]),
        ("V3_encrypted_chat", SEED_A, B, "Chat", b"hello, encrypted", (), True,
         [b"\x13" * 16, b"\x22" * 32, b"\x33" * 24]),
    ]
    for name, seed, to, msg_type, payload, via, encrypt, chunks in cases:
        ident = Identity(seed, fixed_rng(*chunks))
        env = ident.seal(to, msg_type, payload, TS, via=via, encrypt=encrypt)
        out[name] = {
            "sender_seed": seed.hex(), "to": to.hex(), "msg_type": msg_type,
            "payload": payload.hex(), "timestamp_ms": TS, "via": [v.hex() for v in via],
            "encrypt": encrypt, "random_bytes_in_order": [c.hex() for c in chunks],
            "signing_bytes": env.signing_bytes().hex(), "aad": env.aad().hex(),
            "envelope": env.encode().hex(),
        }
    return out


def test_golden_envelopes() -> None:
    """Fixed keys, id, ephemeral key and nonce give exactly the committed bytes."""
    assert json.loads(GOLDEN.read_text()) == vectors()


def test_golden_envelopes_open() -> None:
    seeds = {A: SEED_A, B: SEED_B, C: SEED_C}
    for name, v in json.loads(GOLDEN.read_text()).items():
        raw = bytes.fromhex(str(v["envelope"]))
        to = bytes.fromhex(str(v["to"]))
        env, plaintext = Identity(seeds[to], fixed_rng()).open(raw)
        assert plaintext == bytes.fromhex(str(v["payload"])), name
        assert env.encrypted == v["encrypt"]


def test_layout() -> None:
    raw = Identity(SEED_A, fixed_rng(b"\x11" * 16)).seal(B, "Chat", b"hi", TS,
                                                         encrypt=False).encode()
    a = msgpack.unpackb(raw)
    assert raw[0] == 0x9A and len(a) == 10
    assert a[:3] == [b"\x11" * 16, A, B] and a[3:7] == [[], "Chat", b"hi", TS]
    assert len(a[7]) == 64 and a[8:] == [4, False]


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=512), encrypt=st.booleans(), data=st.data())
def test_flipping_any_byte_is_rejected(payload: bytes, encrypt: bool, data: st.DataObject
                                       ) -> None:
    sender = Identity(SEED_A, p_rng())
    raw = sender.seal(B, "Chat", payload, TS, via=(C,), encrypt=encrypt).encode()
    receiver = Identity(SEED_B, p_rng())
    assert receiver.open(raw)[1] == payload
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(raw)
    tampered[i] ^= 1 << bit
    with pytest.raises((e.EnvelopeError, p.CryptoError, WrongRecipient)):
        env, out = receiver.open(bytes(tampered))
        # the only unprotected field is ttl: lowering it is allowed, and changes nothing else
        assert env.ttl != 4 and out == payload
        raise e.EnvelopeError("ttl changed (allowed)")


def p_rng() -> Callable[[int], bytes]:
    import os

    return os.urandom


def test_only_the_recipient_opens() -> None:
    raw = Identity(SEED_A, p_rng()).seal(B, "Chat", b"secret", TS).encode()
    with pytest.raises(WrongRecipient):
        Identity(SEED_C, p_rng()).open(raw)
    # even if C re-addresses it to itself, the signature no longer verifies
    env = e.decode(raw)
    forged = e.Envelope(env.id, env.sender, C, env.msg_type, env.payload, env.timestamp_ms,
                        env.via, env.signature, env.ttl, env.encrypted)
    with pytest.raises(p.BadSignature):
        Identity(SEED_C, p_rng()).open(forged.encode())


def test_ciphertext_cannot_move_to_another_envelope() -> None:
    """A's valid ciphertext for B, wrapped in a new envelope that A signs (another id),
    fails to decrypt: the header is bound as associated data."""
    a = Identity(SEED_A, p_rng())
    original = e.decode(a.seal(B, "Chat", b"pay 10", TS).encode())
    moved = e.Envelope(b"\x99" * 16, A, B, "Chat", original.payload, TS + 1, encrypted=True)
    with pytest.raises(p.DecryptFailed):
        Identity(SEED_B, p_rng()).open(a.sign(moved).encode())


def test_unsigned_and_forged_envelopes() -> None:
    unsigned = e.Envelope(b"\x01" * 16, A, B, "Chat", b"x", TS)
    with pytest.raises(e.Unsigned):
        Identity(SEED_B, p_rng()).open(unsigned.encode())
    forged = unsigned.with_signature(p.SigningKey(SEED_C).sign(unsigned.signing_bytes()))
    with pytest.raises(p.BadSignature):
        Identity(SEED_B, p_rng()).open(forged.encode())
    with pytest.raises(NotOurs):
        Identity(SEED_C, p_rng()).sign(unsigned)


@pytest.mark.parametrize("raw, error", [
    (b"", e.EnvelopeError), (b"\x9a", e.EnvelopeError), (b"\x93\x01\x02\x03", e.EnvelopeError),
    (b"\x00" * (e.MAX_ENVELOPE_BYTES + 1), e.EnvelopeTooLarge),
])
def test_malformed_envelopes(raw: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        e.decode(raw)


def test_limits() -> None:
    good = e.Envelope(b"\x01" * 16, A, B, "Chat", b"x", TS, via=(C,) * 4).encode()
    assert e.decode(good).via == (C,) * 4
    for bad in (e.Envelope(b"\x01" * 16, A, B, "Chat", b"x", TS, via=(C,) * 5),
                e.Envelope(b"\x01" * 16, A, B, "Chat", b"x", TS, ttl=5)):
        with pytest.raises(e.EnvelopeError):
            e.decode(bad.encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_raises_envelope_error_only(raw: bytes) -> None:
    try:
        e.decode(raw)
    except e.EnvelopeError:
        pass


def test_group_seal_open_and_provenance() -> None:
    key = b"\x07" * 32
    raw = Identity(SEED_A, p_rng()).group_seal("grp-1", key, b"hi all").encode()
    g, plaintext = Identity.group_open(key, raw)
    assert (g.group_id, g.sender, plaintext) == ("grp-1", A, b"hi all")
    with pytest.raises(p.DecryptFailed):
        Identity.group_open(b"\x08" * 32, raw)
    claimed = e.GroupCiphertext.decode(raw)
    forged = e.GroupCiphertext(claimed.group_id, C, claimed.nonce, claimed.ciphertext,
                               claimed.signature)
    with pytest.raises(p.BadSignature):
        Identity.group_open(key, forged.encode())


def test_transport_binding() -> None:
    b = Identity(SEED_A, p_rng()).bind_transport(b"tls-key", 2_000_000_000, 1_999_999_000)
    decoded = e.TransportBinding.decode(b.encode())
    decoded.verify(1_900_000_000)
    with pytest.raises(e.Expired):
        decoded.verify(2_000_000_001)
    with pytest.raises(p.BadSignature):
        e.TransportBinding(B, b"tls-key", 2_000_000_000, b.signature).verify(0)


@pytest.mark.parametrize("not_after", [1_000, 2_000_000_000 - 1, 2_000_000_000 + 86400 + 301,
                                       2_000_000_000 + 8 * 86400])
def test_transport_binding_must_be_short_lived(not_after: int) -> None:
    from services.crypto.policy import Refused

    with pytest.raises(Refused):
        Identity(SEED_A, p_rng()).bind_transport(b"k", not_after, 2_000_000_000 - 1)


def test_group_open_checks_the_expected_sender_and_group() -> None:
    key = b"\x07" * 32
    raw = Identity(SEED_C, p_rng()).group_seal("grp-1", key, b"I am A").encode()
    assert Identity.group_open(key, raw, "grp-1", C)[1] == b"I am A"
    for group, sender in (("grp-1", A), ("grp-2", C)):
        with pytest.raises(p.BadSignature):
            Identity.group_open(key, raw, group, sender)


def test_seal_refuses_what_no_peer_would_accept() -> None:
    big = b"x" * e.MAX_ENVELOPE_BYTES
    for encrypt in (False, True):
        with pytest.raises(e.EnvelopeTooLarge):
            Identity(SEED_A, p_rng()).seal(B, "Chat", big, TS, encrypt=encrypt)
    with pytest.raises(e.EnvelopeTooLarge):
        Identity(SEED_A, p_rng()).group_seal("g", b"\x07" * 32, big)


def test_payload_codecs() -> None:
    ack = e.AckPayload(b"\x05" * 16, e.AckType.RELAY_FORWARDED)
    assert e.AckPayload.decode(ack.encode()) == ack
    rr = e.ReadReceiptPayload(b"\x05" * 16, TS)
    assert e.ReadReceiptPayload.decode(rr.encode()) == rr
    with pytest.raises(e.EnvelopeError):
        e.AckPayload.decode(msgpack.packb([b"\x05" * 16, "Nope"]))


if __name__ == "__main__":  # regenerate after a deliberate change of the format
    GOLDEN.write_text(json.dumps(vectors(), indent=1) + "\n")
