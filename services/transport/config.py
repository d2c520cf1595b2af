from pydantic import Field

from shared.config import Section


class TransportConfig(Section):
    host: str = Field("0.0.0.0", description="Address of the node's UDP socket.")
    port: int = Field(4433, ge=0, le=65535, description="UDP port (0: any free port).")
    port_fallback: bool = Field(True, description="If the port is taken, use any free port "
                                "instead of refusing to start.")
    binding_hours: float = Field(24.0, gt=0, le=24, description="Validity of the transport "
                                 "binding crypto signs; renewed at half-life.")
    idle_timeout_s: float = Field(30.0, gt=1, description="A silent connection is dropped "
                                  "after this; keep-alives go out every third of it.")
    send_delay_ms: float = Field(0.0, ge=0, le=10_000, description="Hold every outgoing "
                                 "datagram this long (the NAT lab's latency, where the "
                                 "kernel has no netem); 0 in real use.")
    resolve_timeout_s: float = Field(5.0, gt=0, le=60, description="How long a host name "
                                     "given to transport.connect may take to resolve (in a "
                                     "resolver thread, never on the event loop).")
    max_connections: int = Field(1024, ge=1, description="Authenticated peers connected "
                                 "at once (refused_connections beyond).")
    reserved_share: float = Field(0.25, ge=0, le=1, description="Share of max_connections "
                                  "that strangers (node ids this node never asked for) "
                                  "cannot take: kept for its own dials and the nodes its "
                                  "router asked for, which evict a stranger when none is "
                                  "free (refused_strangers, evicted_strangers).")
    stranger_grace_s: float = Field(30.0, gt=0, description="A stranger that delivered "
                                    "nothing for this long since it connected may be "
                                    "evicted for a new stranger when their share is full.")
    max_half_open: int = Field(64, ge=1, description="Connections whose peer has not yet "
                               "proven its node id (refused_half_open beyond).")
    half_open_per_address: int = Field(8, ge=1, description="Half-open connections one "
                                       "IP address holds without a Retry token (beyond, "
                                       "its Initials get a Retry), and as many again with "
                                       "one (then refused_half_open_per_address).")
    retry_above: int = Field(32, ge=0, description="Half-open connections beyond which "
                             "every Initial must first answer a QUIC Retry (stateless "
                             "address validation: a spoofed ClientHello flood keeps no "
                             "state; retries_sent). 0: always.")
    stranger_envelopes_per_s: float = Field(250.0, gt=0, description="Envelopes a stranger "
                                            "(a node id this node never asked for) may "
                                            "send per second, all its connections "
                                            "together, in bursts of 2 s; beyond, its lane "
                                            "is not read and QUIC flow control makes it "
                                            "wait (throttled_strangers).")
    stranger_bytes_per_s: float = Field(2 * 2**20, gt=0, description="Likewise, bytes of "
                                        "envelopes per second (bursts of 2 s, at least "
                                        "two of the largest envelopes).")
