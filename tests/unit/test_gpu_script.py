"""bench/gpu.sh runs the CUDA tests by name, so every test that needs a GPU must carry it."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
GPU_SCRIPT = TESTS.parent.parent / "bench" / "gpu.sh"


def _needs_cuda(node: ast.FunctionDef) -> bool:
    """Whether a test is skipped when no CUDA device is present (a skipif on cuda.is_available)."""
    return any("cuda.is_available" in ast.unparse(d) for d in node.decorator_list)


def test_every_test_that_needs_cuda_is_selected_by_the_gpu_script():
    assert '-k "cuda or gpu or precision"' in GPU_SCRIPT.read_text()
    needing = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and _needs_cuda(node):
                needing.append(f"{path.name}::{node.name}")
    assert len(needing) >= 5, needing  # the export, ensemble and window member tests at least
    missed = [n for n in needing if not any(k in n.split("::")[1] for k in ("cuda", "gpu"))]
    assert not missed, f"bench/gpu.sh would not run these on the GPU: {missed}"
