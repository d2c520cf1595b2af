"""Bus authentication over TCP: ZeroMQ CURVE keys made at ``tom init``.

Over ``ipc://`` the bus is guarded by the file system (the run directory is 0700, so only the
node's user can connect, and that user can read the identity key anyway); ``inproc://`` never
leaves the process. Over ``tcp://`` (docker-compose, services on several hosts) anyone who
can reach a port could otherwise talk to it, so every ``tcp://`` socket uses CURVE:

- each service role and the node's owner (the ``tom`` command and the owner's apps) has a
  key pair in ``DATA/bus/`` (``NAME.key`` public, ``NAME.key_secret`` secret, mode 0600, in
  a 0700 directory), in ZeroMQ's certificate format;
- third-party apps are admitted by dropping their public certificate into ``DATA/bus/apps/``
  (``NAME.key``); an app key reaches the router and the groups service (the app APIs)
  and nothing else;
- a server socket accepts a client only if its key is one of those (a ZAP handler per
  ZeroMQ context, domain = the serving role); refusals are counted (``bus_auth_refused``);
- the ZAP handler tells the service which key a request came from (ZeroMQ's ``User-Id``
  property): ``service:ROLE``, ``owner`` or ``app:NAME``, so a role can refuse a request by
  caller (crypto signs transport bindings only for the transport).
"""

from __future__ import annotations

import os
import stat
import threading
from collections import Counter
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .endpoints import ROLES, ensure_private_dir

OWNER = "owner"
NAMES = (*ROLES, OWNER)


class BusKeyError(Exception):
    """A bus key is missing or unreadable; the message says what to do."""


def caller_name(name: str) -> str:
    """The ``User-Id`` a request made with key ``name`` carries."""
    return name if name == OWNER else f"service:{name}"


class BusKeys:
    """The CURVE keys of one node (``DATA/bus/``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls, directory: Path) -> BusKeys:
        """Make every missing key pair (keeping existing ones); directories 0700, files 0600."""
        ensure_private_dir(directory)
        ensure_private_dir(directory / "apps")
        for name in NAMES:
            if not (directory / f"{name}.key_secret").exists():
                old = os.umask(0o077)
                try:
                    zmq.auth.create_certificates(directory, name)
                finally:
                    os.umask(old)
            for suffix in (".key", ".key_secret"):
                path = directory / f"{name}{suffix}"
                if stat.S_IMODE(path.stat().st_mode) != 0o600:
                    # only when needed: the keys may be on a read-only mount (compose)
                    os.chmod(path, 0o600)
        return cls(directory)

    def exists(self) -> bool:
        return (self.directory / f"{OWNER}.key_secret").exists()

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) of ``name``, z85-encoded."""
        path = self.directory / f"{name}.key_secret"
        if not path.exists() and (self.directory / "apps" / path.name).exists():
            path = self.directory / "apps" / path.name  # an app's own key pair
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise BusKeyError(f"cannot read the bus key {path}: {e} (run `tom init` to make "
                              "the node's bus keys)") from None
        if secret is None:
            raise BusKeyError(f"{path} holds no secret key")
        return public, secret

    def public(self, name: str) -> bytes:
        path = self.directory / f"{name}.key"
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise BusKeyError(f"cannot read the bus key {path}: {e} (run `tom init`)") from None
        return public

    def node_keys(self) -> dict[bytes, str]:
        """The public keys of the node's own services and owner, with their caller names."""
        return {self.public(name): caller_name(name) for name in NAMES}

    def app_keys(self) -> dict[bytes, str]:
        """Public keys listed in ``apps/`` (unreadable files are skipped, logged by caller)."""
        out: dict[bytes, str] = {}
        apps = self.directory / "apps"
        for path in sorted(apps.glob("*.key")) if apps.is_dir() else ():
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError):
                continue
            out[public] = f"app:{path.stem}"
        return out

    def serve(self, sock: zmq.Socket, role: str) -> None:
        """Make ``sock`` a CURVE server for ``role`` (before it binds)."""
        _, secret = self.pair(role)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, role.encode())

    def dial(self, sock: zmq.Socket, name: str, server_role: str) -> None:
        """Make ``sock`` a CURVE client with key ``name`` of ``server_role`` (before it
        connects)."""
        public, secret = self.pair(name)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.public(server_role))


class _Gate:
    """The ZAP decision for a domain (a serving role): which keys it admits."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def callback(self, domain: str, key: bytes) -> bool:
        with self.guard.lock:
            ok = key in self.guard.admitted.get(domain, {})
            if not ok:
                self.guard.refused[domain] += 1
            return ok


class Guard(ThreadAuthenticator):
    """One ZAP handler per ZeroMQ context (the all-in-one mode shares one for five roles)."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context)
        self.lock = threading.Lock()
        self.admitted: dict[str, dict[bytes, str]] = {}
        self.refused: Counter[str] = Counter()

    def admit(self, domain: str, keys: dict[bytes, str]) -> None:
        with self.lock:
            self.admitted[domain] = dict(keys)
        self.configure_curve_callback(domain, _Gate(self))

    def curve_user_id(self, client_public_key: bytes) -> str:
        z85 = zmq.utils.z85.encode(client_public_key)
        with self.lock:
            for keys in self.admitted.values():
                if z85 in keys:
                    return keys[z85]
        return "anonymous"


_guards: dict[int, Guard] = {}
_guards_lock = threading.Lock()


def guard(context: zmq.Context) -> Guard:
    """The running ZAP handler of ``context`` (started on first use)."""
    with _guards_lock:
        g = _guards.get(id(context))
        if g is None or not g.is_alive():
            g = _guards[id(context)] = Guard(context)
            g.start()
        return g


def user_id(frame: zmq.Frame) -> str | None:
    """The caller a CURVE-authenticated frame came from (None over ipc/inproc)."""
    try:
        value = frame.get("User-Id")
    except (zmq.ZMQError, KeyError):
        return None
    return value if isinstance(value, str) and value else None
