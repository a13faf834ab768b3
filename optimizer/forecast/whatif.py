"""What if the cluster had more (or fewer) nodes? Forecast demand replayed as jobs.

Arrivals are sampled from a demand forecast and the cluster's own finished jobs: by Little's
law the GPUs a scope holds or wants (``D``) equal the arrival rate times the mean GPU-seconds
a job asks for, so each step brings Poisson(``D / E[gpus x duration] x step``) jobs, each a
finished job's shape drawn at random (seeded). A warm-up before the horizon at the first
step's demand fills the cluster first, so the replay starts loaded, as the real one is;
only jobs submitted within the horizon are scored. The replay is
:class:`~optimizer.simulate.replay.Replay`: the same cycle and actions as the controller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from optimizer.planner.queues import GPU, QueueSpec, Quota
from optimizer.simulate.replay import Replay, ReplayCluster, ReplayPolicy, TraceJob

#: The most jobs one what-if replays (a request, not a batch run).
MAX_JOBS: Final = 20_000
QUEUE: Final = "whatif"


class WhatIfError(ValueError):
    """The what-if cannot be run as asked (the message says why)."""


@dataclass(frozen=True)
class JobShape:
    gpus: int
    duration_s: float


@dataclass(frozen=True)
class Outcome:
    """How jobs submitted within the horizon fared."""

    jobs: int
    avg_wait_s: float
    p90_wait_s: float
    max_wait_s: float
    utilisation: float
    #: Jobs asking for more GPUs than the cluster has: never run, left out of the scores.
    too_large: int = 0

    def as_json(self) -> dict[str, float | int]:
        return {
            "jobs": self.jobs,
            "too_large": self.too_large,
            "avg_wait_s": round(self.avg_wait_s, 1),
            "p90_wait_s": round(self.p90_wait_s, 1),
            "max_wait_s": round(self.max_wait_s, 1),
            "utilisation": round(self.utilisation, 4),
        }


def arrivals(
    demand_gpus: Sequence[float], *, step_s: int, shapes: Sequence[JobShape], seed: int
) -> list[TraceJob]:
    """Jobs arriving over the forecast (``submit_s`` from 0) and over a warm-up before it
    (negative ``submit_s``) at the first step's demand."""
    if not shapes:
        raise WhatIfError("no finished jobs to draw job shapes from")
    rng = np.random.default_rng(seed)
    work = float(np.mean([s.gpus * s.duration_s for s in shapes]))
    longest = max(s.duration_s for s in shapes)
    warmup = min(math.ceil(2 * longest / step_s), 48)
    levels = [float(demand_gpus[0])] * warmup + [float(d) for d in demand_gpus]
    expected = sum(max(d, 0.0) for d in levels) * step_s / work
    if expected > MAX_JOBS:
        raise WhatIfError(
            f"about {expected:,.0f} jobs would arrive (at most {MAX_JOBS:,}): "
            "ask for a shorter horizon"
        )
    jobs: list[TraceJob] = []
    for k, level in enumerate(levels):
        start = (k - warmup) * step_s
        for _ in range(int(rng.poisson(max(level, 0.0) * step_s / work))):
            shape = shapes[int(rng.integers(len(shapes)))]
            submit = start + float(rng.uniform(0, step_s))
            jobs.append(TraceJob(len(jobs), submit, shape.duration_s, shape.gpus, QUEUE))
    jobs.sort(key=lambda j: j.submit_s)
    return [TraceJob(i, j.submit_s, j.duration_s, j.gpus, j.queue) for i, j in enumerate(jobs)]


def replay(
    jobs: Sequence[TraceJob],
    *,
    nodes: int,
    gpus_per_node: int,
    policy: ReplayPolicy,
    seed: int,
) -> Outcome:
    """Replay ``jobs`` on ``nodes`` nodes; scores the jobs submitted at or after 0."""
    if nodes < 1:
        raise WhatIfError("the cluster would have no node left")
    cluster = ReplayCluster(
        pools={QUEUE: nodes},
        queues=(
            QueueSpec(
                QUEUE,
                quotas={(GPU, ""): Quota(nodes * gpus_per_node * 1000)},
                namespaces=frozenset({QUEUE}),
            ),
        ),
        partitioned=True,
        gpus_per_node=gpus_per_node,
    )
    fits = [j for j in jobs if j.gpus <= nodes * gpus_per_node]
    run = Replay(fits, cluster, policy, seed=seed)
    run.run()
    scored = [j for j in fits if j.submit_s >= 0 and j.index in run.finished]
    too_large = sum(1 for j in jobs if j.submit_s >= 0 and j.gpus > nodes * gpus_per_node)
    if not scored:
        return Outcome(0, 0.0, 0.0, 0.0, 0.0, too_large)
    waits = np.array([max(run.finished[j.index] - j.submit_s - j.duration_s, 0.0) for j in scored])
    end = max(run.finished[j.index] for j in scored)
    busy = sum(
        j.gpus
        * max(0.0, min(run.finished[j.index], end) - max(run.finished[j.index] - j.duration_s, 0.0))
        for j in fits
        if j.index in run.finished
    )
    capacity = nodes * gpus_per_node * end
    return Outcome(
        jobs=len(scored),
        avg_wait_s=float(waits.mean()),
        p90_wait_s=float(np.percentile(waits, 90)),
        max_wait_s=float(waits.max()),
        utilisation=float(busy / capacity) if capacity > 0 else 0.0,
        too_large=too_large,
    )
