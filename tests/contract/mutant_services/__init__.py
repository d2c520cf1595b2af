"""Deliberately wrong implementations of each role, to check that the contract suite fails
them (tests/contract/test_mutants.py).

Each mutant is our real service with one rule of docs/protocol.md broken by a patch applied
before it starts (``tests/contract/mutant_services/<role>.py``); ``<role>.none`` is the real service
through the same runner (the control). The suite runs a mutant like any implementation,
through ``TOM_CONTRACT_CMD``::

    TOM_CONTRACT_CMD='{python} -m tests.contract.mutant_services router.routes_nothing {role} \
--data {data} --endpoints {endpoints}' .venv/bin/pytest tests/contract/test_router_contract.py

Only the mutant's role is patched; any other role the suite starts (crypto for the router)
runs unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

ROLES = ("crypto", "router", "transport", "backup", "groups")


def of(role: str) -> dict[str, Callable[[], None]]:
    """The mutants of ``role`` by name (``none`` is the control)."""
    mutants: dict[str, Callable[[], None]] = importlib.import_module(f"{__name__}.{role}").MUTANTS
    return mutants


def find(name: str) -> tuple[str, Callable[[], None]] | None:
    """``ROLE.MUTANT`` -> (role, the patch), or None."""
    role, _, mutant = name.partition(".")
    if role not in ROLES:
        return None
    patch = of(role).get(mutant)
    return None if patch is None else (role, patch)
