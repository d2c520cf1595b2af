from pathlib import Path

from shared.wire import docgen

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_protocol_md_is_current() -> None:
    """docs/protocol.md's generated tables match the models (run `make docs` if not)."""
    text = PROTOCOL.read_text()
    assert docgen.render(text) == text, "docs/protocol.md is stale: run `make docs`"
