"""Capacity planning from a demand forecast: how many GPUs keep waits under a target.

Demand above capacity waits. A backlog that arrives and leaves within ``target_wait`` is
served within about that long by capacity equal to the mean demand over the window, so the
GPUs needed are the largest mean over any window of ``target_wait`` of the forecast's p90
(at least one step): the capacity under which every window's demand is met with 90%
probability at each step (per-step quantiles, not a joint bound over the whole path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CapacityNeed:
    needed_gpus: float
    #: Index of the first step of the window with the largest demand.
    peak_index: int

    def additional(self, capacity_gpus: float) -> int:
        """Whole GPUs to add to ``capacity_gpus`` (0 when it suffices)."""
        return max(0, math.ceil(round(self.needed_gpus - capacity_gpus, 6)))

    def spare(self, capacity_gpus: float) -> int:
        """Whole GPUs above the need (0 when short)."""
        return max(0, math.floor(round(capacity_gpus - self.needed_gpus, 6)))


def capacity_need(p90: Sequence[float], *, step_s: int, target_wait_s: float) -> CapacityNeed:
    """The GPUs needed over a forecast path's ``p90`` values (one per step)."""
    values = np.asarray(p90, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("an empty forecast")
    window = max(1, min(len(values), int(target_wait_s // step_s)))
    sums = np.convolve(values, np.ones(window), mode="valid")
    peak = int(np.argmax(sums))
    return CapacityNeed(needed_gpus=float(sums[peak] / window), peak_index=peak)
