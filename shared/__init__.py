"""Common library of the ToM node: wire contract, service base, config, endpoints.

It holds no service logic; every service and every app depends on it.
"""
