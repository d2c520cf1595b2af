"""Port mapping (services/transport/portmap.py), sans-I/O: PCP and NAT-PMP messages, the
retry schedule, renewal, deletion at exit, and what a gateway (or a stranger posing as one)
can and cannot make the client do; then the transport core and the router around it."""

from __future__ import annotations

import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.router.gossip import own_addresses
from services.transport import portmap as pm
from services.transport.core import PortmapReceived, PortmapStart, SendPortmap, TransportCore
from services.transport.portmap import MappingChanged, PortMapper
from services.transport.shell import default_gateway
from shared.core import Publish, Reply, Request
from shared.wire.messages import transport as tm

NONCE = bytes(range(12))
PUBLIC = "198.20.0.10"


def mapper(lifetime_s: int = 7200) -> PortMapper:
    return PortMapper("10.0.0.2", 4433, lifetime_s, nonce=lambda n: NONCE[:n])


def pcp_reply(request: bytes, *, result: int = 0, lifetime: int = 7200, ip: str = PUBLIC,
              port: int = 4433, nonce: bytes | None = None) -> bytes:
    """What a PCP server answers to ``request`` (RFC 6887 §7.2, §11.2)."""
    _, opcode, _, _, _ = struct.unpack_from("!BBHI16s", request)
    req_nonce, proto, internal, _, _ = struct.unpack_from("!12sB3xHH16s", request, 24)
    header = struct.pack("!BBBBII12x", 2, 0x80 | opcode, 0, result, lifetime, 1000)
    return header + struct.pack("!12sB3xHH16s", nonce or req_nonce, proto, internal, port,
                                pm._v6(ip))


def pmp_replies(*, ip: str = PUBLIC, port: int = 4433, lifetime: int = 7200,
                result: int = 0) -> list[bytes]:
    """A NAT-PMP server's answers to the address and the mapping requests (RFC 6886)."""
    return [struct.pack("!BBHI4s", 0, 128, result, 1000, bytes(map(int, ip.split(".")))),
            struct.pack("!BBHIHHI", 0, 129, result, 1000, 4433, port, lifetime)]


def test_a_pcp_map_request_is_rfc_6887_with_the_client_address_v4_mapped() -> None:
    m = mapper()
    m.start(0.0)
    (req,) = m.datagrams()
    assert len(req) == 60
    version, opcode, _, lifetime, client = struct.unpack_from("!BBHI16s", req)
    nonce, proto, internal, external, suggested = struct.unpack_from("!12sB3xHH16s", req, 24)
    assert (version, opcode, lifetime) == (2, 1, 7200)
    assert client == b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 2])
    assert (nonce, proto, internal, external) == (NONCE, 17, 4433, 4433)
    assert suggested == b"\x00" * 10 + b"\xff\xff" + b"\x00" * 4


def test_pcp_success_maps_and_renews_at_half_life_with_the_same_nonce() -> None:
    m = mapper()
    m.start(0.0)
    (req,) = m.datagrams()
    m.receive(pcp_reply(req, lifetime=600, port=40000), 0.01)
    assert m.events() == [MappingChanged((PUBLIC, 40000), "pcp", 600)]
    assert m.state == "mapped" and m.next_timer() == 300.01
    m.handle_timer(300.01)
    (renewal,) = m.datagrams()
    assert renewal[24:36] == NONCE
    assert struct.unpack_from("!H", renewal, 42)[0] == 40000  # asks for the same port
    m.receive(pcp_reply(renewal, lifetime=600, port=40000), 300.02)
    assert m.events() == []  # the same mapping: nothing new to tell
    assert m.counters["portmap_renewals"] == 1 and m.counters["portmap_mapped"] == 1


def test_an_answer_to_another_request_is_ignored_and_counted() -> None:
    m = mapper()
    m.start(0.0)
    (req,) = m.datagrams()
    m.receive(pcp_reply(req, nonce=b"x" * 12), 0.01)  # another client's, or forged
    m.receive(pcp_reply(req)[:40], 0.01)  # too short
    m.receive(pcp_reply(req) + bytes(2000), 0.01)  # too long
    assert m.events() == [] and m.state == "requesting"
    assert m.counters["portmap_ignored"] == 3
    m.receive(pcp_reply(req), 0.02)
    assert m.external == (PUBLIC, 4433)
    m.receive(pcp_reply(req, port=1), 0.03)  # unasked while mapped: ignored
    assert m.external == (PUBLIC, 4433) and m.counters["portmap_ignored"] == 4


def test_an_unusable_external_address_is_refused() -> None:
    for ip in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "169.254.1.1"):
        m = mapper()
        m.start(0.0)
        (req,) = m.datagrams()
        m.receive(pcp_reply(req, ip=ip), 0.01)
        assert m.external is None and m.counters["portmap_refused"] == 1, ip
        assert m.next_timer() == pm.RETRY_S + 0.01


def test_a_nat_pmp_gateway_gets_nat_pmp_requests() -> None:
    """A NAT-PMP-only gateway answers a PCP request with "unsupported version" (in NAT-PMP's
    format): the client asks again in NAT-PMP, external address and mapping."""
    m = mapper()
    m.start(0.0)
    m.datagrams()
    m.receive(struct.pack("!BBHI", 0, 129, 1, 1000), 0.01)
    reqs = m.datagrams()
    assert reqs == [b"\x00\x00", struct.pack("!BBHHHI", 0, 1, 0, 4433, 4433, 7200)]
    address, mapping = pmp_replies(port=50000, lifetime=100)
    other = mapping[:8] + struct.pack("!H", 4434) + mapping[10:]  # another port's mapping
    m.receive(other, 0.02)
    assert m.counters["portmap_ignored"] == 1
    m.receive(mapping, 0.02)
    assert m.events() == []  # the address is still missing
    m.receive(address, 0.03)
    assert m.events() == [MappingChanged((PUBLIC, 50000), "nat-pmp", 100)]
    assert m.next_timer() == 0.03 + 50
    m.stop(10.0)
    assert m.datagrams() == [struct.pack("!BBHHHI", 0, 1, 0, 4433, 0, 0)]  # delete


