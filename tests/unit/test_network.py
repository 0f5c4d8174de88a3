"""The network: shapes, monotone quantiles, and serving equal to training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.network import MQCNN, ModelArgs, default_args_for, input_spec
from state.feedback import item_scale


def _inputs(args: ModelArgs, b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.poisson(torch.rand(b, t, generator=g) * 20)
    observed = (torch.rand(b, t, generator=g) > 0.1).float()
    observed[0, :30] = 0.0  # an item that starts late
    past = torch.randn(b, t, args.n_past_cov, generator=g)
    fut = torch.randn(b, t, args.horizons, args.n_future_cov, generator=g)
    static = torch.randint(0, args.static_vocab, (b, args.n_static), generator=g)
    fb = torch.randn(b, t, args.n_feedback, generator=g)
    return target * observed, observed, past, fut, static, fb


@pytest.mark.parametrize("freq", ["D", "W"])
def test_serving_forward_equals_training_pass_at_every_full_window(freq):
    args = default_args_for(freq)
    args.n_static = 2
    model = MQCNN(args).eval()
    target, observed, past, fut, static, fb = _inputs(args, 3, args.context_length + 40)
    with torch.no_grad():
        every = model.forward_all(target, observed, past, fut, static, fb)
        L = args.context_length
        for t in (L - 1, L + 7, target.shape[1] - 1):
            w = slice(t - L + 1, t + 1)
            one = model(target[:, w], observed[:, w], past[:, w], fut[:, t], static, fb[:, t])
            torch.testing.assert_close(one, every[:, t], rtol=1e-5, atol=1e-5)


def test_quantiles_are_non_negative_and_non_crossing():
    args = ModelArgs()
    model = MQCNN(args).eval()
    with torch.no_grad():
        out = model.forward_all(*_inputs(args, 4, 80))
    assert out.shape == (4, 80, args.horizons, len(args.quantiles))
    assert torch.all(out >= 0)
    assert torch.all(out[..., 1:] >= out[..., :-1])


def test_receptive_field_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="encoder sees"):
        ModelArgs(context_length=16, dilations=(1, 2, 4, 8, 16))


def test_network_scale_is_the_ledger_scale():
    args = ModelArgs(context_length=20, dilations=(1, 2, 4))
    model = MQCNN(args)
    target, observed, *_ = _inputs(args, 3, 20)
    ours = model.rolling_scale(target, observed)[:, -1].numpy()
    theirs = item_scale(target.numpy(), observed.numpy() > 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_input_spec_names_forward_arguments_in_order():
    spec = input_spec(ModelArgs())
    assert list(spec) == ["target", "observed", "past_cov", "future_cov", "static", "feedback"]
    assert spec["static"][1] == "int64"
