"""Pipelined forecasting: each request is handed over as soon as its rows are forecast, with the
same values a batch-at-a-time loop gives, while the next batch is already with the model."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import torch

from stream.inference import Predictor, default_workers
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
        self.prepared: list[object] = []
        self.lock = threading.Lock()

    def submit(self, inputs: ModelInputs, then=None) -> Future:
        self.log.append(f"submit {inputs.rows}")

        def run():
            values = _model(inputs)
            return values, 0.001, then(values) if then is not None else None

        return self.executor.submit(run)

    def on_request(self, i: int, values: np.ndarray, prepared: object) -> None:
        self.log.append(f"request {i}")
        self.handed.append((i, values.copy()))
        self.prepared.append(prepared)


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


def test_prepare_runs_on_the_model_thread_for_requests_inside_one_batch(recorder) -> None:
    # Batches of 4 rows: requests 0 (rows 0-2) and 2 (rows 9-10) lie inside one batch, request 1
    # (rows 3-8) spans three, request 3 has no rows.
    where: dict[int, str] = {}

    def prepare(i: int, values: np.ndarray) -> tuple[int, float]:
        where[i] = threading.current_thread().name
        return i, float(values.sum())

    out = np.empty((11, H, Q), np.float32)
    main = threading.current_thread().name
    forecast_pipelined(
        recorder.submit, _batch(11), out, 4, [3, 6, 2, 0], recorder.on_request, prepare=prepare
    )
    handed = dict(recorder.handed)
    assert recorder.prepared == [(i, pytest.approx(float(handed[i].sum()))) for i in range(4)]
    assert where[0] != main and where[2] != main  # the executor's thread, right after the forward
    assert where[1] == main and where[3] == main


def test_without_prepare_requests_are_handed_over_with_none(recorder) -> None:
    forecast_pipelined(
        recorder.submit, _batch(6), np.empty((6, H, Q), np.float32), 4, [2, 4], recorder.on_request
    )
    assert recorder.prepared == [None, None]


def test_requests_must_cover_the_batch(recorder) -> None:
    out = np.empty((6, H, Q), np.float32)
    with pytest.raises(ValueError, match="cover 5 rows but the batch has 6"):
        forecast_pipelined(recorder.submit, _batch(6), out, 4, [2, 3], recorder.on_request)


def test_predictor_runs_every_forward_on_its_own_thread(tiny_model) -> None:
    predictor = Predictor.load(tiny_model, "cpu", workers=1)
    probe = probe_inputs(predictor.meta, 8)
    threads: set[str] = set()
    original = predictor._forward

    def spy(inputs: ModelInputs) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return original(inputs)

    predictor._forward = spy  # type: ignore[method-assign]
    direct = predictor.predict(probe)
    queued, seconds, nothing = predictor.submit(probe).result()
    assert nothing is None
    np.testing.assert_array_equal(direct, queued)
    assert seconds > 0
    assert len(threads) == 1 and next(iter(threads)).startswith("mqcast-model")
    predictor.close()
    np.testing.assert_array_equal(predictor.predict(probe), direct)  # a closed predictor starts anew
    predictor.close()


@pytest.fixture
def two_torch_threads():
    """torch's process-wide CPU threads at 2 for the test (other tests set 1), as they were after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_workers_run_batches_side_by_side_each_single_threaded(tiny_model, two_torch_threads) -> None:
    predictor = Predictor.load(tiny_model, "cpu", workers=2)
    seen: dict[str, int] = {}
    both_in = threading.Barrier(2, timeout=30)
    original = predictor._forward

    def spy(inputs: ModelInputs) -> np.ndarray:
        seen[threading.current_thread().name] = torch.get_num_threads()
        both_in.wait()  # returns only if the two batches are with the model at the same time
        return original(inputs)

    predictor._forward = spy  # type: ignore[method-assign]
    probes = [probe_inputs(predictor.meta, 8), probe_inputs(predictor.meta, 5)]
    together = [f.result()[0] for f in [predictor.submit(p) for p in probes]]
    assert len(seen) == 2 and set(seen.values()) == {1}
    # The caller's torch threads, and those a thread started later inherits, are as they were.
    assert torch.get_num_threads() == 2
    with ThreadPoolExecutor(1) as later:
        assert later.submit(torch.get_num_threads).result() == 2
    alone = Predictor.load(tiny_model, "cpu", workers=1)
    for probe, values in zip(probes, together, strict=True):
        np.testing.assert_allclose(values, alone.predict(probe), rtol=1e-5, atol=1e-6)
    predictor.close()
    alone.close()


def test_workers_default_to_one_per_torch_thread_on_cpu_one_on_cuda(tiny_model, two_torch_threads) -> None:
    assert default_workers(torch.device("cpu")) == 2
    assert default_workers(torch.device("cpu"), torch_threads=3) == 3  # another process's count
    assert default_workers(torch.device("cuda")) == 1
    predictor = Predictor.load(tiny_model, "cpu")
    assert predictor.workers == 2 and predictor.depth == 3  # a spare batch ready for each worker
    assert Predictor.load(tiny_model, "cpu", workers=1).depth == 1  # a team has the caller's cores
    with pytest.raises(ValueError, match="workers must be >= 0"):
        Predictor.load(tiny_model, "cpu", workers=-1)


def test_pipelined_forecasts_over_several_workers_equal_one_batch_at_a_time(tiny_model) -> None:
    predictor = Predictor.load(tiny_model, "cpu", workers=3)
    batch = probe_inputs(predictor.meta, 23)
    out = np.empty((23, *predictor.predict(batch.slice(0, 1)).shape[1:]), np.float32)
    handed: list[tuple[int, np.ndarray]] = []
    forecast_pipelined(
        predictor.submit, batch, out, 4, [3, 9, 11], lambda i, v, _: handed.append((i, v.copy())), depth=4
    )
    assert [i for i, _ in handed] == [0, 1, 2]
    np.testing.assert_array_equal(np.concatenate([v for _, v in handed]), out)
    for start in range(0, 23, 4):
        alone = predictor.predict(batch.slice(start, start + 4))
        np.testing.assert_array_equal(out[start : start + 4], alone)
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
