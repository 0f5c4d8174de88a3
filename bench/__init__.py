"""Benchmarks: each prints its figures and ratios; run them all with ``python -m bench``."""

import stream  # noqa: F401  (before torch: it leaves triton out, as the service does)
