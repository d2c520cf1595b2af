"""Crypto shell: loads the key file, then serves the core on the bus."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.core import Core
from shared.service import Service, ServiceContext, StartupError

from . import keyfile
from .config import CryptoConfig
from .core import CryptoCore


def key_path(context: ServiceContext) -> Path:
    path = Path(context.section("crypto", CryptoConfig).key_file).expanduser()
    return path if path.is_absolute() else context.data_dir / path


class CryptoService(Service):
    role = "crypto"

    def build_core(self, context: ServiceContext) -> Core:
        try:
            self.key_fd, seed = keyfile.hold(key_path(context))
        except keyfile.KeyFileError as e:
            raise StartupError(str(e)) from None
        return CryptoCore(seed, os.urandom, lambda: int(time.time() * 1000))

    def _close(self) -> None:
        super()._close()
        os.close(self.key_fd)


SERVICE = CryptoService
