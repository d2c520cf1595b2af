"""``python -m tests.contract.mutant_services ROLE.MUTANT ROLE_TO_RUN [--data ...
--endpoints ...]``: run ROLE_TO_RUN, with MUTANT applied when it is ROLE (see __init__.py)."""

from __future__ import annotations

import sys

from shared.runner import main

from . import ROLES, find, of

found = find(sys.argv[1]) if len(sys.argv) >= 3 else None
if found is None:
    names = ", ".join(f"{r}.{m}" for r in ROLES for m in of(r))
    print(f"usage: python -m tests.contract.mutant_services MUTANT ROLE [args]\nmutants: {names}",
          file=sys.stderr)
    raise SystemExit(2)
(role, patch), run, args = found, sys.argv[2], sys.argv[3:]
if run == role:
    patch()
raise SystemExit(main(run, args))
