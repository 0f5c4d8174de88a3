"""Hot model reload: watch the artefact, validate a new one off the hot path, hand it over between batches.

A watcher thread polls the model path (a file, or a directory whose newest ``*.pt`` is the model)
every ``interval_s``. A changed file is loaded only once its size and modification time have held
still for one more poll, so a copy in progress is never read; writing the new file under a temporary
name and renaming it into place is still the safe way to publish one. The candidate must:

- load as an mqcast TorchScript artefact (``model.export.load_model``);
- fit the service's configuration (``check_model_fits``: bucket unit, feedback features);
- keep the shape of the state the service already holds: the same bucket unit, context length,
  horizons, quantiles and static columns (a change there needs a fresh consumer group);
- run a forward pass on a small synthetic batch and give finite, non-crossing quantiles of the
  right shape.

A candidate that passes waits in :meth:`ModelWatcher.take` until the consumer loop picks it up
between two micro-batches, so no batch is ever split across models. One that fails is refused with
its reason (logged and counted); the serving model keeps running and the same file is not tried
again until it changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.errors import ModelError
from model.export import feedback_previous_of, feedback_window_of
from model.metrics import quantiles_cross
from stream.config import ReloadConfig
from stream.errors import ModelMismatchError
from stream.inference import Predictor
from stream.inputs import probe_inputs

log = logging.getLogger("mqcast.reload")

#: Metadata that fixes the layout of per-item state and of the forecast messages.
STATE_SHAPING_KEYS = ("freq", "context_length", "horizons", "quantiles", "static_columns")


def resolve_model_path(path: Path) -> Path:
    """The artefact a path names: the file itself, or the newest ``*.pt`` in a directory."""
    path = Path(path)
    if not path.is_dir():
        return path
    candidates = [p for p in path.glob("*.pt") if p.is_file()]
    if not candidates:
        raise ModelMismatchError(f"{path}: directory holds no *.pt model artefact")
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))


def validate_candidate(candidate: Predictor, current_meta: dict, check_fits: Callable[[dict], None]) -> None:
    """Raise :class:`ModelMismatchError` saying why ``candidate`` may not replace the serving model."""
    meta = candidate.meta
    check_fits(meta)
    changed = [
        f"{key} {current_meta.get(key)!r} -> {meta.get(key)!r}"
        for key in STATE_SHAPING_KEYS
        if _normalise(meta.get(key)) != _normalise(current_meta.get(key))
    ]
    if feedback_window_of(meta) != feedback_window_of(current_meta):
        changed.append(f"feedback_window {feedback_window_of(current_meta)} -> {feedback_window_of(meta)}")
    if feedback_previous_of(meta) != feedback_previous_of(current_meta):
        changed.append(
            f"feedback_previous {feedback_previous_of(current_meta)} -> {feedback_previous_of(meta)}"
        )
    if changed:
        raise ModelMismatchError(
            "the new model changes the shape of the state being served ("
            + "; ".join(changed)
            + "); serve it under a new consumer group instead"
        )
    probe = probe_inputs(meta)
    try:
        out = candidate.predict(probe)
    except Exception as exc:  # a scripted model can fail in any way; the message is what matters
        raise ModelMismatchError(f"test forward failed: {exc}") from exc
    expected = (probe.rows, int(meta["horizons"]), len(meta["quantiles"]))
    if out.shape != expected:
        raise ModelMismatchError(f"test forward gave shape {out.shape}, expected {expected}")
    if not np.all(np.isfinite(out)):
        raise ModelMismatchError("test forward gave NaN or infinite quantiles")
    if quantiles_cross(out):
        raise ModelMismatchError("test forward gave crossing quantiles")


def _normalise(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(float(v) if isinstance(v, int | float) else v for v in value)
    return value


class ModelWatcher:
    """Watches the model path from a daemon thread and holds a validated successor for the loop.

    ``on_refused(path, reason)`` is called, from the watcher thread, for every artefact refused.
    """

    def __init__(
        self,
        path: Path,
        device: str,
        current_meta: dict,
        check_fits: Callable[[dict], None],
        cfg: ReloadConfig,
        on_refused: Callable[[Path, str], None] | None = None,
        precision: str = "fp32",
        workers: int = 0,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.precision = precision
        self.workers = workers
        self.current_meta = current_meta
        self.check_fits = check_fits
        self.cfg = cfg
        self.on_refused = on_refused or (lambda path, reason: None)
        self._lock = threading.Lock()
        self._ready: Predictor | None = None
        self._seen = self._signature()
        self._pending_sig: tuple | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _signature(self) -> tuple | None:
        try:
            target = resolve_model_path(self.path)
            st = target.stat()
        except (OSError, ModelMismatchError):
            return None
        return (str(target), st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """One poll of the path; returns True when a new model was validated and is waiting.

        A change is acted on at the second poll that sees the same signature (the file has settled).
        """
        sig = self._signature()
        if sig is None or sig == self._seen:
            self._pending_sig = None
            return False
        if sig != self._pending_sig:
            self._pending_sig = sig
            return False
        self._seen, self._pending_sig = sig, None
        target = Path(sig[0])
        candidate: Predictor | None = None
        try:
            candidate = Predictor.load(target, self.device, self.precision, self.workers)
            validate_candidate(candidate, self.current_meta, self.check_fits)
            candidate.warm_up(64)  # here, not in the first batch after the swap
        except (ModelError, ModelMismatchError, RuntimeError, ValueError) as exc:
            if candidate is not None:
                candidate.close()
            log.error("refusing new model %s: %s; the serving model keeps running", target, exc)
            self.on_refused(target, str(exc))
            return False
        with self._lock:
            stale, self._ready = self._ready, candidate
        if stale is not None:  # validated but never taken: the newer one supersedes it
            stale.close()
        self.current_meta = candidate.meta
        log.info(
            "new model %s (version %s) validated; swapping it in between batches", target, candidate.version
        )
        return True

    def take(self) -> Predictor | None:
        """The validated successor, once (None when there is none)."""
        with self._lock:
            ready, self._ready = self._ready, None
        return ready

    def start(self) -> None:
        """Poll from a daemon thread until :meth:`stop`."""

        def loop() -> None:
            while not self._stop.wait(self.cfg.interval_s):
                try:
                    self.check()
                except Exception:  # the watcher must never die silently and leave no reloads
                    log.exception("model watcher: unexpected error; still watching")

        self._thread = threading.Thread(target=loop, name="mqcast-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (the thread exits within one interval)."""
        self._stop.set()
