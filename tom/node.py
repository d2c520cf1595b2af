"""Setting up a node's data directory and running it under supervisord."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.backup.config import BackupConfig
from services.crypto import keyfile
from services.crypto.config import CryptoConfig
from services.crypto.shell import key_path
from services.groups.config import GroupsConfig
from services.router.config import RouterConfig
from services.transport.config import DEFAULT_PORT, TransportConfig
from shared import config as cfg
from shared import endpoints as ep
from shared.bus import BusClient
from shared.buskeys import BusKeys
from shared.paths import DataDir
from shared.primitives import SigningKey
from shared.service import ServiceContext
from shared.wire import BusTimeout, WireError
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.sys import Ping, Status, StatusReply


def deploy_dir() -> Path:
    """deploy/: $TOM_DEPLOY, else the checkout's, else the copy installed under sys.prefix."""
    for candidate in (os.environ.get("TOM_DEPLOY"),
                      Path(__file__).resolve().parent.parent / "deploy",
                      Path(sys.prefix) / "share" / "tom-node" / "deploy"):
        if candidate and (Path(candidate) / "supervisord.conf").exists():
            return Path(candidate)
    raise NodeError("cannot find deploy/supervisord.conf: set TOM_DEPLOY to the project's "
                    "deploy directory")


PROGRAMS = {False: "conf.d/*.ini", True: "allinone/node.ini"}
CONFIG_SECTIONS: dict[str, type[cfg.Section]] = {
    "node": cfg.NodeSection,
    "bus": cfg.BusSection,
    "crypto": CryptoConfig,
    "transport": TransportConfig,
    "router": RouterConfig,
    "groups": GroupsConfig,
    "backup": BackupConfig,
}
"""Every section of node.toml (the sample ``tom init`` writes and ``tom node up``'s check)."""
PORT_SCAN = 100
"""Ports tried above the default when it is taken (``tom init``, ``port_fallback``)."""


class NodeError(Exception):
    """A node operation failed; the message says why and what to do."""


class UsageError(NodeError):
    """The command line is wrong (a bad node id, address or name): `tom` exits 64."""


NOT_RUNNING = "the node is not running (start it with `tom node up`)"


class NodeNotRunning(NodeError):
    """Nothing of the node is running: `tom` exits 3, at once, saying how to start it."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(NOT_RUNNING + (f": {detail}" if detail else ""))


LISTEN_PROBE_S = 0.5
"""How long :func:`listening` waits for a tcp:// connection (ipc:// answers at once)."""


def listening(endpoint: str, timeout_s: float = LISTEN_PROBE_S) -> bool:
    """Whether something accepts connections at a bus endpoint, without speaking ZeroMQ.

    An ``ipc://`` socket file whose service is gone refuses at once (ECONNREFUSED), so a
    stopped node is told apart in microseconds instead of a bus timeout; a ``tcp://``
    endpoint gets a plain TCP connect. The connection is closed before any ZeroMQ greeting,
    which the service's socket discards without involving the service.
    """
    scheme, _, rest = endpoint.partition("://")
    try:
        if scheme == "ipc":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                s.connect(rest)
            return True
        if scheme == "tcp":
            host, _, port = rest.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout_s):
                return True
    except (OSError, ValueError):
        return False
    return True  # another transport (inproc://): only a request can tell


def require_running(data: DataDir) -> None:
    """Raise :class:`NodeNotRunning` unless some service of the node listens on its endpoint
    (a few ms on ipc://; nothing waits for a bus timeout)."""
    if data.endpoints_override is None and not data.endpoints.exists():
        raise NodeNotRunning(f"there is no node in {data.root}")
    endpoints = ep.load(data.endpoints)
    if not any(listening(endpoints[role].rpc) for role in ep.ROLES if role in endpoints.roles):
        raise NodeNotRunning()


@dataclass
class InitResult:
    data: DataDir
    created_identity: bool
    node_id: bytes
    port_note: str = ""
    """What ``tom init`` says about the node's UDP port."""


