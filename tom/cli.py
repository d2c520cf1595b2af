"""The `tom` command.

    tom init                      create the data directory: identity, node.toml (every key
                                  documented, a free UDP port chosen), endpoints
    tom id                        print the node id
    tom node up [--all-in-one]    start the node under supervisord and wait until it serves
    tom node down                 stop it (each service as soon as the one before stopped)
    tom node status [--json]      each service's state, pid, uptime, ping and counters
    tom ping SERVICE [-c N]       ping one service over the bus
    tom peers                     known peers, their paths (direct or relayed), own address
    tom backup [--json]           what this node holds for offline recipients (counts)
    tom chat [PEER] [--bot]       chat in the terminal (tom/chat.py), or run an echo bot
    tom send PEER TEXT            send one message; exit 0 delivered, 1 failed, 2 timed out
                                  (why it is not delivered is printed as soon as known)
    tom inbox [--unread] [--follow] [--json] [--mark-read]
                                  the messages received (tom/inbox.py); --follow: and new
                                  ones as they arrive
    tom group ACTION ...          groups: create, invite, join, decline, leave, kick, role,
                                  list, members, send, history (tom/group.py)

Every command takes ``--data DIR`` (default ``$TOM_HOME`` or ``~/.tom``), before or after
the command's name; ``tom --version`` prints the version. Every option has ``--help`` text.

Exit codes (README, "Exit codes"): 0 done; 1 failed (a service said no, a message failed, the
node is not healthy); 2 timed out (``send``, the group commands that wait); 3 the node is not
running (said at once, without waiting for a bus timeout); 64 usage error (bad option, node id
or address); 130 interrupted; 141 the output pipe was closed (``tom peers | head -1``), quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from services.crypto import keyfile
from shared import IMPL
from shared import endpoints as ep
from shared.bus import BusClient
from shared.buskeys import BusKeys
from shared.config import ConfigError
from shared.paths import DataDir, default_data_dir
from shared.wire import WireError
from shared.wire.messages.sys import Ping, PingReply

from . import group, node
from .display import printable
from .peer import parse_peer

EX_DONE = EX_DELIVERED = 0
"""Done; for `tom send`: the recipient's router acknowledged the message."""
EX_FAILED = 1
"""Failed; for `tom send`: the message failed, and why is printed (a final reason such as
``refused: a different node (...) answers at host:port``), or the router refused it."""
EX_TIMEOUT = 2
"""Timed out; for `tom send`: still not delivered at ``--timeout`` (the node retries it),
with the last status and why it waits."""
EX_NOT_RUNNING = 3
EX_USAGE = 64  # sysexits.h EX_USAGE
EX_INTERRUPTED = 130
EX_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe


