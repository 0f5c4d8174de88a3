"""TorchScript artefacts: same outputs as eager, metadata inside, clear errors."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from artefacts import FEATURES, FEEDBACK, export_meta, window

from model.errors import ArtifactError
from model.export import check_compatible, export_model, load_checkpoint, load_model, save_checkpoint
from model.network import MQCNN, ModelArgs


@pytest.fixture
def exported(tmp_path):
    args = ModelArgs(n_static=1)
    torch.manual_seed(0)
    model = MQCNN(args).eval()
    path = tmp_path / "m.pt"
    meta = export_model(model, args, path, export_meta(report={"val_wql": 0.5}))
    return model, args, path, meta


def test_scripted_outputs_equal_eager_outputs(exported):
    model, args, path, _ = exported
    scripted, _ = load_model(path)
    x = window(args)
    series = tuple(
        torch.cat([a] * 2, dim=1) if a.dim() > 1 and a.shape[1] == args.context_length else a for a in x
    )
    with torch.no_grad():
        torch.testing.assert_close(scripted(*x), model(*x), rtol=0, atol=0)
        # The training entry point survives scripting too (the backtest runs it on artefacts).
        target, observed, past = series[:3]
        t = target.shape[1]
        fut = x[3].unsqueeze(1).expand(-1, t, -1, -1)
        fb = x[5].unsqueeze(1).expand(-1, t, -1)
        torch.testing.assert_close(
            scripted.forward_all(target, observed, past, fut, x[4], fb),
            model.forward_all(target, observed, past, fut, x[4], fb),
        )


@pytest.fixture
def exported_with_window(tmp_path):
    args = ModelArgs(n_static=1, feedback_window=4)
    torch.manual_seed(0)
    model = MQCNN(args).eval()
    names = [f"fb_{i}" for i in range(args.n_feedback)]
    path = tmp_path / "window.pt"
    meta = export_model(model, args, path, export_meta(features={**FEATURES, "feedback": names}))
    x = list(window(args))
    x[5][:, 6::6] = (x[5][:, 6::6] > 0).float()  # seen flags: some slots filled, some empty
    return model, path, meta, x


def test_scripted_attention_over_scored_buckets_equals_eager(exported_with_window):
    model, path, meta, x = exported_with_window
    assert meta["feedback_window"] == 4
    scripted, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*x), model(*x), rtol=0, atol=0)


def test_scripted_model_reading_previous_forecasts_equals_eager(tmp_path):
    args = ModelArgs(n_static=1, feedback_previous=True)
    torch.manual_seed(0)
    model = MQCNN(args).eval()
    names = [f"fb_{i}" for i in range(args.n_feedback)]
    meta = export_model(model, args, tmp_path / "p.pt", export_meta(features={**FEATURES, "feedback": names}))
    assert meta["feedback_previous"] is True
    scripted, _ = load_model(tmp_path / "p.pt")
    x = list(window(args))
    x[5] = x[5].abs()
    x[5][:, 6::4] = (x[5][:, 6::4] > 0.5).float()  # seen flags: some horizons have one, some not
    with torch.no_grad():
        torch.testing.assert_close(scripted(*x), model(*x), rtol=0, atol=0)


def test_scripted_model_reading_the_latest_buckets_equals_eager(tmp_path):
    args = ModelArgs(n_static=1, recent=14)
    torch.manual_seed(0)
    model = MQCNN(args).eval()
    meta = export_model(model, args, tmp_path / "recent.pt", export_meta())
    assert meta["model_args"]["recent"] == 14
    scripted, _ = load_model(tmp_path / "recent.pt")
    x = window(args)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*x), model(*x), rtol=0, atol=0)


def test_scripted_model_runs_on_cpu_after_a_round_trip(exported):
    _, args, path, _ = exported
    scripted, _ = load_model(path, "cpu")
    with torch.inference_mode():
        out = scripted(*window(args, b=3))
    assert out.device.type == "cpu" and out.shape == (3, args.horizons, len(args.quantiles))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_scripted_model_runs_on_cuda(exported, exported_with_window):
    model, args, path, _ = exported
    window_model, window_path, _, window_x = exported_with_window
    for eager, artefact, x in ((model, path, window(args)), (window_model, window_path, window_x)):
        scripted, _ = load_model(artefact, "cuda")
        with torch.no_grad():
            out = scripted(*(t.cuda() for t in x))
            assert out.device.type == "cuda"
            torch.testing.assert_close(out.cpu(), eager(*x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scripted_model_runs_on_cuda_in_reduced_precision(exported, dtype):
    model, args, path, _ = exported
    scripted, _ = load_model(path, "cuda")
    scripted.to(dtype)
    x = window(args, b=64)
    with torch.no_grad():
        out = scripted(*(t.cuda() for t in x))
        reference = model(*x)
    assert out.dtype == torch.float32
    assert float((out.cpu() - reference).norm() / reference.norm()) < 3e-2


def test_metadata_travels_inside_the_artefact(exported):
    _, args, path, meta = exported
    _, loaded = load_model(path)
    assert loaded == meta
    assert loaded["quantiles"] == list(args.quantiles) and loaded["horizons"] == args.horizons
    assert loaded["context_length"] == args.context_length and loaded["freq"] == "D"
    assert ModelArgs(**loaded["model_args"]) == args
    assert loaded["features"] == FEATURES and loaded["static_columns"] == ["store"]
    assert loaded["report"] == {"val_wql": 0.5}
    assert loaded["inputs"]["static"] == {"shape": ["B", "1"], "dtype": "int64"}
    assert loaded["version"].startswith("mqcnn-") and loaded["created_at"].endswith("Z")


def test_version_names_the_weights(tmp_path):
    args = ModelArgs(n_static=1)
    torch.manual_seed(0)
    a, b = MQCNN(args), MQCNN(args)
    va = export_model(a, args, tmp_path / "a.pt", export_meta())["version"]
    vb = export_model(b, args, tmp_path / "b.pt", export_meta())["version"]
    va2 = export_model(a, args, tmp_path / "a2.pt", export_meta())["version"]
    assert va.split("-")[-1] == va2.split("-")[-1] != vb.split("-")[-1]


def test_export_refuses_metadata_that_does_not_describe_the_network(tmp_path):
    args = ModelArgs(n_static=1)
    model = MQCNN(args)
    with pytest.raises(ValueError, match="freq"):
        export_model(model, args, tmp_path / "m.pt", {"features": FEATURES, "static_columns": ["store"]})
    short = {**FEATURES, "feedback": FEEDBACK[:-1]}
    with pytest.raises(ValueError, match="feedback features"):
        export_model(model, args, tmp_path / "m.pt", export_meta(features=short))
    with pytest.raises(ValueError, match="static columns"):
        export_model(model, args, tmp_path / "m.pt", export_meta(static_columns=[]))
    assert not (tmp_path / "m.pt").exists()


def test_check_compatible_names_each_mismatch(exported):
    path = exported[2]
    _, meta = load_model(path)
    fits = {
        "freq": "D",
        "horizons": 14,
        "context_length": 56,
        "quantiles": (0.1, 0.5, 0.9),
        "features": FEATURES,
    }
    assert check_compatible(meta, fits) == []
    other_fb = {**FEATURES, "feedback": FEEDBACK[:3]}
    problems = check_compatible(
        meta, {**fits, "freq": "W", "quantiles": (0.05, 0.95), "context_length": 28, "features": other_fb}
    )
    assert len(problems) == 4
    assert problems[0].startswith("freq: the model has 'D', expected 'W'")
    assert problems[1].startswith("context_length:") and problems[2].startswith("quantiles:")
    assert problems[3].startswith("feedback features:")


def test_bad_files_raise_artifact_error(tmp_path, exported):
    with pytest.raises(ArtifactError, match="no such"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="not a TorchScript"):
        load_model(junk)
    truncated = tmp_path / "truncated.pt"
    good = exported[2].read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ArtifactError, match="not a TorchScript"):
        load_model(truncated)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(MQCNN(ModelArgs())), str(plain))
    with pytest.raises(ArtifactError, match="without mqcast metadata"):
        load_model(plain)
    partial = tmp_path / "partial.pt"
    torch.jit.save(
        torch.jit.script(MQCNN(ModelArgs())),
        str(partial),
        _extra_files={"mqcast.json": json.dumps({"format": 1})},
    )
    with pytest.raises(ArtifactError, match="lacks version, freq"):
        load_model(partial)


def test_checkpoint_carries_its_own_arguments(tmp_path):
    args = ModelArgs(context_length=40, horizons=5, dilations=(1, 2, 4), n_static=2)
    model = MQCNN(args)
    save_checkpoint(model, args, tmp_path / "c.pt", {"epoch": 3})
    again, args2, extra = load_checkpoint(tmp_path / "c.pt")
    assert args2 == args and extra == {"epoch": 3}
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_checkpoints_raise_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ArtifactError, match="not an mqcast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert zipfile.is_zipfile(tmp_path / "foreign.pt")
