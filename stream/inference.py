"""Run the TorchScript model on a device, one micro-batch at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from model.errors import ArtifactError
from model.export import load_model
from stream.config import PRECISION_NAMES
from stream.inputs import ModelInputs, probe_inputs

T = TypeVar("T")

#: The dtypes the model's layers can compute in (``--precision``). Inputs and forecasts stay float32.
PRECISIONS: dict[str, torch.dtype] = dict(
    zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True)
)


def default_workers(device: torch.device, torch_threads: int | None = None) -> int:
    """Model threads when none are asked for: one on a GPU; on a CPU, one per torch thread
    (``torch_threads``, default: this thread's count)."""
    if device.type == "cuda":
        return 1
    return max(1, torch.get_num_threads() if torch_threads is None else torch_threads)


def pick_device(choice: str) -> torch.device:
    """``auto`` means CUDA when a GPU is visible, else CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(choice)


class Predictor:
    """A loaded model, its metadata and the device it runs on.

    Forwards run on model threads of their own, so the caller can gather, record and publish one
    batch while the next ones are with the model (:meth:`submit`).

    ``workers`` is how many: one on CUDA (one stream keeps the GPU busy). On a CPU, several workers
    each run whole batches single-threaded, side by side, instead of one worker whose batches torch
    splits over a team of threads: each forward then needs no barrier between its cores, and the
    cores stay busy while the caller publishes (`python -m bench inference` measures both). With
    one worker, torch's own threads are left as they are; never two callers of one team, since the
    idle team spins on the cores the busy one needs.

    On CUDA the inputs are staged in pinned host buffers and copied without blocking, so the copy of
    one tensor overlaps the launch of the next; on CPU the numpy arrays are wrapped without a copy.

    ``precision`` other than fp32 casts the module's weights; the network keeps its inputs, item
    scales and forecasts in float32 itself, so callers see no difference but the rounding.
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        meta: dict,
        device: torch.device,
        precision: str = "fp32",
        workers: int = 0,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0: automatic), got {workers}")
        self.module = module
        self.meta = meta
        self.device = device
        self.precision = precision
        self.workers = workers or default_workers(device)
        self._staging = threading.local()  # each worker's own pinned buffers (CUDA)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, device: str = "auto", precision: str = "fp32", workers: int = 0) -> Predictor:
        """Load an artefact onto the chosen device, its layers computing in ``precision`` (a key of
        :data:`PRECISIONS`), its forwards on ``workers`` threads (0: :func:`default_workers`)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        dev = pick_device(device)
        module, meta = load_model(path, dev)
        if precision != "fp32":
            if not hasattr(module, "compute_dtype"):
                raise ArtifactError(
                    f"{path}: exported before reduced-precision serving; export it again "
                    "(mqcast train) or serve it with --precision fp32"
                )
            module.to(PRECISIONS[precision])
        return cls(module, meta, dev, precision, workers)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unknown"))

    def _to_device(self, name: str, arr: np.ndarray) -> torch.Tensor:
        src = torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type != "cuda":
            return src
        pinned: dict[str, torch.Tensor] = self._staging.__dict__.setdefault("buffers", {})
        buf = pinned.get(name)
        if (
            buf is None
            or buf.shape[0] < src.shape[0]
            or buf.shape[1:] != src.shape[1:]
            or buf.dtype != src.dtype
        ):
            buf = torch.empty(src.shape, dtype=src.dtype).pin_memory()
            pinned[name] = buf
        staged = buf[: src.shape[0]]
        staged.copy_(src)
        return staged.to(self.device, non_blocking=True)

    def warm_up(self, rows: int, calls: int = 2) -> None:
        """Run synthetic batches through the model, so the first real batch does not pay for the
        TorchScript executor's first-call optimisation, the device's kernels or the pinned buffers."""
        probe = probe_inputs(self.meta, rows)
        for _ in range(calls):
            self.predict(probe)

    @property
    def depth(self) -> int:
        """How many batches to keep queued with the model so that it never waits for the caller:
        one more than the workers (the spare is ready when a worker finishes), except for a single
        CPU worker, whose thread team has the caller's cores too."""
        if self.device.type == "cpu" and self.workers == 1:
            return 1
        return self.workers + 1

    @property
    def split_past(self) -> bool:
        """Whether callers should hand over the past covariates in parts, calendar and prices
        (:class:`stream.inputs.ModelInputs`), for the model's thread to join on the device: on a
        GPU the host then writes and copies a ninth of their bytes (for a daily model), and the
        join costs the GPU next to nothing. On a CPU the join in torch on the model's threads cost
        them more than it saved the caller (docs/figures-log.md), so the caller joins them there."""
        return self.device.type == "cuda"

    @property
    def prepares_on_workers(self) -> bool:
        """Whether work on a batch's forecasts (the messages' JSON) should run on the model's
        threads, right after the forward: with several workers one encodes while the others run
        the model; a single worker (a GPU's, or a CPU thread team) would leave the model idle."""
        return self.workers > 1

    def submit(
        self, inputs: ModelInputs, then: Callable[[np.ndarray], T] | None = None
    ) -> Future[tuple[np.ndarray, float, T | None]]:
        """Queue one batch with the model's threads; the future gives its forecasts [B, H, Q], the
        seconds its forward took (the time it waited in the queue not counted) and, with ``then``,
        ``then(forecasts)`` run on the same thread right after the forward (else None)."""
        return self.on_model_thread(self._timed_forward, inputs, then)

    def on_model_thread(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn(*args)`` on one of the model's threads, once the work queued before it has
        started (with one worker: after it is done)."""
        with self._lock:
            if self._pool is None:
                self._pool = self._start_workers()
            return self._pool.submit(fn, *args)

    def _start_workers(self) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mqcast-model")
        if self.device.type != "cpu" or self.workers == 1:
            return pool
        # torch's CPU thread count is kept per thread (OpenMP's), but setting it also changes the
        # process-wide count, which a thread copies the first time torch asks for its own. So:
        # every worker has torch read its count first (else that first read, later, would undo
        # the setting), sets its own while the others wait (which makes the pool start all of
        # them now), then the caller puts the process-wide count back as it found it.
        process_threads = torch.get_num_threads()
        per_worker = max(1, process_threads // self.workers)
        started = threading.Barrier(self.workers + 1, timeout=60.0)

        def set_threads() -> None:
            torch.get_num_threads()
            torch.set_num_threads(per_worker)
            started.wait()

        for _ in range(self.workers):
            pool.submit(set_threads)
        started.wait()
        torch.set_num_threads(process_threads)
        return pool

    def predict(self, inputs: ModelInputs) -> np.ndarray:
        """Quantile forecasts float32 [B, H, Q] for one batch, waiting for them."""
        return self.submit(inputs).result()[0]

    def close(self) -> None:
        """Stop the model's threads once queued batches are done (a later call starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _timed_forward(
        self, inputs: ModelInputs, then: Callable[[np.ndarray], T] | None = None
    ) -> tuple[np.ndarray, float, T | None]:
        t0 = time.perf_counter()
        out = self._forward(inputs)
        seconds = time.perf_counter() - t0
        return out, seconds, then(out) if then is not None else None

    def _forward(self, inputs: ModelInputs) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(
                self._to_device("target", inputs.target),
                self._to_device("observed", inputs.observed),
                self._past_covariates(inputs),
                self._to_device("future_cov", inputs.future_cov),
                self._to_device("static", inputs.static),
                self._to_device("feedback", inputs.feedback),
            )
            return out.float().cpu().numpy()

    def _past_covariates(self, inputs: ModelInputs) -> torch.Tensor:
        """The batch's past covariates on the device, joined there when they come in parts (the
        host then copies the prices and one calendar, not every item's calendar rows)."""
        if not inputs.split:
            return self._to_device("past_cov", inputs.past_covariates())
        assert inputs.past_calendar is not None and inputs.log_price is not None
        calendar = self._to_device("past_calendar", inputs.past_calendar)
        price = self._to_device("log_price", inputs.log_price)
        return torch.cat((calendar.unsqueeze(0).expand(price.shape[0], -1, -1), price.unsqueeze(-1)), dim=-1)
