"""`python -m services.transport`: run the transport service alone (see shared/runner.py)."""

from shared.runner import main

raise SystemExit(main("transport"))
