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


def pick_device(choice: str) -> torch.device:
    """``auto`` means CUDA when a GPU is visible, else CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(choice)


class Predictor:
    """A loaded model, its metadata and the device it runs on.

    Every forward runs on one worker thread of its own, so the caller can gather, record and publish
    one batch while the next one is on the device (:meth:`submit`). One thread, not the caller's,
    also means one CPU thread team for torch: forwards from two threads would each bring their own
    team, and the idle one spins on the cores the busy one needs.

    On CUDA the inputs are staged in pinned host buffers and copied without blocking, so the copy of
    one tensor overlaps the launch of the next; on CPU the numpy arrays are wrapped without a copy.

    ``precision`` other than fp32 casts the module's weights; the network keeps its inputs, item
    scales and forecasts in float32 itself, so callers see no difference but the rounding.
    """

    def __init__(
        self, module: torch.jit.ScriptModule, meta: dict, device: torch.device, precision: str = "fp32"
    ) -> None:
        self.module = module
        self.meta = meta
        self.device = device
        self.precision = precision
        self._pinned: dict[str, torch.Tensor] = {}
        self._worker: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, device: str = "auto", precision: str = "fp32") -> Predictor:
        """Load an artefact onto the chosen device, its layers computing in ``precision`` (a key of
        :data:`PRECISIONS`)."""
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
        return cls(module, meta, dev, precision)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unknown"))

    def _to_device(self, name: str, arr: np.ndarray) -> torch.Tensor:
        src = torch.from_numpy(np.ascontiguousarray(arr))
        if self.device.type != "cuda":
            return src
        buf = self._pinned.get(name)
        if (
            buf is None
            or buf.shape[0] < src.shape[0]
            or buf.shape[1:] != src.shape[1:]
            or buf.dtype != src.dtype
        ):
            buf = torch.empty(src.shape, dtype=src.dtype).pin_memory()
            self._pinned[name] = buf
        staged = buf[: src.shape[0]]
        staged.copy_(src)
        return staged.to(self.device, non_blocking=True)

    def warm_up(self, rows: int, calls: int = 2) -> None:
        """Run synthetic batches through the model, so the first real batch does not pay for the
        TorchScript executor's first-call optimisation, the device's kernels or the pinned buffers."""
        probe = probe_inputs(self.meta, rows)
        for _ in range(calls):
            self.predict(probe)

    def submit(self, inputs: ModelInputs) -> Future[tuple[np.ndarray, float]]:
        """Queue one batch on the model's thread; the future gives its forecasts [B, H, Q] and the
        seconds its forward took (the time it waited in the queue not counted)."""
        return self.on_model_thread(self._timed_forward, inputs)

    def on_model_thread(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Run ``fn(*args)`` on the model's thread, after the batches queued before it."""
        with self._lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqcast-model")
            return self._worker.submit(fn, *args)

    def predict(self, inputs: ModelInputs) -> np.ndarray:
        """Quantile forecasts float32 [B, H, Q] for one batch, waiting for them."""
        return self.submit(inputs).result()[0]

    def close(self) -> None:
        """Stop the model's thread once queued batches are done (a later call starts a new one)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)

    def _timed_forward(self, inputs: ModelInputs) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = self._forward(inputs)
        return out, time.perf_counter() - t0

    def _forward(self, inputs: ModelInputs) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(
                self._to_device("target", inputs.target),
                self._to_device("observed", inputs.observed),
                self._to_device("past_cov", inputs.past_cov),
                self._to_device("future_cov", inputs.future_cov),
                self._to_device("static", inputs.static),
                self._to_device("feedback", inputs.feedback),
            )
            return out.float().cpu().numpy()
