"""Rolling-origin backtests and model selection.

The last ``test`` steps of a series are held out. Every target there is forecast ``horizon``
steps ahead from the actual values up to its origin, by models fitted once on the steps
before the held-out window. The model is *selected* without looking at the held-out window:
on a validation window of the same length just before it (models fitted on what precedes
that), lowest MAE wins, except that a simpler model whose MAE is within one standard error of
the best is preferred (Breiman's one-standard-error rule: a difference the validation cannot
resolve is not worth the complexity). Intervals are conformal (see :mod:`conformal`),
calibrated on each model's validation residuals and rolled forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from optimizer.forecast.conformal import pinball, rolling_intervals
from optimizer.forecast.models import (
    MODELS,
    PERSISTENCE,
    Fitted,
    History,
    IntArray,
    TooShortError,
)
from optimizer.forecast.series import FloatArray, Series

Progress = Callable[[int], None]


class BacktestError(ValueError):
    """The series cannot be backtested as asked (too short for the windows)."""


@dataclass(frozen=True)
class ModelScore:
    """A model's scores on the held-out window; ``nan`` where it could not be fitted."""

    name: str
    mae: float
    mae_vs_persistence: float
    pinball: float
    coverage_80: float
    validation_mae: float
    skipped: str = ""

    def as_json(self) -> dict[str, object]:
        def number(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 6)

        data: dict[str, object] = {
            "name": self.name,
            "mae": number(self.mae),
            "mae_vs_persistence": number(self.mae_vs_persistence),
            "pinball": number(self.pinball),
            "coverage_80": number(self.coverage_80),
            "validation_mae": number(self.validation_mae),
        }
        if self.skipped:
            data["skipped"] = self.skipped
        return data


@dataclass(frozen=True)
class Backtest:
    horizon: int
    test: int
    selected: str
    reason: str
    models: list[ModelScore] = field(default_factory=list)

    def score(self, name: str) -> ModelScore:
        return next(m for m in self.models if m.name == name)


@dataclass(frozen=True)
class Window:
    """Forecasts of targets ``start..start+len-1`` by every model that could be fitted."""

    start: int
    actuals: FloatArray
    forecasts: dict[str, FloatArray]
    skipped: dict[str, str]

    def errors(self) -> dict[str, FloatArray]:
        """Each model's absolute errors on the window's observed targets."""
        seen = np.isfinite(self.actuals)
        return {
            name: np.abs(self.actuals[seen] - forecast[seen])
            for name, forecast in self.forecasts.items()
        }

    def maes(self) -> dict[str, float]:
        """Each model's MAE on the observed targets (NaN: none observed)."""
        return {
            name: float(np.mean(errors)) if len(errors) else math.nan
            for name, errors in self.errors().items()
        }


def forecast_window(
    series: Series,
    *,
    start: int,
    length: int,
    horizon: int,
    names: Sequence[str],
    seed: int,
    progress: Progress | None,
) -> Window:
    """Fit on the steps before ``start``; forecast the targets of the window from origins
    ``target - horizon`` over the whole series' actuals."""
    train = History(series.head(start))
    full = History(series.head(start + length))
    targets = np.arange(start, start + length, dtype=np.int64)
    origins: IntArray = targets - horizon
    forecasts: dict[str, FloatArray] = {}
    skipped: dict[str, str] = {}
    fits: dict[str, Fitted] = {}
    for name in names:
        try:
            fits[name] = MODELS.get_or_raise(name).fit(
                train, horizon=horizon, seed=seed, fitted=fits
            )
        except TooShortError as error:
            skipped[name] = str(error)
        else:
            forecasts[name] = fits[name].predict(full, origins)
        if progress:
            progress(1)
    return Window(start, series.values[start : start + length], forecasts, skipped)


def _mae(actuals: FloatArray, forecast: FloatArray) -> float:
    seen = np.isfinite(actuals)
    return float(np.mean(np.abs(actuals[seen] - forecast[seen]))) if seen.any() else math.nan


