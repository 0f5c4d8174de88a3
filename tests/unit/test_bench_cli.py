"""``python -m bench``: flags reach the benchmark they follow."""

from __future__ import annotations

import argparse

import pytest

from bench.__main__ import BENCHMARKS, plan
from bench.common import precision_list


def test_flags_go_to_the_benchmark_they_follow():
    argv = ["inference", "--batch-sizes", "1024", "latency", "--items", "2500"]
    assert plan(argv) == [("inference", ["--batch-sizes", "1024"]), ("latency", ["--items", "2500"])]


def test_no_name_runs_every_benchmark_with_its_defaults():
    assert plan([]) == [(name, []) for name in BENCHMARKS]


def test_a_flag_before_any_name_is_refused():
    with pytest.raises(SystemExit, match="unknown benchmark '--items'"):
        plan(["--items", "5"])


def test_precision_lists_keep_their_order_and_name_unknown_entries():
    assert precision_list("fp32, bf16,fp16") == ("fp32", "bf16", "fp16")
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown int8 \(choose from fp32, bf16, fp16\)"):
        precision_list("fp32,int8")
