"""Transport shell."""

from __future__ import annotations

from shared.core import Core
from shared.service import Service, ServiceContext

from .core import TransportCore


class TransportService(Service):
    role = "transport"

    def build_core(self, context: ServiceContext) -> Core:
        return TransportCore()


SERVICE = TransportService
