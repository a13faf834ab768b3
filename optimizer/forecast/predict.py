"""Forecasts from the end of a series: p10, p50 and p90 for every step up to a horizon.

Per anchor horizon (1, 4, 16, … steps and the horizon itself) the model is selected as in
:func:`backtest.select` on the last week (or what the history allows), refitted on the whole
history, and its interval offsets are the conformal offsets of its validation residuals.
Each step up to an anchor is forecast by that anchor's model with the step's own calendar
and seasonal inputs (so a week-ahead path keeps its daily shape), with the anchor's
offsets (those of the farther horizon: conservative). A series too short for any of that is
forecast by persistence, and the forecast says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from optimizer.forecast.backtest import COMBINATION, add_combination, forecast_window, select
from optimizer.forecast.conformal import offsets
from optimizer.forecast.models import MODELS, PERSISTENCE, EnsembleFit, Fitted, History
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
    """The model chosen at one horizon (steps), why, its validation MAE (``None``: there was
    nothing to validate on) and every candidate's (the backtest selection saw)."""

    horizon: int
    model: str
    reason: str
    validation_mae: float | None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Forecast:
    step_s: int
    points: list[Point]
    anchors: list[AnchorChoice] = field(default_factory=list)


def anchor_horizons(horizon: int) -> list[int]:
    """1, 4, 16, … below ``horizon``, and ``horizon``: a direct fit every factor of four,
    each step forecast by the next anchor's model."""
    anchors = [4**k for k in range(horizon.bit_length()) if 4**k < horizon]
    return [*anchors, horizon]


def forecast(series: Series, *, horizon: int, seed: int = 0) -> Forecast:
    """``horizon`` steps after the last step of ``series`` (which must hold at least one
    observation; gaps at its end are carried forward from the last observation)."""
    if horizon < 1:
        raise ValueError("the horizon must be at least one step")
    history = History(series)
    last = len(series) - 1
    choices: list[AnchorChoice] = []
    fits: list[tuple[Fitted, float, float]] = []
    for h in anchor_horizons(horizon):
        choice, fit = _anchor(series, history, horizon=h, seed=seed)
        choices.append(choice)
        fits.append(fit)
    points = []
    previous = 0
    for choice, (fitted, low, high) in zip(choices, fits, strict=True):
        steps = np.arange(previous + 1, choice.horizon + 1, dtype=np.int64)
        origins = np.full(len(steps), last, dtype=np.int64)
        for step, value in zip(steps, fitted.predict(history, origins, horizon=steps), strict=True):
            p50 = float(value)
            points.append(
                Point(
                    time_s=series.time_s(last + int(step)), p10=p50 + low, p50=p50, p90=p50 + high
                )
            )
        previous = choice.horizon
    return Forecast(step_s=series.step_s, points=points, anchors=choices)


def _anchor(
    series: Series, history: History, *, horizon: int, seed: int
) -> tuple[AnchorChoice, tuple[Fitted, float, float]]:
    """The model for one anchor horizon, fitted on the whole history, and its offsets."""
    length = min(series.steps(WEEK_S), (len(series) - horizon - 1) // 2)
    if length < 2:
        why = _fallback(series, horizon, "validate")
        persistence = MODELS.get_or_raise(PERSISTENCE).fit(history, horizon=horizon, seed=seed)
        return AnchorChoice(horizon, PERSISTENCE, why, None), (persistence, 0.0, 0.0)
    window = forecast_window(
        series,
        start=len(series) - length,
        length=length,
        horizon=horizon,
        names=MODELS.names(),
        seed=seed,
        progress=None,
    )
    members = add_combination(window)
    name, reason = select(window)
    if len(window.forecasts) == 1:
        reason = _fallback(series, horizon, "fit any other model")
    scores = {model: round(mae, 6) for model, mae in window.maes().items() if not math.isnan(mae)}
    residuals = window.actuals - window.forecasts[name]
    if name == COMBINATION:
        reason += f"; the mean of {', '.join(members)}"
        fitted: Fitted = EnsembleFit(
            tuple(MODELS.get_or_raise(m).fit(history, horizon=horizon, seed=seed) for m in members)
        )
    else:
        fitted = MODELS.get_or_raise(name).fit(history, horizon=horizon, seed=seed)
    bounds = offsets(residuals)
    choice = AnchorChoice(horizon, name, reason, scores.get(name), scores)
    return choice, (fitted, bounds.low, bounds.high)


def _fallback(series: Series, horizon: int, what: str) -> str:
    n, season = len(series), series.steps(DAY_S)
    if n < season:
        return f"a series of {n} steps is shorter than one season ({season} steps): persistence"
    return f"{n} steps are too few to {what} at horizon {horizon}: persistence"
