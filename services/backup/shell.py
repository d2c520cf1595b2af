"""Backup shell."""

from __future__ import annotations

from shared.core import Core
from shared.service import Service, ServiceContext

from .core import BackupCore


class BackupService(Service):
    role = "backup"

    def build_core(self, context: ServiceContext) -> Core:
        return BackupCore()


SERVICE = BackupService
