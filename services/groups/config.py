"""The `[groups]` section of node.toml."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from shared.config import Section


class GroupsConfig(Section):
    """The groups service: groups this node is a member or the hub of."""

    max_members: Annotated[int, Meta(ge=2, le=1000)] = 50
    """Members a group may have (a hub caps what a creator asks for at this)."""
    invite_ttl_s: Annotated[float, Meta(gt=0)] = 86_400
    """How long an invitation can be accepted."""
    history_s: Annotated[float, Meta(gt=0)] = 86_400
    """How long group logs (ciphertext) are kept, on hubs and members: gaps older than this cannot
    be filled."""
    rate_per_s: Annotated[float, Meta(gt=0)] = 20.0
    """Messages per second a hub orders from one member of one group (more wait: the member sends
    them again)."""
    rate_burst: Annotated[float, Meta(ge=1)] = 50.0
    """Burst above `rate_per_s`."""
    beat_s: Annotated[float, Meta(gt=0)] = 3.0
    """How often a hub tells its successors it is alive."""
    takeover_after_s: Annotated[float, Meta(gt=0)] = 12.0
    """Silence after which the first successor claims the hub (the next ones wait half as long again
    each)."""
    claim_wait_s: Annotated[float, Meta(gt=0)] = 3.0
    """How long a claiming successor waits for the other members' answers before it takes over."""
    resend_s: Annotated[float, Meta(gt=0)] = 10.0
    """A sent message the hub has not ordered within this is sent again."""
    rotate_messages: Annotated[int, Meta(ge=1)] = 10_000
    """A sender key is replaced after this many messages..."""
    rotate_age_s: Annotated[float, Meta(gt=0)] = 86_400
    """... or after this long."""
    max_hosted: Annotated[int, Meta(ge=0)] = 200
    """Groups this node hosts as a hub for others at most."""
    max_invites: Annotated[int, Meta(ge=0)] = 100
    """Open invitations kept at most."""
