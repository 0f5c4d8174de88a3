"""Benchmarks: each prints its figures and ratios; run them all with ``python -m bench``."""
