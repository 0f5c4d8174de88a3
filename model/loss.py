"""The training loss: pinball loss summed over (origin, horizon, quantile), with masks."""

from __future__ import annotations

import torch
from torch import Tensor


def pinball_loss(
    pred: Tensor, target: Tensor, mask: Tensor, quantiles: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Masked pinball loss summed over every (origin, horizon, quantile) cell.

    ``pred`` [..., Q], ``target`` and ``mask`` [...] (mask > 0 where the target is known and the
    origin counts; its value weighs the cell), ``quantiles`` [Q], optional ``weight`` broadcastable
    to ``target``. Masked-out cells contribute nothing, even when their target is NaN.
    """
    diff = target.unsqueeze(-1) - pred
    loss = torch.maximum(quantiles * diff, (quantiles - 1.0) * diff).sum(-1)
    if weight is not None:
        loss = loss * weight
    return torch.where(mask > 0, loss * mask, torch.zeros_like(loss)).sum()
