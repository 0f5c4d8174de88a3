"""The calendar covariates: Easter and the day of the month, columns chosen by name, and models
exported with the earlier, shorter calendar still served."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from histories import seasonal_history

from model.baselines import FeedForward, ForecastSpec
from model.export import export_model
from model.features import (
    CALENDAR_FEATURES,
    CALENDAR_FEATURES_V1,
    EASTER_REACH_DAYS,
    calendar_features,
    easter_sunday,
    reads_day_of_month,
    silent_calendar,
)
from model.history import History
from model.network import ModelArgs, build_network
from model.train import DAY_OF_MONTH, DAY_OF_YEAR, EASTER, TrainConfig, train, unseen_calendar
from state.ledger import RealisedScore
from state.partition import ClosedBucket
from stream.config import ServiceConfig
from stream.errors import ModelMismatchError
from stream.inference import Predictor
from stream.inputs import PendingInputs, StaticTable, calendar_columns
from stream.service import check_model_fits
from stream.training import feedback_names


def _ms(*dates: str) -> np.ndarray:
    return np.array(dates, dtype="datetime64[D]").astype("datetime64[ms]").astype(np.int64)


def _column(name: str, ms: np.ndarray) -> np.ndarray:
    return calendar_features(ms, (name,))[..., 0]


def test_easter_sunday_is_the_gregorian_date_of_each_year():
    years = np.array([1818, 2000, 2011, 2012, 2019, 2024, 2025, 2026, 2038, 2285])
    expected = [
        "1818-03-22",  # the earliest possible date
        "2000-04-23",
        "2011-04-24",
        "2012-04-08",
        "2019-04-21",
        "2024-03-31",
        "2025-04-20",
        "2026-04-05",
        "2038-04-25",  # the latest possible date
        "2285-03-22",
    ]
    assert easter_sunday(years).astype(str).tolist() == expected


def test_easter_covariates_rise_to_easter_sunday_and_fall_after_it():
    sunday = np.datetime64("2012-04-08", "D")
    days = sunday + np.arange(-30, 31)
    ms = days.astype("datetime64[ms]").astype(np.int64)
    before, after = _column("easter_before", ms), _column("easter_after", ms)
    offset = np.arange(-30, 31)
    reach = EASTER_REACH_DAYS
    np.testing.assert_allclose(
        before, np.where((offset <= 0) & (offset > -reach), 1 + offset / reach, 0), atol=1e-6
    )
    np.testing.assert_allclose(
        after, np.where((offset > 0) & (offset < reach), 1 - offset / reach, 0), atol=1e-6
    )
    assert before[offset == 0] == 1.0 and after[offset == 0] == 0.0
    # Elsewhere in the year both are zero; an hourly bucket reads its day's values.
    assert not calendar_features(_ms("2012-01-15", "2012-07-01", "2012-12-24"), EASTER).any()
    hour = _ms("2012-04-07") + 13 * 3_600_000
    assert _column("easter_before", hour) == pytest.approx(1 - 1 / reach)


def test_a_week_that_holds_easter_sunday_reads_it_coming():
    # Weekly buckets start on Thursdays (numpy's weeks): the week of Thursday 2012-04-05 holds Easter.
    weeks = np.arange(-3, 4) + np.datetime64("2012-04-05", "D").astype("datetime64[W]")
    ms = weeks.astype("datetime64[ms]").astype(np.int64)
    before = _column("easter_before", ms)
    assert before.argmax() == 3 and before[3] == pytest.approx(1 - 3 / EASTER_REACH_DAYS)
    assert _column("easter_after", ms)[4] == pytest.approx(1 - 4 / EASTER_REACH_DAYS)


def test_the_day_of_the_month_turns_once_a_month_whatever_its_length():
    firsts = _ms("2011-02-01", "2012-02-01", "2012-03-01", "2012-04-01")
    np.testing.assert_allclose(calendar_features(firsts, DAY_OF_MONTH), [[0.0, 1.0]] * 4, atol=1e-6)
    mid = calendar_features(_ms("2012-02-15", "2011-02-15", "2012-04-16"), DAY_OF_MONTH)
    angles = 2 * np.pi * np.array([14 / 29, 14 / 28, 15 / 30])
    np.testing.assert_allclose(mid, np.stack([np.sin(angles), np.cos(angles)], axis=1), atol=1e-6)


def test_calendar_columns_come_by_name_in_the_order_asked():
    rng = np.random.default_rng(0)
    ms = rng.integers(0, 60 * 365, size=(40, 3)) * 86_400_000
    full = calendar_features(ms)
    assert full.shape == (40, 3, len(CALENDAR_FEATURES))
    np.testing.assert_array_equal(calendar_features(ms, CALENDAR_FEATURES_V1), full[..., :6])
    flipped = tuple(reversed(CALENDAR_FEATURES))
    np.testing.assert_array_equal(calendar_features(ms, flipped), full[..., ::-1])
    with pytest.raises(ValueError, match="unknown calendar columns"):
        calendar_features(ms, ("doy_sin", "full_moon"))


def _history(first_day: str, n: int, freq: str = "D", items: int = 1) -> History:
    rng = np.random.default_rng(0)
    return History(
        item_ids=np.array([f"i{k}" for k in range(items)]),
        freq=freq,
        first_bucket=int(np.datetime64(first_day, "D").astype(f"datetime64[{freq}]").astype(np.int64)),
        qty=rng.poisson(5.0, size=(items, n)).astype(np.float32),
        observed=np.ones((items, n), dtype=bool),
        price=np.full((items, n), np.nan, dtype=np.float32),
        static={},
    )


def test_a_history_without_easter_or_a_whole_month_trains_without_their_covariates():
    assert unseen_calendar(_history("2011-03-01", 120)) == ()  # Easter 2011 is 24 April
    assert unseen_calendar(_history("2011-06-01", 200)) == EASTER
    assert unseen_calendar(_history("2011-06-01", 20)) == DAY_OF_MONTH + EASTER


@pytest.mark.parametrize(
    "freq,n,expected",
    [
        ("D", 120, DAY_OF_YEAR + DAY_OF_MONTH),  # under a year; days without the month's cycle
        ("W", 80, ()),  # weeks keep it, and 80 weeks hold a year and Easter
        ("W", 30, DAY_OF_YEAR + EASTER),  # 30 weeks from June: no Easter, not a year
    ],
)
def test_training_leaves_out_the_calendar_its_history_or_bucket_unit_cannot_use(freq, n, expected):
    args = ModelArgs(context_length=12, horizons=4, dilations=(1, 2, 4), channels=8, global_hidden=16)
    first = "2011-06-01" if n == 30 else "2011-01-03"
    cfg = TrainConfig(epochs=1, batch_size=8, threads=1, max_minutes=1.0, feedback_stages=0)
    model, _ = train(_history(first, n, freq, items=6), args, cfg, progress=False)
    assert sorted(model.masked_covariates()) == sorted(expected)
    kept = train(_history(first, n, freq, items=6), args, dataclasses.replace(cfg, day_of_month="on"), False)[
        0
    ]
    assert not set(DAY_OF_MONTH) & set(kept.masked_covariates())
    with pytest.raises(ValueError, match="day_of_month"):
        TrainConfig(day_of_month="sometimes")


def test_a_window_member_ignores_easter_without_one_in_its_history_and_days_the_month():
    history = seasonal_history(n_items=8, n_days=90)  # from 2021-01-04; Easter was on 4 April
    spec = ForecastSpec(horizons=7, context_length=28, max_seconds=30.0)
    rung = FeedForward(spec, hidden=16, max_steps=40, eval_every=20)
    rung.fit(history, 60)  # up to 4 March
    assert silent_calendar(history.head(60).bucket_start_ms(), EASTER) == EASTER
    net = rung.net
    assert net is not None
    trained = net.net[0].weight.detach()
    assert trained.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    L, H, C = spec.context_length, spec.horizons, len(CALENDAR_FEATURES)
    target = torch.poisson(torch.rand(4, L, generator=g) * 10)
    observed = torch.ones(4, L)
    future = torch.randn(4, H, C, generator=g)
    future[..., [CALENDAR_FEATURES.index(c) for c in EASTER]] = 0.0
    eastertide = future.clone()
    eastertide[..., CALENDAR_FEATURES.index("easter_before")] = 1.0
    static = torch.zeros(4, net.n_static, dtype=torch.long)
    with torch.no_grad():
        plain = net(target, observed, torch.zeros(4, L, C + 1), future, static, torch.zeros(4, 0))
        easter = net(target, observed, torch.zeros(4, L, C + 1), eastertide, static, torch.zeros(4, 0))
    torch.testing.assert_close(easter, plain, rtol=0, atol=0)
    # The other calendar columns did move the weights. The day of the month, which daily data
    # leaves out, moved in every window but kept its weights at zero through training.
    dow = 2 * L + 1 + CALENDAR_FEATURES.index("dow_sin")
    assert trained[:, dow].abs().sum() > 0
    for name in DAY_OF_MONTH:
        col = CALENDAR_FEATURES.index(name)
        assert not trained[:, 2 * L + 1 + col :: C][:, :H].any()
    weekly = FeedForward(spec, hidden=16, max_steps=5, eval_every=5)
    weekly.fit(_history("2011-01-03", 60, "W", items=6), 60)
    assert weekly.net is not None
    dom = 2 * L + 1 + CALENDAR_FEATURES.index("dom_sin")
    assert weekly.net.net[0].weight[:, dom].abs().sum() > 0
    with pytest.raises(ValueError, match="day_of_month"):
        FeedForward(spec, day_of_month="never")


def _meta(past: list[str], future: list[str], args: ModelArgs) -> dict:
    return {
        "freq": "D",
        "features": {"past": past, "future": future, "feedback": feedback_names(args)},
        "static_columns": [],
    }


def test_a_model_exported_with_the_first_calendar_is_served_its_own_columns(tmp_path):
    v1 = list(CALENDAR_FEATURES_V1)
    args = ModelArgs(context_length=12, horizons=4, dilations=(1, 2), n_past_cov=7, n_future_cov=6)
    torch.manual_seed(0)
    path = tmp_path / "v1.pt"
    export_model(build_network(args).eval(), args, path, _meta([*v1, "log_price"], v1, args))
    predictor = Predictor.load(path, "cpu")
    check_model_fits(predictor.meta, ServiceConfig())
    assert calendar_columns(predictor.meta) == CALENDAR_FEATURES_V1
    n, L = 5, args.context_length
    rng = np.random.default_rng(1)
    closed = ClosedBucket(
        bucket=15_441,  # 2012-04-11, three days after Easter
        rows=np.arange(n, dtype=np.int64),
        item_ids=np.array([f"i{k}" for k in range(n)], dtype=object),
        target=rng.poisson(3.0, size=(n, L)).astype(np.float32),
        observed=np.ones((n, L), dtype=np.float32),
        price=np.full((n, L), 2.0, dtype=np.float32),
        feedback=np.zeros((n, args.n_feedback), dtype=np.float32),
        window_buckets=np.arange(15_441 - L + 1, 15_442, dtype=np.int64),
        score=RealisedScore(np.zeros(3), 0.0, 0, 0),
    )
    inputs = PendingInputs(
        [closed], "D", args.horizons, StaticTable((), 64), calendar_columns(predictor.meta)
    )
    batch = inputs.slice(0, n)
    assert batch.past_covariates().shape == (n, L, 7) and batch.future_cov.shape == (n, args.horizons, 6)
    assert predictor.predict(batch).shape == (n, args.horizons, 3)
    # The current calendar's inputs would not fit this model.
    current = PendingInputs([closed], "D", args.horizons, StaticTable((), 64)).slice(0, n)
    assert current.future_cov.shape[-1] == len(CALENDAR_FEATURES) != 6


def test_a_model_reading_calendar_columns_the_service_lacks_is_refused():
    args = ModelArgs(context_length=12, horizons=4, dilations=(1, 2), n_past_cov=8, n_future_cov=7)
    future = [*CALENDAR_FEATURES_V1, "full_moon"]
    with pytest.raises(ModelMismatchError, match="full_moon"):
        check_model_fits(_meta([*future, "log_price"], future, args), ServiceConfig())
    shuffled = _meta([*CALENDAR_FEATURES_V1, "log_price"], list(reversed(CALENDAR_FEATURES_V1)), args)
    with pytest.raises(ModelMismatchError, match="then log_price"):
        check_model_fits(shuffled, ServiceConfig())


def test_day_of_month_is_read_for_weekly_and_monthly_buckets_unless_forced():
    assert [reads_day_of_month("auto", f) for f in ("h", "D", "W", "M")] == [False, False, True, True]
    assert all(reads_day_of_month("on", f) for f in ("h", "D", "W", "M"))
    assert not any(reads_day_of_month("off", f) for f in ("h", "D", "W", "M"))
    with pytest.raises(ValueError, match="day_of_month must be 'auto', 'on' or 'off'"):
        reads_day_of_month("sometimes", "W")
    with pytest.raises(ValueError, match="day_of_month must be"):
        FeedForward(ForecastSpec(horizons=2, quantiles=(0.5,)), day_of_month="yes")
