"""The local bus contract: frame layout, header, message models, codec, errors.

No networking code lives here; ``shared.bus`` moves these frames over ZeroMQ.
"""

from .errors import BusTimeout, DecodeError, ErrorCode, RemoteError, WireError
from .frame import TAG, VERSION, Decoded, Header, decode, encode, split_routing
from .messages import REGISTRY, Message

__all__ = [
    "REGISTRY",
    "TAG",
    "VERSION",
    "BusTimeout",
    "DecodeError",
    "Decoded",
    "ErrorCode",
    "Header",
    "Message",
    "RemoteError",
    "WireError",
    "decode",
    "encode",
    "split_routing",
]
