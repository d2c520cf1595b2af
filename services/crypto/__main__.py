"""`python -m services.crypto`: run the crypto service alone (see shared/runner.py)."""

from shared.runner import main

raise SystemExit(main("crypto"))
