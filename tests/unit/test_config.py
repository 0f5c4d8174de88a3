"""Service settings from flags and MQCAST_ environment variables."""

from __future__ import annotations

import pytest

from stream.cli import build_parser, main
from stream.config import parse_duration_ms, service_config_from_args


def _serve_args(argv: list[str]):
    return build_parser().parse_args(["serve", *argv])


def test_defaults_run_as_they_are():
    cfg = service_config_from_args(_serve_args([]))
    assert cfg.kafka.bootstrap == "127.0.0.1:9092" and cfg.kafka.sales_topic == "sales"
    assert cfg.batcher.max_batch == 1024 and cfg.batcher.max_delay_ms == 50
    assert cfg.allowed_lateness_ms == 600_000 and cfg.durability.changelog and not cfg.durability.exactly_once


def test_environment_sets_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("MQCAST_MAX_BATCH", "512")
    monkeypatch.setenv("MQCAST_ALLOWED_LATENESS", "1h")
    monkeypatch.setenv("MQCAST_EXACTLY_ONCE", "on")
    cfg = service_config_from_args(_serve_args(["--max-batch", "64"]))
    assert cfg.batcher.max_batch == 64
    assert cfg.allowed_lateness_ms == 3_600_000 and cfg.durability.exactly_once


def test_precision_comes_from_the_flag_or_the_environment(monkeypatch, capsys):
    assert service_config_from_args(_serve_args([])).model.precision == "fp32"
    monkeypatch.setenv("MQCAST_PRECISION", "bf16")
    assert service_config_from_args(_serve_args([])).model.precision == "bf16"
    assert service_config_from_args(_serve_args(["--precision", "fp16"])).model.precision == "fp16"
    with pytest.raises(SystemExit):
        _serve_args(["--precision", "int8"])
    assert "invalid choice" in capsys.readouterr().err


def test_torch_threads_default_to_torch_and_take_a_count(monkeypatch):
    assert service_config_from_args(_serve_args([])).model.torch_threads == 0
    monkeypatch.setenv("MQCAST_TORCH_THREADS", "1")
    assert service_config_from_args(_serve_args([])).model.torch_threads == 1


def test_model_workers_default_to_automatic_and_take_a_count(monkeypatch, capsys):
    assert service_config_from_args(_serve_args([])).model.workers == 0
    monkeypatch.setenv("MQCAST_MODEL_WORKERS", "3")
    assert service_config_from_args(_serve_args([])).model.workers == 3
    assert service_config_from_args(_serve_args(["--model-workers", "1"])).model.workers == 1
    with pytest.raises(SystemExit):
        _serve_args(["--model-workers", "-1"])
    assert "--model-workers" in capsys.readouterr().err


def test_help_names_each_variable_and_default(capsys):
    with pytest.raises(SystemExit):
        _serve_args(["--help"])
    text = capsys.readouterr().out
    for name in ("MQCAST_BOOTSTRAP", "MQCAST_MODEL", "MQCAST_MAX_DELAY", "MQCAST_EXACTLY_ONCE"):
        assert name in text
    assert "default: 50ms" in text


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("MQCAST_MAX_BATCH", "lots", "not an integer"),
        ("MQCAST_METRICS_PORT", "70000", "between 0 and 65535"),
        ("MQCAST_MAX_DELAY", "soon", "not a duration"),
        ("MQCAST_DEVICE", "gpu", "MQCAST_DEVICE='gpu' is not one of"),
    ],
)
def test_bad_environment_value_is_a_usage_error(monkeypatch, capsys, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", "m.pt"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_durations():
    assert (
        parse_duration_ms("500ms") == 500
        and parse_duration_ms("2") == 2000
        and parse_duration_ms("1d") == 86_400_000
    )


def test_serve_with_a_missing_or_empty_model_path_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: no such model artefact" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "holds no *.pt model artefact" in capsys.readouterr().err


def test_turn_budget_must_leave_room_in_the_poll_interval(capsys):
    assert main(["serve", "--model", "m.pt", "--turn-budget", "2m", "--max-poll-interval", "5m"]) == 2
    assert "at most a quarter of max_poll_interval_ms" in capsys.readouterr().err


def test_building_the_command_line_loads_neither_torch_nor_kafka():
    import subprocess
    import sys

    code = (
        "import sys; from stream.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'kafka', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", ["train", "backtest"])
def test_weight_averaging_takes_a_decay_below_one_or_zero_to_turn_it_off(capsys, command):
    def parse(*extra: str):
        return build_parser().parse_args([command, "--data", "h.csv", "--out", "m.pt", *extra])

    assert parse().ema_decay is None  # the training default applies
    assert parse("--ema-decay", "0").ema_decay == 0.0
    assert parse("--ema-decay", "0.99").ema_decay == 0.99
    for bad in ("1", "-0.1", "often"):
        with pytest.raises(SystemExit):
            parse("--ema-decay", bad)
        assert "--ema-decay" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "backtest"])
def test_ensemble_members_must_be_a_positive_count(capsys, command):
    def parse(*extra: str):
        return build_parser().parse_args([command, "--data", "h.csv", "--out", "m.pt", *extra])

    assert parse().ensemble is None  # the model's default applies
    assert parse("--ensemble", "3").ensemble == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            parse("--ensemble", bad)
        assert "--ensemble" in capsys.readouterr().err


def test_checkpoint_share_is_a_share_of_the_time(monkeypatch, capsys):
    assert service_config_from_args(_serve_args([])).durability.checkpoint_share == 0.1
    monkeypatch.setenv("MQCAST_CHECKPOINT_SHARE", "0.25")
    assert service_config_from_args(_serve_args([])).durability.checkpoint_share == 0.25
    for bad in ("0", "1.5", "half"):
        with pytest.raises(SystemExit):
            _serve_args(["--checkpoint-share", bad])
        assert "--checkpoint-share" in capsys.readouterr().err
