"""The `[backup]` section of node.toml."""

from __future__ import annotations

from pydantic import Field

from shared.config import Section


class BackupConfig(Section):
    """The backup service: messages this node holds for offline recipients (README,
    "Offline delivery")."""

    capacity_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024, description="Bytes of "
                                "sealed envelopes this node holds for offline recipients on "
                                "behalf of others, in all (`refused_full` beyond).")
    capacity_messages: int = Field(50_000, ge=100, description="Envelopes it holds for "
                                   "others, in all. One peer that hands envelopes over may "
                                   "fill at most half of what the others leave free "
                                   "(`refused_share`): its share shrinks as it grows, and "
                                   "nothing accepted is pushed out.")
    copies: int = Field(3, ge=1, le=8, description="Copies of a message its holders keep "
                        "between them: when fewer of a copy's holders are reachable, this "
                        "node hands it to the next closest peer (`replicated`).")
