"""The `[backup]` section of node.toml."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from shared.config import Section


class BackupConfig(Section):
    """The backup service: messages this node holds for offline recipients (README,
    "Offline delivery")."""

    capacity_bytes: Annotated[int, Meta(ge=1024 * 1024)] = 64 * 1024 * 1024
    """Bytes of sealed envelopes this node holds for offline recipients on behalf of others, in all
    (`refused_full` beyond)."""
    capacity_messages: Annotated[int, Meta(ge=100)] = 50_000
    """Envelopes it holds for others, in all. One peer that hands envelopes over may fill at most
    half of what the others leave free (`refused_share`): its share shrinks as it grows, and nothing
    accepted is pushed out."""
    copies: Annotated[int, Meta(ge=1, le=8)] = 3
    """Copies of a message its holders keep between them: when fewer of a copy's holders are
    reachable, this node hands it to the next closest peer (`replicated`)."""
