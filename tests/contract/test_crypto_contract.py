"""Contract of the crypto role: identity, envelopes, group messages, transport binding."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from services.crypto.core import Identity
from shared import endpoints
from shared import envelope as e
from shared import primitives as p
from shared.wire import TAG, RemoteError
from shared.wire.messages import crypto as m
from shared.wire.messages.sys import ErrorReply, Status, StatusReply

from .generic import RoleContract, dealer, header, recv_reply
from .harness import SEED, ImplementationFailed, Node, prepare

ROLE = "crypto"
NODE = p.SigningKey(SEED).public
PEER_SEED = b"\x42" * 32
PEER = p.SigningKey(PEER_SEED).public
TS = int(time.time() * 1000)  # this node signs only current timestamps (policy.py)


def call(node: Node, body: m.Message, *blobs: bytes) -> tuple[m.Message, tuple[bytes, ...]]:
    with node.client() as c:
        msg = c.call(ROLE, body, blobs)
    return msg.body, msg.blobs


def error(node: Node, body: m.Message, *blobs: bytes) -> RemoteError:
    with pytest.raises(RemoteError) as info:
        call(node, body, *blobs)
    return info.value


def from_peer(payload: bytes, encrypt: bool = True, to: bytes = NODE) -> bytes:
    return Identity(PEER_SEED, os.urandom).seal(to, "Chat", payload, TS,
                                                encrypt=encrypt).encode()


class TestCryptoContract(RoleContract):
    role = ROLE


class TestCryptoRole:
    """What the crypto role does with the identity: who it signs for, what it refuses, how
    it keeps the key file."""

    def status(self, node: Node) -> StatusReply:
        with node.client() as c:
            reply = c.request(ROLE, Status())
        assert isinstance(reply, StatusReply)
        return reply

    def test_node_id_is_the_public_key_of_the_seed(self, node: Node) -> None:
        reply, _ = call(node, m.NodeId())
        assert isinstance(reply, m.NodeIdReply) and reply.node_id == NODE

    def test_seal_then_the_recipient_opens(self, node: Node) -> None:
        reply, blobs = call(node, m.Seal(to=PEER, envelope_type="Chat"), b"hello peer")
        assert isinstance(reply, m.SealReply)
        env, plaintext = Identity(PEER_SEED, os.urandom).open(blobs[0])
        assert (plaintext, env.sender, env.id, env.encrypted) == (b"hello peer", NODE,
                                                                  reply.id, True)
        assert b"hello peer" not in blobs[0]

    def test_seal_unencrypted_is_signed_only(self, node: Node) -> None:
        now = int(time.time() * 1000)
        _, blobs = call(node, m.Seal(to=PEER, envelope_type="PeerAnnounce", encrypt=False,
                                     timestamp_ms=now, via=[PEER]), b"hello")
        env = e.decode(blobs[0])
        env.verify()
        assert (env.payload, env.timestamp_ms, env.via, env.encrypted) == (b"hello", now,
                                                                           (PEER,), False)

    # -- the signing policy (services/crypto/policy.py) -----------------------------------

    def test_no_ack_without_the_envelope_it_acknowledges(self, node: Node) -> None:
        """A forged delivery ACK would make the sender believe its message arrived."""
        raw = from_peer(b"real")
        ack = e.AckPayload(e.decode(raw).id, e.AckType.RECIPIENT_RECEIVED).encode()
        err = error(node, m.Seal(to=PEER, envelope_type="Ack", encrypt=False), ack)
        assert err.name == "refused", err
        other = from_peer(b"another")  # a proof for another message does not do
        err = error(node, m.Seal(to=PEER, envelope_type="Ack", encrypt=False), ack, other)
        assert err.name == "refused", err
        forged = replace(e.decode(raw), signature=bytes(64))  # nor one that does not verify
        err = error(node, m.Seal(to=PEER, envelope_type="Ack", encrypt=False), ack,
                    forged.encode())
        assert err.name == "refused", err
        _, blobs = call(node, m.Seal(to=PEER, envelope_type="Ack", encrypt=False), ack, raw)
        assert e.AckPayload.decode(e.decode(blobs[0]).payload).original_id == e.decode(raw).id

    def test_no_read_receipt_for_a_message_to_another_node(self, node: Node) -> None:
        raw = from_peer(b"for someone else", to=p.SigningKey(b"\x45" * 32).public)
        receipt = e.ReadReceiptPayload(e.decode(raw).id, int(time.time() * 1000)).encode()
        err = error(node, m.Seal(to=PEER, envelope_type="ReadReceipt", encrypt=False),
                    receipt, raw)
        assert err.name == "refused", err
        err = error(node, m.Seal(to=PEER, envelope_type="ReadReceipt", encrypt=False),
                    receipt)
        assert err.name == "refused", err

    def test_relay_ack_only_for_an_envelope_naming_this_node(self, node: Node) -> None:
        far = p.SigningKey(b"\x46" * 32).public
        direct = from_peer(b"not relayed by us", to=far)
        ack = e.AckPayload(e.decode(direct).id, e.AckType.RELAY_FORWARDED).encode()
        err = error(node, m.Seal(to=PEER, envelope_type="Ack", encrypt=False), ack, direct)
        assert err.name == "refused", err
        via_us = Identity(PEER_SEED, os.urandom).seal(far, "Chat", b"x", TS, via=(NODE,))
        ack = e.AckPayload(via_us.id, e.AckType.RELAY_FORWARDED).encode()
        _, blobs = call(node, m.Seal(to=PEER, envelope_type="Ack", encrypt=False), ack,
                        via_us.encode())
        assert e.decode(blobs[0]).to == PEER

    @pytest.mark.parametrize("offset_ms", [3_600_000, -25 * 3_600_000])
    def test_own_envelopes_only_with_a_current_timestamp(self, node: Node,
                                                         offset_ms: int) -> None:
        """A far-future chat would outlive every replay window; an ancient one no peer takes."""
        ts = int(time.time() * 1000) + offset_ms
        err = error(node, m.Seal(to=PEER, envelope_type="Chat", timestamp_ms=ts), b"x")
        assert err.name == "refused", err
        unsigned = e.Envelope(id=b"\x01" * 16, sender=NODE, to=PEER, msg_type="Chat",
                              payload=b"x", timestamp_ms=ts, via=(), ttl=4, encrypted=False)
        err = error(node, m.Sign(), unsigned.encode())
        assert err.name == "refused", err

    def test_no_binding_longer_than_a_day(self, node: Node) -> None:
        now = int(time.time())
        err = error(node, m.BindTransport(transport_key=b"k" * 32,
                                          not_after_s=now + 7 * 86400))
        assert err.name == "refused", err
        reply, _ = call(node, m.BindTransport(transport_key=b"k" * 32,
                                              not_after_s=now + 86400))
        assert isinstance(reply, m.BindTransportReply)

    def test_open_what_a_peer_sealed(self, node: Node) -> None:
        reply, blobs = call(node, m.Open(), from_peer(b"for you"))
        assert isinstance(reply, m.OpenReply)
        assert blobs == (b"for you",) and reply.sender == PEER and reply.encrypted

    def test_open_with_ack_via_also_returns_the_signed_ack(self, node: Node) -> None:
        """The delivery ACK comes with the plaintext: signed by this node, unencrypted,
        for the opened envelope's id, to its sender, along the given path."""
        raw = from_peer(b"ack me")
        relay = p.SigningKey(b"\x44" * 32).public
        reply, blobs = call(node, m.Open(ack_via=[relay]), raw)
        assert isinstance(reply, m.OpenReply) and len(blobs) == 2 and blobs[0] == b"ack me"
        ack = e.decode(blobs[1])
        ack.verify()
        assert (ack.sender, ack.to, ack.msg_type, ack.via, ack.encrypted) == (
            NODE, PEER, "Ack", (relay,), False)
        assert e.AckPayload.decode(ack.payload) == e.AckPayload(
            e.decode(raw).id, e.AckType.RECIPIENT_RECEIVED)
        _, direct = call(node, m.Open(ack_via=[]), raw)
        assert e.decode(direct[1]).via == ()

    def test_open_with_ack_via_signs_nothing_for_a_forged_envelope(self, node: Node) -> None:
        env = e.decode(from_peer(b"x"))
        forged = env.with_signature(p.SigningKey(b"\x43" * 32).sign(env.signing_bytes()))
        assert error(node, m.Open(ack_via=[]), forged.encode()).name == "bad_signature"

    def test_verify_any_envelope(self, node: Node) -> None:
        reply, _ = call(node, m.Verify(), from_peer(b"x", to=PEER))
        assert isinstance(reply, m.VerifyReply) and reply.to == PEER

    def test_sign_our_envelope(self, node: Node) -> None:
        env = e.Envelope(b"\x01" * 16, NODE, PEER, "Chat", b"x", TS, via=(PEER,))
        _, blobs = call(node, m.Sign(), env.encode())
        e.decode(blobs[0]).verify()

    @pytest.mark.parametrize("case, code", [
        ("unsigned", 441), ("forged", 442), ("tampered", 442), ("flipped_payload_byte", 442),
        ("wrong_recipient", 443), ("moved_ciphertext", 444), ("truncated", 440),
        ("garbage", 440), ("oversize", 413), ("no_blob", 422),
    ])
    def test_open_failures_are_specific_and_counted(self, node: Node, case: str,
                                                    code: int) -> None:
        good = from_peer(b"secret")
        env = e.decode(good)
        peer = Identity(PEER_SEED, os.urandom)
        blobs: tuple[bytes, ...] = {
            "unsigned": (env.with_signature(b"").encode(),),
            "forged": (env.with_signature(p.SigningKey(b"\x43" * 32).sign(
                env.signing_bytes())).encode(),),
            "tampered": (e.Envelope(env.id, env.sender, env.to, "Ack", env.payload,
                                    env.timestamp_ms, signature=env.signature,
                                    encrypted=True).encode(),),
            "flipped_payload_byte": (good[:-80] + bytes([good[-80] ^ 1]) + good[-79:],),
            "wrong_recipient": (from_peer(b"x", to=PEER),),
            "moved_ciphertext": (peer.sign(e.Envelope(b"\x07" * 16, PEER, NODE, "Chat",
                                                      env.payload, TS + 1,
                                                      encrypted=True)).encode(),),
            "truncated": (good[: len(good) // 2],),
            "garbage": (os.urandom(100),),
            "oversize": (b"\x00" * (e.MAX_ENVELOPE_BYTES + 1),),
            "no_blob": (),
        }[case]
        before = self.status(node)
        err = error(node, m.Open(), *blobs)
        assert err.code == code, err
        after = self.status(node)
        assert after.errors.get(err.name, 0) == before.errors.get(err.name, 0) + 1
        counter = f"rejected_{err.name}"
        assert after.counters.get(counter, 0) == before.counters.get(counter, 0) + 1, counter

    def test_sign_refuses_another_nodes_envelope(self, node: Node) -> None:
        env = e.Envelope(b"\x01" * 16, PEER, NODE, "Chat", b"x", TS)
        assert error(node, m.Sign(), env.encode()).name == "not_ours"

    def test_seal_refuses_an_invalid_recipient_key(self, node: Node) -> None:
        assert error(node, m.Seal(to=bytes(32), envelope_type="Chat"), b"x").name == "bad_key"

    def test_group_seal_and_open(self, node: Node) -> None:
        key = os.urandom(32)
        _, sealed = call(node, m.GroupSeal(group_id="grp-1", key=key), b"to the group")
        g, plaintext = Identity.group_open(key, sealed[0])
        assert (g.sender, plaintext) == (NODE, b"to the group")
        reply, opened = call(node, m.GroupOpen(group_id="grp-1", sender=NODE, key=key),
                             sealed[0])
        assert isinstance(reply, m.GroupOpenReply) and opened == (b"to the group",)
        wrong_key = m.GroupOpen(group_id="grp-1", sender=NODE, key=os.urandom(32))
        assert error(node, wrong_key, sealed[0]).name == "decrypt_failed"
        other_sender = m.GroupOpen(group_id="grp-1", sender=PEER, key=key)
        assert error(node, other_sender, sealed[0]).name == "bad_signature"

    def test_bind_transport(self, node: Node) -> None:
        not_after = int(time.time()) + 3600
        reply, _ = call(node, m.BindTransport(transport_key=b"k" * 32, not_after_s=not_after))
        assert isinstance(reply, m.BindTransportReply)
        binding = e.TransportBinding.decode(reply.binding)
        binding.verify(now_s=time.time())
        assert (binding.node_id, binding.transport_key) == (NODE, b"k" * 32)

    @pytest.mark.parametrize("not_after", [0, 2**40])
    def test_bind_transport_refuses_long_or_past_bindings(self, node: Node,
                                                         not_after: int) -> None:
        err = error(node, m.BindTransport(transport_key=b"k", not_after_s=not_after))
        assert (err.code, err.name) == (448, "refused"), err

    def test_seal_refuses_oversize_payloads(self, node: Node) -> None:
        big = b"x" * e.MAX_ENVELOPE_BYTES
        assert error(node, m.Seal(to=PEER, envelope_type="Chat"), big).name == "too_large"
        assert error(node, m.GroupSeal(group_id="g", key=b"k" * 32), big).name == "too_large"

    @pytest.mark.parametrize("fields", [
        {"to": b"short"}, {"to": "a" * 32}, {"encrypt": "yes"}, {"ttl": True}, {"ttl": "3"},
        {"ttl": 5}, {"timestamp_ms": 1.0}, {"via": [PEER] * 5},
    ])
    def test_invalid_request_fields(self, node: Node, fields: dict[str, object]) -> None:
        body = {"to": PEER, "envelope_type": "Chat", **fields}
        with dealer(node, ROLE) as s:
            s.send_multipart([b"", TAG, header("crypto.seal"), msgpack.packb(body), b"x"])
            _, reply = recv_reply(s)
        assert isinstance(reply, ErrorReply) and reply.code == 422, reply

    # -- the key file (protocol.md §8.1) --------------------------------------------------

    @pytest.mark.parametrize("mode, size", [(0o640, 32), (0o604, 32), (0o600, 31)],
                             ids=["group-readable", "world-readable", "31-bytes"])
    def test_refuses_to_start_with_a_key_file_others_can_read_or_of_another_size(
            self, template: str, mode: int, size: int) -> None:
        """It exits with a message naming the file instead of serving an identity that
        others could have read or planted."""
        bad = prepare(template, seed=SEED[:size])
        key = bad.data / "identity.key"
        os.chmod(key, mode)
        try:
            with pytest.raises(ImplementationFailed) as info:
                bad.start(ROLE)
            assert "exited with status" in str(info.value), info.value
            assert str(key) in bad.log_tail(), bad.log_tail()
        finally:
            bad.stop()
            shutil.rmtree(bad.data, ignore_errors=True)

    def test_a_second_crypto_for_the_same_identity_refuses_to_start(
            self, node: Node, template: str) -> None:
        """The running one keeps the key file open under an exclusive lock: a second one
        (on other endpoints, so only the key is shared) exits instead of signing too."""
        other = Path(tempfile.mkdtemp(prefix="tomc2-", dir="/tmp"))
        try:
            endpoints.ipc(other / "run").write(other / "endpoints.toml")
            cmd = template.format(python=shlex.quote(sys.executable), role=ROLE,
                                  data=node.data, endpoints=other / "endpoints.toml")
            proc = subprocess.Popen(shlex.split(cmd), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
                pytest.fail("a second crypto service for the same identity.key kept running:\n"
                            + out.decode(errors="replace")[-2000:])
            assert proc.returncode != 0, out
        finally:
            shutil.rmtree(other, ignore_errors=True)
        reply, _ = call(node, m.NodeId())  # the first one still serves
        assert isinstance(reply, m.NodeIdReply) and reply.node_id == NODE
