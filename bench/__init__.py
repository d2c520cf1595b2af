"""Benchmarks (``make bench``). Results go to ``bench/results/`` (git-ignored)."""
