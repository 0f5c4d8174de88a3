"""The network: shapes, monotone quantiles, and serving equal to training."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from model.network import MQCNN, ModelArgs, default_args_for, input_spec, running_max
from state.feedback import item_scale


def _inputs(args: ModelArgs, b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Series inputs [B, T, ...] with intermittent demand, gaps and an item that starts late."""
    g = torch.Generator().manual_seed(seed)
    target = torch.poisson(torch.rand(b, t, generator=g) * 20) * (torch.rand(b, t, generator=g) > 0.3)
    observed = (torch.rand(b, t, generator=g) > 0.1).float()
    observed[0, :30] = 0.0
    past = torch.randn(b, t, args.n_past_cov, generator=g)
    fut = torch.randn(b, t, args.horizons, args.n_future_cov, generator=g)
    static = torch.randint(0, args.static_vocab, (b, args.n_static), generator=g)
    fb = torch.randn(b, t, args.n_feedback, generator=g)
    return target * observed, observed, past, fut, static, fb


def _model(args: ModelArgs, seed: int = 0) -> MQCNN:
    torch.manual_seed(seed)
    return MQCNN(args).eval()


@pytest.mark.parametrize(
    "args",
    [
        dataclasses.replace(default_args_for("D"), n_static=2),
        dataclasses.replace(default_args_for("W"), n_static=4),
        default_args_for("M"),
        ModelArgs(context_length=30, horizons=5, dilations=(1, 3, 9), kernel_size=3, n_static=1),
        dataclasses.replace(default_args_for("W"), n_static=2, season=52),
        dataclasses.replace(default_args_for("D"), n_static=1, feedback_window=5),
        dataclasses.replace(default_args_for("W"), n_static=1, recent=8),
        dataclasses.replace(default_args_for("M"), recent=24),  # the whole window
        dataclasses.replace(default_args_for("W"), n_static=1, feedback_window=2, feedback_previous=True),
    ],
    ids=[
        "D",
        "W",
        "M",
        "kernel3",
        "W-season",
        "D-feedback-window",
        "W-recent",
        "M-recent-all",
        "W-feedback-previous",
    ],
)
def test_serving_forward_equals_training_pass_at_every_full_window(args):
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 3, args.context_length + 25)
    L = args.context_length
    with torch.no_grad():
        every = model.forward_all(target, observed, past, fut, static, fb)
        for t in range(L - 1, target.shape[1]):
            w = slice(t - L + 1, t + 1)
            one = model(target[:, w], observed[:, w], past[:, w], fut[:, t], static, fb[:, t])
            torch.testing.assert_close(one, every[:, t], rtol=1e-5, atol=1e-5)


def test_each_horizon_reads_only_its_own_previous_forecast_and_only_when_seen():
    args = ModelArgs(context_length=30, horizons=4, dilations=(1, 2, 4), feedback_previous=True)
    model = _model(args)
    target, observed, past, fut, static, _ = _inputs(args, 4, args.context_length)
    x = (target, observed, past, fut[:, -1], static)
    e, q = 3 + len(args.quantiles), len(args.quantiles)
    fb = torch.zeros(4, args.n_feedback)
    prev = fb[:, e:].view(4, args.horizons, 1 + q)  # a view: writes go to fb
    prev[:, :3, 0] = 1.0  # the last horizon never has a previous forecast
    prev[:, :3, 1:] = torch.rand(4, 3, q).sort(dim=-1).values * 5
    with torch.no_grad():
        base = model(*x, fb)
        moved = fb.clone()
        moved.view(4, -1)[:, e + (1 + q) + 1 : e + 2 * (1 + q)] += 3.0  # horizon 2's previous quantiles
        out = model(*x, moved)
        changed = (out - base).abs().amax(dim=(0, 2))
        assert changed[1] > 1e-4 and changed[[0, 2, 3]].max() == 0
        unseen = fb.clone()
        unseen.view(4, -1)[:, e + 3 * (1 + q) + 1 :] = 7.0  # contents behind a zero seen flag
        torch.testing.assert_close(model(*x, unseen), base, rtol=0, atol=0)


def test_feedback_attention_reads_scored_buckets_and_ignores_empty_slots():
    args = ModelArgs(context_length=30, horizons=4, dilations=(1, 2, 4), feedback_window=3)
    model = _model(args)
    target, observed, past, fut, static, _ = _inputs(args, 4, args.context_length)
    x = (target, observed, past, fut[:, -1], static)
    e = args.n_feedback // 4  # the averages, then three blocks of one scored bucket each
    fb = torch.zeros(4, args.n_feedback)
    fb[:, e] = 1.0  # only the newest slot is filled
    fb[:, e + 1 :] = torch.randn(4, args.n_feedback - e - 1)
    fb[:, 2 * e] = 0.0
    fb[:, 3 * e] = 0.0
    with torch.no_grad():
        base = model(*x, fb)
        noise = fb.clone()
        for slot in (2, 3):  # the unseen slots' contents, not their seen flags
            noise[:, slot * e + 1 : (slot + 1) * e] = torch.randn(4, e - 1) * 10
        torch.testing.assert_close(model(*x, noise), base, rtol=0, atol=0)
        seen = fb.clone()
        seen[:, e + 1 : 2 * e] += 3.0  # the filled slot's errors
        assert (model(*x, seen) - base).abs().max() > 1e-4
        empty = model(*x, torch.zeros(4, args.n_feedback))  # a new item: nothing scored yet
    assert torch.isfinite(empty).all()


