"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.history import History, dates_to_buckets


def synthetic_history(n_items: int = 24, n_days: int = 90, seed: int = 0) -> History:
    """Daily series with weekly seasonality and volumes an order of magnitude apart."""
    rng = np.random.default_rng(seed)
    level = rng.choice([0.5, 3.0, 30.0], n_items)
    dow = 1.0 + 0.6 * np.sin(2 * np.pi * np.arange(n_days) / 7.0)
    qty = rng.poisson(level[:, None] * dow[None, :]).astype(np.float32)
    first = rng.integers(0, 20, n_items)
    observed = np.arange(n_days)[None, :] >= first[:, None]
    price = np.where(observed, rng.uniform(1, 5, n_items)[:, None], np.nan).astype(np.float32)
    first_bucket = int(dates_to_buckets(np.array(["2017-07-14"]), "D")[0])
    return History(
        item_ids=np.array([f"sku-{i}" for i in range(n_items)]),
        freq="D",
        first_bucket=first_bucket,
        qty=np.where(observed, qty, 0.0).astype(np.float32),
        observed=observed,
        price=price,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small daily model trained in seconds on synthetic data, exported like `mqcast train` does."""
    from stream.training import train_artifact

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    train_artifact(synthetic_history(), path, epochs=3, feedback_stages=1, threads=1, progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_window_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_model``, with decoder attention over the last 3 scored buckets."""
    from stream.training import train_artifact

    path = tmp_path_factory.mktemp("model") / "tiny-window.pt"
    train_artifact(
        synthetic_history(), path, epochs=3, feedback_stages=1, feedback_window=3, threads=1, progress=False
    )
    return path


@pytest.fixture
def make_history():
    """Factory of synthetic daily histories (see :func:`synthetic_history`)."""
    return synthetic_history
