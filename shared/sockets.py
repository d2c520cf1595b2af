"""A service's sockets: what it binds, whom it dials, which of them may hold input, and how a
frame is read or sent. The service (:class:`shared.service.Service`) decides what each
message means; this module only moves it.

Each service binds a ROUTER (requests) and a PUB (events) on its endpoints, behind an
exclusive lock for ``ipc://`` and CURVE for ``tcp://``. It makes a DEALER for each service it
calls and a SUB for each it listens to at first use; towards a service of the same process
(all-in-one) these are the local hub's :class:`~shared.localbus.Dealer` and
:class:`~shared.localbus.Sub` instead, carrying messages as built.

ZeroMQ descriptors are edge-triggered: any operation on a socket may take in the notice of a
message arriving. So a socket is marked *dirty* when its descriptor fires and whenever it is
used, and the service's drain asks only dirty sockets, until each is found empty.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from . import buskeys
from . import config as cfg
from .bus import readable, recv_frames, recv_frames_user, send_frames, socket
from .endpoints import Endpoints, RoleEndpoints, bind_address, prepare_bind
from .localbus import Dealer, Hub, Inbox, Sub


class StartupError(Exception):
    """The service cannot start; the message tells the user what to fix."""


Readable = zmq.Socket | Inbox
"""Something a service reads: a ZeroMQ socket (frames) or its hub inbox (decoded messages)."""


class Sockets:
    """The sockets of the service ``role``; ``on_input`` is called when one may hold input."""

    def __init__(self, role: str, bus: cfg.BusSection, data_dir: Path, zctx: zmq.Context,
                 connect_to: Endpoints, hub: Hub | None,
                 stats: Counter[str], log: logging.Logger,
                 on_input: Callable[[], None]) -> None:
        self.role = role
        self.bus = bus
        self.data_dir = data_dir
        self.zctx = zctx
        self.connect_to = connect_to
        self.own: RoleEndpoints = connect_to[role]
        """The endpoints this service binds (its entry in the endpoints file)."""
        self.hub = hub
        """The other services of this process (all-in-one), reached without ZeroMQ."""
        self.stats = stats
        self.log = log
        self.on_input = on_input
        self.rpc: zmq.Socket | None = None
        self.pub: zmq.Socket | None = None
        self.local_rpc = hub.join(role, bus.hwm) if hub is not None else None
        self.dealers: dict[str, zmq.Socket | Dealer] = {}
        self.subs: dict[str, zmq.Socket | Sub] = {}
        self.keys: buskeys.BusKeys | None = None
        """The node's bus keys, when any endpoint this service binds or dials is tcp."""
        self.inputs: list[tuple[Readable, Callable[[Any], None], bool]] = []
        """What is watched: the socket, its handler, whether it carries a CURVE user id."""
        self.dirty: set[Readable] = set()
        """Watched sockets that may hold input: their descriptor fired, or this service used
        them since they were last found empty."""
        self.caller: str | None = None
        """Who sent the message being handled: ``service:ROLE``, ``owner`` or ``app:NAME``
        over an authenticated (tcp, CURVE) bus, None over ipc or the hub
        (docs/security.md)."""
        self._locks: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- binding and dialing -----------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Make, lock and bind the ROUTER and the PUB; whether they are authenticated."""
        self._loop = loop
        self.rpc = socket(self.zctx, zmq.ROUTER, self.bus.hwm)
        self.rpc.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.pub = socket(self.zctx, zmq.PUB, self.bus.hwm)
        self._lock_ipc()
        own = self.own
        authed = own.rpc.startswith("tcp://") or own.events.startswith("tcp://")
        if authed:
            self._authenticate()
        for sock, url in ((self.rpc, own.rpc), (self.pub, own.events)):
            prepare_bind(url)
            sock.bind(bind_address(url, self.bus.bind_host))
        return authed

    def _authenticate(self) -> None:
        """CURVE on this role's server sockets: only the node's services, its owner and (for
        the router and groups, the app APIs) the listed apps get in; the ZAP handler runs
        before anything binds."""
        assert self.rpc is not None and self.pub is not None
        keys = self._bus_keys()
        admitted = keys.node_keys()
        if self.role in ("router", "groups"):  # the app APIs
            admitted |= keys.app_keys()
        buskeys.guard(self.zctx).admit(self.role, admitted)
        for sock in (self.rpc, self.pub):
            keys.serve(sock, self.role)

    def _bus_keys(self) -> buskeys.BusKeys:
        if self.keys is None:
            keys = buskeys.BusKeys(self.data_dir / "bus")
            try:
                keys.pair(self.role)
            except buskeys.BusKeyError as e:
                raise StartupError(f"the bus runs over tcp, which needs keys: {e}") from None
            self.keys = keys
        return self.keys

    def _dial(self, sock: zmq.Socket, role: str, url: str) -> None:
        if url.startswith("tcp://"):
            self._bus_keys().dial(sock, self.role, role)
        sock.connect(url)

    def _lock_ipc(self) -> None:
        """Refuse to start beside a running instance of this role.

        Binding an ipc endpoint replaces the socket file of a running instance, which would
        keep running but be unreachable; an exclusive lock next to the socket prevents that.
        The kernel releases it however the process ends, so a restart after kill -9 works.
        """
        rpc = self.own.rpc
        if not rpc.startswith("ipc://"):
            return
        path = Path(rpc[len("ipc://"):] + ".lock")
        prepare_bind(rpc)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"another {self.role} service is already serving "
                               f"{rpc} (lock {path})") from None
        self._locks.append(fd)

    def dealer(self, role: str) -> tuple[zmq.Socket | Dealer, bool]:
        """The socket that calls ``role``, and whether it was made just now (the caller then
        watches it). Raises ``EndpointsError`` when ``role`` has no endpoint."""
        sock = self.dealers.get(role)
        if sock is not None:
            return sock, False
        if self.hub is not None and self.hub.has(role):
            sock = self.dealers[role] = self.hub.dealer(role, self.bus.hwm)
        else:
            url = self.connect_to[role].rpc
            sock = self.dealers[role] = socket(self.zctx, zmq.DEALER, self.bus.hwm)
            self._dial(sock, role, url)
        return sock, True

    def sub(self, role: str) -> tuple[zmq.Socket | Sub, bool]:
        """The socket that hears ``role``'s events (it always takes ``sys.*``: heartbeats,
        who restarted), and whether it was made just now."""
        sock = self.subs.get(role)
        if sock is not None:
            return sock, False
        if self.hub is not None and self.hub.has(role):
            sock = self.subs[role] = self.hub.subscribe(role, self.bus.hwm, b"sys.")
            return sock, True
        sock = self.subs[role] = socket(self.zctx, zmq.SUB, self.bus.hwm)
        sock.setsockopt(zmq.SUBSCRIBE, b"sys.")
        try:
            self._dial(sock, role, self.connect_to[role].events)
        except Exception:
            sock.close(0)
            del self.subs[role]
            raise
        return sock, True

    def subscribe(self, sock: zmq.Socket | Sub, prefix: bytes) -> None:
        if isinstance(sock, Sub):
            sock.prefixes += (prefix,)
        else:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.dirty.add(sock)

    # -- input -------------------------------------------------------------------------------

    def watch(self, sock: Readable, handler: Callable[[Any], None], authed: bool = False) -> None:
        assert self._loop is not None
        self.inputs.append((sock, handler, authed))
        self.dirty.add(sock)
        if isinstance(sock, Inbox):
            sock.wake = functools.partial(self._loop.call_soon, self._wake_inbox, sock)
        else:
            self._loop.add_reader(sock.FD, self._wake, sock)

    def _wake(self, sock: Readable) -> None:
        """``sock``'s descriptor fired: it may hold input."""
        self.dirty.add(sock)
        self.on_input()

    def _wake_inbox(self, inbox: Inbox) -> None:
        """A service of this process put a message in ``inbox`` (scheduled once until now)."""
        inbox.scheduled = False
        self._wake(inbox)

    def read(self, sock: Readable, handler: Callable[[Any], None], authed: bool, budget: int,
             stopped: asyncio.Event) -> int:
        """Handle what ``sock`` holds, within ``budget`` messages; the budget left. Only a
        check that found it empty takes it off the dirty set."""
        self.dirty.discard(sock)
        if isinstance(sock, Inbox):
            queue = sock.queue
            while queue:
                if budget <= 0 or stopped.is_set():
                    self.dirty.add(sock)
                    break
                self.caller = None
                budget -= 1
                self._handle(handler, queue.popleft())
            return budget
        while readable(sock):
            if budget <= 0 or stopped.is_set():
                self.dirty.add(sock)  # not read to the end: check it again
                break
            frames, self.caller = recv_frames_user(sock) if authed \
                else (recv_frames(sock), None)
            budget -= 1
            self._handle(handler, frames)
        return budget

    def _handle(self, handler: Callable[[Any], None], item: Any) -> None:
        try:
            handler(item)
        except Exception:  # a bug of ours: count it, keep serving the others
            self.stats["internal_errors"] += 1
            self.log.exception("failed to handle a message")

    # -- output ------------------------------------------------------------------------------

    def send(self, sock: zmq.Socket | Dealer, frames: list[Any]) -> bool:
        """Send ``frames`` on ``sock``; to a service of this process (a :class:`Dealer`, or
        a reply whose route is one) ``frames`` is ``[route, Decoded]``: not encoded. False
        (counted as a drop) when the queue is full or the client is gone."""
        try:
            if isinstance(sock, Dealer):  # a call to a service of this process
                sock.send(frames[1])
            elif isinstance(frames[0], Dealer):  # a reply to a service of this process
                frames[0].put(frames[1])
            else:
                if sock is not self.pub:
                    self.dirty.add(sock)  # the send may take in the notice of a message
                send_frames(sock, frames)
        except zmq.ZMQError:  # Again (queue full) or EHOSTUNREACH (client gone)
            self.stats["drops"] += 1
            return False
        self.stats["frames_out"] += 1
        return True

    # -- the end -----------------------------------------------------------------------------

    def close(self) -> None:
        for sock, _, _ in self.inputs:
            if isinstance(sock, Inbox):
                assert self.hub is not None
                self.hub.leave(sock)
                continue
            if self._loop is not None:
                self._loop.remove_reader(sock.FD)
            # a moment for replies already queued (the sys.shutdown reply) to leave
            sock.close(linger=200 if sock is self.rpc else 0)
        if self.pub is not None:
            self.pub.close(0)
        self.inputs.clear()
        self.dirty.clear()
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()

    def auth_counters(self) -> dict[str, int]:
        if self.keys is None:
            return {}
        return {"bus_auth_refused": buskeys.guard(self.zctx).refused[self.role]}
