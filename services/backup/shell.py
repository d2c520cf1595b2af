"""Backup shell: the SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgspec

from shared.core import Core
from shared.service import Service, ServiceContext, StartupError

from .config import BackupConfig
from .core import BackupCore, BackupSettings
from .store import Store


class BackupService(Service):
    role = "backup"

    def build_core(self, context: ServiceContext) -> Core:
        cfg = context.section("backup", BackupConfig)
        path = context.data_dir / "backup.db"
        try:
            store = Store(path)
        except sqlite3.Error as e:
            raise StartupError(f"cannot open {path}: {e}") from None
        return BackupCore(store, self.wall, BackupSettings(**msgspec.structs.asdict(cfg)))

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        def serving() -> None:
            # direct paths (a recipient or an origin is back) and delivery ACKs passing by
            self.subscribe("router", "router.path")
            self.subscribe("router", "router.confirmation")
            if ready:
                ready()

        await super().run(serving)


SERVICE = BackupService
