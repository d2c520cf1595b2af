"""Common library of the ToM node: wire contract, service base, config, endpoints.

It holds no service logic; every service and every app depends on it.
"""

IMPL = "tom-node-python/0.1.0"
"""What this node's services answer as their implementation (``sys.ping``, ``sys.status``):
``tom node status`` names a service that answers otherwise (a swapped implementation)."""
