"""``groups.*``: group messaging for apps (create, membership, send, history) and its events."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from .base import U64, Message, message
from .crypto import NodeIdBytes

GroupId = Annotated[str, Meta(min_length=1, max_length=64, description="Lowercase letters, "
                                                                     "digits and `-`.")]
MessageId = Annotated[bytes, Meta(min_length=16, max_length=16)]
Role = Literal["admin", "member"]
GroupName = Annotated[str, Meta(min_length=1, max_length=64)]


class Member(Message):
    """One member of a group."""

    node_id: NodeIdBytes
    role: Role
    """`admin`s invite, kick and change roles; `member`s send."""
    joined_ms: U64
    """When the hub admitted it, Unix milliseconds."""


class GroupInfo(Message):
    """A group as this node knows it."""

    group_id: GroupId
    name: GroupName
    hub: NodeIdBytes
    """The node that orders and fans out its messages."""
    term: U64
    """The hub's term: it grows by one at every hub change."""
    seq: U64
    """Last entry of the group's log this node has applied."""
    members: list[Member]
    invite_only: bool
    """Only invited nodes may join."""
    max_members: int
    """Member limit."""
    successors: list[NodeIdBytes]
    """Who takes over, in order, when the hub goes silent."""
    member: bool
    """Whether this node is a member (a hub need not be)."""


class Invite(Message):
    """An invitation this node received and has not answered."""

    group_id: GroupId
    name: GroupName
    hub: NodeIdBytes
    inviter: NodeIdBytes
    expires_ms: U64
    """After this it can no longer be accepted."""


@message("groups.create_reply", "reply")
class CreateReply(Message):
    """The group exists on its hub (this node, or the remote hub has been asked and will
    announce it with `groups.changed`)."""

    group_id: GroupId


@message("groups.create", "request", reply=CreateReply)
class Create(Message):
    """Create a group with this node as its first admin, hosted by `hub` (default: this
    node; it need not be a member), and invite `members`."""

    name: GroupName
    members: Annotated[list[NodeIdBytes], Meta(max_length=200)] = []
    """Nodes to invite."""
    hub: NodeIdBytes | None = None
    """The hub; default this node."""
    invite_only: bool = True
    """Only invited nodes may join."""


@message("groups.done_reply", "reply")
class Done(Message):
    """The request is on its way to the hub (membership changes show as `groups.member`)."""


@message("groups.invite", "request", reply=Done)
class InviteMember(Message):
    """Invite a node (admins, or any member when the group is not invite-only)."""

    group_id: GroupId
    node_id: NodeIdBytes


@message("groups.join", "request", reply=Done)
class Join(Message):
    """Accept an invitation, or join an open group through its hub."""

    group_id: GroupId
    hub: NodeIdBytes | None = None
    """The hub, when there is no invitation for the group."""


@message("groups.decline", "request", reply=Done)
class Decline(Message):
    """Drop an invitation."""

    group_id: GroupId


@message("groups.leave", "request", reply=Done)
class Leave(Message):
    """Leave a group. The last admin must first make another member admin (`failed`)."""

    group_id: GroupId


@message("groups.kick", "request", reply=Done)
class Kick(Message):
    """Remove a member (admins only). Everyone's sender keys rotate: the member cannot read
    what is sent afterwards."""

    group_id: GroupId
    node_id: NodeIdBytes


@message("groups.set_role", "request", reply=Done)
class SetRole(Message):
    """Make a member admin or member (admins only; the last admin cannot step down)."""

    group_id: GroupId
    node_id: NodeIdBytes
    role: Role


@message("groups.list_reply", "reply")
class ListReply(Message):
    groups: list[GroupInfo]
    invites: list[Invite]


@message("groups.list", "request", reply=ListReply)
class ListGroups(Message):
    """The groups this node is in (or hosts) and its open invitations."""


@message("groups.send_reply", "reply")
class SendReply(Message):
    """The message is encrypted, signed and stored; it is sent to the hub, and again to a
    new hub after a failover, until the hub has ordered it (`groups.status`)."""

    id: MessageId


@message("groups.send", "request", reply=SendReply, blobs="1: the text (UTF-8), ≤ 16 KiB")
class Send(Message):
    """Send a message to a group."""

    group_id: GroupId
    id: MessageId | None = None
    """Chosen by the app so that a re-send is idempotent; default: random."""


class GroupMessage(Message):
    """A group message, decrypted and verified (the text travels as a blob)."""

    group_id: GroupId
    seq: U64
    """Its place in the group's order: the same on every member."""
    id: MessageId
    sender: NodeIdBytes
    """Verified: signed by it, a member when the hub ordered it."""
    timestamp_ms: U64
    """When the hub ordered it."""


class StoredMessage(GroupMessage):
    text: str


@message("groups.history_reply", "reply")
class HistoryReply(Message):
    """Messages after `after`, in group order; those this node cannot decrypt (sent before
    it joined, or whose key never came) are left out."""

    messages: list[StoredMessage]
    seq: U64
    """The last log entry this node has."""
    last: U64 = 0
    """The last message looked at (shown or left out): ask again after it; `seq` when there is
    nothing more."""


@message("groups.history", "request", reply=HistoryReply)
class History(Message):
    """Messages of a group (the log keeps 24 h)."""

    group_id: GroupId
    after: U64 = 0
    """Last seq already shown."""
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


@message("groups.message", "event", blobs="1: the text (UTF-8)")
class MessageReceived(GroupMessage):
    """A group message, decrypted, in group order per group. Missed events can be read with
    `groups.history`."""


@message("groups.member", "event")
class MemberChanged(Message):
    """Membership changed: a member joined, left, was kicked, or its role changed."""

    group_id: GroupId
    node_id: NodeIdBytes
    change: Literal["joined", "left", "kicked", "role"]
    role: Role = "member"
    seq: U64 = 0


@message("groups.changed", "event")
class GroupChanged(Message):
    """A group appeared, was left or removed, or changed hub (`hub`, `term`)."""

    group_id: GroupId
    change: Literal["created", "joined", "hub", "left", "removed"]
    hub: NodeIdBytes
    term: U64
    seq: U64 = 0
    """For `hub`: the log entry that opened the term (no message has that seq)."""


@message("groups.invited", "event")
class Invited(Invite):
    """An invitation arrived."""


@message("groups.refused", "event")
class Refused(Message):
    """The hub refused a request of this node (`what`: `join`, `leave`, `kick`, `role`,
    `invite`, `msg`, `sync`, `create`) and said why."""

    group_id: GroupId
    what: str
    reason: str


@message("groups.status", "event")
class SendStatus(Message):
    """A sent message moved: `ordered` (the hub gave it its seq) or `failed`."""

    group_id: GroupId
    id: MessageId
    status: Literal["ordered", "failed"]
    seq: U64 = 0
    reason: str = ""
