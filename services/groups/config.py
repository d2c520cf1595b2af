"""The `[groups]` section of node.toml."""

from __future__ import annotations

from pydantic import Field

from shared.config import Section


class GroupsConfig(Section):
    """The groups service: groups this node is a member or the hub of."""

    max_members: int = Field(50, ge=2, le=1000, description="Members a group may have (a hub "
                             "caps what a creator asks for at this).")
    invite_ttl_s: float = Field(86_400, gt=0, description="How long an invitation can be "
                                "accepted.")
    history_s: float = Field(86_400, gt=0, description="How long group logs (ciphertext) are "
                             "kept, on hubs and members: gaps older than this cannot be "
                             "filled.")
    rate_per_s: float = Field(20.0, gt=0, description="Messages per second a hub orders from "
                              "one member of one group (more wait: the member sends them "
                              "again).")
    rate_burst: float = Field(50.0, ge=1, description="Burst above `rate_per_s`.")
    beat_s: float = Field(3.0, gt=0, description="How often a hub tells its successors it is "
                          "alive.")
    takeover_after_s: float = Field(12.0, gt=0, description="Silence after which the first "
                                    "successor claims the hub (the next ones wait half as "
                                    "long again each).")
    claim_wait_s: float = Field(3.0, gt=0, description="How long a claiming successor waits "
                                "for the other members' answers before it takes over.")
    resend_s: float = Field(10.0, gt=0, description="A sent message the hub has not ordered "
                            "within this is sent again.")
    rotate_messages: int = Field(10_000, ge=1, description="A sender key is replaced after "
                                 "this many messages...")
    rotate_age_s: float = Field(86_400, gt=0, description="... or after this long.")
    max_hosted: int = Field(200, ge=0, description="Groups this node hosts as a hub for "
                            "others at most.")
    max_invites: int = Field(100, ge=0, description="Open invitations kept at most.")
