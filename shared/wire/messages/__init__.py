"""All bus message models, registered by msg_type.

Importing this package registers every model in :data:`REGISTRY`.
"""

from . import backup, crypto, groups, router, sys, transport
from .base import REGISTRY, Kind, Message, as_dict, message

__all__ = ["REGISTRY", "Kind", "Message", "as_dict", "message", "backup", "crypto", "groups",
           "router", "sys", "transport"]