def json_values(body: msgspec.Struct) -> Any:
    """A reply as JSON values, bytes (node ids, envelope ids) in hex as the text output
    shows them."""
    def hexed(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, dict):
            return {k: hexed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [hexed(v) for v in value]
        return value
    return hexed(msgspec.to_builtins(body, builtin_types=(bytes,)))


def client_for(data: DataDir, timeout_s: float = 2.0) -> BusClient:
    try:
        return BusClient(ep.load(data.endpoints), src="tom-cli", timeout_s=timeout_s,
                         keys=BusKeys(data.bus_keys))
    except ep.EndpointsError as e:
        raise node.NodeError(str(e)) from None


def cmd_init(data: DataDir, args: argparse.Namespace) -> int:
    r = node.init(data)
    print(f"{'created' if r.created_identity else 'kept'} identity {r.node_id.hex()}")
    print(f"data directory {data.root} (config {data.config.name}, endpoints "
          f"{data.endpoints.name}, run directory {data.run.name}/ with mode 0700)")
    print(r.port_note)
    return 0


def cmd_id(data: DataDir, args: argparse.Namespace) -> int:
    client = client_for(data) if data.endpoints.exists() else None
    try:
        print(node.node_id(data, client).hex())
    finally:
        if client:
            client.close()
    return 0


def cmd_up(data: DataDir, args: argparse.Namespace) -> int:
    r = node.init(data)
    sup = node.Supervisor(data)
    if sup.running():
        print("the node is already running")
    else:
        node.check_config(data)
        node.check_port(data)
        print(r.port_note)
        sup.start(args.all_in_one, args.foreground)
    with client_for(data) as client:
        late = node.wait_ready(client, sup, args.timeout)
        print(f"node {r.node_id.hex()}")
        print(node.transport_address(client))
        print_status(sup, client, data)
    if late:
        logs = ", ".join(str(data.logs / f"{r}.log") for r in late)
        print(f"not answering: {', '.join(late)} (see {logs})",
              file=sys.stderr)
        return 1
    return 0


def cmd_down(data: DataDir, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    node.Supervisor(data).stop()
    print(f"node stopped ({time.monotonic() - t0:.1f} s)")
    return 0


def print_status(sup: node.Supervisor, client: BusClient, data: DataDir,
                 as_json: bool = False) -> bool:
    rows = node.states(sup, client)
    healthy = all(s.healthy for s in rows)
    if as_json:
        print(json.dumps([{
            "service": s.role, "program": s.program, "state": s.state, "pid": s.pid,
            "ping_ms": s.ping_ms, "error": s.error,
            "status": json_values(s.status) if s.status else None,
        } for s in rows], indent=2))
        return healthy
    print(f"{'SERVICE':10} {'STATE':9} {'PID':>7} {'UPTIME':>9} {'PING':>8} {'IN':>8} "
          f"{'OUT':>8} {'DECODE_ERR':>10} {'DROPS':>6}")
    for s in rows:
        st = s.status
        up = f"{st.uptime_s:.1f}s" if st else "-"
        ping = f"{s.ping_ms:.2f}ms" if s.ping_ms is not None else "-"
        print(f"{s.role:10} {s.state:9} {s.pid or '-':>7} {up:>9} {ping:>8} "
              f"{st.frames_in if st else '-':>8} {st.frames_out if st else '-':>8} "
              f"{st.decode_errors if st else '-':>10} {st.drops if st else '-':>6}")
    for s in rows:
        if s.error:
            print(f"  {s.role}: {s.error}")
        if s.status is not None and s.status.impl != IMPL:  # a swapped implementation
            print(f"  {s.role}: implementation {s.status.impl}")
        if s.role == "backup" and s.status is not None:  # its queues: what it holds
            q = s.status.queues
            print(f"  backup: holding {q.get('held', 0)} message(s), "
                  f"{q.get('held_bytes', 0):,} bytes for offline recipients (`tom backup`)")
    print("healthy" if healthy else "NOT healthy")
    return healthy


def cmd_status(data: DataDir, args: argparse.Namespace) -> int:
    sup = node.Supervisor(data)
    if not sup.running():
        node.require_running(data)  # services may run without supervisord (alone, compose)
        if not args.json:
            print(f"supervisord is not running for {data.root}; services found listening:")
    with client_for(data) as client:
        if not args.json:
            try:
                print(f"node {node.node_id(data, client).hex()}  data {data.root}")
            except node.NodeError as e:
                print(f"node id unknown: {e}")
            print(node.transport_address(client))
        return 0 if print_status(sup, client, data, args.json) else 1


def cmd_metrics(data: DataDir, args: argparse.Namespace) -> int:
    from prometheus_client import generate_latest

    from . import metrics

    def factory() -> BusClient:
        return client_for(data, metrics.SCRAPE_TIMEOUT_S)

    if args.once:
        sys.stdout.write(generate_latest(metrics.registry(factory)).decode())
        return 0
    metrics.serve(factory, args.listen or os.environ.get("TOM_METRICS_LISTEN")
                  or metrics.DEFAULT_LISTEN)
    return 0


def cmd_ping(data: DataDir, args: argparse.Namespace) -> int:
    rtts = []
    with client_for(data, args.timeout) as client:
        for _ in range(args.count):
            t0 = time.perf_counter()
            reply = client.request(args.service, Ping())
            rtts.append((time.perf_counter() - t0) * 1000)
    assert isinstance(reply, PingReply)
    print(f"{args.service} answered {args.count} ping(s): "
          f"median {statistics.median(rtts):.3f} ms, max {max(rtts):.3f} ms "
          f"({reply.impl}, pid {reply.pid})")
    return 0


def cmd_backup(data: DataDir, args: argparse.Namespace) -> int:
    """What this node holds for offline recipients on behalf of others: counts only."""
    from shared.wire.messages import backup as bm

    with client_for(data) as client:
        reply = client.request("backup", bm.Summary())
    assert isinstance(reply, bm.SummaryReply)
    if args.json:
        print(json.dumps(json_values(reply)))
        return 0
    print(f"holding {reply.messages} message(s), {reply.bytes:,} bytes for offline "
          f"recipients (capacity {reply.capacity_messages:,} messages, "
          f"{reply.capacity_bytes:,} bytes); {reply.receipts} delivery ACK(s) kept for "
          "their senders")
    for title, rows in (("handed over by", reply.origins), ("for", reply.recipients)):
        if rows:
            print(f"{title}:")
            for u in rows:
                print(f"  {u.node_id.hex()}  {u.messages} message(s)  {u.bytes:,} bytes")
    return 0


def cmd_peers(data: DataDir, args: argparse.Namespace) -> int:
    from shared.wire.messages import router as rm
    from shared.wire.messages import transport as tm

    with client_for(data) as client:
        info = client.request("transport", tm.Info())
        assert isinstance(info, tm.InfoReply)
        seen = ", ".join(f"{a.host}:{a.port}" for a in info.reflexive) or "not reported yet"
        mapped = "".join(f", forwarded by its router at {a.host}:{a.port}"
                         for a in info.mapped)  # PCP/NAT-PMP ([transport] port_mapping)
        print(f"this node: {info.host}:{info.port}, seen by peers at {seen}{mapped}")
        try:
            reply = client.request("router", rm.Peers())
        except WireError as e:  # the transport alone still knows its connections
            print(f"router not answering ({e}); connections of the transport:")
            links = client.request("transport", tm.Peers())
            assert isinstance(links, tm.PeersReply)
            for c in links.peers:
                print(f"{c.node_id.hex()}  direct  rtt {c.rtt_ms:.2f} ms  {c.host}:{c.port}")
            return 0
    assert isinstance(reply, rm.PeersReply)
    if not reply.peers:
        print("no known peers")
    rtts = {p.node_id: p.rtt_ms for p in reply.peers}
    for p in reply.peers:
        if p.path == "direct":
            path = f"direct   rtt {p.rtt_ms or 0:.2f} ms"
        elif p.path == "relayed":
            path = "relayed  via " + " > ".join(r.hex()[:12] for r in p.route)
            path += f" (first hop rtt {rtts.get(p.route[0]) or 0:.2f} ms)"
        else:
            path = "no path"
        name = f" ({printable(p.username, 32)})" if p.username else ""
        where = f"  {printable(p.host, 64)}:{p.port}" if p.host else ""
        print(f"{p.node_id.hex()}{name}  {p.status:7}  {path}{where}")
    return 0


def cmd_chat(data: DataDir, args: argparse.Namespace) -> int:
    from . import chat  # textual is imported by these two commands only

    return chat.cmd_chat(data, args)


def cmd_send(data: DataDir, args: argparse.Namespace) -> int:
    from . import chat

    return chat.cmd_send(data, args)


def cmd_inbox(data: DataDir, args: argparse.Namespace) -> int:
    from . import inbox

    return inbox.cmd_inbox(data, args)


def positive_float(text: str) -> float:
    x = float(text)
    if not x > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return x


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def nonnegative(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return n


def node_arg(text: str) -> str:
    """A PEER argument, checked while parsing (a usage error, before anything else) and
    passed on as written."""
    try:
        parse_peer(text)
    except node.UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


NODE_HELP = "node id (64 hex or 52 base32 characters), optionally ID@host:port to introduce it"
GROUP_HELP = "group id, or the name of a group this node is in"


def add_group_parser(sub: argparse._SubParsersAction,
                     common: argparse.ArgumentParser) -> None:
    g = sub.add_parser("group", parents=[common], help="group messaging: create, invite, "
                       "join, leave, send, history (tom group ACTION --help)"
                       ).add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, func: object, wait: str = "") -> argparse.ArgumentParser:
        a = g.add_parser(name, parents=[common], help=help)
        a.set_defaults(func=func)
        if wait:
            a.add_argument("--timeout", type=positive_float, default=30.0,
                           help=f"seconds to wait for {wait} (default 30; exit 2 after it)")
        return a

    c = action("create", "create a group (this node its admin) and invite MEMBERs",
               group.cmd_create, "the hub to create it")
    c.add_argument("name", metavar="NAME", help="the group's name (1-64 characters)")
    c.add_argument("members", nargs="*", metavar="MEMBER", type=node_arg,
                   help=f"{NODE_HELP}; invited")
    c.add_argument("--hub", metavar="NODE", type=node_arg, help="the node that orders and "
                   "fans out the group's messages (default: this node)")
    c.add_argument("--open", action="store_true",
                   help="anyone who knows the group id and hub may join (default: invited "
                   "nodes only)")
    i = action("invite", "invite a node (admins; any member of an open group)",
               group.cmd_invite)
    i.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    i.add_argument("node", metavar="NODE", type=node_arg, help=NODE_HELP)
    j = action("join", "accept an invitation, or join an open group through its hub",
               group.cmd_join, "the hub to admit this node")
    j.add_argument("group", metavar="GROUP", help="group id, or the name of an invitation")
    j.add_argument("--hub", metavar="NODE", type=node_arg, help="the group's hub, to join an "
                   "open group without an invitation")
    d = action("decline", "drop an invitation", group.cmd_decline)
    d.add_argument("group", metavar="GROUP", help="group id, or the name of an invitation")
    lv = action("leave", "leave a group (the last admin must first make another admin)",
                group.cmd_leave, "the hub to confirm")
    lv.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    k = action("kick", "remove a member (admins only)", group.cmd_kick,
               "the hub to remove it")
    k.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    k.add_argument("node", metavar="NODE", type=node_arg, help=NODE_HELP)
    r = action("role", "make a member admin or member (admins only)", group.cmd_role,
               "the hub to change it")
    r.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    r.add_argument("node", metavar="NODE", type=node_arg, help=NODE_HELP)
    r.add_argument("role", choices=("admin", "member"), help="the new role")
    ls = action("list", "the groups this node is in (or hosts) and its invitations",
                group.cmd_list)
    ls.add_argument("--json", action="store_true", help="machine-readable, with every field")
    m = action("members", "a group's members, their roles and its hub", group.cmd_members)
    m.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    sd = action("send", "send a message to a group", group.cmd_send,
                "the service to store it (with --wait: the hub to order it)")
    sd.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    sd.add_argument("text", metavar="TEXT", help="the message (UTF-8, at most 16 KiB)")
    sd.add_argument("--wait", action="store_true",
                    help="wait until the hub has ordered it and print its place (#seq)")
    h = action("history", "a group's messages in group order (the log keeps 24 h)",
               group.cmd_history)
    h.add_argument("group", metavar="GROUP", help=GROUP_HELP)
    h.add_argument("--after", type=nonnegative, default=0, metavar="N",
                   help="only messages after seq N (default 0: all)")
    h.add_argument("--json", action="store_true",
                   help="machine-readable: seq, id, sender, timestamp_ms, text")


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors exiting 64 (EX_USAGE) instead of 2: 2 means "timed out"
    for `tom send` and the group commands."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def version() -> str:
    try:
        return metadata.version("tom-node")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    # --data and --endpoints are accepted before or after the command (and its action)
    common = Parser(add_help=False)
    common.add_argument("--data", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                        help="node data directory (default: $TOM_HOME or ~/.tom)")
    common.add_argument("--endpoints", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help="endpoints file (default: DIR/endpoints.toml)")
    p = Parser(prog="tom", description="Run and inspect a ToM node.", parents=[common],
               epilog="exit codes: 0 done, 1 failed, 2 timed out, 3 the node is not running, "
               "64 usage error, 130 interrupted, 141 output pipe closed")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                   help="print the version of tom-node and exit")
    p.set_defaults(needs_node=True)  # commands that talk to the node check it runs first
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("init", parents=[common], help="create the data directory, identity and "
                   "config").set_defaults(func=cmd_init, needs_node=False)
    sub.add_parser("id", parents=[common], help="print the node id"
                   ).set_defaults(func=cmd_id, needs_node=False)
    n = sub.add_parser("node", parents=[common], help="run the node: up, down, status"
                       ).add_subparsers(dest="action", required=True, metavar="ACTION")
    up = n.add_parser("up", parents=[common], help="start all services under supervisord")
    up.add_argument("--all-in-one", action="store_true",
                    help="run the five services in one process")
    up.add_argument("--foreground", action="store_true",
                    help="run supervisord in the foreground (containers)")
    up.add_argument("--timeout", type=positive_float, default=20.0,
                    help="seconds to wait for every service to answer (default 20)")
    up.set_defaults(func=cmd_up, needs_node=False)
    n.add_parser("down", parents=[common], help="stop the node (each service as soon as the "
                 "one before it has stopped)").set_defaults(func=cmd_down, needs_node=False)
    st = n.add_parser("status", parents=[common], help="show each service's state and counters")
    st.add_argument("--json", action="store_true", help="machine-readable, one object per "
                    "service")
    st.set_defaults(func=cmd_status, needs_node=False)
    backup = sub.add_parser("backup", parents=[common], help="what this node holds for "
                            "offline recipients on behalf of others (counts only)")
    backup.add_argument("--json", action="store_true", help="print JSON")
    backup.set_defaults(func=cmd_backup)
    sub.add_parser("peers", parents=[common], help="known peers: path (direct with RTT, "
                   "or relayed via whom) and this node's public address"
                   ).set_defaults(func=cmd_peers)
    metrics = sub.add_parser("metrics", parents=[common], help="serve the services' counters "
                             "in Prometheus text format (HTTP /metrics), or print them once")
    metrics.add_argument("--listen", default=None, metavar="HOST:PORT",
                         help="address to serve on (default $TOM_METRICS_LISTEN or "
                         "127.0.0.1:9464)")
    metrics.add_argument("--once", action="store_true", help="print one scrape and exit")
    metrics.set_defaults(func=cmd_metrics, needs_node=False)
    ping = sub.add_parser("ping", parents=[common], help="ping one service")
    ping.add_argument("service", choices=ep.ROLES, metavar="SERVICE",
                      help=f"the service to ping: {', '.join(ep.ROLES)}")
    ping.add_argument("-c", "--count", type=positive, default=1, metavar="N",
                      help="how many pings, one after the other (default 1)")
    ping.add_argument("--timeout", type=positive_float, default=2.0,
                      help="seconds to wait for each answer (default 2)")
    ping.set_defaults(func=cmd_ping)
    chat = sub.add_parser("chat", parents=[common], help="chat in the terminal (or --bot)")
    chat.add_argument("peer", nargs="?", metavar="PEER", type=node_arg,
                      help="node id to chat with (64 hex or 52 base32 characters), optionally "
                      "ID@host:port to introduce it first")
    chat.add_argument("--bot", action="store_true",
                      help="headless: print each message received, mark it read and reply "
                      "'echo: <text>', until SIGINT/SIGTERM")
    chat.set_defaults(func=cmd_chat)
    send = sub.add_parser("send", parents=[common], help="send one message and wait until it "
                          "is delivered (exit 0), failed (1) or timed out (2)",
                          description="Send one message and wait for the outcome, printing "
                          "why it is not delivered as soon as the node knows (no route, "
                          "nothing listening at the address, the recipient offline and "
                          "where the message is held). Exit status: 0 delivered, 1 failed "
                          "(the reason is printed), 2 not delivered by --timeout (the last "
                          "reason), 3 the node is not running, 64 usage error.")
    send.add_argument("peer", metavar="PEER", type=node_arg,
                      help="node id, optionally ID@host:port")
    send.add_argument("text", metavar="TEXT", help="the message (UTF-8)")
    send.add_argument("--timeout", type=positive_float, default=30.0,
                      help="seconds to wait for delivery (default 30; exit 2 after it)")
    send.add_argument("--no-encrypt", action="store_true",
                      help="signed but not end-to-end encrypted")
    send.set_defaults(func=cmd_send)
    inbox = sub.add_parser("inbox", parents=[common], help="the messages this node received, "
                           "oldest first (does not mark them read unless --mark-read)")
    inbox.add_argument("--unread", action="store_true",
                       help="only messages no app has shown yet (not marked read)")
    inbox.add_argument("--after", type=nonnegative, default=0, metavar="N",
                       help="only messages after inbox seq N (default 0: all)")
    inbox.add_argument("--follow", "-f", action="store_true",
                       help="then print new messages as they arrive, until Ctrl+C")
    inbox.add_argument("--json", action="store_true",
                       help="one JSON object per line: seq, id, sender, timestamp_ms, "
                       "encrypted, relayed, read, text")
    inbox.add_argument("--mark-read", action="store_true",
                       help="mark each message read once printed (its sender sees 'read')")
    inbox.set_defaults(func=cmd_inbox)
    add_group_parser(sub, common)
    return p


def output_closed() -> bool:
    """Whether stdout or stderr is a pipe (or socket) whose reader has gone."""
    poller = select.poll()
    for stream in (sys.stdout, sys.stderr):
        try:
            poller.register(stream.fileno(), select.POLLOUT)
        except (AttributeError, OSError, ValueError):
            continue  # closed, or not a real file (tests that capture output)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def main(argv: list[str] | None = None) -> int:
    try:
        rc = run(argv)
        sys.stdout.flush()  # inside the try: a closed pipe is often found only here
        return rc
    except BrokenPipeError:
        if not output_closed():
            raise  # a pipe of our own broke (supervisord's socket...): a real error
        # the reader went away (`tom peers | head -1`): stop writing and exit quietly, and
        # keep the interpreter's last flush at exit from failing again on the same pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_PIPE


def run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    data = DataDir(getattr(args, "data", None) or default_data_dir(),
                   getattr(args, "endpoints", None))
    try:
        if args.needs_node:
            node.require_running(data)
        rc: int = args.func(data, args)
        return rc
    except node.UsageError as e:
        print(f"tom: {e}", file=sys.stderr)
        return EX_USAGE
    except node.NodeNotRunning as e:
        print(f"tom: {e}", file=sys.stderr)
        return EX_NOT_RUNNING
    except (node.NodeError, WireError, ep.EndpointsError, keyfile.KeyFileError,
            ConfigError) as e:
        print(f"tom: {e}", file=sys.stderr)
        return EX_FAILED
    except KeyboardInterrupt:
        return EX_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
