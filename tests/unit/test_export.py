"""TorchScript artefacts: same outputs as eager, metadata inside, clear errors."""

from __future__ import annotations

import pytest
import torch

from model.errors import ArtifactError
from model.export import check_compatible, export_model, load_checkpoint, load_model, save_checkpoint
from model.network import MQCNN, ModelArgs


def _example(args: ModelArgs, b: int = 5):
    torch.manual_seed(1)
    L, H = args.context_length, args.horizons
    return (
        torch.rand(b, L) * 10,
        torch.ones(b, L),
        torch.randn(b, L, args.n_past_cov),
        torch.randn(b, H, args.n_future_cov),
        torch.randint(0, args.static_vocab, (b, args.n_static)),
        torch.randn(b, args.n_feedback),
    )


@pytest.fixture
def exported(tmp_path):
    args = ModelArgs(n_static=1)
    model = MQCNN(args).eval()
    path = tmp_path / "m.pt"
    meta = export_model(model, args, path, {"freq": "D", "features": {"feedback": ["a"]}})
    return model, args, path, meta


def test_scripted_outputs_equal_eager_outputs(exported):
    model, args, path, _ = exported
    scripted, _ = load_model(path)
    x = _example(args)
    with torch.no_grad():
        torch.testing.assert_close(scripted(*x), model(*x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_scripted_model_runs_on_cuda(exported):
    model, args, path, _ = exported
    scripted, _ = load_model(path, "cuda")
    x = _example(args)
    with torch.no_grad():
        out = scripted(*(t.cuda() for t in x)).cpu()
        torch.testing.assert_close(out, model(*x), rtol=1e-3, atol=1e-3)


def test_metadata_travels_inside_the_artefact(exported):
    _, args, path, meta = exported
    _, loaded = load_model(path)
    assert loaded == meta
    assert loaded["quantiles"] == list(args.quantiles) and loaded["horizons"] == args.horizons
    assert loaded["model_args"]["n_static"] == 1 and loaded["freq"] == "D"
    assert loaded["version"].startswith("mqcnn-")


def test_check_compatible_names_each_mismatch(exported):
    _, _, path, _ = exported
    _, meta = load_model(path)
    assert check_compatible(meta, {"freq": "D", "horizons": 14}) == []
    problems = check_compatible(meta, {"freq": "W", "quantiles": (0.05, 0.95)})
    assert len(problems) == 2 and "freq" in problems[0] and "quantiles" in problems[1]


def test_bad_files_raise_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="not a TorchScript"):
        load_model(junk)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(MQCNN(ModelArgs())), str(plain))
    with pytest.raises(ArtifactError, match="metadata"):
        load_model(plain)


def test_checkpoint_carries_its_own_arguments(tmp_path):
    args = ModelArgs(context_length=40, horizons=5, dilations=(1, 2, 4))
    model = MQCNN(args)
    save_checkpoint(model, args, tmp_path / "c.pt", {"epoch": 3})
    again, args2, extra = load_checkpoint(tmp_path / "c.pt")
    assert args2 == args and extra == {"epoch": 3}
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
