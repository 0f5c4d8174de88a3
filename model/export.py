"""TorchScript artefacts that carry their own metadata, and checkpoints that carry their arguments."""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from pathlib import Path

import torch

from model.errors import ArtifactError
from model.network import MQCNN, ModelArgs

ARTIFACT_FORMAT = 1
_META_FILE = "mqcast.json"
# TorchScript is the serving format this product promises; torch flags it as deprecated in favour
# of torch.export, which is not yet a drop-in for a scripted module with several entry points.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def export_model(model: MQCNN, args: ModelArgs, path: Path, meta: dict) -> dict:
    """Script ``model`` and save it with ``meta`` inside the artefact; returns the full metadata.

    The metadata gains the artefact format, a version (``mqcnn-<UTC time>-<weights digest>``),
    the model arguments and its inputs, so a service can check an artefact before serving it.
    """
    model = model.cpu().eval()
    full = dict(meta)
    full.update(
        {
            "format": ARTIFACT_FORMAT,
            "version": f"mqcnn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{_weights_digest(model)}",
            "model_args": args.to_dict(),
            "quantiles": list(args.quantiles),
            "horizons": args.horizons,
            "context_length": args.context_length,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(path), _extra_files={_META_FILE: json.dumps(full, default=float)})
    return full


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load an artefact and its metadata; a missing, corrupt or foreign file raises ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such model artefact")
    extra = {_META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
            module = torch.jit.load(str(path), map_location=torch.device(device), _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path}: not a TorchScript artefact ({str(exc).splitlines()[0]})") from exc
    if not extra[_META_FILE]:
        raise ArtifactError(
            f"{path}: TorchScript file without mqcast metadata (was it exported by mqcast train?)"
        )
    try:
        meta = json.loads(extra[_META_FILE])
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: metadata is not valid JSON") from exc
    if meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path}: artefact format {meta.get('format')} is not {ARTIFACT_FORMAT}")
    module.eval()
    return module, meta


def check_compatible(meta: dict, expected: dict) -> list[str]:
    """Human-readable mismatches between an artefact's metadata and what a caller expects."""
    problems = []
    for key, want in expected.items():
        got = meta.get(key)
        if isinstance(want, tuple):
            want = list(want)
        if got != want:
            problems.append(f"{key}: the model has {got!r}, expected {want!r}")
    return problems


def save_checkpoint(model: MQCNN, args: ModelArgs, path: Path, extra: dict | None = None) -> None:
    """Weights plus the arguments that rebuild the network (and anything else worth keeping)."""
    torch.save({"model_args": args.to_dict(), "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_checkpoint(path: Path) -> tuple[MQCNN, ModelArgs, dict]:
    """Rebuild a network from :func:`save_checkpoint`."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, io.UnsupportedOperation) as exc:
        raise ArtifactError(f"{path}: unreadable checkpoint ({exc})") from exc
    args = ModelArgs(**ckpt["model_args"])
    model = MQCNN(args)
    model.load_state_dict(ckpt["state_dict"])
    return model, args, ckpt.get("extra", {})
