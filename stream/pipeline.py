"""Run a micro-batch through the model in batches, handing each request over as soon as it is done.

The model works on the next batches (on its own threads, or on the GPU) while the caller records,
encodes and sends the requests the finished batches cover, so neither side waits for the other
more than one batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from stream.batcher import chunks
from stream.inputs import ModelInputs

#: Submits one batch; the future gives its forecasts [B, H, Q] and the seconds its forward took.
Submit = Callable[[ModelInputs], "Future[tuple[np.ndarray, float]]"]


def forecast_pipelined(
    submit: Submit,
    batch: ModelInputs,
    out: np.ndarray,
    max_batch: int,
    request_rows: Sequence[int],
    on_request: Callable[[int, np.ndarray], None],
    on_batch: Callable[[int, float], None] | None = None,
    depth: int = 2,
) -> None:
    """Forecast every row of ``batch`` into ``out``, at most ``max_batch`` rows per model call.

    ``request_rows`` splits the rows into consecutive requests; ``on_request(i, values)`` runs, in
    request order, as soon as every row of request ``i`` is forecast, while later batches are still
    with the model. ``on_batch(rows, seconds)`` reports each model call. ``depth`` batches are
    queued with the model at a time: one running, the rest waiting their turn.
    """
    if sum(request_rows) != batch.rows:
        raise ValueError(f"requests cover {sum(request_rows)} rows but the batch has {batch.rows}")
    todo = deque(chunks(batch.rows, max_batch))
    running: deque[tuple[int, int, Future]] = deque()
    request, request_start = 0, 0
    # Requests of no rows are done before anything runs.
    while request < len(request_rows) and request_rows[request] == 0:
        on_request(request, out[0:0])
        request += 1
    while todo or running:
        while todo and len(running) < depth:
            start, stop = todo.popleft()
            running.append((start, stop, submit(batch.slice(start, stop))))
        start, stop, future = running.popleft()
        values, seconds = future.result()
        out[start:stop] = values
        if on_batch is not None:
            on_batch(stop - start, seconds)
        while request < len(request_rows) and request_start + request_rows[request] <= stop:
            end = request_start + request_rows[request]
            on_request(request, out[request_start:end])
            request_start = end
            request += 1
