"""Forecasts from the end of a series: p10, p50 and p90 for every step up to a horizon.

Per anchor horizon (1, 2, 4, … steps and the horizon itself) the model is selected as in
:func:`backtest.select` on the last week (or what the history allows), refitted on the whole
history, and its interval offsets are the conformal offsets of its validation residuals.
Steps between anchors are interpolated linearly. A series too short for any of that is
forecast by persistence, and the forecast says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from optimizer.forecast.backtest import forecast_window, select
from optimizer.forecast.conformal import offsets
from optimizer.forecast.models import MODELS, PERSISTENCE, History
from optimizer.forecast.series import DAY_S, WEEK_S, Series


@dataclass(frozen=True)
class Point:
    """The forecast for the step starting at ``time_s``; ``p10 <= p50 <= p90``."""

    time_s: int
    p10: float
    p50: float
    p90: float


@dataclass(frozen=True)
class AnchorChoice:
    """The model chosen at one horizon (steps), why, and its validation MAE (``None``: there
    was nothing to validate on)."""

    horizon: int
    model: str
    reason: str
    validation_mae: float | None


@dataclass(frozen=True)
class Forecast:
    step_s: int
    points: list[Point]
    anchors: list[AnchorChoice] = field(default_factory=list)


def anchor_horizons(horizon: int) -> list[int]:
    """1, 2, 4, … below ``horizon``, and ``horizon``."""
    anchors = [1 << k for k in range(horizon.bit_length()) if 1 << k < horizon]
    return [*anchors, horizon]


def forecast(series: Series, *, horizon: int, seed: int = 0) -> Forecast:
    """``horizon`` steps after the last step of ``series`` (which must hold at least one
    observation; gaps at its end are carried forward from the last observation)."""
    if horizon < 1:
        raise ValueError("the horizon must be at least one step")
    history = History(series)
    last = len(series) - 1
    choices: list[AnchorChoice] = []
    rows: list[tuple[float, float, float]] = []
    for h in anchor_horizons(horizon):
        choice, row = _anchor(series, history, horizon=h, seed=seed)
        choices.append(choice)
        rows.append(row)
    anchors = np.array([c.horizon for c in choices], dtype=np.float64)
    table = np.array(rows)
    steps = np.arange(1, horizon + 1, dtype=np.float64)
    columns = [np.interp(steps, anchors, table[:, k]) for k in range(3)]
    points = [
        Point(
            time_s=series.time_s(last + int(s)),
            p10=float(min(columns[0][i], columns[1][i])),
            p50=float(columns[1][i]),
            p90=float(max(columns[2][i], columns[1][i])),
        )
        for i, s in enumerate(steps)
    ]
    return Forecast(step_s=series.step_s, points=points, anchors=choices)


def _anchor(
    series: Series, history: History, *, horizon: int, seed: int
) -> tuple[AnchorChoice, tuple[float, float, float]]:
    last = len(series) - 1
    origin = np.array([last], dtype=np.int64)
    length = min(series.steps(WEEK_S), (len(series) - horizon - 1) // 2)
    if length < 2:
        value = float(history.filled[last])
        why = _fallback(series, horizon, "validate")
        return AnchorChoice(horizon, PERSISTENCE, why, None), (value, value, value)
    window = forecast_window(
        series,
        start=len(series) - length,
        length=length,
        horizon=horizon,
        names=MODELS.names(),
        seed=seed,
        progress=None,
    )
    name, reason = select(window)
    if len(window.forecasts) == 1:
        reason = _fallback(series, horizon, "fit any other model")
    residuals = window.actuals - window.forecasts[name]
    seen = np.isfinite(residuals)
    mae = float(np.mean(np.abs(residuals[seen]))) if seen.any() else None
    fitted = MODELS.get_or_raise(name).fit(history, horizon=horizon, seed=seed)
    p50 = float(fitted.predict(history, origin)[0])
    bounds = offsets(residuals)
    return AnchorChoice(horizon, name, reason, mae), (p50 + bounds.low, p50, p50 + bounds.high)


def _fallback(series: Series, horizon: int, what: str) -> str:
    n, season = len(series), series.steps(DAY_S)
    if n < season:
        return f"a series of {n} steps is shorter than one season ({season} steps): persistence"
    return f"{n} steps are too few to {what} at horizon {horizon}: persistence"
