"""examples/forecast_client.py formats real forecast messages correctly (no broker)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import orjson
import pytest

from state.buckets import bucket_of
from stream.publish import ForecastFormat, encode_forecasts

CLIENT = Path(__file__).resolve().parents[2] / "examples" / "forecast_client.py"
ORIGIN_MS = 1317600000000  # 2011-10-03T00:00:00Z
PRODUCED_MS = 1764080881123  # 2025-11-25T14:28:01.123Z


@pytest.fixture(scope="module")
def client() -> ModuleType:
    """The example imported by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("forecast_client", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["forecast_client"] = module
    spec.loader.exec_module(module)
    return module


def _messages(quantiles=(0.1, 0.5, 0.9), freq: str = "D", origin_ms: int = ORIGIN_MS) -> list[bytes]:
    horizons = 14
    base = np.array([[12.0, 58.5, 151.0], [3.25, 20.0, 64.5]], dtype=np.float32)[:, None, : len(quantiles)]
    values = np.repeat(base, horizons, axis=1) + np.arange(horizons, dtype=np.float32)[None, :, None]
    fmt = ForecastFormat(freq, "mqcnn-test-1", tuple(quantiles), horizons)
    origin = int(bucket_of(np.array([origin_ms]), freq)[0])
    return encode_forecasts(fmt, ["85123A", "22423"], origin, values, PRODUCED_MS)


def test_line_shows_item_origin_model_and_first_horizons(client):
    msg = client.parse_message(_messages()[0])
    assert client.format_line(msg, horizons=2) == (
        "85123A       origin 2011-10-03T00:00:00.000Z (D)  model mqcnn-test-1  "
        "h1 P10=12.0 P50=58.5 P90=151.0 | h2 P10=13.0 P50=59.5 P90=152.0 | (+12 more)"
    )
    every = client.format_line(msg, horizons=14)
    assert "h14 P10=25.0 P50=71.5 P90=164.0" in every and "more" not in every


def test_csv_rows_one_per_horizon_with_target_buckets(client, tmp_path: Path):
    out = tmp_path / "forecasts.csv"
    sink = client.CsvSink(out)
    for raw in _messages():
        sink.write(client.parse_message(raw))
    sink.close()
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 14 and sink.rows == 28
    assert list(rows[0]) == [
        "item_id",
        "origin",
        "bucket",
        "horizon",
        "target",
        "model_version",
        "produced_at",
        "p10",
        "p50",
        "p90",
    ]
    first, last = rows[0], rows[13]
    assert first["item_id"] == "85123A" and first["horizon"] == "1"
    assert first["target"] == "2011-10-04T00:00:00.000Z" and last["target"] == "2011-10-17T00:00:00.000Z"
    assert first["model_version"] == "mqcnn-test-1" and first["produced_at"] == "2025-11-25T14:28:01.123Z"
    assert (float(first["p10"]), float(first["p50"]), float(first["p90"])) == (12.0, 58.5, 151.0)
    assert rows[14]["item_id"] == "22423" and float(rows[14]["p10"]) == 3.25


def test_csv_appends_without_a_second_header_and_refuses_other_quantiles(client, tmp_path: Path):
    out = tmp_path / "forecasts.csv"
    for _ in range(2):
        sink = client.CsvSink(out)
        sink.write(client.parse_message(_messages()[0]))
        sink.close()
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 2 * 14 and lines.count(lines[0]) == 1
    sink = client.CsvSink(out)
    with pytest.raises(ValueError, match="do not match the columns"):
        sink.write(client.parse_message(_messages(quantiles=(0.05, 0.5, 0.95))[0]))
    sink.close()


@pytest.mark.parametrize(
    ("freq", "origin", "horizon", "target"),
    [
        ("h", "2011-10-03T23:00:00.000Z", 2, "2011-10-04T01:00:00.000Z"),
        ("W", "2011-09-29T00:00:00.000Z", 1, "2011-10-06T00:00:00.000Z"),
        ("M", "2011-11-01T00:00:00.000Z", 1, "2011-12-01T00:00:00.000Z"),
        ("M", "2011-11-01T00:00:00.000Z", 3, "2012-02-01T00:00:00.000Z"),
    ],
)
def test_target_bucket_of_each_unit(client, freq, origin, horizon, target):
    assert client.target_start(origin, freq, horizon) == target


def test_target_agrees_with_the_service_bucket_arithmetic(client):
    # Weeks are numpy weeks (they start on Thursdays) and months are calendar months.
    for freq in ("h", "D", "W", "M"):
        msg = client.parse_message(_messages(freq=freq)[0])
        origin = int(bucket_of(np.array([msg["origin_ms"]]), freq)[0])
        for h in (1, 5, 14):
            expected_ms = int(
                np.int64(origin + h).astype(f"datetime64[{freq}]").astype("datetime64[ms]").astype(int)
            )
            expected = str(np.datetime64(expected_ms, "ms")) + "Z"
            assert client.target_start(msg["origin"], freq, h) == expected, (freq, h)


def test_quantile_labels(client):
    assert [client.quantile_label(q) for q in (0.1, 0.5, 0.9, 0.975, 0.05)] == [
        "P10",
        "P50",
        "P90",
        "P97.5",
        "P5",
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schema": 2, "item_id": "x"}', "schema 2"),
        (b'{"schema": 1, "item_id": "x"}', "missing field"),
        (
            orjson.dumps(
                {
                    "schema": 1,
                    "item_id": "x",
                    "origin": "2011-10-03T00:00:00.000Z",
                    "bucket": "D",
                    "quantiles": [0.1, 0.9],
                    "horizons": [1, 2],
                    "values": [[1.0, 2.0]],
                }
            ),
            "values is not",
        ),
    ],
)
def test_bad_messages_are_refused_with_a_reason(client, raw, reason):
    with pytest.raises(ValueError, match=reason):
        client.parse_message(raw)


