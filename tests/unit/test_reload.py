"""Hot model reload: a changed artefact is validated before it is offered; a bad one is refused."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from model.export import export_model
from model.features import FUTURE_COVARIATES, PAST_COVARIATES
from model.network import ModelArgs, build_network
from stream.config import ReloadConfig, ServiceConfig
from stream.errors import ModelMismatchError
from stream.inference import Predictor
from stream.reload import ModelWatcher, resolve_model_path, validate_candidate
from stream.service import check_model_fits
from stream.training import feedback_names


def _export(path, seed: int, **args) -> None:
    torch.manual_seed(seed)
    margs = ModelArgs(**args)
    feedback = feedback_names(margs)
    meta = {
        "freq": "D",
        "features": {"past": list(PAST_COVARIATES), "future": list(FUTURE_COVARIATES), "feedback": feedback},
        "static_columns": [],
    }
    export_model(build_network(margs).eval(), margs, path, meta)


def _bump_mtime(path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def _fits(meta: dict) -> None:
    check_model_fits(meta, ServiceConfig())


@pytest.fixture
def serving(tmp_path):
    path = tmp_path / "model.pt"
    _export(path, seed=0)
    return path, Predictor.load(path, "cpu")


def _watcher(path, current: Predictor, refused: list) -> ModelWatcher:
    return ModelWatcher(
        path,
        "cpu",
        current.meta,
        _fits,
        ReloadConfig(watch=True, interval_s=1.0),
        on_refused=lambda p, reason: refused.append(reason),
    )


def test_new_artefact_is_offered_once_it_has_settled(serving, tmp_path):
    path, current = serving
    refused: list[str] = []
    watcher = _watcher(path, current, refused)
    assert not watcher.check() and watcher.take() is None  # nothing changed
    staged = tmp_path / "next.pt.tmp"
    _export(staged, seed=1)
    os.replace(staged, path)
    _bump_mtime(path, 5)
    assert not watcher.check()  # first sight: maybe still being written
    assert watcher.check()  # unchanged since: load and validate
    new = watcher.take()
    assert new is not None and new.version != current.version
    assert watcher.take() is None and not watcher.check()  # offered once
    assert refused == []


def test_bad_artefacts_are_refused_and_not_retried_until_they_change(serving, tmp_path):
    path, current = serving
    refused: list[str] = []
    watcher = _watcher(path, current, refused)
    path.write_bytes(b"definitely not a zip")
    assert not watcher.check() and not watcher.check()
    assert watcher.take() is None and len(refused) == 1 and "not a TorchScript artefact" in refused[0]
    assert not watcher.check() and len(refused) == 1
    _export(path, seed=2, horizons=7)
    _bump_mtime(path, 9)
    watcher.check()
    watcher.check()
    assert watcher.take() is None
    assert "horizons 14 -> 7" in refused[-1] and "new consumer group" in refused[-1]


def test_a_model_with_another_feedback_window_is_refused_while_serving(serving, tmp_path):
    _, current = serving
    other = tmp_path / "window.pt"
    _export(other, seed=1, feedback_window=3)
    candidate = Predictor.load(other, "cpu")
    _fits(candidate.meta)  # a valid model in itself
    with pytest.raises(ModelMismatchError, match="feedback_window 0 -> 3"):
        validate_candidate(candidate, current.meta, _fits)


def test_a_model_reading_previous_forecasts_is_refused_while_serving_one_that_does_not(serving, tmp_path):
    _, current = serving
    other = tmp_path / "previous.pt"
    _export(other, seed=1, feedback_previous=True)
    candidate = Predictor.load(other, "cpu")
    _fits(candidate.meta)  # a valid model in itself
    with pytest.raises(ModelMismatchError, match="feedback_previous False -> True"):
        validate_candidate(candidate, current.meta, _fits)


def test_validation_runs_a_test_forward(serving):
    _, current = serving

    class Broken(Predictor):
        def predict(self, inputs):
            out = super().predict(inputs)
            out[..., 0] = out[..., -1] + 1.0  # P10 above P90
            return out

    broken = Broken(current.module, current.meta, current.device)
    with pytest.raises(ModelMismatchError, match="crossing quantiles"):
        validate_candidate(broken, current.meta, _fits)
    validate_candidate(current, current.meta, _fits)


def test_directory_path_serves_its_newest_artefact(serving, tmp_path):
    path, _ = serving
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(ModelMismatchError, match=r"no \*\.pt"):
        resolve_model_path(folder)
    old, new = folder / "a.pt", folder / "b.pt"
    shutil.copy(path, new)
    shutil.copy(path, old)
    _bump_mtime(new, 60)
    assert resolve_model_path(folder) == new
    assert resolve_model_path(path) == path


def test_a_new_model_is_loaded_in_the_serving_precision_and_workers(serving, tmp_path):
    path, current = serving
    watcher = ModelWatcher(
        path, "cpu", current.meta, _fits, ReloadConfig(watch=True), precision="bf16", workers=3
    )
    _export(path, seed=1)
    _bump_mtime(path, 5)
    assert not watcher.check() and watcher.check()
    new = watcher.take()
    assert new is not None and new.precision == "bf16" and new.workers == 3
    assert new.module.compute_dtype.dtype == torch.bfloat16
    new.close()


def test_an_ensemble_artefact_replaces_a_single_network_while_serving(serving, tmp_path):
    path, current = serving
    refused: list[str] = []
    watcher = _watcher(path, current, refused)
    staged = tmp_path / "ensemble.pt.tmp"
    _export(staged, seed=3, ensemble=2)  # same inputs and outputs, two networks inside
    os.replace(staged, path)
    _bump_mtime(path, 5)
    assert not watcher.check() and watcher.check()
    new = watcher.take()
    assert new is not None and new.meta["model_args"]["ensemble"] == 2 and refused == []
