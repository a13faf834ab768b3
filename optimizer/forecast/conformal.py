"""Conformal prediction intervals from a model's own out-of-sample residuals.

Split conformal, per horizon: the residuals ``actual - forecast`` of forecasts made ``h``
steps ahead on data the model was not fitted on give the offsets of the interval around the
point forecast, with the finite-sample correction. Rolling forward, a forecast's residual
joins the calibration window once its target has been observed, and the level itself
adapts (adaptive conformal inference, Gibbs and Candes 2021: each matured miss widens the
next intervals, each hit narrows them, so that coverage holds over time even when the
residuals drift). Nothing peeks: a forecast made at origin ``o`` only uses what was
observed up to ``o``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from optimizer.forecast.series import FloatArray

#: The quantiles every forecast carries.
QUANTILES: Final = (0.1, 0.5, 0.9)
#: Adaptive conformal's step: how far one matured miss (or hit) moves the miscoverage level.
ADAPT_RATE: Final = 0.05


@dataclass(frozen=True)
class Offsets:
    """``p10 = p50 + low`` and ``p90 = p50 + high``; ``low <= 0 <= high`` always."""

    low: float
    high: float


def offsets(residuals: FloatArray, *, coverage: float = 0.8) -> Offsets:
    """The interval offsets that cover ``coverage`` of future residuals like these.

    With ``n`` residuals the bounds are the ``floor((n + 1) a)``-th and
    ``ceil((n + 1) (1 - a))``-th smallest, ``a = (1 - coverage) / 2``; with too few residuals
    for those ranks, the interval spans the residuals seen (none seen: zero width).
    """
    seen = np.sort(residuals[np.isfinite(residuals)])
    n = len(seen)
    if n == 0:
        return Offsets(0.0, 0.0)
    tail = (1 - coverage) / 2
    low_rank = math.floor((n + 1) * tail)
    high_rank = math.ceil((n + 1) * (1 - tail))
    low = seen[low_rank - 1] if low_rank >= 1 else seen[0]
    high = seen[high_rank - 1] if high_rank <= n else seen[-1]
    return Offsets(low=min(float(low), 0.0), high=max(float(high), 0.0))


def rolling_intervals(
    *,
    forecasts: FloatArray,
    actuals: FloatArray,
    calibration: FloatArray,
    horizon: int,
    coverage: float = 0.8,
    adapt_rate: float = ADAPT_RATE,
) -> tuple[FloatArray, FloatArray]:
    """p10 and p90 for consecutive targets ``0..n-1``, each forecast ``horizon`` steps ahead:
    target ``k``'s interval uses ``calibration`` plus the residuals of targets up to
    ``k - horizon``, the newest ``len(calibration)`` of them, at a level moved by
    ``adapt_rate`` for each of those targets that its own interval missed (up) or caught
    (down)."""
    window = max(len(calibration), 1)
    residuals = actuals - forecasts
    low = np.empty_like(forecasts)
    high = np.empty_like(forecasts)
    miss_rate = 1 - coverage
    for k in range(len(forecasts)):
        matured = k - horizon
        if matured >= 0 and np.isfinite(actuals[matured]):
            missed = not low[matured] <= actuals[matured] <= high[matured]
            miss_rate += adapt_rate * ((1 - coverage) - float(missed))
        pool = np.concatenate([calibration, residuals[: max(0, matured + 1)]])[-window:]
        bounds = offsets(pool, coverage=min(max(1 - miss_rate, 0.0), 1.0))
        low[k] = forecasts[k] + bounds.low
        high[k] = forecasts[k] + bounds.high
    return low, high


def pinball(actuals: FloatArray, quantiles: dict[float, FloatArray]) -> float:
    """The mean pinball loss over the quantiles given, skipping gaps in ``actuals``."""
    seen = np.isfinite(actuals)
    losses = []
    for q, forecast in quantiles.items():
        error = actuals[seen] - forecast[seen]
        losses.append(np.mean(np.maximum(q * error, (q - 1) * error)))
    return float(np.mean(losses)) if losses and seen.any() else math.nan
