"""Settings from a TOML file under flags and environment, with errors that name the file and setting."""

from __future__ import annotations

import pytest

from stream.cli import main, parse_command_line
from stream.config import service_config_from_args


def _write(tmp_path, text: str):
    path = tmp_path / "mqcast.toml"
    path.write_text(text)
    return path


def test_file_sets_values_flags_and_environment_override_it(tmp_path, monkeypatch):
    path = _write(
        tmp_path,
        """
[kafka]
bootstrap = "10.0.0.1:9092"
group-id = "planners"

[batching]
max-batch = 4096
MAX_DELAY = "200ms"
exactly-once = true
""",
    )
    monkeypatch.setenv("MQCAST_GROUP_ID", "from-env")
    cfg = service_config_from_args(parse_command_line(["serve", "--config", str(path), "--max-batch", "8"]))
    assert cfg.kafka.bootstrap == "10.0.0.1:9092"  # file over default
    assert cfg.kafka.group_id == "from-env"  # environment over file
    assert cfg.batcher.max_batch == 8  # flag over everything
    assert cfg.batcher.max_delay_ms == 200  # the environment variable's name works as a key
    assert cfg.durability.exactly_once


def test_config_path_can_come_from_the_environment(tmp_path, monkeypatch):
    path = _write(tmp_path, 'forecast-topic = "fc.v2"\n')
    monkeypatch.setenv("MQCAST_CONFIG", str(path))
    assert service_config_from_args(parse_command_line(["serve"])).kafka.forecast_topic == "fc.v2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-bach = 10\n", "unknown setting 'max-bach'"),
        ("[kafka]\nmax-batch = 0\n", "kafka.max-batch = 0: 0 must be >= 1"),
        ('device = "tpu"\n', "device = 'tpu' is not one of auto, cpu, cuda"),
        ('max-delay = "soon"\n', "max-delay = 'soon'"),
        ("max-batch = [\n", "not valid TOML"),
    ],
)
def test_bad_file_is_a_usage_error_naming_the_file_and_setting(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--config", str(tmp_path / "nope.toml")])
    assert "no such configuration file" in capsys.readouterr().err
