"""Router shell: the SQLite file, the subscription to the transport's events."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgspec

from shared.core import Core
from shared.service import Service, ServiceContext, StartupError

from .config import RouterConfig, parse_peer
from .core import RouterCore, RouterSettings
from .store import Store


class RouterService(Service):
    role = "router"

    def build_core(self, context: ServiceContext) -> Core:
        cfg = context.section("router", RouterConfig)
        try:
            boot = tuple(parse_peer(p) for p in cfg.bootstrap)
        except ValueError as e:
            raise StartupError(f"[router] bootstrap: {e}") from None
        path = context.data_dir / "router.db"
        try:
            store = Store(path)
        except sqlite3.Error as e:
            raise StartupError(f"cannot open {path}: {e}") from None
        settings = RouterSettings(**(msgspec.structs.asdict(cfg) | {"bootstrap": boot}))
        return RouterCore(store, self.wall, settings)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        def serving() -> None:  # sockets are watched once the loop runs
            self.subscribe("transport", "transport.")
            if ready:
                ready()

        await super().run(serving)


SERVICE = RouterService