class _FakeConsumer:
    """Hands out the given records in one poll, then nothing."""

    def __init__(self, records: list) -> None:
        self.batches = [{("forecasts", 0): records}]
        self.closed = False
        self.committed: dict = {}

    def commit(self, offsets: dict) -> None:
        self.committed.update({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})

    def poll(self, timeout_ms: int) -> dict:
        return self.batches.pop(0) if self.batches else {}

    def close(self) -> None:
        self.closed = True


def _record(offset: int, key: str | None, value: bytes, partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        topic="forecasts",
        partition=partition,
        offset=offset,
        key=None if key is None else key.encode(),
        value=value,
    )


def test_main_filters_skips_bad_messages_and_stops(client, monkeypatch, capsys):
    good = _messages()
    records = [
        _record(0, "85123A", good[0]),
        _record(1, "22423", good[1]),
        _record(2, "junk", b"{broken"),
        _record(3, None, good[1]),  # no key: filtered on the decoded item id
    ]
    fake = _FakeConsumer(records)
    monkeypatch.setattr(client, "_consumer", lambda args: fake)
    assert client.main(["--item", "22423", "--idle-timeout", "0.05"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("22423 ") for line in lines)
    assert "2 forecasts read, 0 skipped" in err and fake.closed

    fake = _FakeConsumer(records)
    monkeypatch.setattr(client, "_consumer", lambda args: fake)
    assert client.main(["--max-messages", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [client.format_line(client.parse_message(good[0]))]
    assert "1 forecasts read" in err and fake.closed


def test_main_counts_undecodable_messages_and_writes_csv(client, monkeypatch, capsys, tmp_path: Path):
    records = [_record(0, "junk", b"{broken"), _record(1, "85123A", _messages()[0])]
    monkeypatch.setattr(client, "_consumer", lambda args: _FakeConsumer(records))
    out_csv = tmp_path / "f.csv"
    assert client.main(["--csv", str(out_csv), "--idle-timeout", "0.05"]) == 0
    _, err = capsys.readouterr()
    assert (
        "skipped forecasts[0]@0: not JSON" in err and "1 forecasts read, 1 skipped, 14 rows appended" in err
    )
    assert len(out_csv.read_text().splitlines()) == 15


def test_a_group_commits_only_what_was_handled(client, monkeypatch, capsys):
    good = _messages()
    records = [
        _record(7, "85123A", good[0], partition=0),
        _record(3, "22423", good[1], partition=1),
        _record(8, "85123A", good[0], partition=0),
    ]
    fake = _FakeConsumer(records)
    monkeypatch.setattr(client, "_consumer", lambda args: fake)
    assert client.main(["--group", "planners", "--max-messages", "2"]) == 0
    capsys.readouterr()
    # The third record was fetched but not handled: the group's next run must still get it.
    assert fake.committed == {("forecasts", 0): 8, ("forecasts", 1): 4} and fake.closed

    fake = _FakeConsumer(records)
    monkeypatch.setattr(client, "_consumer", lambda args: fake)
    assert client.main(["--max-messages", "2"]) == 0
    assert fake.committed == {}  # without a group nothing is committed
