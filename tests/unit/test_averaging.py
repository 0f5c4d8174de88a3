"""The moving average of the weights that training scores and keeps."""

from __future__ import annotations

import pytest
import torch

from model.averaging import WeightAverage, averaged
from model.network import MQCNN, ModelArgs

ARGS = ModelArgs(context_length=28, horizons=7, dilations=(1, 2, 4, 8), channels=16, global_hidden=32)


def test_weight_average_ramps_its_decay_and_swaps_back_exactly():
    torch.manual_seed(0)
    model = MQCNN(ARGS)
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    average.update()  # first step: decay min(0.9, 1/10) = 0.1
    for a, s0 in zip(average.shadow, start, strict=True):
        torch.testing.assert_close(a, s0 + 0.9)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    average.update()  # second: decay min(0.9, 2/11)
    d = 2.0 / 11.0
    for a, s0 in zip(average.shadow, start, strict=True):
        torch.testing.assert_close(a, d * (s0 + 0.9) + (1 - d) * (s0 + 2.0))
    raw = [p.detach().clone() for p in params]
    averaged = [a.clone() for a in average.shadow]
    average.swap()
    for p, a in zip(params, averaged, strict=True):
        torch.testing.assert_close(p.detach(), a, rtol=0, atol=0)
    average.swap()
    for p, r in zip(params, raw, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=0, atol=0)


def test_averaged_holds_the_average_inside_the_block_even_when_it_raises():
    torch.manual_seed(0)
    model = MQCNN(ARGS)
    params = [p for p in model.parameters() if p.requires_grad]
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    raw = [p.detach().clone() for p in params]
    mean = [a.clone() for a in average.shadow]
    with pytest.raises(RuntimeError), averaged(average):
        for p, m in zip(params, mean, strict=True):
            torch.testing.assert_close(p.detach(), m, rtol=0, atol=0)
        raise RuntimeError("scoring failed")
    for p, r in zip(params, raw, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=0, atol=0)
    with averaged(None):  # no average: the weights stay as they are
        for p, r in zip(params, raw, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=0, atol=0)
