import pytest

from shared import nodeid
from shared.primitives import SigningKey

NODE = SigningKey(bytes(range(32))).public


def test_text_forms_round_trip() -> None:
    text = nodeid.to_text(NODE)
    assert len(text) == 64 and text == text.lower()
    assert nodeid.parse(text) == NODE
    assert nodeid.parse(text.upper()) == NODE
    b32 = nodeid.to_base32(NODE)
    assert len(b32) == 52 and nodeid.parse(b32) == NODE and nodeid.parse(b32.upper()) == NODE
    assert nodeid.short(NODE) == text[:10]


@pytest.mark.parametrize("text", ["", "zz" * 32, "ab" * 31, "0" * 64, "a" * 52, "é" * 64])
def test_invalid_ids_are_refused(text: str) -> None:
    with pytest.raises(nodeid.InvalidNodeId):
        nodeid.parse(text)
