from pydantic import Field

from shared.config import Section


class TransportConfig(Section):
    host: str = Field("0.0.0.0", description="Address of the node's UDP socket.")
    port: int = Field(4433, ge=0, le=65535, description="UDP port (0: any free port).")
    port_fallback: bool = Field(True, description="If the port is taken, use any free port "
                                "instead of refusing to start.")
    binding_hours: float = Field(24.0, gt=0, le=168, description="Validity of the transport "
                                 "binding crypto signs; renewed at half-life.")
    idle_timeout_s: float = Field(30.0, gt=1, description="A silent connection is dropped "
                                  "after this; keep-alives go out every third of it.")
    send_delay_ms: float = Field(0.0, ge=0, le=10_000, description="Hold every outgoing "
                                 "datagram this long (the NAT lab's latency, where the "
                                 "kernel has no netem); 0 in real use.")
    resolve_timeout_s: float = Field(5.0, gt=0, le=60, description="How long a host name "
                                     "given to transport.connect may take to resolve (in a "
                                     "resolver thread, never on the event loop).")
