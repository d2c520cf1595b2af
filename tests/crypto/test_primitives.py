"""Published vectors for every primitive, and the key conversions checked across libraries."""

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared import primitives as p

H = bytes.fromhex

# RFC 8032 §7.1, TEST 1, 2 and 3: (secret seed, public key, message, signature)
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
     "1cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613"
     "d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760"
     "984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


@pytest.mark.parametrize("seed, public, message, signature", RFC8032)
def test_rfc8032_ed25519(seed: str, public: str, message: str, signature: str) -> None:
    key = p.SigningKey(H(seed))
    assert key.public == H(public)
    assert key.sign(H(message)) == H(signature)
    p.verify(H(public), H(signature), H(message))
    with pytest.raises(p.BadSignature):
        p.verify(H(public), H(signature), H(message) + b"x")


def test_verification_is_strict() -> None:
    """A signature whose S is not reduced (S + L) is refused, not accepted as equivalent."""
    seed, public, message, signature = RFC8032[0]
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(H(signature)[32:], "little") + order
    malleated = H(signature)[:32] + s.to_bytes(32, "little")
    with pytest.raises(p.BadSignature):
        p.verify(H(public), malleated, H(message))


def test_rfc7748_x25519() -> None:
    assert p.x25519(H("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                    H("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")) == H(
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    alice = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert p.x25519_base(alice) == H(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert p.x25519_base(bob) == H(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert p.x25519(alice, p.x25519_base(bob)) == shared == p.x25519(bob, p.x25519_base(alice))


def test_x25519_refuses_small_order_points() -> None:
    with pytest.raises(p.BadKey):
        p.x25519(b"\x01" * 32, bytes(32))


def test_rfc5869_hkdf_sha256() -> None:
    okm = p.hkdf_sha256(b"\x0b" * 22, H("f0f1f2f3f4f5f6f7f8f9"), 42, bytes(range(13)))
    assert okm == H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                    "34007208d5b887185865")
    # test case 3: no salt, no info
    assert p.hkdf_sha256(b"\x0b" * 22, b"", 42) == H(
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")


def test_draft_irtf_cfrg_xchacha_aead() -> None:
    """draft-irtf-cfrg-xchacha-03, §A.3.1 (AEAD_XChaCha20_Poly1305)."""
    key, nonce = bytes(range(0x80, 0xA0)), bytes(range(0x40, 0x58))
    aad = H("50515253c0c1c2c3c4c5c6c7")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
                 b"for the future, sunscreen would be it.")
    expected = H(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a8"
        "2f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc3694"
        "88f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49")
    assert p.xchacha_seal(key, nonce, plaintext, aad) == expected
    assert p.xchacha_open(key, nonce, expected, aad) == plaintext
    with pytest.raises(p.DecryptFailed):
        p.xchacha_open(key, nonce, expected, aad + b"x")


@pytest.mark.parametrize("seed", [bytes(32), bytes(range(32)), b"\xff" * 32])
def test_ed25519_to_x25519_matches_both_ways(seed: bytes) -> None:
    """The X25519 key derived from the Ed25519 public key equals the one derived from the
    secret (libsodium's two conversions agree), and an independent X25519 implementation
    (cryptography's) computes the same public key from the converted secret."""
    import nacl.bindings as sodium

    key = p.SigningKey(seed)
    _, sk = sodium.crypto_sign_seed_keypair(seed)
    x_secret = sodium.crypto_sign_ed25519_sk_to_curve25519(sk)
    x_public = p.ed25519_pk_to_x25519(key.public)
    assert p.x25519_base(x_secret) == x_public
    other = X25519PrivateKey.from_private_bytes(x_secret).public_key()
    assert other.public_bytes(Encoding.Raw, PublicFormat.Raw) == x_public
    peer = p.SigningKey(b"\x42" * 32)
    assert key.x25519(p.ed25519_pk_to_x25519(peer.public)) == peer.x25519(x_public)