def select(window: Window) -> tuple[str, str]:
    """The model to use and why, by the one-standard-error rule on ``window``."""
    if not np.isfinite(window.actuals).any():
        return PERSISTENCE, "no observed value in the validation window; persistence used"
    errors = window.errors()
    best = min(errors, key=lambda name: (float(np.mean(errors[name])), _rank(name)))
    best_mae = float(np.mean(errors[best]))
    for name in sorted(errors, key=_rank):
        difference = errors[name] - errors[best]
        error = (
            float(np.std(difference, ddof=1) / math.sqrt(len(difference)))
            if len(difference) > 1
            else 0.0
        )
        if float(np.mean(errors[name])) <= best_mae + error:
            if name == best:
                return name, f"lowest validation MAE ({best_mae:.4g})"
            return name, (
                f"within one standard error of {best} on validation "
                f"({np.mean(errors[name]):.4g} vs {best_mae:.4g}) and simpler"
            )
    return best, f"lowest validation MAE ({best_mae:.4g})"


#: The mean of the three models with the lowest validation MAE: a candidate built by
#: selection itself (forecast combinations are robust where single models' ranks change
#: from one week to the next), the most complex of all.
COMBINATION: Final = "combination"
COMBINED: Final = 3


def add_combination(validation: Window, *others: Window) -> list[str]:
    """Add the combination's forecasts to ``validation`` and to each of ``others`` (windows
    forecast by the same models); returns its members (none: fewer than three fitted)."""
    if len(validation.forecasts) < COMBINED or not np.isfinite(validation.actuals).any():
        return []
    mae = validation.maes()
    members = sorted(mae, key=lambda name: (mae[name], _rank(name)))[:COMBINED]
    for window in (validation, *others):
        if all(m in window.forecasts for m in members):
            window.forecasts[COMBINATION] = np.mean([window.forecasts[m] for m in members], axis=0)
    return members


def _rank(name: str) -> int:
    if name == COMBINATION:
        return max(MODELS.get_or_raise(m).rank for m in MODELS.names()) + 1
    return MODELS.get_or_raise(name).rank


def backtest(
    series: Series,
    *,
    horizon: int,
    test: int,
    names: Sequence[str] | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Backtest:
    """Scores every model (``names``, default all registered) ``horizon`` steps ahead on the
    last ``test`` steps, and the model selection would have chosen without seeing them.
    ``progress`` is called once per model fitted (twice as many calls as models)."""
    names = list(names or MODELS.names())
    if PERSISTENCE not in names:
        names.insert(0, PERSISTENCE)
    if horizon < 1 or test < 1:
        raise BacktestError("horizon and test window must be at least one step")
    validation_start = len(series) - 2 * test
    if validation_start < horizon + 1:
        raise BacktestError(
            f"a series of {len(series)} steps is too short for a {test}-step test window, "
            f"a validation window as long and a {horizon}-step horizon "
            f"(needs at least {2 * test + horizon + 1})"
        )
    common = {"horizon": horizon, "names": names, "seed": seed, "progress": progress}
    validation = forecast_window(series, start=validation_start, length=test, **common)  # type: ignore[arg-type]
    held_out = forecast_window(series, start=len(series) - test, length=test, **common)  # type: ignore[arg-type]
    members = add_combination(validation, held_out)
    if members:
        names.append(COMBINATION)
    selected, reason = select(validation)
    if selected == COMBINATION:
        reason += f"; the mean of {', '.join(members)}"
    if selected not in held_out.forecasts:
        reason = f"{selected} cannot be fitted on the full history; persistence used"
        selected = PERSISTENCE
    persistence_mae = _mae(held_out.actuals, held_out.forecasts[PERSISTENCE])
    validation_mae = validation.maes()
    scores = []
    for name in names:
        if name not in held_out.forecasts or name not in validation.forecasts:
            why = held_out.skipped.get(name) or validation.skipped.get(name, "")
            scores.append(ModelScore(name, *(math.nan,) * 5, skipped=why))
            continue
        point = held_out.forecasts[name]
        calibration = validation.actuals - validation.forecasts[name]
        low, high = rolling_intervals(
            forecasts=point, actuals=held_out.actuals, calibration=calibration, horizon=horizon
        )
        seen = np.isfinite(held_out.actuals)
        covered = (held_out.actuals[seen] >= low[seen]) & (held_out.actuals[seen] <= high[seen])
        mae = _mae(held_out.actuals, point)
        scores.append(
            ModelScore(
                name=name,
                mae=mae,
                mae_vs_persistence=mae / persistence_mae if persistence_mae else math.nan,
                pinball=pinball(held_out.actuals, {0.1: low, 0.5: point, 0.9: high}),
                coverage_80=float(np.mean(covered)) if seen.any() else math.nan,
                validation_mae=validation_mae[name],
            )
        )
    return Backtest(horizon=horizon, test=test, selected=selected, reason=reason, models=scores)