def test_forecasts_depend_on_history_inside_the_receptive_field_only():
    args = ModelArgs(context_length=40, horizons=3, dilations=(1, 2, 4))
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 2, 40)
    with torch.no_grad():
        base = model.forward_all(target, observed, past, fut, static, fb)
        changed = past.clone()
        changed[:, 20] += 5.0  # covariates feed the encoder only
        after = model.forward_all(target, observed, changed, fut, static, fb)
    moved = (after - base).abs().amax(dim=(0, 2, 3)) > 0
    expected = torch.zeros(40, dtype=torch.bool)
    expected[20 : 20 + args.receptive_field] = True
    assert torch.equal(moved, expected)


def test_shapes_and_quantiles_non_negative_and_non_crossing():
    args = ModelArgs(n_static=3)
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 4, 80)
    with torch.no_grad():
        every = model.forward_all(target, observed, past, fut, static, fb)
        last = model(target[:, -56:], observed[:, -56:], past[:, -56:], fut[:, -1], static, fb[:, -1])
    assert every.shape == (4, 80, args.horizons, len(args.quantiles)) and every.dtype == torch.float32
    assert last.shape == (4, args.horizons, len(args.quantiles))
    # Strongly negative base outputs must still give zeros, not negative demand or crossings.
    with torch.no_grad():
        model.local_mlp[-1].bias[0] -= 50.0
        shifted = model.forward_all(target, observed, past, fut, static, fb)
    for out in (every, shifted):
        assert torch.all(out >= 0)
        assert torch.all(out[..., 1:] >= out[..., :-1])
    assert (shifted[..., 0] == 0).any()


def test_a_network_whose_outputs_all_fall_below_zero_still_gets_a_gradient():
    args = ModelArgs(n_static=3)
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 4, 80)
    with torch.no_grad():
        model.local_mlp[-1].bias[0] -= 50.0  # every quantile of every forecast below zero
        assert torch.all(model.forward_all(target, observed, past, fut, static, fb) == 0)
    model.train()
    out = model.forward_all(target, observed, past, fut, static, fb)
    assert torch.all(out < 0)  # training sees the quantiles before the ReLU
    y = target[:, 1:, None, None].expand(-1, -1, args.horizons, len(args.quantiles))
    q = torch.tensor(args.quantiles)
    d = y - out[:, :-1]
    torch.maximum(q * d, (q - 1) * d).mean().backward()
    bias_grad = model.local_mlp[-1].bias.grad
    assert bias_grad is not None and bias_grad[0] < 0  # the step raises the base quantile


@pytest.mark.parametrize("window", [0, 3])
def test_an_empty_batch_gives_an_empty_forecast_eager_and_scripted(window):
    args = ModelArgs(context_length=30, horizons=4, dilations=(1, 2, 4), n_static=1, feedback_window=window)
    model = _model(args)
    target, observed, past, fut, static, fb = (x[:0] for x in _inputs(args, 2, args.context_length))
    x = (target, observed, past, fut[:, -1], static, fb[:, -1])
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert model(*x).shape == scripted(*x).shape == (0, 4, len(args.quantiles))


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
def test_layers_in_reduced_precision_keep_float32_forecasts_close_eager_and_scripted(dtype, tolerance):
    args = dataclasses.replace(default_args_for("D"), n_static=1, feedback_window=3)
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 6, args.context_length)
    x = (target * 50.0, observed, past, fut[:, -1], static, fb[:, -1])  # large volumes: the scale stays exact
    low = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        reference, eager, scripted = model(*x), low(*x), torch.jit.script(low)(*x)
    assert low.global_mlp[0].weight.dtype == dtype
    assert eager.dtype == scripted.dtype == torch.float32
    # Close, but not equal: equal would mean the layers never left float32.
    assert 0 < float((eager - reference).norm() / reference.norm()) < tolerance
    torch.testing.assert_close(scripted, eager, rtol=1e-2, atol=1e-2)
    assert torch.all(eager[..., 1:] >= eager[..., :-1]) and torch.all(eager >= 0)


def test_receptive_field_longer_than_the_context_is_refused():
    assert ModelArgs(context_length=32, dilations=(1, 2, 4, 8, 16)).receptive_field == 32
    with pytest.raises(ValueError, match="encoder sees 32 buckets but the context is 31"):
        ModelArgs(context_length=31, dilations=(1, 2, 4, 8, 16))
    with pytest.raises(ValueError, match="encoder sees"):
        ModelArgs(context_length=20, dilations=(1, 3, 9), kernel_size=3)


