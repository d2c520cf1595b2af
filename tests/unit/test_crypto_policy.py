"""Crypto's signing policy on the core, in-process (services/crypto/policy.py); the same
rules are checked black-box in tests/contract/test_crypto_contract.py and over a CURVE bus in
tests/hostile/test_bus_attacks.py. In-process so that `make mutate` can run them."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from services.crypto import policy
from services.crypto.core import CryptoCore, Identity
from shared import envelope as e
from shared import primitives as p
from shared.core import Fail, Reply, Request
from shared.wire import ErrorCode, Message
from shared.wire.messages import crypto as m

SEED = b"\x11" * 32
NODE = p.SigningKey(SEED).public
PEER_SEED = b"\x42" * 32
PEER = p.SigningKey(PEER_SEED).public
FAR = p.SigningKey(b"\x46" * 32).public
NOW_MS = 1_800_000_000_000


def core() -> CryptoCore:
    return CryptoCore(SEED, os.urandom, lambda: NOW_MS)


def ask(c: CryptoCore, body: Message, *blobs: bytes,
        caller: str | None = None) -> Reply | Fail:
    (action,) = c.handle(Request("ctx", body, blobs, caller=caller), 0.0)
    assert isinstance(action, (Reply, Fail))
    return action


def refused(action: Reply | Fail, code: ErrorCode = ErrorCode.REFUSED) -> bool:
    return isinstance(action, Fail) and action.code == code


def chat(to: bytes = NODE, via: tuple[bytes, ...] = ()) -> e.Envelope:
    return Identity(PEER_SEED, os.urandom).seal(to, "Chat", b"x", NOW_MS, via=via)


def ack(env: e.Envelope, kind: e.AckType = e.AckType.RECIPIENT_RECEIVED) -> bytes:
    return e.AckPayload(env.id, kind).encode()


def seal_ack(c: CryptoCore, payload: bytes, *proof: bytes, kind: str = "Ack",
             to: bytes = PEER) -> Reply | Fail:
    return ask(c, m.Seal(to=to, envelope_type=kind, encrypt=False), payload, *proof)


def test_an_ack_is_signed_only_with_its_envelope() -> None:
    c, env = core(), chat()
    assert refused(seal_ack(c, ack(env)))
    assert refused(seal_ack(c, ack(env), chat().encode()))  # another message
    assert refused(seal_ack(c, ack(env), replace(env, signature=bytes(64)).encode()))
    assert refused(seal_ack(c, ack(env), b"not an envelope"))
    assert refused(seal_ack(c, ack(env), env.encode(), to=FAR))  # to another node
    assert refused(seal_ack(c, b"\x90", env.encode()))  # not an ACK payload
    done = seal_ack(c, ack(env), env.encode())
    assert isinstance(done, Reply)
    signed = e.decode(done.blobs[0])
    signed.verify()
    assert (signed.sender, signed.to) == (NODE, PEER)
    assert c.counters()["refused_ack_without_proof"] == 1
    assert c.counters()["refused_ack_bad_proof"] == 5


def test_delivery_acks_and_receipts_only_for_mail_to_this_node() -> None:
    c, elsewhere = core(), chat(to=FAR)
    assert refused(seal_ack(c, ack(elsewhere), elsewhere.encode()))
    receipt = e.ReadReceiptPayload(elsewhere.id, NOW_MS).encode()
    assert refused(seal_ack(c, receipt, elsewhere.encode(), kind="ReadReceipt"))
    assert refused(seal_ack(c, receipt, kind="ReadReceipt"))
    mine = chat()
    ok = seal_ack(c, e.ReadReceiptPayload(mine.id, NOW_MS).encode(), mine.encode(),
                  kind="ReadReceipt")
    assert isinstance(ok, Reply)


def test_relay_acks_only_for_envelopes_naming_this_node() -> None:
    c = core()
    direct = chat(to=FAR)
    assert refused(seal_ack(c, ack(direct, e.AckType.RELAY_FORWARDED), direct.encode()))
    relayed = chat(to=FAR, via=(NODE,))
    assert isinstance(seal_ack(c, ack(relayed, e.AckType.RELAY_FORWARDED), relayed.encode()),
                      Reply)


def test_sign_never_makes_an_ack() -> None:
    c = core()
    unsigned = e.Envelope(b"\x01" * 16, NODE, PEER, "Ack", ack(chat()), NOW_MS)
    assert refused(ask(c, m.Sign(), unsigned.encode()))


@pytest.mark.parametrize("offset_ms, ok", [
    (0, True), (policy.MAX_FUTURE_MS, True), (policy.MAX_FUTURE_MS + 1, False),
    (-policy.MAX_AGE_MS, True), (-policy.MAX_AGE_MS - 1, False)])
def test_own_envelopes_carry_a_current_timestamp(offset_ms: int, ok: bool) -> None:
    c = core()
    ts = NOW_MS + offset_ms
    sealed = ask(c, m.Seal(to=PEER, envelope_type="Chat", timestamp_ms=ts), b"x")
    unsigned = e.Envelope(b"\x01" * 16, NODE, PEER, "Chat", b"x", ts)
    signed = ask(c, m.Sign(), unsigned.encode())
    assert isinstance(sealed, Reply) == ok and isinstance(signed, Reply) == ok
    if not ok:
        assert refused(sealed) and c.counters()["refused_timestamp"] == 2


@pytest.mark.parametrize("not_after_s, ok", [
    (NOW_MS // 1000 + policy.MAX_BINDING_S, True),
    (NOW_MS // 1000 + policy.MAX_BINDING_S + policy.CLOCK_SLACK_S, True),
    (NOW_MS // 1000 + policy.MAX_BINDING_S + policy.CLOCK_SLACK_S + 1, False),
    (NOW_MS // 1000, False)])
def test_bindings_are_short(not_after_s: int, ok: bool) -> None:
    c = core()
    r = ask(c, m.BindTransport(transport_key=b"k" * 32, not_after_s=not_after_s))
    assert isinstance(r, Reply) == ok
    if ok:
        assert isinstance(r.body, m.BindTransportReply)
        binding = e.TransportBinding.decode(r.body.binding)
        binding.verify(now_s=NOW_MS // 1000)
        assert (binding.node_id, binding.transport_key, binding.not_after_s) == (
            NODE, b"k" * 32, not_after_s)
    else:
        assert refused(r) and c.counters()["refused_binding"] == 1


@pytest.mark.parametrize("caller, body, ok", [
    (None, m.BindTransport(transport_key=b"k" * 32, not_after_s=NOW_MS // 1000 + 60), True),
    ("service:transport", m.BindTransport(transport_key=b"k" * 32,
                                          not_after_s=NOW_MS // 1000 + 60), True),
    ("service:router", m.BindTransport(transport_key=b"k" * 32,
                                       not_after_s=NOW_MS // 1000 + 60), False),
    ("owner", m.BindTransport(transport_key=b"k" * 32, not_after_s=NOW_MS // 1000 + 60),
     False),
    ("service:router", m.Seal(to=PEER, envelope_type="Chat"), True),
    ("service:groups", m.Seal(to=PEER, envelope_type="Chat"), True),
    ("service:backup", m.Seal(to=PEER, envelope_type="Chat"), True),
    ("service:transport", m.Seal(to=PEER, envelope_type="Chat"), False),
    ("owner", m.Seal(to=PEER, envelope_type="Chat"), False),
    ("app:friend", m.Open(), False),
    ("owner", m.NodeId(), True),
    ("app:friend", m.NodeId(), True),
])
def test_callers(caller: str | None, body: Message, ok: bool) -> None:
    c = core()
    blobs = (b"x",) if isinstance(body, m.Seal) else (chat().encode(),) \
        if isinstance(body, m.Open) else ()
    r = ask(c, body, *blobs, caller=caller)
    assert isinstance(r, Reply) == ok, r
    if not ok:
        assert refused(r, ErrorCode.FORBIDDEN) and c.counters()["refused_caller"] == 1


# -- the other checks of the core, in-process (the contract suite runs them black-box) ------


def test_open_verifies_checks_the_recipient_and_reports_the_header() -> None:
    c, env = core(), chat()
    r = ask(c, m.Open(), env.encode())
    assert isinstance(r, Reply) and r.blobs == (b"x",)
    assert isinstance(r.body, m.OpenReply)
    assert (r.body.id, r.body.sender, r.body.to, r.body.encrypted) == (env.id, PEER, NODE, True)
    assert refused(ask(c, m.Open(), replace(env, signature=bytes(64)).encode()),
                   ErrorCode.BAD_SIGNATURE)
    assert refused(ask(c, m.Open(), chat(to=FAR).encode()), ErrorCode.WRONG_RECIPIENT)
    assert refused(ask(c, m.Open(), replace(env, via=(FAR,)).encode()), ErrorCode.BAD_SIGNATURE)
    r = ask(c, m.Open(ack_via=[FAR]), env.encode())
    assert isinstance(r, Reply) and len(r.blobs) == 2
    signed_ack = e.decode(r.blobs[1])
    signed_ack.verify()
    assert (signed_ack.to, signed_ack.via, e.AckPayload.decode(signed_ack.payload)) == (
        PEER, (FAR,), e.AckPayload(env.id, e.AckType.RECIPIENT_RECEIVED))
    ask(c, m.Open(ack_via=[FAR]), env.encode())
    assert c.counters()["open_acks"] == 2


def test_verify_reports_the_verified_header() -> None:
    c, env = core(), chat(via=(FAR,))
    r = ask(c, m.Verify(), env.encode())
    assert isinstance(r, Reply) and isinstance(r.body, m.VerifyReply)
    assert (r.body.id, r.body.sender, r.body.via, r.body.envelope_type) == (
        env.id, PEER, [FAR], "Chat")
    assert refused(ask(c, m.Verify(), replace(env, payload=b"y").encode()),
                   ErrorCode.BAD_SIGNATURE)


def test_sign_only_this_nodes_envelopes() -> None:
    c = core()
    theirs = e.Envelope(b"\x01" * 16, PEER, NODE, "Chat", b"x", NOW_MS)
    assert refused(ask(c, m.Sign(), theirs.encode()), ErrorCode.NOT_OURS)
    ours = replace(theirs, sender=NODE, to=PEER, ttl=3)
    r = ask(c, m.Sign(), ours.encode())
    assert isinstance(r, Reply)
    e.decode(r.blobs[0]).verify()


def test_seal_keeps_what_it_was_asked() -> None:
    c = core()
    r = ask(c, m.Seal(to=PEER, envelope_type="Chat", via=[FAR], ttl=2, id=b"\x07" * 16), b"hi")
    assert isinstance(r, Reply)
    env, plain = Identity(PEER_SEED, os.urandom).open(r.blobs[0])
    assert (plain, env.ttl, env.via, env.id, env.timestamp_ms) == (
        b"hi", 2, (FAR,), b"\x07" * 16, NOW_MS)
    assert refused(ask(c, m.Seal(to=PEER, envelope_type="Chat"), b"a", b"b", b"c"),
                   ErrorCode.INVALID)


def test_group_messages_open_only_for_the_expected_group_and_sender() -> None:
    c, key = core(), b"\x09" * 32
    r = ask(c, m.GroupSeal(group_id="g1", key=key), b"to the group")
    assert isinstance(r, Reply)
    sealed = r.blobs[0]
    ok = ask(c, m.GroupOpen(group_id="g1", sender=NODE, key=key), sealed)
    assert isinstance(ok, Reply) and ok.blobs == (b"to the group",)
    assert isinstance(ok.body, m.GroupOpenReply)
    assert (ok.body.group_id, ok.body.sender) == ("g1", NODE)
    assert refused(ask(c, m.GroupOpen(group_id="g2", sender=NODE, key=key), sealed),
                   ErrorCode.BAD_SIGNATURE)
    assert refused(ask(c, m.GroupOpen(group_id="g1", sender=PEER, key=key), sealed),
                   ErrorCode.BAD_SIGNATURE)
    assert refused(ask(c, m.GroupOpen(group_id="g1", sender=NODE, key=b"\x0a" * 32), sealed),
                   ErrorCode.DECRYPT_FAILED)
