"""The node's data directory and what lives in it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_data_dir() -> Path:
    """``$TOM_HOME``, else ``~/.tom``."""
    return Path(os.environ.get("TOM_HOME") or Path.home() / ".tom")


@dataclass(frozen=True)
class DataDir:
    root: Path
    endpoints_override: Path | None = None

    @property
    def config(self) -> Path:
        return self.root / "node.toml"

    @property
    def endpoints(self) -> Path:
        """``--endpoints``, else ``$TOM_ENDPOINTS``, else ``DATA/endpoints.toml``."""
        env = os.environ.get("TOM_ENDPOINTS")
        return self.endpoints_override or (Path(env) if env else self.root / "endpoints.toml")

    @property
    def run(self) -> Path:
        """Private (0700) directory for ipc sockets and the supervisor socket."""
        return self.root / "run"

    @property
    def bus_keys(self) -> Path:
        """Private (0700) directory of the bus's CURVE keys (shared/buskeys.py)."""
        return self.root / "bus"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
