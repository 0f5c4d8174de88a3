"""The allocator setting: model batches reuse freed memory instead of faulting it in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from stream.allocator import is_glibc, keep_freed_memory

# Counts the minor page faults of each of 20 forwards of the daily default network over 1,024 items,
# after 25 of warm-up, in a fresh process (the setting is process-wide and a fault count needs a
# clean start); prints their median.
_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from model.network import build_network, default_args_for
    from stream.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    args = default_args_for("D")
    net = build_network(args).eval()
    b, t = 1024, args.context_length
    x = (torch.rand(b, t) * 5, torch.ones(b, t), torch.randn(b, t, args.n_past_cov),
         torch.randn(b, args.horizons, args.n_future_cov), torch.zeros(b, 0, dtype=torch.long),
         torch.rand(b, args.n_feedback))
    with torch.inference_mode():
        for _ in range(25):  # the heap grows to its high-water mark
            net(*x)
        counts = []
        for _ in range(20):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            net(*x)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(sorted(counts)[len(counts) // 2])
    """
)


def _faults_per_forward(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not is_glibc(), reason="the setting is glibc's")
def test_model_batches_fault_no_memory_in_once_freed_memory_is_kept() -> None:
    kept = _faults_per_forward("keep")
    # A forward's tensors come back from the heap: none of its ~40 blocks faults in a page again.
    # Now and then one forward of the twenty faults in a few hundred pages as fragmentation grows
    # the heap, hence the median. (Without the setting every forward took 150-3,900 faults on the
    # development machine; glibc's adaptive threshold makes that count vary, so it is not asserted.)
    assert kept < 5, f"a median of {kept} page faults per forward with freed memory kept"


@pytest.mark.skipif(not is_glibc(), reason="the setting is glibc's")
def test_keep_freed_memory_reports_that_glibc_took_the_setting() -> None:
    assert keep_freed_memory() is True
