"""Ensembles of MQ-CNNs: the mean of their members' quantiles, trained, exported and served alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from artefacts import (
    SMALL,
    assert_checkpoint_rebuilds,
    assert_export_serves_eager,
    assert_exported_runs_on_cuda,
    held_out_wql,
    window,
)

import model.train as training
from model.network import MQCNN, ModelArgs, MQCNNEnsemble, build_network, member_networks
from model.train import TrainConfig, held_out_forecasts, member_budget_s, member_workers, train

ARGS = dataclasses.replace(SMALL, ensemble=2)
CFG = TrainConfig(epochs=3, batch_size=8, lr=1e-2, threads=1, max_minutes=1.0, feedback_stages=0)


def _ensemble(args: ModelArgs = ARGS) -> MQCNNEnsemble:
    torch.manual_seed(0)
    model = build_network(args)
    assert isinstance(model, MQCNNEnsemble)
    with torch.no_grad():  # distinct calibration shifts, so that each member's own decoding counts
        for k, m in enumerate(member_networks(model)):
            m.quantile_shift.copy_(torch.tensor([-0.1 * (k + 1), 0.0, 0.2 * (k + 1)]))
    return model.eval()


def test_an_ensemble_forecasts_the_mean_of_its_members_quantiles():
    model = _ensemble()
    x = window(ARGS, b=6, seed=3)
    with torch.no_grad():
        each = [m(*x) for m in member_networks(model)]
        torch.testing.assert_close(model(*x), (each[0] + each[1]) / 2)
        assert not torch.equal(each[0], each[1])  # two members, two sets of weights
        out = model(*x)
    assert (out >= 0).all() and (out.diff(dim=-1) >= 0).all()  # still non-negative and ordered


def test_a_single_member_is_a_plain_network():
    assert isinstance(build_network(dataclasses.replace(ARGS, ensemble=1)), MQCNN)
    with pytest.raises(ValueError, match="ensemble"):
        ModelArgs(ensemble=0)


def test_an_exported_ensemble_serves_what_the_eager_one_forecasts(tmp_path):
    full = assert_export_serves_eager(_ensemble(), ARGS, tmp_path / "m.pt")
    assert full["model_args"]["ensemble"] == 2


def test_an_ensemble_checkpoint_rebuilds_every_member(tmp_path):
    again = assert_checkpoint_rebuilds(_ensemble(), ARGS, tmp_path / "c.pt")
    assert isinstance(again, MQCNNEnsemble) and len(member_networks(again)) == 2


def test_training_an_ensemble_trains_each_member_from_its_own_seed(make_history):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    model, report = train(history, args, dataclasses.replace(CFG, calibrate=False), progress=False)
    assert isinstance(model, MQCNNEnsemble)
    a, b = member_networks(model)
    assert [m["seed"] for m in report["members"]] == [0, 1]
    assert not torch.equal(a.global_mlp[0].weight, b.global_mlp[0].weight)
    assert {e["member"] for e in report["log"]} == {0, 1}
    # The reported validation score is the ensemble's, the model returned.
    assert held_out_wql(model, history, args, report) == pytest.approx(report["val_wql"], rel=1e-5)


def test_an_ensemble_builds_one_set_of_feedback_features_from_its_mean_forecast(make_history):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    calls: list[np.ndarray] = []

    def feedback_fn(forecasts: np.ndarray, qty: np.ndarray, observed: np.ndarray) -> np.ndarray:
        calls.append(forecasts)
        return np.zeros((*forecasts.shape[:2], args.n_feedback), np.float32)

    cfg = dataclasses.replace(CFG, feedback_stages=1, calibrate=True)
    model, report = train(history, args, cfg, feedback_fn=feedback_fn, progress=False)
    assert len(calls) == 1  # one stage, one set of features for every member
    assert report["stages"] == 1 and {e["stage"] for e in report["log"]} == {0, 1}
    # Each member calibrates its own interval; the report gives the ensemble's score after it.
    assert len(report["calibration"]["shifts"]) == 2
    pred, _y = held_out_forecasts(model, history, args, report["validation_buckets"])
    assert np.isfinite(pred).all() and pred.shape[1] == len(args.quantiles)


def _zero_feedback(args: ModelArgs):
    def feedback_fn(forecasts: np.ndarray, qty: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return np.zeros((*forecasts.shape[:2], args.n_feedback), np.float32)

    return feedback_fn


def test_members_trained_side_by_side_end_as_they_do_one_after_another(make_history):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    # Bounded by its epochs, not its clock, and through a feedback stage, where members wait
    # for each other.
    cfg = dataclasses.replace(CFG, calibrate=False, feedback_stages=1, max_minutes=30.0)
    runs = [
        train(history, args, dataclasses.replace(cfg, member_threads=w), _zero_feedback(args), progress=False)
        for w in (1, 2)
    ]
    (apart, log_apart), (together, log_together) = [(m, r["log"]) for m, r in runs]
    for a, b in zip(member_networks(apart), member_networks(together), strict=True):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    assert log_apart == log_together  # the same losses and scores, logged in the same order
    assert not torch.equal(*(m.global_mlp[0].weight for m in member_networks(together)))


def test_training_members_side_by_side_gives_torch_its_threads_back(make_history):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = dataclasses.replace(CFG, threads=None, member_threads=2, calibrate=False, epochs=1)
        train(history, args, cfg, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_member_that_fails_stops_the_one_beside_it(make_history, monkeypatch):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    steps = []
    step_loss = training._step_loss

    def failing(*a, **kw):
        steps.append(1)
        if len(steps) == 5:
            raise RuntimeError("out of memory, say")
        return step_loss(*a, **kw)

    monkeypatch.setattr(training, "_step_loss", failing)
    cfg = dataclasses.replace(CFG, epochs=100, max_minutes=30.0, member_threads=2, calibrate=False)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(history, args, cfg, progress=False)
    assert len(steps) < 30  # of 400: the other member stopped at its next step


def test_members_train_side_by_side_on_the_cpu_only_and_at_most_all_of_them():
    assert member_workers(TrainConfig(member_threads=4), 2) == 2
    assert member_workers(TrainConfig(member_threads=2), 3) == 2
    assert member_workers(TrainConfig(member_threads=1), 3) == 1
    assert member_workers(TrainConfig(member_threads=2, device="cuda"), 2) == 1
    assert member_workers(TrainConfig(), 1) == 1
    assert member_workers(TrainConfig(), 8) == min(8, torch.get_num_threads())
    with pytest.raises(ValueError, match="member_threads"):
        TrainConfig(member_threads=0)


def test_an_ensemble_takes_its_members_minutes_however_many_train_at_once():
    assert member_budget_s(4.0, 2, 1) == 240.0  # one after another: each its own minutes
    assert member_budget_s(4.0, 2, 2) == 480.0  # both at once, for both members' minutes
    assert member_budget_s(4.0, 3, 2) == 360.0  # two rounds share the three members' minutes
    assert member_budget_s(4.0, 1, 2) == 240.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_an_exported_ensemble_runs_on_cuda(tmp_path):
    assert_exported_runs_on_cuda(_ensemble(), ARGS, tmp_path / "m.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_an_ensemble_trains_on_the_gpu_each_member_drawing_origins_from_its_own_cuda_generator(
    make_history, monkeypatch
):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    drawn_by: list[torch.Generator] = []
    step_loss = training._step_loss

    def recording(*a, **kw):
        drawn_by.append(a[6] if len(a) > 6 else kw["generator"])
        return step_loss(*a, **kw)

    monkeypatch.setattr(training, "_step_loss", recording)
    cfg = dataclasses.replace(CFG, device="cuda", member_threads=2, origin_sample=0.5, feedback_stages=1)
    model, report = train(history, args, cfg, _zero_feedback(args), progress=False)
    generators = {id(g): g for g in drawn_by}
    assert len(generators) == 2  # one per member, though both were asked to train at once
    assert all(g.device.type == "cuda" for g in generators.values())
    assert all(not p.is_cuda for p in model.parameters())  # returned on the CPU, as documented
    assert not torch.equal(*(m.global_mlp[0].weight for m in member_networks(model)))
    assert np.isfinite(report["val_wql"])
