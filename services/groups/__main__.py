"""`python -m services.groups`: run the groups service alone (see shared/runner.py)."""

from shared.runner import main

raise SystemExit(main("groups"))
