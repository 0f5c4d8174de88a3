"""Pipelined forecasting: each request is handed over as soon as its rows are forecast, with the
same values a batch-at-a-time loop gives, while the next batch is already with the model."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from stream.inference import Predictor
from stream.inputs import ModelInputs, probe_inputs
from stream.pipeline import forecast_pipelined

H, Q = 3, 2


def _batch(rows: int) -> ModelInputs:
    rng = np.random.default_rng(rows)
    return ModelInputs(
        rng.random((rows, 5), dtype=np.float32),
        np.ones((rows, 5), np.float32),
        np.zeros((rows, 5, 1), np.float32),
        np.zeros((rows, H, 1), np.float32),
        np.zeros((rows, 0), np.float32),
        np.zeros((rows, 2), np.float32),
    )


def _model(inputs: ModelInputs) -> np.ndarray:
    """A stand-in forward: each row's forecast depends only on that row."""
    base = inputs.target.sum(axis=1)[:, None, None]
    return (base + np.arange(H * Q, dtype=np.float32).reshape(1, H, Q)).astype(np.float32)


class Recorder:
    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.log: list[str] = []
        self.handed: list[tuple[int, np.ndarray]] = []
        self.lock = threading.Lock()

    def submit(self, inputs: ModelInputs) -> Future:
        self.log.append(f"submit {inputs.rows}")
        return self.executor.submit(lambda: (_model(inputs), 0.001))

    def on_request(self, i: int, values: np.ndarray) -> None:
        self.log.append(f"request {i}")
        self.handed.append((i, values.copy()))


@pytest.fixture
def recorder():
    with ThreadPoolExecutor(1) as ex:
        yield Recorder(ex)


def test_every_request_gets_the_rows_a_sequential_loop_gives(recorder) -> None:
    batch = _batch(23)
    rows = [5, 0, 9, 1, 8]
    out = np.empty((23, H, Q), np.float32)
    batches: list[int] = []
    forecast_pipelined(
        recorder.submit, batch, out, 4, rows, recorder.on_request, lambda r, s: batches.append(r)
    )
    expected = _model(batch)
    np.testing.assert_array_equal(out, expected)
    assert [i for i, _ in recorder.handed] == list(range(len(rows)))
    bounds = np.cumsum([0, *rows])
    for i, values in recorder.handed:
        np.testing.assert_array_equal(values, expected[bounds[i] : bounds[i + 1]])
    assert batches == [4, 4, 4, 4, 4, 3]


def test_a_request_is_handed_over_while_later_batches_still_run(recorder) -> None:
    out = np.empty((12, H, Q), np.float32)
    forecast_pipelined(recorder.submit, _batch(12), out, 4, [3, 9], recorder.on_request, depth=2)
    # Two batches queued; the first request is out before the third batch is even submitted.
    assert recorder.log == ["submit 4", "submit 4", "request 0", "submit 4", "request 1"]


def test_requests_must_cover_the_batch(recorder) -> None:
    out = np.empty((6, H, Q), np.float32)
    with pytest.raises(ValueError, match="cover 5 rows but the batch has 6"):
        forecast_pipelined(recorder.submit, _batch(6), out, 4, [2, 3], recorder.on_request)


def test_predictor_runs_every_forward_on_its_own_thread(tiny_model) -> None:
    predictor = Predictor.load(tiny_model, "cpu")
    probe = probe_inputs(predictor.meta, 8)
    threads: set[str] = set()
    original = predictor._forward

    def spy(inputs: ModelInputs) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return original(inputs)

    predictor._forward = spy  # type: ignore[method-assign]
    direct = predictor.predict(probe)
    queued, seconds = predictor.submit(probe).result()
    np.testing.assert_array_equal(direct, queued)
    assert seconds > 0
    assert len(threads) == 1 and next(iter(threads)).startswith("mqcast-model")
    predictor.close()
    np.testing.assert_array_equal(predictor.predict(probe), direct)  # a closed predictor starts anew
    predictor.close()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_predictor_in_reduced_precision_gives_float32_forecasts_close_to_fp32(tiny_model, precision) -> None:
    full = Predictor.load(tiny_model, "cpu")
    low = Predictor.load(tiny_model, "cpu", precision)
    probe = probe_inputs(full.meta, 32)
    reference, served = full.predict(probe), low.predict(probe)
    assert low.precision == precision and served.dtype == np.float32
    # Close, but not equal: equal would mean the layers never left float32.
    diff = np.linalg.norm(served - reference) / np.linalg.norm(reference)
    assert 0 < diff < 0.03
    assert np.all(np.diff(served, axis=-1) >= 0)
    full.close()
    low.close()


def test_predictor_refuses_an_unknown_precision(tiny_model) -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        Predictor.load(tiny_model, "cpu", "int8")


def test_reduced_precision_refuses_an_artefact_exported_before_it(tiny_model, tmp_path) -> None:
    import json

    import torch

    from model.errors import ArtifactError
    from model.export import _META_FILE, load_model

    class Older(torch.nn.Module):  # no compute_dtype buffer, as artefacts exported before it
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    _, meta = load_model(tiny_model)
    older = tmp_path / "older.pt"
    torch.jit.save(torch.jit.script(Older()), str(older), _extra_files={_META_FILE: json.dumps(meta)})
    assert Predictor.load(older, "cpu").precision == "fp32"
    with pytest.raises(ArtifactError, match="exported before reduced-precision serving"):
        Predictor.load(older, "cpu", "bf16")
