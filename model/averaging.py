"""An exponential moving average of a network's weights, for the trainers to score and keep."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of a model's parameters, and a way to put it in their place.

    The decay ramps up from 0 over the first steps (``(1 + n) / (10 + n)``) so that the average is not
    held near the initial weights for hundreds of steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (after each optimiser step)."""
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)
        self.updates += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's parameters and the average (call again to swap back)."""
        for p, a in zip(self.params, self.shadow, strict=True):
            tmp = p.detach().clone()
            p.copy_(a)
            a.copy_(tmp)


@contextmanager
def averaged(average: WeightAverage | None) -> Iterator[None]:
    """Within the block the model holds the averaged weights, and its own again after it (with no
    average, the model keeps its weights throughout)."""
    if average is None:
        yield
        return
    average.swap()
    try:
        yield
    finally:
        average.swap()
