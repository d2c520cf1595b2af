"""``python -m tests.contract.groups_mutants MUTANT ROLE [--data ... --endpoints ...]``: run ROLE,
the groups role with MUTANT applied (see __init__.py)."""

from __future__ import annotations

import sys

from shared.runner import main

from . import MUTANTS

if len(sys.argv) < 3 or sys.argv[1] not in MUTANTS:
    print(f"usage: python -m tests.contract.groups_mutants {{{','.join(MUTANTS)}}} ROLE [args]",
          file=sys.stderr)
    raise SystemExit(2)
name, role, args = sys.argv[1], sys.argv[2], sys.argv[3:]
if role == "groups":
    MUTANTS[name]()
raise SystemExit(main(role, args))
