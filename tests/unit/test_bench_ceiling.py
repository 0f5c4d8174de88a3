"""The inference bench's caller's ceiling runs the service's whole step over a model that costs nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import default_model
from bench.inference import InstantModel, Workload
from stream.inference import Predictor
from stream.inputs import ModelInputs


def test_the_step_over_the_instant_model_records_its_forecasts_from_inputs_in_parts(tmp_path: Path):
    predictor = Predictor.load(default_model(tmp_path), "cpu")
    work = Workload(predictor, 300)
    given = np.random.default_rng(0).gamma(2.0, 3.0, (128, work.cfg.horizons, 3)).astype(np.float32)
    instant = InstantModel(predictor, given)
    seen: list[ModelInputs] = []
    forward = instant._forward
    instant._forward = lambda inputs: seen.append(inputs) or forward(inputs)  # type: ignore[method-assign]
    try:
        work.step(instant, 128)
    finally:
        instant.close()
    # Batches of 128, 128 and 44 rows, each handed the first rows of what the model gives.
    assert [s.target.shape[0] for s in seen] == [128, 128, 44]
    assert all(s.split for s in seen), "a GPU's caller hands the past covariates over in parts"
    made = work.state.ledger.made_at(work.closed.bucket, work.state.ledger.capacity)[work.closed.rows]
    np.testing.assert_array_equal(made, given[np.arange(work.rows) % 128])
    assert instant.depth == 2 and not instant.prepares_on_workers  # the JSON on the caller's thread
