"""`tom group ...`: group messaging from the command line (the groups service's app API,
through tom.client).

    tom group create NAME [MEMBER...] [--hub NODE] [--open]   create, invite MEMBERs
    tom group invite GROUP NODE                               invite a node
    tom group join GROUP [--hub NODE]                         accept an invitation (or join
                                                              an open group through its hub)
    tom group decline GROUP                                   drop an invitation
    tom group leave GROUP                                     leave
    tom group kick GROUP NODE                                 remove a member (admins)
    tom group role GROUP NODE admin|member                    change a member's role (admins)
    tom group list [--json]                                   groups and invitations
    tom group members GROUP                                   members, roles, the hub
    tom group send GROUP TEXT [--wait]                        send (--wait: until ordered)
    tom group history GROUP [--after N] [--json]              messages, in group order

NODE (and MEMBER, --hub) is a node id, 64 hex or 52 base32 characters, optionally
``ID@host:port`` to introduce the node to the router first (as `tom send` takes it). GROUP
is a group id, or the name of a group this node is in when only one has it (for `join` and
`decline`: of an invitation). Input errors exit 1 (`tom: ...`); the commands that wait for
the hub (create with another hub, join, leave, kick, role, send --wait) exit 2 when it did
not answer within --timeout.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from shared import nodeid
from shared.bus import socket
from shared.paths import DataDir
from shared.wire import DecodeError, WireError, decode
from shared.wire.messages import groups as gm

from .client import Client, GroupMessage
from .display import printable
from .node import NodeError, UsageError
from .peer import Peer, parse_peer

GROUP_ID = re.compile(r"[a-z0-9-]{1,64}")
POLL_S = 0.1
"""How often a command that waits for the hub looks at this node's state."""


def short(node_id: bytes) -> str:
    return nodeid.short(node_id)


def connect(data: DataDir, timeout_s: float = 5.0) -> Client:
    if not data.endpoints.exists():
        raise NodeError(f"no node at {data.root} ({data.endpoints.name} missing): "
                        "start one with `tom node up`")
    return Client(data, timeout_s=min(timeout_s, 5.0), with_groups=False)


def introduce(client: Client, peer: Peer) -> bytes:
    """The peer's id, after telling the router its address when one was given."""
    if peer.address:
        client.add_peer(peer.node_id, peer.host, peer.port)
    return peer.node_id


def node_arg(client: Client, text: str) -> bytes:
    return introduce(client, parse_peer(text))


def resolve(groups: list[gm.GroupInfo], text: str) -> gm.GroupInfo:
    """The group this node is in named by ``text`` (its id, or a name only one has)."""
    mine = [g for g in groups if g.member]
    for g in mine:
        if g.group_id == text:
            return g
    named = [g for g in mine if g.name == text]
    if len(named) == 1:
        return named[0]
    if named:
        raise NodeError(f"{len(named)} groups are named {printable(text, 64)!r}: give the id "
                        f"({', '.join(g.group_id for g in named)})")
    raise NodeError(f"not a group this node is in: {printable(text, 64)!r} "
                    "(`tom group list` shows them)")


def resolve_invite(invites: list[gm.Invite], text: str) -> gm.Invite | None:
    """The invitation named by ``text`` (group id or a name only one has), or None."""
    for i in invites:
        if i.group_id == text:
            return i
    named = [i for i in invites if i.name == text]
    if len(named) > 1:
        raise NodeError(f"{len(named)} invitations are to groups named "
                        f"{printable(text, 64)!r}: give the id "
                        f"({', '.join(i.group_id for i in named)})")
    return named[0] if named else None


def group_of(client: Client, text: str) -> gm.GroupInfo:
    return resolve(client.groups().groups, text)


def n_members(g: gm.GroupInfo) -> str:
    return f"{len(g.members)} member{'s' if len(g.members) != 1 else ''}"


def label(g: gm.GroupInfo | gm.Invite) -> str:
    return f"{printable(g.name, 64)} ({g.group_id})"


def wait_for(client: Client, check: Callable[[gm.ListReply], object],
             timeout_s: float) -> object:
    """Poll this node's groups until ``check`` holds (its result) or ``timeout_s`` passed
    (None). The hub answers through the router, so there is nothing to wait on but the
    state."""
    deadline = time.monotonic() + timeout_s
    while True:
        if result := check(client.groups()):
            return result
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)  # polling the groups service's state


def find(listed: gm.ListReply, gid: str) -> gm.GroupInfo | None:
    return next((g for g in listed.groups if g.group_id == gid and g.member), None)


def timed_out(timeout_s: float, what: str) -> int:
    print(f"timeout after {timeout_s:g} s: {what}", file=sys.stderr)
    return 2


def who(node_id: bytes, own: bytes) -> str:
    if node_id == own:
        return "this node"
    return short(node_id)


# -- the commands ---------------------------------------------------------------------------

