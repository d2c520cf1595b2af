"""Groups shell."""

from __future__ import annotations

from shared.core import Core
from shared.service import Service, ServiceContext

from .core import GroupsCore


class GroupsService(Service):
    role = "groups"

    def build_core(self, context: ServiceContext) -> Core:
        return GroupsCore()


SERVICE = GroupsService
