"""A process that starts in mqcast's code runs torch without loading triton (see stream/__init__.py)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

# An optimiser's step is what imports torch's compiler, and with it triton.
PROBE = (
    "import sys, torch; net = torch.nn.Linear(2, 2); opt = torch.optim.AdamW(net.parameters()); "
    "net(torch.ones(1, 2)).sum().backward(); opt.step(); print('triton._C' in sys.modules)"
)


def _installed(package: str) -> bool:
    # From the package's metadata: this process may have imported stream, which hides triton.
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _loads_triton(code: str) -> bool:
    run = [sys.executable, "-c", code]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.skipif(not _installed("triton"), reason="triton is not installed")
def test_the_service_process_runs_torch_without_triton():
    assert _loads_triton(PROBE)  # torch alone loads it: the guard below is what keeps it out
    assert not _loads_triton("import stream.cli; " + PROBE)
    assert not _loads_triton("import bench; " + PROBE)
