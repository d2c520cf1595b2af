"""`python -m services.backup`: run the backup service alone (see shared/runner.py)."""

from shared.runner import main

raise SystemExit(main("backup"))
