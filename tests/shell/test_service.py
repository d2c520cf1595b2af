"""The service base over real ZeroMQ sockets, in-process, with small test cores."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

from shared import endpoints as ep
from shared.bus import BusClient
from shared.core import (
    Action,
    Call,
    Core,
    Fail,
    Input,
    PeerFailed,
    PeerRestarted,
    Publish,
    Reply,
    Request,
)
from shared.service import Service, ServiceContext
from shared.wire import BusTimeout, ErrorCode, Header, RemoteError, encode
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.sys import Heartbeat, Ping, PingReply, Status, StatusReply


class ScriptedCore(Core):
    """Handles crypto.node_id with a script; replies can be held until a timer fires."""

    role = "crypto"
    handles = frozenset({NodeId})

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.held: list[object] = []
        self.deadline: float | None = None
        self.timer_calls = 0

    def handle(self, event: Input, now: float) -> list[Action]:
        assert isinstance(event, Request)
        if self.mode == "raise":
            raise RuntimeError("a bug")
        if self.mode == "hold":
            self.held.append(event.ctx)
            self.deadline = now + 0.3
            return []
        return [Reply(event.ctx, NodeIdReply(node_id=b"\1" * 32))]

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, now: float) -> list[Action]:
        self.timer_calls += 1
        self.deadline = None
        held, self.held = self.held, []
        return [Reply(ctx, NodeIdReply(node_id=b"\2" * 32)) for ctx in held] + [
            Publish(Heartbeat(service="crypto", uptime_s=0.0))]


class CallingCore(Core):
    """Answers crypto.node_id by calling the router (which is not running) first."""

    role = "crypto"
    handles = frozenset({NodeId})

    def handle(self, event: Input, now: float) -> list[Action]:
        if isinstance(event, Request):
            return [Call("router", NodeId(), event.ctx)]
        if isinstance(event, PeerFailed):
            return [Fail(event.token, event.code, event.message)]
        return super().handle(event, now)


@contextmanager
def serving(tmp: Path, make_core: Callable[[], Core],
            **bus: object) -> Iterator[tuple[Service, BusClient]]:
    run = Path(tmp) / "run"
    context = ServiceContext(tmp, ep.ipc(run), {"bus": {"request_timeout_s": 0.5, **bus}},
                             {})

    class TestService(Service):
        role = "crypto"

        def build_core(self, context: ServiceContext) -> Core:
            return make_core()

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Service] = {}

    async def main() -> None:
        svc = holder["svc"] = TestService(context, zctx=zmq.Context())
        await svc.run(ready.set)

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(10)
    client = BusClient(context.endpoints, timeout_s=5)
    try:
        yield holder["svc"], client
    finally:
        client.close()
        loop.call_soon_threadsafe(holder["svc"].request_stop)
        t.join(5)
        assert not t.is_alive()


def test_core_exception_is_answered_internal_and_counted(tmp_path: Path) -> None:
    with serving(tmp_path, lambda: ScriptedCore("raise")) as (_, client):
        with pytest.raises(RemoteError) as info:
            client.request("crypto", NodeId())
        assert info.value.code == ErrorCode.INTERNAL
        assert isinstance(client.request("crypto", Ping()), PingReply)
        status = client.request("crypto", Status())
        assert isinstance(status, StatusReply)
        assert status.counters["internal_errors"] == 1 and status.errors == {"internal": 1}


def test_core_timer_fires_and_held_replies_go_out(tmp_path: Path) -> None:
    core = ScriptedCore("hold")
    with serving(tmp_path, lambda: core) as (_, client):
        reply = client.request("crypto", NodeId(), timeout_s=5)
        assert reply == NodeIdReply(node_id=b"\2" * 32)
        assert core.timer_calls == 1


def test_replies_to_a_vanished_client_are_counted_as_drops(tmp_path: Path) -> None:
    with serving(tmp_path, lambda: ScriptedCore("hold")) as (_, client):
        gone = BusClient(client.endpoints)
        for _ in range(5):
            gone.send("crypto", NodeId())
        gone.request("crypto", Ping())  # the five requests are in the core now
        gone.close()
        deadline_wait = BusClient(client.endpoints)
        try:
            deadline_wait.request("crypto", NodeId(), timeout_s=5)  # held, answered by timer
        finally:
            deadline_wait.close()
        status = client.request("crypto", Status())
        assert isinstance(status, StatusReply) and status.drops == 5


def test_pipelined_requests_are_all_answered(tmp_path: Path) -> None:
    """More requests than one drain batch: the service yields and goes on."""
    with serving(tmp_path, lambda: ScriptedCore("reply")) as (svc, client):
        ids = [client.send("crypto", NodeId()) for _ in range(3 * svc.bus.max_batch)]
        for msg_id in ids:
            assert isinstance(client.recv("crypto", msg_id).body, NodeIdReply)


def test_requests_past_their_deadline_are_dropped_and_counted(tmp_path: Path) -> None:
    """A request that waited in a queue longer than its sender waits is not carried out."""
    with serving(tmp_path, lambda: ScriptedCore("reply")) as (_, client):
        sock = client.sock("crypto")
        old = Header("crypto.node_id", b"\x01" * 16, None, "test", time.time() - 10,
                     time.time() - 5)
        sock.send_multipart([b"", *encode(NodeId(), old)])
        assert isinstance(client.request("crypto", Ping()), PingReply)  # answered after it
        status = client.request("crypto", Status())
        assert isinstance(status, StatusReply) and status.counters["expired_requests"] == 1
        assert status.frames_out >= 2 and "internal_errors" not in status.counters


def test_out_of_order_replies_are_kept_and_late_ones_discarded(tmp_path: Path) -> None:
    """Held requests are answered together: awaiting the second finds the first's reply kept
    for it; a reply to a request whose wait timed out is not kept."""
    core = ScriptedCore("hold")
    with serving(tmp_path, lambda: core) as (_, client):
        gave_up = client.send("crypto", NodeId())
        with pytest.raises(BusTimeout):
            client.recv("crypto", gave_up, timeout_s=0.05)
        first, second = client.send("crypto", NodeId()), client.send("crypto", NodeId())
        assert isinstance(client.recv("crypto", second, timeout_s=5).body, NodeIdReply)
        assert set(client._early) == {first}  # the late reply to gave_up was discarded
        assert isinstance(client.recv("crypto", first, timeout_s=0.01).body, NodeIdReply)
        assert not client._early and not client._early_bytes and not client._outstanding


def test_calls_are_queued_with_replies_and_a_full_queue_fails_them_overloaded(
        tmp_path: Path) -> None:
    """Calls leave at the end of the batch; those ZeroMQ refuses (the peer's queue is at its
    high-water mark) come back to the core as overloaded, the others time out, and every
    request is answered (the answers themselves are not read: with a high-water mark of 10
    the service's own reply queue overflows too)."""
    with serving(tmp_path, CallingCore, hwm=10) as (svc, client):
        for _ in range(30):
            client.send("crypto", NodeId())
        deadline = time.monotonic() + 5
        while True:
            status = client.request("crypto", Status())
            assert isinstance(status, StatusReply)
            if sum(status.errors.values()) == 30 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        overloaded, timeouts = status.errors["overloaded"], status.errors["peer_timeout"]
        assert overloaded + timeouts == 30 and overloaded >= 10 and timeouts >= 10
        assert status.counters["call_timeouts"] == timeouts
        assert status.queues["pending_calls"] == 0


class RestartAwareCore(CallingCore):
    """CallingCore that also records what the base tells it about restarts."""

    def __init__(self) -> None:
        self.restarts: list[PeerRestarted] = []

    def handle(self, event: Input, now: float) -> list[Action]:
        if isinstance(event, PeerRestarted):
            self.restarts.append(event)
            return []
        return super().handle(event, now)


def _heartbeat(pub: zmq.Socket, incarnation: bytes) -> None:
    body = Heartbeat(service="router", uptime_s=0.0, incarnation=incarnation)
    pub.send_multipart([b"sys.heartbeat", *encode(body, Header(
        body.msg_type, b"\0" * 8, None, "router", time.time()))])


def test_a_restarted_peer_service_fails_calls_in_flight_and_tells_the_core(
        tmp_path: Path) -> None:
    """The router (a fake that never answers) changes incarnation while a call to it is in
    flight: the call fails at once as unavailable, long before its 5 s timeout, and the core
    hears PeerRestarted; then its heartbeats stop, and the core hears that it is lost."""
    core = RestartAwareCore()
    with serving(tmp_path, lambda: core, request_timeout_s=5.0, heartbeat_s=0.3) \
            as (svc, client):
        router = svc.sockets.connect_to["router"]
        ctx = zmq.Context.instance()
        rpc, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
        try:
            rpc.bind(router.rpc)
            pub.bind(router.events)
            waiting = client.send("crypto", NodeId())  # the core calls the router
            assert rpc.poll(5000)  # the call reached the fake router, which keeps it
            t0 = time.monotonic()
            while not svc.calls.knows("router") and time.monotonic() - t0 < 5:
                _heartbeat(pub, b"old incarn")  # until the service has heard it
                time.sleep(0.02)
            _heartbeat(pub, b"new incarn")
            with pytest.raises(RemoteError) as failed:
                client.recv("crypto", waiting, timeout_s=2)
            assert failed.value.code == ErrorCode.UNAVAILABLE
            assert "router restarted" in str(failed.value)
            assert time.monotonic() - t0 < 4
            assert core.restarts == [PeerRestarted("router", lost=False)]
            deadline = time.monotonic() + 10  # silent for max(3 x 0.3 s, 5 s): lost
            while len(core.restarts) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert core.restarts[1:] == [PeerRestarted("router", lost=True)]
            status = client.request("crypto", Status())
            assert isinstance(status, StatusReply)
            assert status.counters["peer_services_restarted"] == 1
            assert status.counters["peer_services_lost"] == 1
        finally:
            rpc.close(0)
            pub.close(0)


def test_a_socket_the_service_sent_on_is_checked_for_input_before_it_sleeps(
        tmp_path: Path) -> None:
    """Any operation on a ZeroMQ socket may take in the command that announces a message
    (its descriptor is edge-triggered): a reply arriving just before a send on the same
    dealer would then wait, unannounced, until the next operation. So the drain checks every
    socket it sent on (and those whose descriptor fired), and only those."""
    context = ServiceContext(tmp_path, ep.ipc(tmp_path / "run"), {}, {})

    class Idle(Service):
        role = "crypto"

        def build_core(self, context: ServiceContext) -> Core:
            return ScriptedCore("reply")

    zctx = zmq.Context()
    svc = Idle(context, zctx=zctx)
    sockets = svc.sockets
    sockets.pub = pub = zctx.socket(zmq.PUB)
    dealer = zctx.socket(zmq.DEALER)
    try:
        assert not sockets.dirty
        sockets.send(dealer, [b"", b"x"])
        sockets.send(pub, [b"topic", b"x"])
        assert sockets.dirty == {dealer}  # the PUB socket is never read
    finally:
        dealer.close(0)
        pub.close(0)
        zctx.term()
