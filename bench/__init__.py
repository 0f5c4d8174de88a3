"""Benchmarks: each prints its figures and ratios; run them all with ``python -m bench``."""

import stream  # noqa: F401  (before torch: it leaves triton out, as the service does)
from stream.allocator import keep_freed_memory

# Every bench process (the spawned members too, which import this package first) allocates as the
# `mqcast` command does, so the bare model and client it compares against run the same way.
keep_freed_memory()
