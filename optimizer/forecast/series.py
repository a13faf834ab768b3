"""Regular time series with their gaps marked (NaN), never filled silently."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DAY_S = 86_400
WEEK_S = 7 * DAY_S


class SeriesError(ValueError):
    """A series cannot be built from the input (the message names the row or column)."""


@dataclass(frozen=True, eq=False)
class Series:
    """``values[i]`` is the mean over ``[start_s + i * step_s, start_s + (i + 1) * step_s)``;
    NaN marks a gap: a step with no observation."""

    start_s: int
    step_s: int
    values: FloatArray

    def __len__(self) -> int:
        return len(self.values)

    @property
    def gaps(self) -> int:
        return int(np.isnan(self.values).sum())

    def steps(self, seconds: int) -> int:
        """How many steps make ``seconds`` (at least one)."""
        return max(1, round(seconds / self.step_s))

    def time_s(self, index: int) -> int:
        return self.start_s + index * self.step_s

    def head(self, n: int) -> Series:
        """The first ``n`` steps (the history an origin at step ``n - 1`` sees)."""
        return Series(self.start_s, self.step_s, self.values[:n])


def resample(
    times_s: Sequence[float] | FloatArray,
    values: Sequence[float] | FloatArray,
    *,
    step_s: int,
    until_s: float | None = None,
) -> Series:
    """Bin observations into steps of ``step_s`` seconds (aligned to the epoch), the mean of
    each bin; a bin without observations is a gap (NaN). With ``until_s`` the series runs to
    the step holding that time (gaps at its end marked too); later observations are
    dropped."""
    if step_s <= 0:
        raise SeriesError(f"step must be positive, got {step_s} s")
    t = np.asarray(times_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(t) & np.isfinite(v)
    if until_s is not None:
        keep &= t < (np.floor(until_s / step_s) + 1) * step_s
    t, v = t[keep], v[keep]
    if len(t) == 0:
        raise SeriesError("no observations")
    bins = np.floor(t / step_s).astype(np.int64)
    first = int(bins.min())
    index = bins - first
    n = int(index.max()) + 1
    if until_s is not None:
        n = max(n, int(np.floor(until_s / step_s)) - first + 1)
    total = np.bincount(index, weights=v, minlength=n)
    count = np.bincount(index, minlength=n)
    out = np.full(n, np.nan)
    seen = count > 0
    out[seen] = total[seen] / count[seen]
    return Series(start_s=first * step_s, step_s=step_s, values=out)


def parse_time_s(text: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 date (UTC when it has no zone)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SeriesError(f"not a time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_csv(path: Path, *, time_col: str, value_col: str, step_s: int) -> Series:
    """A series from a CSV file: ``value_col`` names a column, or several joined by ``+``
    whose sum is the value (e.g. ``running_gpu_num+pending_gpu_num``). A row whose value is
    empty or not a number is a missing observation, not an error."""
    columns = [c.strip() for c in value_col.split("+")]
    times: list[float] = []
    values: list[float] = []
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in [time_col, *columns] if c not in header]
            if missing:
                raise SeriesError(
                    f"{path}: no column {', '.join(map(repr, missing))}; it has {', '.join(header)}"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    when = parse_time_s(row[time_col] or "")
                except SeriesError as error:
                    raise SeriesError(f"{path}:{line}: {error}") from None
                times.append(when)
                values.append(sum(_number(row[c]) for c in columns))
    except OSError as error:
        raise SeriesError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise SeriesError(f"{path}: not a text CSV file") from None
    return resample(times, values, step_s=step_s)


def _number(text: str | None) -> float:
    try:
        return float(text or "nan")
    except ValueError:
        return float("nan")
