"""The endpoints file: where each service's sockets live (a Jupyter connection-file analog).

One TOML file per deployment, a table per role::

    [router]
    rpc = "ipc:///home/me/.tom/run/router.rpc"      # ROUTER, requests (bound by router)
    events = "ipc:///home/me/.tom/run/router.events" # PUB, events (bound by router)

``ipc://`` endpoints live in a per-node run directory created with mode 0700; ``tcp://``
endpoints (docker-compose) name the service's host, e.g. ``tcp://router:7102``, and are
authenticated with CURVE (shared/buskeys.py). A service binds a ``tcp://HOST:PORT`` endpoint
on the address HOST resolves to at start-up (or on ``[bus] bind_host``), because ZeroMQ binds
interfaces, not host names.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROLES = ("transport", "router", "crypto", "groups", "backup")
IPC_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(frozen=True)
class RoleSpec:
    """What a role binds and whom it talks to (the socket table of docs/protocol.md)."""

    purpose: str
    calls: tuple[str, ...] = ()
    """Roles this role sends requests to (one DEALER socket each)."""
    subscribes: tuple[str, ...] = ()
    """Roles whose events this role receives (one SUB socket each)."""


SPECS: dict[str, RoleSpec] = {
    "transport": RoleSpec("QUIC endpoint on the node's one UDP socket, peer connections"),
    "router": RoleSpec("routing, topology, discovery, message tracker, the app API",
                       calls=("crypto",)),
    "crypto": RoleSpec("the identity secret: sign, seal, open, verify"),
    "groups": RoleSpec("group hub and member logic, the groups app API",
                       calls=("router", "crypto"), subscribes=("router",)),
    "backup": RoleSpec("store-and-forward for offline recipients"),
}


class EndpointsError(ValueError):
    """The endpoints file is missing, malformed or names an unusable endpoint."""


@dataclass(frozen=True)
class RoleEndpoints:
    rpc: str
    events: str


@dataclass(frozen=True)
class Endpoints:
    roles: dict[str, RoleEndpoints]

    def __getitem__(self, role: str) -> RoleEndpoints:
        try:
            return self.roles[role]
        except KeyError:
            raise EndpointsError(f"the endpoints file has no [{role}] table") from None

    def to_toml(self) -> str:
        lines = ["# ToM node endpoints: one table per service role (see docs/protocol.md)."]
        for role, ep in self.roles.items():
            lines += ["", f"[{role}]", f'rpc = "{ep.rpc}"', f'events = "{ep.events}"']
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        path.write_text(self.to_toml())


def ipc(run_dir: Path) -> Endpoints:
    """The single-host default: ``ipc://`` sockets under ``run_dir``."""
    run_dir = run_dir.resolve()
    return Endpoints({
        role: RoleEndpoints(f"ipc://{run_dir}/{role}.rpc", f"ipc://{run_dir}/{role}.events")
        for role in ROLES
    })


def tcp(host_for: dict[str, str] | None = None, base_port: int = 7100) -> Endpoints:
    """``tcp://`` endpoints: role i gets ports base+2i (rpc) and base+2i+1 (events)."""
    roles = {}
    for i, role in enumerate(ROLES):
        host = (host_for or {}).get(role, role)
        roles[role] = RoleEndpoints(f"tcp://{host}:{base_port + 2 * i}",
                                    f"tcp://{host}:{base_port + 2 * i + 1}")
    return Endpoints(roles)


def load(path: Path) -> Endpoints:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EndpointsError(f"endpoints file {path} does not exist (run `tom init`)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise EndpointsError(f"cannot read endpoints file {path}: {e}") from None
    roles = {}
    for role, table in data.items():
        if not isinstance(table, dict) or not all(
            isinstance(table.get(k), str) for k in ("rpc", "events")
        ):
            raise EndpointsError(f"{path}: [{role}] needs string keys rpc and events")
        for key in ("rpc", "events"):
            check(table[key], f"{path}: {role}.{key}")
        roles[role] = RoleEndpoints(table["rpc"], table["events"])
    return Endpoints(roles)


def check(url: str, where: str = "endpoint") -> None:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ipc", "tcp", "inproc"):
        raise EndpointsError(f"{where}: {url!r} is not an ipc://, tcp:// or inproc:// endpoint")
    if scheme == "ipc" and len(rest.encode()) > IPC_PATH_MAX:
        raise EndpointsError(f"{where}: ipc path is {len(rest.encode())} bytes, the limit is "
                             f"{IPC_PATH_MAX}; use a shorter data directory (--data)")


def bind_address(url: str, bind_host: str = "") -> str:
    """The address to bind for ``url``.

    ``bind_host`` (``[bus] bind_host``) replaces the host when set (``*`` for every
    interface). Otherwise an address is bound as given, and a host *name* is resolved once, at
    start-up, to the address it names (in docker-compose the service's own name gives its
    address on the compose network), so a bus never listens on every interface by default.
    """
    if not url.startswith("tcp://"):
        return url
    host, _, port = url[len("tcp://"):].rpartition(":")
    if bind_host:
        return f"tcp://{bind_host}:{port}"
    if host in ("*", "localhost"):
        return url
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise EndpointsError(f"cannot resolve {host!r} of {url} to bind it: {e}; set "
                                 "[bus] bind_host to the address to listen on") from None
        addr = str(infos[0][4][0])
        return f"tcp://[{addr}]:{port}" if ":" in addr else f"tcp://{addr}:{port}"
    return url


def prepare_bind(url: str) -> None:
    """Create the 0700 run directory that holds an ``ipc://`` socket, if needed."""
    if not url.startswith("ipc://"):
        return
    run_dir = Path(url[len("ipc://"):]).parent
    ensure_private_dir(run_dir)


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and make sure only the owner can use it (mode 0700)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # not a directory: refused below
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise EndpointsError(f"{path} is not a directory (a private directory of the node "
                             "must be a real directory, not a file or a symlink)")
    if st.st_uid != os.geteuid():
        raise EndpointsError(
            f"{path} is owned by uid {st.st_uid}: a private directory of the node must belong "
            f"to this user ({os.geteuid()}); another user could read or replace what is in it")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
