"""The forecaster: series with gaps, each model on series whose right answer is known,
conformal offsets worked out by hand, model selection, forecasts' invariants (hypothesis)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.forecast.backtest import (
    COMBINATION,
    BacktestError,
    Window,
    add_combination,
    backtest,
    select,
)
from optimizer.forecast.conformal import offsets, pinball, rolling_intervals
from optimizer.forecast.models import MODELS, History
from optimizer.forecast.predict import anchor_horizons, forecast
from optimizer.forecast.series import Series, SeriesError, read_csv, resample

HOUR = 3600
START = 1_590_969_600  # 2020-06-01 00:00 UTC, a Monday


def hourly(values: list[float] | np.ndarray) -> Series:
    return Series(START, HOUR, np.asarray(values, dtype=np.float64))


def daily_wave(days: int, *, noise: float = 0.0, seed: int = 0) -> Series:
    t = np.arange(days * 24)
    rng = np.random.default_rng(seed)
    return hourly(100 + 30 * np.sin(2 * np.pi * t / 24) + noise * rng.standard_normal(len(t)))


# --- series -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "values", "want"),
    [
        pytest.param([0, 1800, 3600], [1, 3, 5], [2, 5], id="mean-per-step"),
        pytest.param([0, 7200], [1, 5], [1, math.nan, 5], id="empty-step-is-a-gap"),
        pytest.param([5400, 3600], [4, 2], [3], id="unordered-rows"),
        pytest.param([0, 3600, 7200], [1, math.nan, 3], [1, math.nan, 3], id="nan-is-missing"),
    ],
)
def test_resample(times: list[float], values: list[float], want: list[float]) -> None:
    series = resample(times, values, step_s=HOUR)
    np.testing.assert_array_equal(series.values, want)
    assert series.start_s == (min(times) // HOUR) * HOUR


def test_resample_without_observations_is_an_error() -> None:
    with pytest.raises(SeriesError, match="no observations"):
        resample([0.0], [math.nan], step_s=HOUR)


def test_read_csv_sums_columns_and_marks_bad_values_as_gaps(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(
        "time,running,pending\n"
        "2020-05-01 00:00:00,10,2\n"
        "2020-05-01 01:00:00,oops,2\n"
        "2020-05-01 02:00:00+00:00,7,0\n"
    )
    series = read_csv(path, time_col="time", value_col="running+pending", step_s=HOUR)
    np.testing.assert_array_equal(series.values, [12, math.nan, 7])
    assert series.gaps == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("t,v\n", "no column 'time'", id="missing-column"),
        pytest.param("time,v\nyesterday,1\n", r":2: not a time: 'yesterday'", id="bad-time"),
    ],
)
def test_read_csv_errors_name_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(SeriesError, match=message):
        read_csv(path, time_col="time", value_col="v", step_s=HOUR)


def test_history_fills_gaps_forward_for_inputs_only() -> None:
    history = History(hourly([math.nan, 2, math.nan, math.nan, 5]))
    np.testing.assert_array_equal(history.filled, [2, 2, 2, 2, 5])
    assert np.isnan(history.raw[2])


# --- models -------------------------------------------------------------------------------


def _predict(name: str, series: Series, horizon: int, origins: list[int]) -> np.ndarray:
    history = History(series)
    fitted = MODELS.get_or_raise(name).fit(
        History(series.head(origins[0] + 1)), horizon=horizon, seed=0
    )
    return fitted.predict(history, np.array(origins, dtype=np.int64))


@pytest.mark.parametrize(
    ("name", "horizon", "want"),
    [
        # values are 0..99: the last value, the same hour a day or a week before, means
        pytest.param("persistence", 5, [90, 95], id="persistence"),
        pytest.param("seasonal-naive-daily", 5, [95 - 24, 100 - 24], id="daily-naive"),
        pytest.param("seasonal-naive-daily", 30, [120 - 48, 125 - 48], id="daily-naive-2-days"),
        pytest.param("rolling-mean-daily", 5, [90 - 11.5, 95 - 11.5], id="daily-mean"),
    ],
)
def test_baselines(name: str, horizon: int, want: list[float]) -> None:
    got = _predict(name, hourly(np.arange(200.0)), horizon, [90, 95])
    np.testing.assert_allclose(got, want)


def test_seasonal_naive_needs_one_season() -> None:
    with pytest.raises(ValueError, match="more than one season"):
        MODELS.get_or_raise("seasonal-naive-daily").fit(
            History(hourly([1.0] * 20)), horizon=1, seed=0
        )


@pytest.mark.parametrize("name", ["fourier-ridge", "fourier-huber", "boosted-change", "ensemble"])
def test_learned_models_learn_a_daily_cycle(name: str) -> None:
    """Half a day ahead on a noisy daily wave persistence is wrong by about the swing; a
    learned model that sees the time of day is not."""
    series = daily_wave(21, noise=2.0)
    history = History(series.head(14 * 24))
    fitted = MODELS.get_or_raise(name).fit(history, horizon=12, seed=0)
    targets = np.arange(14 * 24, 21 * 24)
    origins = targets - 12
    error = np.mean(np.abs(fitted.predict(History(series), origins) - series.values[targets]))
    persistence = np.mean(np.abs(series.values[origins] - series.values[targets]))
    assert error < 0.2 * persistence


def test_learned_models_need_enough_rows() -> None:
    with pytest.raises(ValueError, match="steps of history"):
        MODELS.get_or_raise("fourier-ridge").fit(History(hourly([1.0] * 30)), horizon=1, seed=0)


# --- conformal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("residuals", "want"),
    [
        # n = 9: ranks floor(10 * 0.1) = 1 and ceil(10 * 0.9) = 9
        pytest.param(list(range(-4, 5)), (-4, 4), id="ranks-1-and-9-of-9"),
        # n = 19: ranks 2 and 18
        pytest.param(list(range(1, 20)), (0, 18), id="all-positive-low-clipped-to-zero"),
        pytest.param([], (0, 0), id="no-residuals"),
        pytest.param([3.0, math.nan], (0, 3), id="nan-ignored"),
    ],
)
def test_offsets(residuals: list[float], want: tuple[float, float]) -> None:
    got = offsets(np.array(residuals, dtype=np.float64))
    assert (got.low, got.high) == want


def test_rolling_intervals_use_only_matured_residuals() -> None:
    """Target k was forecast at origin k - h: only residuals of targets up to k - h count."""
    forecasts = np.zeros(4)
    actuals = np.array([100.0, 0.0, 0.0, 0.0])
    low, high = rolling_intervals(
        forecasts=forecasts, actuals=actuals, calibration=np.array([1.0, -1.0]), horizon=2
    )
    # the window keeps the newest two residuals: targets 0 and 1 see the calibration
    # (1, -1); target 2 sees (-1, 100: target 0 matured); target 3 sees (100, 0)
    np.testing.assert_array_equal(high, [1, 1, 100, 100])
    np.testing.assert_array_equal(low, [-1, -1, -1, 0])


def test_adaptive_level_keeps_coverage_when_errors_grow() -> None:
    """Errors that grow over time: intervals from a window of past residuals lag behind and
    cover too little; adapting the level to matured misses brings coverage back to 80%."""
    rng = np.random.default_rng(0)
    steps = np.arange(200)
    actuals = (1 + steps / 10) * rng.standard_normal(200)
    calibration = rng.standard_normal(50)

    def coverage(rate: float) -> float:
        low, high = rolling_intervals(
            forecasts=np.zeros(200),
            actuals=actuals,
            calibration=calibration,
            horizon=1,
            adapt_rate=rate,
        )
        return float(np.mean((actuals >= low) & (actuals <= high)))

    assert coverage(0.0) < 0.7
    assert 0.75 <= coverage(0.05) <= 0.85


def test_pinball_of_a_perfect_median_is_zero() -> None:
    actuals = np.array([1.0, 2.0, math.nan])
    assert pinball(actuals, {0.5: np.array([1.0, 2.0, 9.0])}) == 0.0
    assert pinball(actuals, {0.9: np.array([0.0, 2.0, 0.0])}) == pytest.approx(0.45)


# --- backtest and selection ------------------------------------------------------------


def test_random_walk_selects_persistence() -> None:
    """Nothing beats the last value of a random walk; the one-standard-error rule keeps the
    simplest model when others only look better by chance."""
    rng = np.random.default_rng(7)
    result = backtest(hourly(np.cumsum(rng.standard_normal(24 * 40))), horizon=6, test=168)
    assert result.selected == "persistence", result.reason
    assert result.score("persistence").mae_vs_persistence == 1.0


def test_seasonal_series_selects_a_seasonal_model() -> None:
    result = backtest(daily_wave(40, noise=3.0), horizon=12, test=168)
    chosen = result.score(result.selected)
    assert result.selected != "persistence"
    assert chosen.mae_vs_persistence < 0.3
    assert 0.6 <= chosen.coverage_80 <= 1.0


def test_the_combination_averages_the_three_best_on_validation() -> None:
    actuals = np.array([10.0, 10.0, 10.0, 10.0])
    window = Window(
        start=0,
        actuals=actuals,
        forecasts={
            "persistence": actuals + 1,  # MAE 1
            "rolling-mean-daily": actuals - 2,  # MAE 2
            "fourier-ridge": actuals + 3,  # MAE 3
            "boosted-change": actuals + 9,  # MAE 9: left out
        },
        skipped={},
    )
    other = Window(start=4, actuals=actuals, forecasts=dict(window.forecasts), skipped={})
    members = add_combination(window, other)
    assert members == ["persistence", "rolling-mean-daily", "fourier-ridge"]
    np.testing.assert_allclose(window.forecasts[COMBINATION], actuals + 2 / 3)
    np.testing.assert_allclose(other.forecasts[COMBINATION], actuals + 2 / 3)
    # the combination beats every member by a margin with no noise in it: the
    # one-standard-error rule has no simpler model to fall back to
    name, _ = select(window)
    assert name == COMBINATION


def test_no_combination_of_fewer_than_three() -> None:
    actuals = np.ones(3)
    window = Window(start=0, actuals=actuals, forecasts={"persistence": actuals}, skipped={})
    assert add_combination(window) == []
    assert COMBINATION not in window.forecasts


def test_backtest_skips_models_the_history_cannot_fit() -> None:
    result = backtest(hourly(np.linspace(0, 10, 60)), horizon=1, test=20)
    weekly = result.score("seasonal-naive-weekly")
    assert math.isnan(weekly.mae)
    assert "season" in weekly.skipped
    assert not math.isnan(result.score("persistence").mae)


def test_backtest_too_short_is_an_error() -> None:
    with pytest.raises(BacktestError, match="too short"):
        backtest(hourly([1.0] * 30), horizon=1, test=20)


# --- forecasts ------------------------------------------------------------------------


def test_anchor_horizons() -> None:
    assert anchor_horizons(1) == [1]
    assert anchor_horizons(24) == [1, 4, 16, 24]
    assert anchor_horizons(16) == [1, 4, 16]


def test_forecast_of_a_daily_wave_follows_the_wave() -> None:
    series = daily_wave(21, noise=1.0)
    result = forecast(series, horizon=24)
    assert [p.time_s for p in result.points] == [series.time_s(len(series) + k) for k in range(24)]
    expected = 100 + 30 * np.sin(2 * np.pi * np.arange(len(series), len(series) + 24) / 24)
    p50 = np.array([p.p50 for p in result.points])
    assert np.mean(np.abs(p50 - expected)) < 5


def test_short_series_falls_back_to_persistence_with_a_reason() -> None:
    result = forecast(hourly([5.0, 6.0, 7.0, 8.0, 7.0, 9.0, 8.0, 9.0, 10.0, 9.0]), horizon=3)
    assert {a.model for a in result.anchors} == {"persistence"}
    assert all("shorter than one season (24 steps)" in a.reason for a in result.anchors)
    assert result.points[0].p50 == 9.0


series_values = st.lists(
    st.one_of(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.just(math.nan),
        st.just(0.0),
    ),
    min_size=1,
    max_size=120,
).filter(lambda v: any(not math.isnan(x) for x in v))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=series_values, horizon=st.integers(min_value=1, max_value=30))
def test_forecasts_are_ordered_finite_and_deterministic(values: list[float], horizon: int) -> None:
    series = hourly(values)
    first = forecast(series, horizon=horizon, seed=3)
    again = forecast(series, horizon=horizon, seed=3)
    assert first == again
    assert len(first.points) == horizon
    for point in first.points:
        assert math.isfinite(point.p50)
        assert point.p10 <= point.p50 <= point.p90
    if len(values) < 24:
        assert all("shorter than one season" in a.reason for a in first.anchors)
