"""`python -m services.router`: run the router service alone (see shared/runner.py)."""

from shared.runner import main

raise SystemExit(main("router"))