def udp_port_taken(host: str, port: int) -> OSError | None:
    """Why a UDP socket cannot bind ``host:port`` now (as the transport binds it), or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def pick_port(host: str, start: int = DEFAULT_PORT,
              count: int = PORT_SCAN) -> tuple[int, list[int]]:
    """The first port from ``start`` that UDP can bind on ``host`` now, and the ones before
    it that were taken; NodeError if ``count`` ports in a row are taken."""
    taken: list[int] = []
    for port in range(start, min(start + count, 65536)):
        err = udp_port_taken(host, port)
        if err is None:
            return port, taken
        if err.errno != errno.EADDRINUSE:
            raise NodeError(f"cannot open a UDP socket on {host}:{port}: {err}")
        taken.append(port)
    raise NodeError(f"UDP ports {start} to {start + count - 1} on {host} are all taken: "
                    "set [transport] port in node.toml")


def _first_config(data: DataDir) -> tuple[str, str]:
    """node.toml for a new node: every key documented, and the UDP port chosen here (the
    one given by TOM_TRANSPORT__PORT, else 4433, else the next free one); and what to say
    about the port."""
    t = cfg.section({}, "transport", TransportConfig)
    var = cfg.env_name("transport", "port")
    written = f"written to {data.config}, used at every start"
    if var in os.environ:
        port, why = t.port, f"from {var}"
        note = f"UDP port {port} ({var}), {written}"
    else:
        try:
            port, taken = pick_port(t.host, DEFAULT_PORT)
        except NodeError as e:  # cannot bind there from here (another container's address?)
            port, taken = DEFAULT_PORT, []
            why = f"the default, not checked: {e}"
            note = f"UDP port {port} ({why}), {written}"
        else:
            why = "free on this machine"
            note = f"UDP port {port}, {written}"
        if taken:
            busy = ", ".join(map(str, taken[:3])) + (" ..." if len(taken) > 3 else "")
            why = f"{DEFAULT_PORT} was taken on this machine (another node?)"
            note = (f"UDP port {port}: {busy} {'is' if len(taken) == 1 else 'are'} taken "
                    f"(another node?); {written}")
    chosen = {"transport": {"port": (port, f"Chosen by `tom init` ({why}); peers dial it: "
                                           "keep it.")}}
    return cfg.sample(CONFIG_SECTIONS, chosen), note


def port_note(data: DataDir) -> str:
    """Which UDP port an existing node.toml (and the environment) gives the node."""
    try:
        raw = cfg.read(data.config)
        t = cfg.section(raw, "transport", TransportConfig)
    except cfg.ConfigError as e:
        return f"the UDP port is unknown: {e}"
    var = cfg.env_name("transport", "port")
    if var in os.environ:
        return f"UDP port {t.port} (from {var})"
    if "port" in raw.get("transport", {}):
        return f"UDP port {t.port} (node.toml)"
    return (f"UDP port {t.port}: the default, since node.toml sets none ([transport] port); "
            "write one there to keep this node's address if another node takes 4433")


def init(data: DataDir) -> InitResult:
    """Create what a node needs, keeping anything that already exists."""
    ep.ensure_private_dir(data.root)
    ep.ensure_private_dir(data.run)
    data.logs.mkdir(exist_ok=True)
    if data.config.exists():
        note = f"kept {data.config}: {port_note(data)}"
    else:
        text, note = _first_config(data)
        tmp = data.config.with_name(data.config.name + ".new")
        tmp.write_text(text)
        tmp.rename(data.config)
    if not data.endpoints.exists():
        ep.ipc(data.run).write(data.endpoints)
    BusKeys.create(data.bus_keys)
    context = load_context(data)
    path = key_path(context)
    created = keyfile.create(path)
    return InitResult(data, created, public_id(keyfile.load(path)), note)


def check_config(data: DataDir) -> None:
    """Every section of node.toml with the environment's overrides is valid (ConfigError
    saying which key, and which variable, otherwise): checked before anything starts."""
    raw = cfg.read(data.config)
    unknown = set(raw) - set(CONFIG_SECTIONS)
    if unknown:
        raise cfg.ConfigError(f"{data.config}: unknown section(s) "
                              f"{', '.join(sorted(unknown))} (sections: "
                              f"{', '.join(CONFIG_SECTIONS)})")
    for name, model in CONFIG_SECTIONS.items():
        cfg.section(raw, name, model, where=str(data.config))


def check_port(data: DataDir) -> None:
    """Before the node starts: its UDP port is free, unless ``port_fallback`` lets the
    transport take another (NodeError saying what to do otherwise)."""
    t = cfg.section(cfg.read(data.config), "transport", TransportConfig)
    if t.port == 0 or t.port_fallback:
        return
    err = udp_port_taken(t.host, t.port)
    if err is None:
        return
    if err.errno != errno.EADDRINUSE:
        raise NodeError(f"cannot open UDP {t.host}:{t.port}: {err} ([transport] host and "
                        f"port in {data.config})")
    try:
        free = f" ({pick_port(t.host, t.port + 1)[0]} is free)"
    except NodeError:
        free = ""
    raise NodeError(
        f"UDP port {t.port} on {t.host} is taken (another node, or another program: `ss "
        f"-ulpn` shows which). This node's peers dial that port, so it is not changed "
        f"silently: stop what holds it, or set another port{free} under [transport] in "
        f"{data.config} (or TOM_TRANSPORT__PORT); port_fallback = true takes the next free "
        "port at each start instead.")


def transport_address(client: BusClient) -> str:
    """Where the node's UDP socket is, as ``tom node up`` and ``tom node status`` show it,
    and whether the transport had to take another port than its configured one
    (``port_fallback``)."""
    from shared.wire.messages.transport import Info, InfoReply

    try:
        reply = client.request("transport", Info(), timeout_s=1.0)
        status = client.request("transport", Status(), timeout_s=1.0)
    except WireError as e:
        return f"address: unknown (transport: {e})"
    assert isinstance(reply, InfoReply) and isinstance(status, StatusReply)
    line = f"address: UDP {reply.host}:{reply.port}"
    if status.counters.get("port_fallbacks"):
        line += (" (NOT the configured port, which was taken at start: port_fallback; "
                 "peers learn this one when this node dials them or from its announcements)")
    return line


def public_id(seed: bytes) -> bytes:
    return SigningKey(seed).public


def load_context(data: DataDir) -> ServiceContext:
    return ServiceContext(data.root, ep.load(data.endpoints), cfg.read(data.config))


def node_id(data: DataDir, client: BusClient | None) -> bytes:
    """The node id: from the crypto service if it answers, else from the key file."""
    if client is not None and listening(client.endpoints["crypto"].rpc):
        try:
            reply = client.request("crypto", NodeId(), timeout_s=1.0)
            assert isinstance(reply, NodeIdReply)
            return reply.node_id
        except WireError:
            pass
    try:
        return public_id(keyfile.load(key_path(load_context(data))))
    except (keyfile.KeyFileError, ep.EndpointsError) as e:
        raise NodeError(str(e)) from None


class Supervisor:
    """The node's supervisord: started with deploy/supervisord.conf, driven over XML-RPC."""

    def __init__(self, data: DataDir) -> None:
        self.data = data
        self.sock = data.run / "supervisor.sock"

    def env(self, all_in_one: bool) -> dict[str, str]:
        return {
            **os.environ,
            "TOM_DATA": str(self.data.root.resolve()),
            "TOM_RUN": str(self.data.run.resolve()),
            "TOM_PYTHON": sys.executable,
            "TOM_PROGRAMS": PROGRAMS[all_in_one],
        }

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def running(self) -> bool:
        try:
            return self.rpc().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def processes(self) -> list[dict[str, Any]]:
        try:
            return list(self.rpc().supervisor.getAllProcessInfo())
        except (OSError, xmlrpc.client.Error):
            return []

    def start(self, all_in_one: bool, foreground: bool = False) -> None:
        conf = deploy_dir() / "supervisord.conf"
        supervisord = Path(sys.executable).with_name("supervisord")
        cmd = [str(supervisord), "-c", str(conf)] + (["-n"] if foreground else [])
        if foreground:
            os.execve(cmd[0], cmd, self.env(all_in_one))
        result = subprocess.run(cmd, env=self.env(all_in_one), capture_output=True, text=True)
        if result.returncode != 0:
            raise NodeError(f"supervisord failed to start: {result.stderr.strip()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop every program, highest priority first (backup first: it hands its copies on
        while the others still serve), each as soon as the one before has exited, then
        supervisord itself.

        supervisord's own shutdown stops one program per turn of its main loop, which idles
        up to 1 s between turns: about 1 s per program, 5 s for a node. A ``stopProcess``
        request that waits makes the loop turn until the process is reaped, so each stop
        takes what the service needs (usually tens of ms; backup up to ``LEAVE_GRACE_S``
        when it holds copies for others).
        """
        pidfile = self.data.run / "supervisord.pid"
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            pid = None
        try:
            rpc = self.rpc()
            priority = {f"{c['group']}:{c['name']}": (c["group_prio"], c["process_prio"])
                        for c in rpc.supervisor.getAllConfigInfo()}
            live = [f"{p['group']}:{p['name']}" for p in rpc.supervisor.getAllProcessInfo()
                    if p["statename"] in ("RUNNING", "STARTING", "BACKOFF")]
        except (OSError, xmlrpc.client.Error):
            raise NodeNotRunning() from None
        for name in sorted(live, key=lambda n: priority.get(n, (999, 999)), reverse=True):
            try:
                rpc.supervisor.stopProcess(name, True)
            except xmlrpc.client.Fault:
                pass  # it stopped (or went FATAL) on its own meanwhile
            except OSError:
                break  # supervisord went away: nothing left to stop
        try:
            rpc.supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            pass  # it exited meanwhile
        deadline = time.monotonic() + timeout_s
        while pid and alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the supervisor's exit; nothing to subscribe to


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie does not: supervisord is a daemon, so
    init reaps it, which some inits (containers) do only a second or more later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@dataclass
class ServiceState:
    role: str
    program: str
    state: str
    pid: int | None
    ping_ms: float | None
    status: StatusReply | None
    error: str = ""

    @property
    def healthy(self) -> bool:
        return self.state in ("RUNNING", "STARTING") and self.ping_ms is not None


def probe(client: BusClient, role: str, timeout_s: float) -> tuple[float | None,
                                                                  StatusReply | None, str]:
    rpc = client.endpoints[role].rpc
    if not listening(rpc):
        return None, None, f"nothing listens on {rpc}"
    try:
        t0 = time.perf_counter()
        client.request(role, Ping(), timeout_s=timeout_s)
        ping_ms = (time.perf_counter() - t0) * 1000
        status = client.request(role, Status(), timeout_s=timeout_s)
        assert isinstance(status, StatusReply)
        return ping_ms, status, ""
    except BusTimeout:
        return None, None, f"listening on {rpc} but no answer within {timeout_s:g} s"
    except WireError as e:
        return None, None, str(e)


def states(sup: Supervisor, client: BusClient, timeout_s: float = 1.0) -> list[ServiceState]:
    procs = {p["name"]: p for p in sup.processes()}
    out = []
    for role in ep.ROLES:
        program = role if role in procs else "node" if "node" in procs else role
        p = procs.get(program, {})
        ping_ms, status, error = probe(client, role, timeout_s)
        if procs:  # supervisord runs the node: its state and pid
            state, pid = p.get("statename", "STOPPED"), p.get("pid") or None
        else:
            # no supervisord (docker-compose, systemd, services started by hand): the
            # service's own answer over the bus is its state
            state = "RUNNING" if ping_ms is not None else "DOWN"
            pid = status.pid if status is not None else None
            program = "-"
        out.append(ServiceState(role, program, state, pid, ping_ms, status, error))
    return out


def wait_ready(client: BusClient, sup: Supervisor, timeout_s: float) -> list[str]:
    """Wait until every service answers ping; return the roles that did not.

    The pings are queued by ZeroMQ until each service binds, so this waits on the
    services' own answers, not on a fixed delay. A program that supervisord gave up on
    (FATAL) is not waited for.
    """
    deadline = time.monotonic() + timeout_s
    waiting = set(ep.ROLES)
    while waiting and time.monotonic() < deadline:
        # a fresh ping each round: one sent to a process that then crashed is lost with it
        sent = {role: client.send(role, Ping(), timeout_s=1.0) for role in waiting}
        for role, msg_id in sent.items():
            try:
                client.recv(role, msg_id, timeout_s=0.2)
                waiting.discard(role)
            except BusTimeout:
                pass
            except WireError:
                waiting.discard(role)
        fatal = {p["name"] for p in sup.processes() if p["statename"] == "FATAL"}
        if "node" in fatal or waiting & fatal:
            break
    return sorted(waiting)
