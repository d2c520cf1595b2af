"""Launching an implementation under test, black-box, from a command template.

The implementation is named by ``TOM_CONTRACT_CMD``: a command line with the placeholders
``{python}`` (this interpreter), ``{role}`` (the service to start), ``{data}`` (a prepared data
directory) and ``{endpoints}`` (the endpoints file). A template without ``{role}`` is an
all-in-one implementation: started once, it must serve every role. See docs/contract.md.

The data directory holds what any implementation is given: ``identity.key`` (a raw 32-byte
Ed25519 seed, mode 0600, fixed here so the expected node id is known), ``node.toml`` and
``endpoints.toml`` (ipc sockets in a run directory that the implementation creates, mode
0700, as the node's services do).

A process that exits before it answers ``sys.ping``, or does not answer within
``READY_TIMEOUT_S``, fails the fixture at once with its exit status and the end of its output
(:class:`ImplementationFailed`); nothing waits out a timeout silently.

A node that is already running (a docker-compose node, services started some other way) is
checked by naming its endpoints file in ``TOM_CONTRACT_NODE`` (and, for ``tcp://`` endpoints,
the directory of its bus keys in ``TOM_CONTRACT_BUS_KEYS``: the suite connects with the
owner's key). Then only what a running node can show is checked, for every role: the bus
contract every service keeps (:class:`generic.RoleContract`); the checks that start or stop
processes, play a role's neighbours or need the identity the suite made are skipped, each
with its reason.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from shared import endpoints as ep
from shared.bus import BusClient, socket
from shared.buskeys import OWNER, BusKeys
from shared.wire import DecodeError, Header, decode, encode
from shared.wire.messages.sys import ErrorReply, Ping, PingReply

IMPLEMENTATIONS = {
    "services": "{python} -m services.{role} --data {data} --endpoints {endpoints}",
    "allinone": "{python} -m services --data {data} --endpoints {endpoints}",
}
SEED = bytes(range(32))
NODE_TOML = """\
[bus]
heartbeat_s = 0.5
request_timeout_s = 1.0
[transport]
host = "127.0.0.1"
port = 0
"""
"""Any free UDP port: several nodes run at once here (a node's configured port is never
given up for another, issue 17)."""
READY_TIMEOUT_S = 30.0
"""How long a started process may take to answer ``sys.ping`` (one that exits fails at once)."""
OUTPUT_TAIL = 3000
RUNNING = "running"
"""The template name of a node the suite does not start (``TOM_CONTRACT_NODE``)."""
RUNNING_HEARTBEAT_S = 5.0
"""The default ``[bus] heartbeat_s``: what a running node is assumed to use."""


class ImplementationFailed(AssertionError):
    """The implementation under test did not start: the message has its exit status (or
    that it never answered) and the end of its output."""


def templates() -> dict[str, str]:
    """The implementations to check: a running node (``TOM_CONTRACT_NODE``), else
    ``TOM_CONTRACT_CMD`` if set, else ours in both modes."""
    if os.environ.get("TOM_CONTRACT_NODE"):
        return {RUNNING: RUNNING}
    custom = os.environ.get("TOM_CONTRACT_CMD")
    return {"custom": custom} if custom else dict(IMPLEMENTATIONS)


@dataclass
class Node:
    """One implementation under test with its data directory and processes."""

    template: str
    data: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    key_watch: KeyWatch | None = None
    """Opens of identity.key after crypto started (:meth:`watch_key`)."""
    endpoints_file: Path | None = None
    """A running node's endpoints (default: the prepared ``data/endpoints.toml``)."""
    keys: BusKeys | None = None
    """A running node's bus keys, for its ``tcp://`` endpoints."""

    @property
    def running(self) -> bool:
        """A node the suite did not start and does not stop."""
        return self.template == RUNNING

    @property
    def all_in_one(self) -> bool:
        return "{role}" not in self.template

    @property
    def heartbeat_s(self) -> float:
        return RUNNING_HEARTBEAT_S if self.running else 0.5  # NODE_TOML

    @property
    def endpoints(self) -> ep.Endpoints:
        return ep.load(self.endpoints_file or self.data / "endpoints.toml")

    def client(self, timeout_s: float = 5.0) -> BusClient:
        return BusClient(self.endpoints, src="contract", timeout_s=timeout_s, keys=self.keys)

    def connect(self, sock: zmq.Socket, role: str, url: str) -> None:
        """Connect ``sock`` to ``role``'s ``url`` (with the owner's CURVE key over tcp)."""
        if url.startswith("tcp://") and self.keys is not None:
            self.keys.dial(sock, OWNER, role)
        sock.connect(url)

    def start(self, *roles: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the processes serving ``roles`` and wait until each answers ``sys.ping``."""
        key = "*" if self.all_in_one else None
        for role in roles:
            name = key or role
            if name in self.procs and self.procs[name].poll() is None:
                continue
            cmd = self.template.format(python=shlex.quote(sys.executable), role=role,
                                       data=self.data, endpoints=self.data / "endpoints.toml")
            log = open(self.data / f"{name.strip('*') or 'node'}.log", "ab")  # noqa: SIM115
            self.procs[name] = subprocess.Popen(shlex.split(cmd), stdout=log, stderr=log,
                                                start_new_session=True)
        self.wait_ready(*roles, timeout_s=timeout_s)

    def wait_ready(self, *roles: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until each of ``roles`` answers ``sys.ping`` (a ping sent before the service
        binds is queued by ZeroMQ); fail at once, with the output, if its process exits."""
        ctx = zmq.Context.instance()
        socks = {}
        try:
            for role in roles:
                s = socks[role] = socket(ctx, zmq.DEALER)
                self.connect(s, role, self.endpoints[role].rpc)
                header = Header(Ping.msg_type, os.urandom(16), None, "contract", time.time())
                s.send_multipart([b"", *encode(Ping(), header)])
            deadline = time.monotonic() + timeout_s
            for role, s in socks.items():
                while not s.poll(100):
                    p = self.procs.get("*" if self.all_in_one else role)
                    if p is not None and p.poll() is not None:
                        raise ImplementationFailed(self.explain(role, f"exited with status "
                                                                   f"{p.returncode} before "
                                                                   "answering sys.ping"))
                    if time.monotonic() > deadline:
                        raise ImplementationFailed(self.explain(
                            role, f"did not answer sys.ping within {timeout_s:g} s"))
                frames = s.recv_multipart()
                try:
                    body = decode(frames[1:]).body
                except DecodeError as e:
                    raise ImplementationFailed(self.explain(role, f"answered sys.ping with an "
                                                               f"undecodable reply: {e}")) from None
                if not isinstance(body, PingReply):
                    detail = f"{body.name}: {body.message}" if isinstance(body, ErrorReply) \
                        else body.msg_type
                    raise ImplementationFailed(self.explain(role, f"answered sys.ping with "
                                                               f"{detail}"))
        finally:
            for s in socks.values():
                s.close(0)

    def explain(self, role: str, what: str) -> str:
        """``what`` happened to ``role``'s implementation, with the end of its output."""
        cmd = self.template.format(python="{python}", role=role, data=self.data,
                                   endpoints=self.data / "endpoints.toml")
        lines = [f"the {role} implementation ({cmd}) {what}."]
        run = Path(self.endpoints[role].rpc.removeprefix("ipc://")).parent
        if self.endpoints[role].rpc.startswith("ipc://") and not run.is_dir():
            lines.append(f"Its run directory {run} does not exist: an implementation creates "
                         "it (mode 0700) before binding its ipc endpoints (docs/contract.md).")
        lines.append(f"Its output (the end of {self.data}/*.log):")
        lines.append(self.log_tail() or "(nothing)")
        return "\n".join(lines)

    def check_alive(self) -> None:
        """Fail at once, with its exit status and output, if a process under test died."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                role = next(iter(self.procs)) if name == "*" else name
                raise ImplementationFailed(self.explain(
                    role, f"exited with status {p.returncode} while the suite used it"))

    def watch_key(self) -> None:
        """From now on, count the opens of identity.key (crypto, if it runs, has read it)."""
        if self.key_watch is None:
            self.key_watch = KeyWatch(self.data / "identity.key")

    def proc(self, role: str) -> subprocess.Popen[bytes]:
        return self.procs["*" if self.all_in_one else role]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self.key_watch is not None:
            self.key_watch.close()
            self.key_watch = None

    def log_tail(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-OUTPUT_TAIL:]}"
                         for f in sorted(self.data.glob("*.log")))


def running_node() -> Node:
    """The node named by ``TOM_CONTRACT_NODE`` (its endpoints file) and
    ``TOM_CONTRACT_BUS_KEYS`` (its bus keys directory, for tcp endpoints)."""
    keys_dir = os.environ.get("TOM_CONTRACT_BUS_KEYS")
    return Node(RUNNING, Path(tempfile.mkdtemp(prefix="tomc-", dir="/tmp")),
                endpoints_file=Path(os.environ["TOM_CONTRACT_NODE"]),
                keys=BusKeys(Path(keys_dir)) if keys_dir else None)


def prepare(template: str, seed: bytes = SEED, node_toml: str = NODE_TOML) -> Node:
    """A fresh data directory (short path: ipc socket paths are limited to 107 bytes)."""
    data = Path(tempfile.mkdtemp(prefix="tomc-", dir="/tmp"))
    os.chmod(data, 0o700)
    key = data / "identity.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, seed)
    os.close(fd)
    (data / "node.toml").write_text(node_toml)
    ep.ipc(data / "run").write(data / "endpoints.toml")
    return Node(template, data)


class KeyWatch:
    """Who opens the identity key file after crypto has (inotify, Linux).

    Only the crypto service opens ``identity.key`` (protocol.md §8.1): it reads it once at
    start and keeps it open under its lock. Armed once crypto answers ``sys.ping`` (or before
    anything starts, when the suite plays crypto), the watch counts every later open or read
    of the file, by any path to it: the role under test must cause none.
    """

    IN_ACCESS, IN_OPEN = 0x1, 0x20
    IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[str] = []
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(self._fd, str(path).encode(),
                                  self.IN_OPEN | self.IN_ACCESS) < 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"inotify_add_watch {path}")

    def opened(self) -> list[str]:
        """Every open ("open") and read ("read") of the file since the watch was armed."""
        while True:
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                return self.events
            pos = 0
            while pos < len(data):
                _wd, mask, _cookie, size = struct.unpack_from("iIII", data, pos)
                pos += 16 + size
                if mask & self.IN_OPEN:
                    self.events.append("open")
                if mask & self.IN_ACCESS:
                    self.events.append("read")

    def close(self) -> None:
        os.close(self._fd)
