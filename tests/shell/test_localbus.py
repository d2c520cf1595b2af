"""Services of one process (all-in-one) call and hear each other through the local hub,
without ZeroMQ; apps still reach them over their sockets."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import zmq

from shared import endpoints as ep
from shared.bus import BusClient
from shared.core import Action, Call, Core, Fail, Input, PeerFailed, PeerReplied, Reply, Request
from shared.localbus import Dealer, Hub, Sub
from shared.service import Service, ServiceContext
from shared.wire import Decoded, Header
from shared.wire.messages.crypto import NodeId, NodeIdReply
from shared.wire.messages.sys import Heartbeat, Ready

from .test_service import ScriptedCore


class Relaying(Core):
    """Answers crypto.node_id by asking the crypto service of its process."""

    role = "router"
    handles = frozenset({NodeId})

    def handle(self, event: Input, now: float) -> list[Action]:
        if isinstance(event, Request):
            return [Call("crypto", NodeId(), event.ctx)]
        if isinstance(event, PeerReplied):
            return [Reply(event.token, event.body)]
        if isinstance(event, PeerFailed):
            return [Fail(event.token, event.code, event.message)]
        return super().handle(event, now)


def test_a_call_its_reply_and_events_cross_the_hub_and_apps_still_use_sockets(
        tmp_path: Path) -> None:
    context = ServiceContext(tmp_path, ep.ipc(tmp_path / "run"),
                             {"bus": {"request_timeout_s": 2}}, {})

    class Router(Service):
        role = "router"

        def build_core(self, context: ServiceContext) -> Core:
            return Relaying()

    class Crypto(Service):
        role = "crypto"

        def build_core(self, context: ServiceContext) -> Core:
            return ScriptedCore("reply")

    zctx, hub = zmq.Context(), Hub()
    router, crypto = Router(context, zctx=zctx, hub=hub), Crypto(context, zctx=zctx, hub=hub)
    loop = asyncio.new_event_loop()
    started: list[str] = []
    ready = threading.Event()

    def up(role: str) -> None:
        started.append(role)
        if len(started) == 2:
            ready.set()

    async def main() -> None:
        await asyncio.gather(router.run(lambda: up("router")), crypto.run(lambda: up("crypto")))

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    assert ready.wait(10)
    client = BusClient(context.endpoints, timeout_s=5)
    try:
        for _ in range(3):  # the app's request over ipc; the router's call over the hub
            reply = client.request("router", NodeId())
            assert isinstance(reply, NodeIdReply) and reply.node_id == b"\1" * 32
        assert isinstance(router.sockets.dealers["crypto"], Dealer)
        assert isinstance(router.sockets.subs["crypto"], Sub)
        deadline = time.monotonic() + 10  # crypto's heartbeats reach the router
        while not router.calls.knows("crypto") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert router.calls.knows("crypto")
        assert crypto.stats["frames_in"] >= 3 and crypto.stats["drops"] == 0
    finally:
        client.close()
        for svc in (router, crypto):
            loop.call_soon_threadsafe(svc.request_stop)
        t.join(5)
        zctx.term()
    assert not t.is_alive()


def test_a_full_inbox_refuses_like_a_full_socket_and_events_go_by_prefix() -> None:
    hub = Hub()
    inbox = hub.join("crypto", limit=2)
    woken: list[int] = []
    inbox.wake = lambda: woken.append(1)
    dealer = hub.dealer("crypto", limit=2)
    a, b, c = (Decoded(Header("crypto.node_id", bytes([i]), None, "router", 0.0), NodeId())
               for i in range(3))
    dealer.send(a)
    dealer.send(b)
    with pytest.raises(zmq.Again):
        dealer.send(c)
    assert list(inbox.queue) == [(dealer, a), (dealer, b)]  # the reply goes back by it
    assert woken == [1]  # one wake-up until the owner drains

    heard = hub.subscribe("crypto", limit=1, prefix=b"sys.")
    other = hub.subscribe("crypto", limit=5, prefix=b"crypto.")
    beat = Decoded(Header("sys.heartbeat", b"1", None, "crypto", 0.0),
                   Heartbeat(service="crypto", uptime_s=1.0))
    ready = Decoded(Header("sys.ready", b"2", None, "crypto", 0.0),
                    Ready(service="crypto", impl="x", pid=1))
    assert hub.publish("crypto", b"sys.heartbeat", beat) == 0
    assert hub.publish("crypto", b"crypto.x", a) == 0
    assert hub.publish("crypto", b"sys.ready", ready) == 1  # `heard` is full: dropped there
    assert list(heard.queue) == [beat] and list(other.queue) == [a]
    hub.leave(heard)
    assert hub.publish("crypto", b"sys.heartbeat", beat) == 0 and list(heard.queue) == [beat]
    inbox.queue.clear()
    hub.leave(inbox)  # a stopped service: calls to it fail at once, as to a socket without peer
    with pytest.raises(zmq.Again):
        dealer.send(a)