def test_bad_quantiles_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        ModelArgs(quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ModelArgs(quantiles=(0.0, 0.5))


def test_network_scale_is_the_ledger_scale_at_every_step():
    args = ModelArgs(context_length=20, dilations=(1, 2, 4))
    model = _model(args)
    target, observed, *_ = _inputs(args, 3, 50)
    ours = model.rolling_scale(target, observed).numpy()
    for t in range(50):
        w = slice(max(0, t - 19), t + 1)
        theirs = item_scale(target[:, w].numpy(), observed[:, w].numpy() > 0)
        np.testing.assert_allclose(ours[:, t], theirs, rtol=1e-6)


def test_output_is_proportional_to_scale():
    # Quantiles are the scale times the head's output: a demand level far outside anything seen
    # gives forecasts at that level, not saturated ones.
    args = ModelArgs(context_length=32, horizons=2, dilations=(1, 2, 4))
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 2, 32)
    observed = torch.ones_like(observed)
    big = torch.full_like(target, 1e6)
    with torch.no_grad():
        out = model(big, observed, past, fut[:, -1], static, fb[:, -1])
    assert out[..., -1].min() > 1e3


def test_equal_strings_in_different_static_columns_get_different_vectors():
    args = ModelArgs(n_static=2)
    model = _model(args)
    emb = model.embed_static(torch.tensor([[7, 7]]))
    assert emb.shape == (1, 2 * args.static_dim)
    assert not torch.allclose(emb[0, : args.static_dim], emb[0, args.static_dim :])


def test_serving_window_must_be_context_length_long():
    args = ModelArgs()
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 2, args.context_length + 1)
    with pytest.raises(AssertionError, match="context_length"):
        model(target, observed, past, fut[:, -1], static, fb[:, -1])


def test_input_spec_names_forward_arguments_in_order():
    args = ModelArgs(n_static=2)
    spec = input_spec(args)
    assert list(spec) == ["target", "observed", "past_cov", "future_cov", "static", "feedback"]
    assert spec["static"] == (("B", "2"), "int64")
    assert spec["past_cov"][0] == ("B", str(args.context_length), str(args.n_past_cov))
    assert spec["feedback"][0] == ("B", str(args.n_feedback)) and args.n_feedback == 3 + len(args.quantiles)


def test_latest_buckets_must_fit_in_the_context():
    with pytest.raises(ValueError, match="recent must be in"):
        ModelArgs(context_length=20, dilations=(1, 2, 4), recent=21)


def test_the_decoder_reads_the_latest_buckets_directly():
    args = dataclasses.replace(default_args_for("W"), recent=8)
    assert default_args_for("W").recent == 8 and default_args_for("D").recent == 0
    model = _model(args)
    target, observed, past, fut, static, fb = _inputs(args, 2, args.context_length)
    with torch.no_grad():
        base = model(target, observed, past, fut[:, -1], static, fb[:, -1])
        # The encoder sees the last bucket too; switching the direct path off must still change the output.
        model.global_mlp[0].weight[:, args.channels : args.channels + args.recent] = 0.0
        without = model(target, observed, past, fut[:, -1], static, fb[:, -1])
    assert not torch.allclose(base, without)


def test_running_max_is_cummax_of_the_quantiles():
    x = torch.randn(64, 14, 5)
    x[:, :, 2] = x[:, :, 1]  # ties
    assert torch.equal(running_max(x), torch.cummax(x, dim=-1).values)
    assert torch.equal(running_max(x[..., :1]), x[..., :1])


@pytest.mark.parametrize("training", [False, True])
def test_local_decoder_layers_are_the_plain_layers_over_every_horizons_inputs(training):
    """The decoder computes the agnostic context's share of the local layer once per forecast and
    the last layer the other way round; both must be the layers as declared, over the inputs each
    horizon reads ([its context, the agnostic context, the rest])."""
    args = dataclasses.replace(default_args_for("D"), feedback_window=3, feedback_previous=True)
    model = _model(args).train(training)
    n, h = 16, args.horizons
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(n, h, args.horizon_context, generator=g)
    agnostic = torch.randn(n, args.agnostic_context, generator=g)
    width = model.local_mlp[0].in_features - args.horizon_context - args.agnostic_context
    rest = torch.randn(n, h, width, generator=g)
    declared = model.local_mlp[:2](torch.cat([ctx, agnostic.unsqueeze(1).expand(-1, h, -1), rest], dim=-1))
    hidden = model._local_hidden(torch.cat([ctx, rest], dim=-1), agnostic)
    torch.testing.assert_close(hidden, declared, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model._local_out(hidden), model.local_mlp[2](hidden), rtol=1e-5, atol=1e-5)
