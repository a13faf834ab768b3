"""The forecasting models, registered by name, each a direct forecaster for one horizon.

A model is fitted on a history for one horizon ``h`` (in steps) and then predicts
``y[o + h]`` for any origins ``o`` from the values up to ``o`` (gaps forward-filled as inputs,
never as targets). Baselines need no fit; the learned models predict the *change* from the
last value, because trees cannot extrapolate a level and a linear model on levels drifts.
Every model has a ``rank`` (simpler first) that model selection uses to prefer the simpler of
two models it cannot tell apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import HuberRegressor, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from optimizer.forecast.series import DAY_S, WEEK_S, FloatArray, Series
from optimizer.planner.framework import Registry

IntArray = npt.NDArray[np.int64]
#: Steps ahead: one for every origin, or one per origin.
Horizon = int | IntArray

#: The fewest training rows a learned model is fitted on.
MIN_TRAINING_ROWS: Final = 48
#: The most: a longer history is thinned evenly (neighbouring origins of a smooth series
#: teach the same thing; the span, and so every season, is kept).
MAX_TRAINING_ROWS: Final = 1000


class TooShortError(ValueError):
    """The history is too short for this model at this horizon (the message says why)."""


class History:
    """What a model sees: the raw values (NaN = gap), the same forward-filled (inputs only,
    the first observation backwards), and the series' calendar, for origins ``0..len - 1``."""

    def __init__(self, series: Series) -> None:
        self.series = series
        values = series.values
        seen = ~np.isnan(values)
        if seen.any():
            index = np.where(seen, np.arange(len(values)), int(np.argmax(seen)))
            np.maximum.accumulate(index, out=index)
            self.filled: FloatArray = values[index]
        else:
            self.filled = np.zeros_like(values)
        self.cumsum: FloatArray = np.concatenate([[0.0], np.cumsum(self.filled)])

    @property
    def raw(self) -> FloatArray:
        return self.series.values

    @property
    def day(self) -> int:
        return self.series.steps(DAY_S)

    @property
    def week(self) -> int:
        return self.series.steps(WEEK_S)

    def mean(self, origins: IntArray, window: int) -> FloatArray:
        """The mean of the ``window`` values up to each origin (fewer at the start)."""
        low = np.maximum(origins + 1 - window, 0)
        return (self.cumsum[origins + 1] - self.cumsum[low]) / (origins + 1 - low)

    def seasonal(self, origins: IntArray, horizon: Horizon, season: int) -> FloatArray:
        """The value one or more whole seasons before each target that an origin has seen
        (the origin's own value where the history holds no such season)."""
        back = origins + horizon - season * -(-horizon // season)
        return self.filled[np.where(back >= 0, back, origins)]

    def phase(self, index: IntArray, period_s: int) -> FloatArray:
        """Where each step falls in a calendar period, in [0, 1)."""
        start = self.series.start_s + index * self.series.step_s
        return (start % period_s) / period_s


class Fitted(Protocol):
    def predict(
        self, history: History, origins: IntArray, *, horizon: Horizon | None = None
    ) -> FloatArray:
        """Predictions of ``y[o + h]`` from the values up to each origin ``o``; with
        ``horizon`` (one, or one per origin), of ``y[o + horizon]`` by the model fitted for
        ``h`` (the calendar and seasonal inputs computed for the actual target: how a
        forecast path fills the steps between the horizons it fitted)."""
        ...


class Model(Protocol):
    """An extension point: fits one horizon of one series."""

    @property
    def rank(self) -> int:
        """Simplicity: model selection prefers a lower rank among indistinguishable models."""
        ...

    def fit(
        self,
        history: History,
        *,
        horizon: int,
        seed: int,
        fitted: Mapping[str, Fitted] | None = None,
    ) -> Fitted:
        """Fitted on targets inside ``history``; raises :class:`TooShortError`. ``fitted``
        holds other models already fitted on the same history and horizon (an ensemble
        reuses its members')."""
        ...


MODELS: Final[Registry[Model]] = Registry("forecast model")


#: A baseline's rule: the forecast at ``origins`` for ``horizon`` from ``season`` (steps:
#: the period or window it looks back over; 0 for none).
Rule = Callable[[History, IntArray, Horizon, int], FloatArray]


@dataclass(frozen=True)
class _Baseline:
    """A model with nothing to learn: a rule over the history, which needs more than
    ``period_s`` of it (one season or window) to apply."""

    rule: Rule
    period_s: int
    rank: int

    def fit(
        self,
        history: History,
        *,
        horizon: int,
        seed: int,
        fitted: Mapping[str, Fitted] | None = None,
    ) -> Fitted:
        season = history.series.steps(self.period_s) if self.period_s else 0
        if self.period_s and (season < 2 or len(history.raw) <= season):
            raise TooShortError(f"needs more than one season ({season} steps) of history")
        return _BaselineFit(self.rule, season, horizon)


@dataclass(frozen=True)
class _BaselineFit:
    rule: Rule
    season: int
    horizon: int

    def predict(
        self, history: History, origins: IntArray, *, horizon: Horizon | None = None
    ) -> FloatArray:
        return self.rule(
            history, origins, self.horizon if horizon is None else horizon, self.season
        )


def _last(history: History, origins: IntArray, horizon: Horizon, season: int) -> FloatArray:
    return history.filled[origins]


def _same_time(history: History, origins: IntArray, horizon: Horizon, season: int) -> FloatArray:
    return history.seasonal(origins, horizon, season)


def _mean(history: History, origins: IntArray, horizon: Horizon, season: int) -> FloatArray:
    return history.mean(origins, season)


@dataclass(frozen=True)
class Inputs:
    """Which inputs a learned model uses: lags (steps) and calendar periods (seconds)."""

    lags: tuple[int, ...]
    periods_s: tuple[int, ...]


def choose_inputs(history: History, *, horizon: int) -> Inputs:
    """The inputs a history of this length supports at this horizon: a lag only when at
    least :data:`MIN_TRAINING_ROWS` targets lie beyond it, and a calendar period (its lag,
    rolling mean, seasonal naive forecast and Fourier terms) only when the training targets
    span two whole periods, so that no phase is seen once or never (a model fitted on less
    extrapolates the period from one occurrence)."""
    n = len(history.raw)
    usable = n - horizon - MIN_TRAINING_ROWS
    periods: list[int] = []
    for period_s in (DAY_S, WEEK_S):
        season = history.series.steps(period_s)
        # Training origins start one season in; their targets must span two more.
        if season >= 2 and n - horizon - season >= 2 * season:
            periods.append(period_s)
    day = history.day
    candidates = {1, 2, 3, max(1, day // 4), max(1, day // 2)}
    if DAY_S in periods:
        candidates |= {day, 2 * day}
    if WEEK_S in periods:
        candidates.add(history.week)
    return Inputs(tuple(sorted(lag for lag in candidates if lag <= usable)), tuple(periods))


def features(history: History, origins: IntArray, horizon: Horizon, inputs: Inputs) -> FloatArray:
    """The learned models' inputs at each origin: changes against lagged values, rolling
    means and the seasonal naive forecasts, and Fourier terms of the target's time of day and
    week. All but the calendar are relative to the origin's value."""
    last = history.filled[origins]
    columns = [last - history.filled[origins - lag] for lag in inputs.lags]
    columns.append(last - history.mean(origins, max(1, history.day // 4)))
    target = origins + horizon
    for period_s, harmonics in ((DAY_S, 3), (WEEK_S, 2)):
        if period_s not in inputs.periods_s:
            continue
        season = history.series.steps(period_s)
        columns.append(last - history.mean(origins, season))
        columns.append(history.seasonal(origins, horizon, season) - last)
        phase = history.phase(target, period_s)
        for k in range(1, harmonics + 1):
            columns.append(np.sin(2 * np.pi * k * phase))
            columns.append(np.cos(2 * np.pi * k * phase))
    return np.column_stack(columns)


@dataclass(frozen=True)
class _ChangeModel:
    """Regresses ``y[o + h] - y[o]`` on :func:`features`."""

    make: Callable[[int], object]
    rank: int

    def fit(
        self,
        history: History,
        *,
        horizon: int,
        seed: int,
        fitted: Mapping[str, Fitted] | None = None,
    ) -> Fitted:
        n = len(history.raw)
        inputs = choose_inputs(history, horizon=horizon)
        if not inputs.lags:
            raise TooShortError(
                f"needs {MIN_TRAINING_ROWS + horizon + 1} steps of history at horizon {horizon}"
            )
        origins = np.arange(max(inputs.lags), n - horizon, dtype=np.int64)
        stride = -(-len(origins) // MAX_TRAINING_ROWS)
        origins = origins[::-1][::stride][::-1]  # every stride-th, the newest kept
        target = history.raw[origins + horizon] - history.raw[origins]
        keep = np.isfinite(target)
        if keep.sum() < MIN_TRAINING_ROWS:
            raise TooShortError(f"fewer than {MIN_TRAINING_ROWS} observed training targets")
        regressor = self.make(seed)
        with warnings.catch_warnings():
            # A Huber fit stopped at max_iter is still a fit; validation scores it.
            warnings.simplefilter("ignore", ConvergenceWarning)
            regressor.fit(features(history, origins[keep], horizon, inputs), target[keep])  # type: ignore[attr-defined]
        return _ChangeFit(regressor=regressor, horizon=horizon, inputs=inputs)


@dataclass(frozen=True)
class _ChangeFit:
    regressor: object
    horizon: int
    inputs: Inputs

    def predict(
        self, history: History, origins: IntArray, *, horizon: Horizon | None = None
    ) -> FloatArray:
        x = features(history, origins, self.horizon if horizon is None else horizon, self.inputs)
        change: FloatArray = self.regressor.predict(x)  # type: ignore[attr-defined]
        return history.filled[origins] + change


class _Winsorised:
    """Fits ``regressor`` on inputs and targets clipped to their 2nd-98th percentiles of the
    training rows (and clips inputs the same way when predicting): an outage or a burst in
    the history bends the fit no more than a steep ordinary hour does."""

    TAIL: Final = 0.02

    def __init__(self, regressor: object) -> None:
        self.regressor = regressor
        self.low: FloatArray = np.zeros(0)
        self.high: FloatArray = np.zeros(0)

    def fit(self, x: FloatArray, y: FloatArray) -> _Winsorised:
        self.low, self.high = np.quantile(x, [self.TAIL, 1 - self.TAIL], axis=0)
        low, high = np.quantile(y, [self.TAIL, 1 - self.TAIL])
        self.regressor.fit(np.clip(x, self.low, self.high), np.clip(y, low, high))  # type: ignore[attr-defined]
        return self

    def predict(self, x: FloatArray) -> FloatArray:
        result: FloatArray = self.regressor.predict(np.clip(x, self.low, self.high))  # type: ignore[attr-defined]
        return result


def _ridge(seed: int) -> object:
    return _Winsorised(make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))))


def _huber(seed: int) -> object:
    return _Winsorised(make_pipeline(StandardScaler(), HuberRegressor(alpha=1.0, max_iter=1000)))


def _boosting(seed: int) -> object:
    return _Winsorised(
        GradientBoostingRegressor(
            learning_rate=0.25,
            n_estimators=30,
            max_depth=3,
            subsample=0.5,
            max_features=0.5,
            min_samples_leaf=20,
            random_state=seed,
        )
    )


@dataclass(frozen=True)
class _Ensemble:
    """The mean of its members' forecasts."""

    members: tuple[str, ...]
    rank: int = 6

    def fit(
        self,
        history: History,
        *,
        horizon: int,
        seed: int,
        fitted: Mapping[str, Fitted] | None = None,
    ) -> Fitted:
        done = fitted or {}
        fits = [
            done[m]
            if m in done
            else MODELS.get_or_raise(m).fit(history, horizon=horizon, seed=seed)
            for m in self.members
        ]
        return EnsembleFit(tuple(fits))


@dataclass(frozen=True)
class EnsembleFit:
    fits: tuple[Fitted, ...]

    def predict(
        self, history: History, origins: IntArray, *, horizon: Horizon | None = None
    ) -> FloatArray:
        forecasts = [f.predict(history, origins, horizon=horizon) for f in self.fits]
        result: FloatArray = np.mean(forecasts, axis=0)
        return result


PERSISTENCE: Final = "persistence"

MODELS.register(PERSISTENCE, _Baseline(_last, 0, rank=0))
MODELS.register("seasonal-naive-daily", _Baseline(_same_time, DAY_S, rank=1))
MODELS.register("seasonal-naive-weekly", _Baseline(_same_time, WEEK_S, rank=1))
MODELS.register("rolling-mean-daily", _Baseline(_mean, DAY_S, rank=2))
MODELS.register("rolling-mean-weekly", _Baseline(_mean, WEEK_S, rank=2))
MODELS.register("fourier-ridge", _ChangeModel(_ridge, rank=3))
MODELS.register("fourier-huber", _ChangeModel(_huber, rank=4))
MODELS.register("boosted-change", _ChangeModel(_boosting, rank=5))
MODELS.register("ensemble", _Ensemble(("fourier-ridge", "fourier-huber")))
