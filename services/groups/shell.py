"""Groups shell: the SQLite file and the subscription to the router's group envelopes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgspec

from shared.core import Core
from shared.service import Service, ServiceContext, StartupError

from .config import GroupsConfig
from .context import GroupsSettings
from .core import GroupsCore
from .store import Store


class GroupsService(Service):
    role = "groups"

    def build_core(self, context: ServiceContext) -> Core:
        cfg = context.section("groups", GroupsConfig)
        path = context.data_dir / "groups.db"
        try:
            store = Store(path)
        except sqlite3.Error as e:
            raise StartupError(f"cannot open {path}: {e}") from None
        return GroupsCore(store, self.wall, GroupsSettings(**msgspec.structs.asdict(cfg)))

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        def serving() -> None:
            self.subscribe("router", "router.group_envelope")
            if ready:
                ready()

        await super().run(serving)


SERVICE = GroupsService
