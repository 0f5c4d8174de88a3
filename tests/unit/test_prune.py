"""Artefacts leave out the calendar columns their network was trained to ignore, and forecast as
the whole network does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from artefacts import SMALL, export_meta, window
from histories import seasonal_history

from model.export import export_model, load_model
from model.features import DAY_OF_MONTH, DAY_OF_YEAR, EASTER, FUTURE_COVARIATES, PAST_COVARIATES
from model.network import ModelArgs, build_network, default_args_for, ignore_calendar_columns, window_members
from model.prune import drop_calendar, ignored_calendar, served_form
from stream.inputs import StaticTable, calendar_columns, probe_inputs
from stream.training import feedback_names, train_artifact


def _trained_to_ignore(args: ModelArgs, names: tuple[str, ...], seed: int = 0) -> torch.nn.Module:
    """A network whose members ignore ``names`` as training leaves them: masked in the MQ-CNNs,
    zero weights in a window member."""
    torch.manual_seed(seed)
    model = build_network(args).eval()
    ignore_calendar_columns(model, names)
    return model


def _served_columns(
    x: tuple[torch.Tensor, ...], past: list[str], future: list[str]
) -> tuple[torch.Tensor, ...]:
    """The whole network's inputs ``x`` cut to the columns a served network reads."""
    target, observed, past_cov, future_cov, static, feedback = x
    keep_past = [PAST_COVARIATES.index(c) for c in past]
    keep_future = [FUTURE_COVARIATES.index(c) for c in future]
    return target, observed, past_cov[..., keep_past], future_cov[..., keep_future], static, feedback


CASES = {
    "daily network": (dataclasses.replace(default_args_for("D"), n_static=1), DAY_OF_MONTH),
    "weekly ensemble with a window member": (dataclasses.replace(default_args_for("W"), n_static=1), EASTER),
    "small ensemble with a season": (
        dataclasses.replace(SMALL, ensemble=2, window_member=32, season=7),
        DAY_OF_YEAR + DAY_OF_MONTH,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_served_network_forecasts_as_the_whole_one_eager_and_scripted(case):
    args, names = CASES[case]
    model = _trained_to_ignore(args, names)
    served, served_args, past, future = served_form(model, args)
    assert served is not model
    assert served_args.n_past_cov == len(PAST_COVARIATES) - len(names) == len(past)
    assert served_args.n_future_cov == len(FUTURE_COVARIATES) - len(names) == len(future)
    assert not set(names) & set(past + future)
    assert past == [*future, "log_price"]  # what the service's calendar_columns requires
    x = window(args, b=7, seed=5)
    scripted = torch.jit.script(served)
    with torch.no_grad():
        whole = model(*x)
        torch.testing.assert_close(served(*_served_columns(x, past, future)), whole, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted(*_served_columns(x, past, future)), whole, rtol=1e-5, atol=1e-5)
        # The dropped columns are the ones the whole network ignored: changing them changed nothing.
        x2 = list(x)
        x2[2], x2[3] = x[2].clone(), x[3].clone()
        for c in names:
            x2[2][..., PAST_COVARIATES.index(c)] += 5.0
            x2[3][..., FUTURE_COVARIATES.index(c)] += 5.0
        torch.testing.assert_close(model(*x2), whole, rtol=0, atol=0)


def test_a_column_one_member_reads_stays_in_the_artefact():
    args = dataclasses.replace(SMALL, ensemble=2, window_member=32)
    model = _trained_to_ignore(args, DAY_OF_MONTH + EASTER)
    member = window_members(model)[0]
    dom_cos = 2 * args.context_length + 1 + FUTURE_COVARIATES.index("dom_cos")  # at the first horizon
    member.net[0].weight.data[:, dom_cos] = 0.5
    assert ignored_calendar(model) == ("dom_sin", *EASTER)
    with pytest.raises(ValueError, match="the network reads"):
        drop_calendar(model, args, DAY_OF_MONTH)
    served, served_args, past, future = served_form(model, args)
    assert "dom_cos" in future and "dom_sin" not in future and "easter_before" not in future
    assert served_args.n_future_cov == len(FUTURE_COVARIATES) - 3
    x = window(args, b=4, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(served(*_served_columns(x, past, future)), model(*x), rtol=1e-5, atol=1e-5)


def test_a_network_that_reads_every_column_is_served_whole():
    args = SMALL
    model = build_network(args).eval()
    served, served_args, past, future = served_form(model, args)
    assert served is model and served_args == args
    assert past == list(PAST_COVARIATES) and future == list(FUTURE_COVARIATES)


def test_trained_daily_artefact_names_only_the_columns_it_reads_and_serves_from_them(tmp_path):
    history = seasonal_history(n_items=12, n_days=112)  # under a year, with an Easter: no day of the year
    path = tmp_path / "daily.pt"
    meta = train_artifact(history, path, epochs=1, feedback_stages=0, threads=1, progress=False)
    future = meta["features"]["future"]
    assert not set(DAY_OF_MONTH + DAY_OF_YEAR) & set(future)
    assert set(EASTER) <= set(future)
    assert calendar_columns(meta) == tuple(future)
    assert meta["model_args"]["n_future_cov"] == len(future) == len(FUTURE_COVARIATES) - 4
    scripted, loaded = load_model(path)
    x = probe_inputs(loaded, rows=3)
    assert x.past_cov.shape[2] == len(future) + 1
    with torch.no_grad():
        out = scripted(*(torch.from_numpy(np.ascontiguousarray(a)) for a in x.arrays()))
    assert out.shape == (3, meta["horizons"], len(meta["quantiles"]))
    assert StaticTable(tuple(meta["static_columns"]), 1024).columns == ("store",)


def _cut_exported_and_served(tmp_path, device: str) -> None:
    """The weekly ensemble, its ignored columns masked as training leaves them, moved to ``device``,
    cut, exported and loaded there: it forecasts as the whole network does."""
    args, names = CASES["weekly ensemble with a window member"]
    model = _trained_to_ignore(args, names).to(device)
    served, served_args, past, future = served_form(model, args)
    assert next(served.parameters()).device.type == device
    features = {"past": past, "future": future, "feedback": feedback_names(served_args)}
    export_model(served, served_args, tmp_path / "weekly.pt", export_meta(features=features))
    scripted, _ = load_model(tmp_path / "weekly.pt", device)
    x = window(args, b=7, seed=5)
    with torch.no_grad():
        whole = model(*(t.to(device) for t in x))
        out = scripted(*(t.to(device) for t in _served_columns(x, past, future)))
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


def test_cut_network_exported_and_loaded_forecasts_as_the_whole_one(tmp_path):
    _cut_exported_and_served(tmp_path, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_network_on_cuda_is_cut_and_served_there_as_the_whole_one(tmp_path):
    _cut_exported_and_served(tmp_path, "cuda")
