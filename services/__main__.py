"""`python -m services [ROLE ...]`: the all-in-one mode, several services in one process."""

from shared.endpoints import ROLES
from shared.runner import run

raise SystemExit(run(list(ROLES), None, all_in_one=True, prog="tom-node"))
