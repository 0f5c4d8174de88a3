"""The feed-forward window member: the ffn rung's net, served inside an MQ-CNN ensemble."""

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
from histories import seasonal_history

from model.baselines import FeedForward, ForecastSpec
from model.dataset import build_tensors
from model.network import (
    MQCNN,
    ModelArgs,
    MQCNNEnsemble,
    WindowMLP,
    build_network,
    member_networks,
    window_members,
)
from model.train import TrainConfig, forecast_all, train

ARGS = dataclasses.replace(SMALL, window_member=24)


def _model(args: ModelArgs = ARGS) -> MQCNNEnsemble:
    torch.manual_seed(0)
    model = build_network(args)
    assert isinstance(model, MQCNNEnsemble)
    return model.eval()


def test_window_member_joins_the_ensemble_as_one_more_member():
    model = _model()
    assert [type(m) for m in model.members] == [MQCNN, WindowMLP]
    x = window(ARGS, b=6, seed=3)
    with torch.no_grad():
        cnn, mlp = (m(*x) for m in model.members)
        torch.testing.assert_close(model(*x), (cnn + mlp) / 2)
        out = mlp
    assert out.shape == (6, ARGS.horizons, len(ARGS.quantiles))
    assert (out >= 0).all() and (out.diff(dim=-1) >= 0).all()
    assert isinstance(build_network(dataclasses.replace(ARGS, window_member=0)), MQCNN)
    with pytest.raises(ValueError, match="window_member"):
        ModelArgs(window_member=-1)


def test_a_window_member_without_hidden_width_is_refused():
    with pytest.raises(ValueError, match="at least 1 wide"):
        WindowMLP.from_args(dataclasses.replace(ARGS, window_member=0))


def test_window_member_serving_forward_equals_its_forecast_at_every_step():
    member = _model().members[1]
    g = torch.Generator().manual_seed(5)
    b, t, length = 4, 40, ARGS.context_length
    target = torch.poisson(torch.rand(b, t, generator=g) * 8)
    observed = (torch.rand(b, t, generator=g) > 0.2).float()
    observed[0, :20] = 0.0  # a series that starts late: the window before it holds nothing
    past = torch.randn(b, t, ARGS.n_past_cov, generator=g)
    future = torch.randn(b, t, ARGS.horizons, ARGS.n_future_cov, generator=g)
    static = torch.randint(0, ARGS.static_vocab, (b, ARGS.n_static), generator=g)
    fb = torch.randn(b, t, ARGS.n_feedback, generator=g)
    with torch.no_grad():
        every = member.forward_all(target, observed, past, future, static, fb)
        for s in (length - 1, 33, t - 1):
            lo = s - length + 1
            one = member(
                target[:, lo : s + 1],
                observed[:, lo : s + 1],
                past[:, lo : s + 1],
                future[:, s],
                static,
                fb[:, s],
            )
            torch.testing.assert_close(one, every[:, s], rtol=1e-5, atol=1e-5)


def test_window_member_forecasts_what_the_ffn_rung_forecasts():
    history = seasonal_history(n_items=10, n_days=90)
    spec = ForecastSpec(horizons=7, context_length=28, max_seconds=30.0)
    rung = FeedForward(spec, hidden=16, max_steps=60, eval_every=30)
    rung.fit(history, 80)
    origins = np.array([40, 60, 79])
    expected = rung.predict(history, origins)  # the rung's own features, from its panel
    assert (ARGS.horizons, ARGS.context_length) == (spec.horizons, spec.context_length)
    tt = build_tensors(history, ARGS)
    assert rung.net is not None
    fb = np.zeros((tt.n_items, tt.n_steps, ARGS.n_feedback), np.float32)
    served = forecast_all(rung.net, tt, fb)[:, origins]  # the network's own, from serving's inputs
    tracked = np.isfinite(expected)
    assert tracked.any() and (np.isfinite(served) == tracked).all()
    np.testing.assert_allclose(served[tracked], expected[tracked], rtol=1e-4, atol=1e-4)


def test_an_exported_window_member_ensemble_serves_what_the_eager_one_forecasts(tmp_path):
    args = dataclasses.replace(ARGS, ensemble=2)
    full = assert_export_serves_eager(_model(args), args, tmp_path / "m.pt")
    assert full["model_args"]["window_member"] == 24


def test_a_window_member_checkpoint_rebuilds_it(tmp_path):
    again = assert_checkpoint_rebuilds(_model(), ARGS, tmp_path / "c.pt")
    assert len(window_members(again)) == 1


def test_training_with_a_window_member_leaves_the_mqcnn_training_as_it_was(make_history):
    history = make_history(n_items=16, n_days=70)
    args = dataclasses.replace(ARGS, n_static=0)
    # Step-bound for the MQ-CNN (2 epochs), 15 seconds for the window member. The learning rate
    # follows the clock where it is further along than the steps: with 3 seconds, a busy machine
    # once let it, and the two MQ-CNNs differed in the fourth digit.
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, threads=1, max_minutes=0.25, feedback_stages=0)
    with_it, report = train(history, args, cfg, progress=False)
    without, _ = train(history, dataclasses.replace(args, window_member=0), cfg, progress=False)
    assert isinstance(with_it, MQCNNEnsemble) and isinstance(without, MQCNN)
    (cnn,) = member_networks(with_it)
    for name, value in without.state_dict().items():
        assert torch.equal(cnn.state_dict()[name], value), name
    assert report["window_member"]["seed"] == 1 and report["window_member"]["steps"] > 0
    assert not window_members(with_it)[0].training
    # The reported validation score is the whole ensemble's, the model returned.
    assert held_out_wql(with_it, history, args, report) == pytest.approx(report["val_wql"], rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_an_exported_window_member_ensemble_runs_on_cuda(tmp_path):
    assert_exported_runs_on_cuda(_model(), ARGS, tmp_path / "m.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_window_member_trains_on_the_gpu_it_is_asked_to(make_history):
    history = make_history(n_items=16, n_days=70)
    spec = ForecastSpec(horizons=7, context_length=28, max_seconds=30.0)
    rung = FeedForward(spec, hidden=16, max_steps=60, eval_every=30, device="cuda")
    rung.fit(history, 60)
    assert rung.net is not None and next(rung.net.parameters()).is_cuda
    assert np.isfinite(rung.predict(history, np.array([40, 59]))).any()
    args = dataclasses.replace(ARGS, n_static=0)
    cfg = TrainConfig(
        epochs=2, batch_size=8, lr=1e-2, threads=1, max_minutes=0.05, feedback_stages=0, device="cuda"
    )
    model, report = train(history, args, cfg, progress=False)
    assert report["window_member"]["steps"] > 0
    assert all(not p.is_cuda for p in model.parameters())  # returned on the CPU, as documented
