"""Launching an implementation under test, black-box, from a command template.

The implementation is named by ``TOM_CONTRACT_CMD``: a command line with the placeholders
``{python}`` (this interpreter), ``{role}`` (the service to start), ``{data}`` (a prepared data
directory) and ``{endpoints}`` (the endpoints file). A template without ``{role}`` is an
all-in-one implementation: started once, it must serve every role. See docs/contract.md.

The data directory holds what any implementation is given: ``identity.key`` (a raw 32-byte
Ed25519 seed, mode 0600, fixed here so the expected node id is known), ``node.toml`` and
``endpoints.toml`` (ipc sockets in a private run directory).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shared import endpoints as ep
from shared.bus import BusClient
from shared.wire.messages.sys import Ping

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


def templates() -> dict[str, str]:
    """The implementations to check: ``TOM_CONTRACT_CMD`` if set, else ours in both modes."""
    custom = os.environ.get("TOM_CONTRACT_CMD")
    return {"custom": custom} if custom else dict(IMPLEMENTATIONS)


@dataclass
class Node:
    """One implementation under test with its data directory and processes."""

    template: str
    data: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def all_in_one(self) -> bool:
        return "{role}" not in self.template

    @property
    def endpoints(self) -> ep.Endpoints:
        return ep.load(self.data / "endpoints.toml")

    def client(self, timeout_s: float = 5.0) -> BusClient:
        return BusClient(self.endpoints, src="contract", timeout_s=timeout_s)

    def start(self, *roles: str) -> None:
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
        with self.client() as c:
            for role in roles:
                c.request(role, Ping(), timeout_s=READY_TIMEOUT_S)  # queued until bound

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

    def log_tail(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-2000:] for f in self.data.glob("*.log"))


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
