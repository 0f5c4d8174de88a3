"""Run a micro-batch through the model in batches, handing each request over as soon as it is done.

The model works on the next batches (on its own threads, or on the GPU) while the caller records,
encodes and sends the requests the finished batches cover, so neither side waits for the other
more than one batch. Work on a request's forecasts that needs nothing of the caller's state (the
messages' JSON) can run on the model's thread instead, right after the forward (``prepare``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from stream.batcher import chunks
from stream.inputs import ModelInputs


class Batch(Protocol):
    """Rows of model inputs that can be had a model batch at a time
    (:class:`stream.inputs.ModelInputs`, or :class:`stream.inputs.PendingInputs`, which assembles
    each slice when asked)."""

    @property
    def rows(self) -> int: ...

    def slice(self, start: int, stop: int) -> ModelInputs: ...


class Submit(Protocol):
    """Queues one batch with the model (:meth:`stream.inference.Predictor.submit`): the future gives
    its forecasts [B, H, Q], the seconds its forward took, and ``then(forecasts)`` run on the
    model's thread right after the forward (None without ``then``)."""

    def __call__(
        self, inputs: ModelInputs, then: Callable[[np.ndarray], object] | None = None
    ) -> Future[tuple[np.ndarray, float, object]]: ...


def forecast_pipelined(
    submit: Submit,
    batch: Batch,
    out: np.ndarray,
    max_batch: int,
    request_rows: Sequence[int],
    on_request: Callable[[int, np.ndarray, object], None],
    on_batch: Callable[[int, float], None] | None = None,
    depth: int = 2,
    prepare: Callable[[int, np.ndarray], object] | None = None,
) -> None:
    """Forecast every row of ``batch`` into ``out``, at most ``max_batch`` rows per model call.

    ``request_rows`` splits the rows into consecutive requests; ``on_request(i, values, prepared)``
    runs on the caller's thread, in request order, as soon as every row of request ``i`` is
    forecast, while later batches are still with the model. ``prepared`` is ``prepare(i, values)``
    (None without ``prepare``): run on the model's thread right after the batch's forward for a
    request that lies within one batch, on the caller's thread for one that spans batches; so
    ``prepare`` must touch nothing the caller changes meanwhile. ``on_batch(rows, seconds)``
    reports each model call. ``depth`` batches are queued with the model at a time: one running,
    the rest waiting their turn.
    """
    if sum(request_rows) != batch.rows:
        raise ValueError(f"requests cover {sum(request_rows)} rows but the batch has {batch.rows}")
    todo = deque(chunks(batch.rows, max_batch))
    running: deque[tuple[int, int, Future]] = deque()
    bounds = np.concatenate([[0], np.cumsum(request_rows, dtype=np.int64)])
    request, request_start = 0, 0
    # Requests of no rows are done before anything runs.
    while request < len(request_rows) and request_rows[request] == 0:
        on_request(request, out[0:0], prepare(request, out[0:0]) if prepare is not None else None)
        request += 1
    while todo or running:
        while todo and len(running) < depth:
            start, stop = todo.popleft()
            then = _prepare_within(prepare, bounds, start, stop) if prepare is not None else None
            running.append((start, stop, submit(batch.slice(start, stop), then)))
        start, stop, future = running.popleft()
        values, seconds, prepared = future.result()
        out[start:stop] = values
        if on_batch is not None:
            on_batch(stop - start, seconds)
        while request < len(request_rows) and request_start + request_rows[request] <= stop:
            end = request_start + request_rows[request]
            if prepare is None:
                ready = None
            elif prepared is not None and request in prepared:
                ready = prepared[request]
            else:
                ready = prepare(request, out[request_start:end])
            on_request(request, out[request_start:end], ready)
            request_start = end
            request += 1


def _prepare_within(
    prepare: Callable[[int, np.ndarray], object], bounds: np.ndarray, start: int, stop: int
) -> Callable[[np.ndarray], dict[int, object]]:
    """What the model's thread runs after the forward of rows ``[start, stop)``: ``prepare`` of each
    request with rows there that lies wholly inside them."""
    inside: list[int] = []
    i = int(np.searchsorted(bounds, start, side="left"))  # the first request starting at or after start
    while i < len(bounds) - 1 and bounds[i + 1] <= stop:
        if bounds[i + 1] > bounds[i]:  # requests of no rows are prepared by the caller
            inside.append(i)
        i += 1

    def then(values: np.ndarray) -> dict[int, object]:
        return {i: prepare(i, values[bounds[i] - start : bounds[i + 1] - start]) for i in inside}

    return then