def cmd_create(data: DataDir, args: Any) -> int:
    if not 1 <= len(args.name) <= 64:
        raise UsageError("a group name is 1 to 64 characters")
    with connect(data, args.timeout) as client:
        members = [node_arg(client, m) for m in args.members]
        hub = node_arg(client, args.hub) if args.hub else None
        own = client.node_id()
        gid = client.group_create(args.name, members, hub, invite_only=not args.open)
        g = wait_for(client, lambda listed: find(listed, gid), args.timeout)
        if g is None:
            return timed_out(args.timeout, f"asked {short(hub or own)} to host group {gid}; "
                             "it has not created it yet (`tom group list` will show it)")
    assert isinstance(g, gm.GroupInfo)
    invited = [short(m) for m in dict.fromkeys(members) if m != own]
    print(f"created group {gid} {printable(args.name, 64)!r} "
          f"({'open' if args.open else 'invite-only'}), hub {who(g.hub, own)}"
          + (f"; invited {', '.join(invited)}" if invited else ""))
    return 0


def cmd_invite(data: DataDir, args: Any) -> int:
    with connect(data) as client:
        g = group_of(client, args.group)
        node = node_arg(client, args.node)
        client.group_invite(g.group_id, node)
    print(f"invited {short(node)} to {label(g)}: the hub sends the invitation")
    return 0


def cmd_join(data: DataDir, args: Any) -> int:
    with connect(data, args.timeout) as client:
        listed = client.groups()
        hub = node_arg(client, args.hub) if args.hub else None
        invite = resolve_invite(listed.invites, args.group)
        if invite is not None:
            gid = invite.group_id
        else:
            known = next((g for g in listed.groups if g.member and args.group in
                          (g.group_id, g.name)), None)
            if known is not None:
                print(f"already a member of {label(known)}")
                return 0
            if hub is None:
                raise NodeError(f"no invitation to {printable(args.group, 64)!r} "
                                "(`tom group list` shows them); to join an open group give "
                                "its id and --hub")
            if not GROUP_ID.fullmatch(args.group):
                raise UsageError(f"not a group id: {printable(args.group, 64)!r} (1-64 "
                                "lowercase letters, digits and -)")
            gid = args.group
        client.group_join(gid, hub)
        g = wait_for(client, lambda listed: find(listed, gid), args.timeout)
        if g is None:
            return timed_out(args.timeout, "the hub has not admitted this node yet (not "
                             "invited, the group full, or the hub unreachable)")
    assert isinstance(g, gm.GroupInfo)
    print(f"joined {label(g)}: {n_members(g)}")
    return 0


def cmd_decline(data: DataDir, args: Any) -> int:
    with connect(data) as client:
        invite = resolve_invite(client.groups().invites, args.group)
        if invite is None:
            raise NodeError(f"no invitation to {printable(args.group, 64)!r} "
                            "(`tom group list` shows them)")
        client.group_decline(invite.group_id)
    print(f"declined the invitation to {label(invite)}")
    return 0


def cmd_leave(data: DataDir, args: Any) -> int:
    with connect(data, args.timeout) as client:
        g = group_of(client, args.group)
        client.group_leave(g.group_id)
        if not wait_for(client, lambda listed: find(listed, g.group_id) is None,
                        args.timeout):
            return timed_out(args.timeout, "the hub has not confirmed yet")
    print(f"left {label(g)}")
    return 0


def cmd_kick(data: DataDir, args: Any) -> int:
    with connect(data, args.timeout) as client:
        g = group_of(client, args.group)
        node = node_arg(client, args.node)
        client.group_kick(g.group_id, node)

        def gone(listed: gm.ListReply) -> bool:
            now = find(listed, g.group_id)
            return now is None or all(m.node_id != node for m in now.members)

        if not wait_for(client, gone, args.timeout):
            return timed_out(args.timeout, "the hub has not removed it yet")
    print(f"kicked {short(node)} from {label(g)}")
    return 0


def cmd_role(data: DataDir, args: Any) -> int:
    with connect(data, args.timeout) as client:
        g = group_of(client, args.group)
        node = node_arg(client, args.node)
        client.group_set_role(g.group_id, node, args.role)

        def done(listed: gm.ListReply) -> bool:
            now = find(listed, g.group_id)
            return now is not None and any(m.node_id == node and m.role == args.role
                                           for m in now.members)

        if not wait_for(client, done, args.timeout):
            return timed_out(args.timeout, "the hub has not changed it yet")
    print(f"{short(node)} is {args.role} in {label(g)}")
    return 0


def info_json(g: gm.GroupInfo) -> dict[str, Any]:
    return {"group_id": g.group_id, "name": g.name, "hub": g.hub.hex(), "term": g.term,
            "seq": g.seq, "member": g.member, "invite_only": g.invite_only,
            "max_members": g.max_members,
            "members": [{"node_id": m.node_id.hex(), "role": m.role, "joined_ms": m.joined_ms}
                        for m in g.members],
            "successors": [s.hex() for s in g.successors]}