def test_silence_tries_pcp_then_nat_pmp_then_waits() -> None:
    m = mapper()
    m.start(0.0)
    sent, now = [m.datagrams()], 0.0
    while m.state == "requesting":
        t = m.next_timer()
        assert t is not None
        now = t
        m.handle_timer(now)
        if m.state == "requesting":
            sent.append(m.datagrams())
    assert [len(d[0]) for d in sent] == [60] * pm.TRIES + [2] * pm.TRIES
    assert now == 2 * sum(pm.FIRST_WAIT_S * 2 ** i for i in range(pm.TRIES))  # 7.5 s
    (ev,) = m.events()
    assert ev.external is None and "did not answer" in ev.reason
    assert m.next_timer() == now + pm.RETRY_S and m.counters["portmap_timeouts"] == 1
    m.handle_timer(now + pm.RETRY_S)  # and again, PCP first
    assert len(m.datagrams()[0]) == 60


def test_a_refusal_waits_and_a_failed_renewal_drops_the_mapping() -> None:
    m = mapper()
    m.start(0.0)
    (req,) = m.datagrams()
    m.receive(pcp_reply(req, result=2), 0.01)  # NOT_AUTHORIZED
    (ev,) = m.events()
    assert ev.external is None and ev.reason == "PCP: not authorized"
    assert m.counters["portmap_refused"] == 1 and m.state == "waiting"
    m.handle_timer(m.next_timer() or 0)
    (req,) = m.datagrams()
    m.receive(pcp_reply(req, lifetime=3600), 400.0)
    m.events()
    m.handle_timer(2200.0)
    (renewal,) = m.datagrams()
    m.receive(pcp_reply(renewal, result=8), 2200.1)  # NO_RESOURCES
    assert m.events() == [MappingChanged(None, "pcp", 0, "PCP: no resources")]
    assert m.external is None and m.counters["portmap_lost"] == 1


def test_a_short_lifetime_is_renewed_no_more_often_than_min_renew() -> None:
    m = mapper()
    m.start(0.0)
    (req,) = m.datagrams()
    m.receive(pcp_reply(req, lifetime=1), 0.0)
    assert m.next_timer() == pm.MIN_RENEW_S


def test_stop_deletes_the_mapping_once() -> None:
    m = mapper()
    m.start(0.0)
    (req,) = m.datagrams()
    m.receive(pcp_reply(req), 0.01)
    m.events()
    m.stop(5.0)
    (delete,) = m.datagrams()
    assert struct.unpack_from("!I", delete, 4)[0] == 0 and delete[24:36] == NONCE
    assert m.events() == [MappingChanged(None, "pcp", 0, "the transport stopped")]
    m.stop(6.0)
    m.handle_timer(1e9)
    assert m.datagrams() == [] and m.next_timer() is None
    idle = mapper()
    idle.stop(0.0)  # never asked: nothing to delete
    assert idle.datagrams() == []


def test_default_gateway_is_read_from_proc_net_route(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\n")
    assert default_gateway(str(route)) == "10.0.0.1"
    route.write_text("Iface\tDestination\tGateway\tFlags\n"
                     "eth0\t0000000A\t00000000\t0001\n")
    assert default_gateway(str(route)) is None
    route.write_text("Iface\tDestination\tGateway\tFlags\n"
                     "eth0\t00000000\t0100000A\t0002\n")  # a default route that is down
    assert default_gateway(str(route)) is None
    assert default_gateway(str(tmp_path / "absent")) is None


def test_the_core_offers_the_mapped_address_first_and_deletes_it_at_close() -> None:
    core = TransportCore(Ed25519PrivateKey.generate(), lambda: 1e9, ("0.0.0.0", 4433))
    core.local_candidates[:] = [("10.0.0.2", 4433)]
    core.portmap, core._next_bind = mapper(), None  # (no binding asked for here)
    (send,) = core.handle(PortmapStart(), 0.0)
    assert isinstance(send, SendPortmap)
    actions = core.handle(PortmapReceived(pcp_reply(send.data)), 0.01)
    assert actions == [Publish(tm.Mapped(host=PUBLIC, port=4433, protocol="pcp"))]
    assert core.local_candidates == [(PUBLIC, 4433), ("10.0.0.2", 4433)]
    (info,) = core.handle(Request(ctx=None, body=tm.Info()), 0.02)
    assert isinstance(info, Reply) and isinstance(info.body, tm.InfoReply)
    assert [(a.host, a.port) for a in info.body.mapped] == [(PUBLIC, 4433)]
    assert core.next_deadline() == 3600.01
    assert core.counters()["portmap_mapped"] == 1
    closing = core.close(1.0)
    assert [type(a) for a in closing] == [SendPortmap, Publish]
    assert core.local_candidates == [("10.0.0.2", 4433)] and core.mapped == []


def test_the_router_announces_the_mapped_address_first() -> None:
    assert own_addresses("0.0.0.0", 4433, [("198.20.0.10", 61000)], [("10.0.0.2", 4433)],
                         [(PUBLIC, 4433)])[0] == (PUBLIC, 4433)
