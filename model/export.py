"""TorchScript artefacts that carry their own metadata, and checkpoints that carry their arguments.

An artefact is what the service loads: a scripted :class:`~model.network.MQCNN` plus ``mqcast.json``
inside the same file, which says what the network expects (bucket unit, context, horizons,
quantiles, feature names) so a service can refuse a model that does not fit it, with a reason.
A checkpoint is what training resumes from: the weights plus the :class:`ModelArgs` that rebuild the
network.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import torch

from model.errors import ArtifactError
from model.network import MQCNN, ModelArgs, MQCNNEnsemble, build_network, input_spec, member_networks

ARTIFACT_FORMAT = 1
_META_FILE = "mqcast.json"
#: Metadata every artefact has; the service reads these before serving.
REQUIRED_META = (
    "format",
    "version",
    "freq",
    "quantiles",
    "horizons",
    "context_length",
    "model_args",
    "features",
)
# TorchScript is the serving format this product promises; torch flags it as deprecated in favour
# of torch.export, which is not yet a drop-in for a scripted module with several entry points.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def _check_meta(args: ModelArgs, meta: dict) -> None:
    """The caller's metadata must describe the network's inputs: names as many as the columns."""
    if "freq" not in meta:
        raise ValueError("export metadata needs 'freq' (the bucket unit the model was trained on)")
    features = meta.get("features")
    if not isinstance(features, dict):
        raise ValueError(
            "export metadata needs 'features': {'past': [...], 'future': [...], 'feedback': [...]}"
        )
    widths = {"past": args.n_past_cov, "future": args.n_future_cov, "feedback": args.n_feedback}
    for kind, width in widths.items():
        names = features.get(kind)
        if names is None or len(names) != width:
            raise ValueError(f"export metadata names {names!r} as {kind} features, the network has {width}")
    static = meta.get("static_columns", [])
    if len(static) != args.n_static:
        raise ValueError(f"export metadata names static columns {static}, the network has {args.n_static}")


def export_model(model: MQCNN | MQCNNEnsemble, args: ModelArgs, path: Path, meta: dict) -> dict:
    """Script ``model`` and save it with ``meta`` inside the artefact; returns the full metadata.

    ``meta`` comes from the caller and must hold ``freq`` and ``features`` (``past``, ``future`` and
    ``feedback`` name lists, as wide as the network's inputs); ``static_columns``, the training
    report and anything else JSON-serialisable travel along. The metadata gains the artefact format,
    a version (``mqcnn-<UTC time>-<weights digest>``), the model arguments, the quantiles, horizons
    and context length, the input spec and the creation time.
    """
    _check_meta(args, meta)
    model = model.cpu().eval()
    now = time.gmtime()
    full = {"static_columns": [], **meta}
    full.update(
        {
            "format": ARTIFACT_FORMAT,
            "version": f"mqcnn-{time.strftime('%Y%m%dT%H%M%SZ', now)}-{_weights_digest(model)}",
            "model_args": args.to_dict(),
            "quantiles": list(args.quantiles),
            "horizons": args.horizons,
            "context_length": args.context_length,
            "feedback_window": args.feedback_window,
            "feedback_previous": args.feedback_previous,
            "inputs": {
                name: {"shape": list(shape), "dtype": dtype}
                for name, (shape, dtype) in input_spec(args).items()
            },
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
        }
    )
    # Round-trip through JSON so the returned dict is exactly what load_model will read.
    text = json.dumps(full, default=float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(path), _extra_files={_META_FILE: text})
    return json.loads(text)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load an artefact and its metadata onto ``device``.

    A missing or corrupt file, a TorchScript file without mqcast metadata, or metadata without the
    fields the service needs raises :class:`ArtifactError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such model artefact")
    extra = {_META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
            module = torch.jit.load(str(path), map_location=torch.device(device), _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: not a TorchScript artefact ({reason})") from exc
    if not extra[_META_FILE]:
        raise ArtifactError(
            f"{path}: TorchScript file without mqcast metadata (was it exported by mqcast train?)"
        )
    try:
        meta = json.loads(extra[_META_FILE])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: metadata is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: metadata is not a JSON object")
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: artefact format {meta.get('format')!r} is not {ARTIFACT_FORMAT}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ArtifactError(f"{path}: metadata lacks {', '.join(missing)}")
    module.eval()
    return module, meta


def feedback_window_of(meta: dict) -> int:
    """Scored buckets an artefact's feedback input holds one by one (0 for artefacts from before the
    feedback window)."""
    return int(meta.get("feedback_window", 0))


def feedback_previous_of(meta: dict) -> bool:
    """Whether an artefact's feedback input holds each horizon's previous forecast (False for
    artefacts from before that input)."""
    return bool(meta.get("feedback_previous", False))


def _plain(value: object) -> object:
    """Tuples as lists, recursively, so expectations compare equal to what JSON gives back."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_compatible(meta: dict, expected: dict) -> list[str]:
    """Human-readable mismatches between an artefact's metadata and what a caller expects.

    ``expected`` maps metadata keys (``freq``, ``quantiles``, ``horizons``, ``context_length``,
    ``features``, ``static_columns``, ...) to the values the caller needs; an empty list means the
    model fits. Feature lists are compared kind by kind so the message names the kind that differs.
    """
    problems = []
    for key, want in expected.items():
        want, got = _plain(want), meta.get(key)
        if key == "features" and isinstance(want, dict) and isinstance(got, dict):
            for kind, names in want.items():
                if got.get(kind) != names:
                    problems.append(f"{kind} features: the model has {got.get(kind)!r}, expected {names!r}")
        elif got != want:
            problems.append(f"{key}: the model has {got!r}, expected {want!r}")
    return problems


def save_checkpoint(
    model: MQCNN | MQCNNEnsemble, args: ModelArgs, path: Path, extra: dict | None = None
) -> None:
    """Save the weights with the arguments that rebuild the network (and ``extra``, e.g. a report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_args": args.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_checkpoint(path: Path) -> tuple[MQCNN | MQCNNEnsemble, ModelArgs, dict]:
    """Rebuild a network from :func:`save_checkpoint`; returns ``(model, args, extra)``."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # Unpickling arbitrary bytes fails in many ways (struct, pickle, zip, EOF errors, ...).
    except Exception as exc:
        raise ArtifactError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from exc
    try:
        args = ModelArgs(**ckpt["model_args"])
        model = build_network(args)
        state = dict(ckpt["state_dict"])
        # Checkpoints from before the covariate masks use every covariate; those from before the
        # calibration shift are uncalibrated.
        nets = member_networks(model)
        for k, net in enumerate(nets):
            prefix = f"members.{k}." if isinstance(model, MQCNNEnsemble) else ""
            for name in ("past_cov_mask", "future_cov_mask", "quantile_shift"):
                state.setdefault(prefix + name, getattr(net, name))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{path}: not an mqcast checkpoint or from an incompatible version ({exc})"
        ) from exc
    return model, args, ckpt.get("extra", {})
