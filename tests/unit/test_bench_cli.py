"""``python -m bench``: flags reach the benchmark they follow."""

from __future__ import annotations

import argparse

import pytest

from bench import precision, training
from bench.__main__ import BENCHMARKS, plan
from bench.common import BUNDLED_HISTORY, precision_list


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


@pytest.mark.parametrize("bench", [precision, training])
def test_training_benchmarks_read_the_bundled_history_unless_given_an_existing_file(bench, tmp_path, capsys):
    assert BUNDLED_HISTORY.is_file()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--data", str(tmp_path / "missing.csv")])
    assert exit_info.value.code == 2
    assert f"argument --data: no such file {tmp_path / 'missing.csv'}" in capsys.readouterr().err


def _fail() -> None:
    raise SystemExit(3)


def _report(results) -> None:
    results.put("done")


def test_gather_collects_every_member_and_names_one_that_died():
    import multiprocessing as mp

    from bench.common import gather

    ctx = mp.get_context("fork")
    results = ctx.Queue()
    members = [ctx.Process(target=_report, args=(results,)) for _ in range(2)]
    for m in members:
        m.start()
    assert gather(results, members, 30) == ["done", "done"]
    dead = ctx.Process(target=_fail)
    dead.start()
    dead.join()
    with pytest.raises(SystemExit, match=r"1 member process\(es\) failed \(exit code 3\)"):
        gather(results, [dead], 30)
