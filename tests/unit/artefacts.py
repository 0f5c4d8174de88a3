"""Metadata and input windows for the tests that export, load and run networks."""

from __future__ import annotations

import torch

from model.features import FUTURE_COVARIATES, PAST_COVARIATES
from model.network import ModelArgs

FEEDBACK = ["fb_weight", "fb_bias", "fb_coverage", "fb_pinball_q0.1", "fb_pinball_q0.5", "fb_pinball_q0.9"]
FEATURES = {"past": list(PAST_COVARIATES), "future": list(FUTURE_COVARIATES), "feedback": FEEDBACK}


def export_meta(**extra) -> dict:
    """Export metadata of a daily model with one static column and the default quantiles."""
    return {"freq": "D", "features": FEATURES, "static_columns": ["store"], **extra}


def window(args: ModelArgs, b: int = 5, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Random inputs of :meth:`MQCNN.forward` for ``b`` items, the same for a seed."""
    g = torch.Generator().manual_seed(seed)
    L, H = args.context_length, args.horizons
    return (
        torch.poisson(torch.rand(b, L, generator=g) * 10),
        (torch.rand(b, L, generator=g) > 0.2).float(),
        torch.randn(b, L, args.n_past_cov, generator=g),
        torch.randn(b, H, args.n_future_cov, generator=g),
        torch.randint(0, args.static_vocab, (b, args.n_static), generator=g),
        torch.randn(b, args.n_feedback, generator=g),
    )
