"""The five services of a ToM node. Each has a sans-I/O ``core`` and a thin ``shell``."""
