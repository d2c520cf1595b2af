"""Router shell."""

from __future__ import annotations

from shared.core import Core
from shared.service import Service, ServiceContext

from .core import RouterCore


class RouterService(Service):
    role = "router"

    def build_core(self, context: ServiceContext) -> Core:
        return RouterCore()


SERVICE = RouterService