def cmd_list(data: DataDir, args: Any) -> int:
    with connect(data) as client:
        listed = client.groups()
        own = client.node_id()
    if args.json:
        print(json.dumps({
            "groups": [info_json(g) for g in listed.groups],
            "invites": [{"group_id": i.group_id, "name": i.name, "hub": i.hub.hex(),
                         "inviter": i.inviter.hex(), "expires_ms": i.expires_ms}
                        for i in listed.invites]}, indent=2))
        return 0
    if not listed.groups:
        print("no groups")
    else:
        print(f"{'GROUP':25} {'NAME':20} {'MEMBERS':>7} {'ROLE':8} HUB")
    for g in listed.groups:
        role = next((m.role for m in g.members if m.node_id == own), "hub only")
        print(f"{g.group_id:25} {printable(g.name, 19):20} {len(g.members):>7} {role:8} "
              f"{who(g.hub, own)}")
    if listed.invites:
        print("invitations (tom group join GROUP):")
    for i in listed.invites:
        expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.expires_ms / 1000))
        print(f"{i.group_id:25} {printable(i.name, 19):20} from {short(i.inviter)}, hub "
              f"{who(i.hub, own)}, until {expires}")
    return 0


def usernames(client: Client) -> dict[bytes, str]:
    """Usernames the router knows (best effort: only for display)."""
    try:
        return {p.node_id: p.username for p in client.peers() if p.username}
    except WireError:
        return {}


def cmd_members(data: DataDir, args: Any) -> int:
    with connect(data) as client:
        g = group_of(client, args.group)
        own = client.node_id()
        names = usernames(client)
    print(f"{label(g)}: {n_members(g)}, hub {who(g.hub, own)} (term {g.term})")
    for m in sorted(g.members, key=lambda m: (m.role != "admin", m.joined_ms)):
        notes = [n for n, yes in (("this node", m.node_id == own), ("hub", m.node_id == g.hub))
                 if yes]
        if m.node_id in names:
            notes.append(printable(names[m.node_id], 32))
        print(f"{m.node_id.hex()}  {m.role:6}  {', '.join(notes)}".rstrip())
    return 0


def cmd_send(data: DataDir, args: Any) -> int:
    with connect(data, args.timeout) as client:
        g = group_of(client, args.group)
        if not args.wait:
            msg_id = client.group_send(g.group_id, args.text, deadline_s=args.timeout)
            print(f"stored {msg_id.hex()}: the groups service sends it to the hub until it is "
                  "ordered")
            return 0
        rc, outcome = send_and_wait(client, g, args.text, args.timeout)
    print(outcome, file=sys.stderr if rc else sys.stdout)
    return rc


def send_and_wait(client: Client, g: gm.GroupInfo, text: str,
                  timeout_s: float) -> tuple[int, str]:
    """Send and wait until the hub has ordered it: (0, "ordered as #N"), (1, "failed: why")
    or (2, timeout). The ``groups.status`` event may be missed (nobody queues events): the
    group's history is looked at every second too."""
    deadline = time.monotonic() + timeout_s
    sub = socket(zmq.Context.instance(), zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        client.bus.connect(sub, "groups", client.endpoints["groups"].events)
        msg_id = client.group_send(g.group_id, text, deadline_s=timeout_s)
        check_at = time.monotonic() + 1.0
        while True:
            left = deadline - time.monotonic()
            if sub.poll(max(0, int(min(left, 0.25) * 1000))):
                try:
                    ev = decode(sub.recv_multipart()[1:]).body
                except DecodeError:
                    continue
                if isinstance(ev, gm.SendStatus) and ev.id == msg_id:
                    if ev.status == "ordered":
                        return 0, f"ordered as #{ev.seq}"
                    return 1, f"failed: {ev.reason or 'no reason given'}"
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + 1.0
                try:
                    page, _ = client.group_history(g.group_id, g.seq, 1000)
                except WireError:
                    page = []  # stored: wait for the service to answer again
                if any(m.info.id == msg_id for m in page):
                    seq = next(m.seq for m in page if m.info.id == msg_id)
                    return 0, f"ordered as #{seq}"
            if time.monotonic() >= deadline:
                return 2, (f"timeout after {timeout_s:g} s: not ordered yet (the groups "
                           "service keeps sending it to the hub)")
    finally:
        sub.close(0)


def history(client: Client, gid: str, after: int) -> list[GroupMessage]:
    """Every message after ``after`` (page by page)."""
    out: list[GroupMessage] = []
    while True:
        page, _ = client.group_history(gid, after, 1000)
        if not page:
            return out
        out += page
        after = page[-1].seq


def cmd_history(data: DataDir, args: Any) -> int:
    with connect(data) as client:
        g = group_of(client, args.group)
        own = client.node_id()
        messages = history(client, g.group_id, args.after)
    if args.json:
        print(json.dumps([{"seq": m.seq, "id": m.info.id.hex(), "sender": m.info.sender.hex(),
                           "timestamp_ms": m.info.timestamp_ms, "text": m.text}
                          for m in messages], indent=2))
        return 0
    for m in messages:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.info.timestamp_ms / 1000))
        sender = "me" if m.info.sender == own else short(m.info.sender)
        print(f"#{m.seq} [{stamp}] {sender}: {printable(m.text)}")
    return 0
