"""Tests of a hot path that has a C extension run twice: with it, and through its Python twin."""

from __future__ import annotations

from types import ModuleType

import pytest


def c_or_python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> str:
    """For a fixture parametrised ``["C", "Python"]``: skip the C run where ``module`` has no
    extension (``module._native`` None: built without a C compiler), and take the extension away
    from ``module`` for the Python run. Returns the parameter."""
    if request.param == "C" and module._native is None:
        pytest.skip(f"{module.__name__}'s C extension was not built (no C compiler)")
    if request.param == "Python":
        monkeypatch.setattr(module, "_native", None)
    return request.param
