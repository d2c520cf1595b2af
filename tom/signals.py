"""Ending a command's loop on SIGINT/SIGTERM, without a traceback."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Stop:
    """SIGINT/SIGTERM set a flag (a blocking ZeroMQ poll resumes and the loop sees it)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
