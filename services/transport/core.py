"""Transport core. So far it serves only the base's `sys.*` requests; its own requests and
state machines are added by the issue that brings the capability."""

from __future__ import annotations

from shared.core import Core


class TransportCore(Core):
    role = "transport"
