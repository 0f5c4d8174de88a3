"""Metadata and input windows for the tests that export, load and run networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.export import export_model, load_checkpoint, load_model, save_checkpoint
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


#: A small network for the ensemble tests: a week of horizons over four weeks of context.
SMALL = ModelArgs(
    context_length=28,
    horizons=7,
    dilations=(1, 2, 4, 8),
    channels=16,
    global_hidden=32,
    horizon_context=8,
    n_static=1,
)


def assert_export_serves_eager(model: torch.nn.Module, args: ModelArgs, path: Path) -> dict:
    """Export ``model`` to ``path``; its scripted forward must equal the eager one exactly, and in
    bf16 closely (serving casts every member). Returns the artefact's metadata."""
    full = export_model(model, args, path, export_meta())
    scripted, _ = load_model(path)
    x = window(args, b=6, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*x), model(*x), rtol=0, atol=0)
        # Serving in reduced precision casts every member (the service checks for this buffer).
        assert hasattr(scripted, "compute_dtype")
        scripted.to(torch.bfloat16)
        torch.testing.assert_close(scripted(*x), model(*x), rtol=0.05, atol=0.05)
    return full


def assert_checkpoint_rebuilds(model: torch.nn.Module, args: ModelArgs, path: Path) -> torch.nn.Module:
    """Save ``model`` as a checkpoint at ``path``; the network it rebuilds must forecast exactly as
    ``model`` does. Returns the rebuilt network."""
    save_checkpoint(model, args, path)
    again, again_args, _ = load_checkpoint(path)
    assert again_args == args
    x = window(args, b=6, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(*x), model(*x), rtol=0, atol=0)
    return again


def assert_exported_runs_on_cuda(model: torch.nn.Module, args: ModelArgs, path: Path) -> None:
    """Export ``model``; loaded onto CUDA it must forecast what the eager model does on the CPU."""
    export_model(model, args, path, export_meta())
    scripted, _ = load_model(path, "cuda")
    x = window(args, b=6, seed=3)
    with torch.no_grad():
        out = scripted(*(t.cuda() for t in x))
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), model(*x), rtol=1e-4, atol=1e-4)


def held_out_wql(model: torch.nn.Module, history, args: ModelArgs, report: dict) -> float:
    """wQL of ``model`` on its training's held-out cells, as ``model.train`` reports it."""
    from model.metrics import weighted_quantile_loss
    from model.train import held_out_forecasts

    pred, y = held_out_forecasts(model, history, args, report["validation_buckets"])
    return float(weighted_quantile_loss(y, pred, np.asarray(args.quantiles))[1])
