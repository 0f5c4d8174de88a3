"""The training loss: pinball loss summed over (origin, horizon, quantile), with masks."""

from __future__ import annotations

import torch
from torch import Tensor


def pinball_loss(
    pred: Tensor, target: Tensor, mask: Tensor, quantiles: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Masked pinball loss summed over every cell.

    ``pred`` [..., Q], ``target`` and ``mask`` [...] (mask 1 where the target is known and the
    origin counts), ``quantiles`` [Q], optional ``weight`` [...] per cell.
    """
    diff = target.unsqueeze(-1) - pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1.0) * diff).sum(-1)
    if weight is not None:
        loss = loss * weight
    return (loss * mask).sum()
