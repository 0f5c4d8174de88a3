"""The inference bench times the bare forward and the step by turns."""

from __future__ import annotations

from bench.inference import alternated


def test_figures_are_timed_by_turns_after_each_is_warmed_up_twice():
    calls: list[str] = []
    fns = {"bare": lambda: calls.append("bare"), "step": lambda: calls.append("step")}
    # A window of no time makes one call, so the order of the calls is the order of the windows.
    figures = alternated(fns, rows=10, min_s=0.0, rounds=3)
    assert calls == ["bare", "bare", "step", "step"] + ["bare", "step"] * 3
    assert set(figures) == {"bare", "step"}
    assert all(rate > 0 for rate in figures.values())
