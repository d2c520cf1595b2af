import ipaddress
from typing import Annotated

from msgspec import Meta

from shared.config import Section

from .addresses import normal

DEFAULT_PORT = 4433


class TransportConfig(Section):
    """The transport: the node's one UDP socket (QUIC to peers). Its address is the
    node's address: peers dial it, so it stays the same across restarts."""

    host: str = "0.0.0.0"
    """Address of the node's UDP socket (0.0.0.0: every IPv4 interface)."""
    port: Annotated[int, Meta(ge=0, le=65535)] = DEFAULT_PORT
    """UDP port of the node, the one its peers dial. `tom init` writes 4433, or the next free port
    when 4433 is taken (a second node on the machine), and the node uses it at every start. 0: any
    free port, a new one at each start (tests only: peers that knew the old one must learn the new
    one)."""
    advertise: list[str] = []
    """Addresses HOST:PORT (IP addresses) this node is reached at from outside, told to peers before
    the socket's own: for a port-mapped or NATed deployment (docker-compose: the docker host's
    address and the published UDP port)."""
    port_mapping: bool = True
    """Ask the home router to forward a public UDP port to this node's socket (PCP, or NAT-PMP where
    the router speaks only that; the default route's gateway, port 5351), renew it at half its
    lifetime and delete it when the transport stops; its public address is offered to peers first.
    Where no router answers, nothing else happens (a few datagrams to the gateway every 5 minutes).
    false: never ask (a router that forwards the port by hand, or `advertise`)."""
    port_mapping_gateway: str = ""
    """The router to ask for the mapping (an IPv4 address); empty: the default route's gateway
    (/proc/net/route)."""
    port_mapping_lifetime_s: Annotated[int, Meta(ge=60, le=86400)] = 7200
    """Lifetime asked for the mapping (the router may grant less); it is renewed at half of what was
    granted, so a node that dies without deleting it leaves it open this long at most."""
    port_fallback: bool = False
    """If the port is taken at start: false, the transport refuses to start and says so (`tom node
    up` checks first); true, it takes the next free port above it (logged, and shown by `tom node
    status`), which its peers learn when it dials them or from its announcements."""
    binding_hours: Annotated[float, Meta(gt=0, le=24)] = 24.0
    """Validity of the transport binding crypto signs; renewed at half-life."""
    idle_timeout_s: Annotated[float, Meta(gt=1)] = 30.0
    """A silent connection is dropped after this; keep-alives go out every third of it."""
    send_delay_ms: Annotated[float, Meta(ge=0, le=10_000)] = 0.0
    """Hold every outgoing datagram this long (the NAT lab's latency, where the kernel has no
    netem); 0 in real use."""
    send_jitter_ms: Annotated[float, Meta(ge=0, le=10_000)] = 0.0
    """Add to each held datagram a uniformly random extra delay of 0 to this (the NAT lab's jitter:
    datagrams may be reordered); 0 in real use."""
    resolve_timeout_s: Annotated[float, Meta(gt=0, le=60)] = 5.0
    """How long a host name given to transport.connect may take to resolve (in a resolver thread,
    never on the event loop)."""
    max_connections: Annotated[int, Meta(ge=1)] = 1024
    """Authenticated peers connected at once (refused_connections beyond)."""
    reserved_share: Annotated[float, Meta(ge=0, le=1)] = 0.25
    """Share of max_connections that strangers (node ids this node never asked for) cannot take:
    kept for its own dials and the nodes its router asked for, which evict a stranger when none is
    free (refused_strangers, evicted_strangers)."""
    stranger_grace_s: Annotated[float, Meta(gt=0)] = 30.0
    """A stranger that delivered nothing for this long since it connected may be evicted for a new
    stranger when their share is full."""
    max_half_open: Annotated[int, Meta(ge=1)] = 64
    """Connections whose peer has not yet proven its node id (refused_half_open beyond)."""
    half_open_per_address: Annotated[int, Meta(ge=1)] = 8
    """Half-open connections one IP address holds without a Retry token (beyond, its Initials get a
    Retry), and as many again with one (then refused_half_open_per_address)."""
    retry_above: Annotated[int, Meta(ge=0)] = 32
    """Half-open connections beyond which every Initial must first answer a QUIC Retry (stateless
    address validation: a spoofed ClientHello flood keeps no state; retries_sent). 0: always."""
    stranger_envelopes_per_s: Annotated[float, Meta(gt=0)] = 250.0
    """Envelopes a stranger (a node id this node never asked for) may send per second, all its
    connections together, in bursts of 2 s; beyond, its lane is not read and QUIC flow control makes
    it wait (throttled_strangers)."""
    stranger_bytes_per_s: Annotated[float, Meta(gt=0)] = 2 * 2**20
    """Likewise, bytes of envelopes per second (bursts of 2 s, at least two of the largest
    envelopes)."""

    def __post_init__(self) -> None:
        gateway = self.port_mapping_gateway
        try:
            ok = not gateway or isinstance(ipaddress.ip_address(gateway), ipaddress.IPv4Address)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("port_mapping_gateway: an IPv4 address, or empty")
        for item in self.advertise:
            advertised(item)  # its ValueError names the key


def advertised(item: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as an address; ValueError if it is not one."""
    host, sep, port = item.rpartition(":")
    try:
        host = normal(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise ValueError(f"advertise: {item!r} is not IP:PORT") from None
    if not sep or not 0 < number < 65536:
        raise ValueError(f"advertise: {item!r} is not IP:PORT")
    return host, number
