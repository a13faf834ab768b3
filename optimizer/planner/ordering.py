"""Orderings: which job of a queue goes first (a registry by name, like the policies).

An ordering maps a job, its GPU count and the cycle's clock to a sort key, smallest first.
None of today's keys changes while a job waits (a simulator may keep its queues sorted).
The same key ranks running jobs, so a *preemptive* ordering (``srtf-oracle``,
``tiresias-las``) lets a waiting job take the place of running ones it ranks ahead of.

Durations are whatever the snapshot's builder put in :attr:`Job.duration_s` (the predicted
remaining run time): the true one for the oracles in the replay simulator, a noisy one for
``qssf-noisy``, the history-based prediction for ``stowage``. An ordering never looks
elsewhere, so nothing reads the future unless its builder hands it the future.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from optimizer.planner.framework import Registry
from optimizer.planner.plan import Job

SortKey = tuple[float | str, ...]
#: (job, GPUs it holds or asks for, the cycle's clock in seconds) -> sort key.
KeyFunction = Callable[[Job, float, float], SortKey]

#: Tiresias' 2D-LAS queue thresholds on attained service (GPU-seconds): 1 and 10 GPU-hours.
LAS_THRESHOLDS_GPU_S: Final = (3_600.0, 36_000.0)
#: A duration nobody predicted ranks as this long (one day), not as zero.
UNKNOWN_DURATION_S: Final = 86_400.0


@dataclass(frozen=True)
class Ordering:
    name: str
    key: KeyFunction
    #: Whether a waiting job may preempt running jobs this ordering ranks behind it.
    preemptive: bool = False
    description: str = ""


ORDERINGS: Final[Registry[Ordering]] = Registry("ordering")


def _tail(job: Job) -> tuple[float | str, ...]:
    return (job.submitted_s, job.created, job.namespace, job.name)


def _duration(job: Job) -> float:
    return UNKNOWN_DURATION_S if job.duration_s is None else max(job.duration_s, 1.0)


def _fifo(job: Job, gpus: float, now: float) -> SortKey:
    return _tail(job)


def _priority(job: Job, gpus: float, now: float) -> SortKey:
    return (-job.priority, *_tail(job))


def _shortest_duration(job: Job, gpus: float, now: float) -> SortKey:
    return (-job.priority, _duration(job), *_tail(job))


def _shortest_service(job: Job, gpus: float, now: float) -> SortKey:
    return (-job.priority, _duration(job) * max(gpus, 1.0), *_tail(job))


def _virtual_finish(job: Job, gpus: float, now: float) -> SortKey:
    """A virtual finish time, as fair queueing has: submission plus predicted service
    (duration x GPUs, seconds per GPU). Short work goes ahead of long work submitted at
    about the same time, and nobody waits without bound: every later arrival has a later
    virtual finish unless its service is smaller by more than the time between them. The
    key does not change while a job waits, so an order once sorted stays sorted."""
    return (-job.priority, job.submitted_s + _duration(job) * max(gpus, 1.0), *_tail(job))


def _las(job: Job, gpus: float, now: float) -> SortKey:
    """Tiresias' discretised two-dimensional LAS: the queue of its attained GPU-seconds,
    then arrival order within the queue."""
    level = sum(job.attained_gpu_s >= t for t in LAS_THRESHOLDS_GPU_S)
    return (-job.priority, float(level), *_tail(job))


for _ordering in (
    Ordering("fifo", _fifo, description="arrival order"),
    Ordering("priority", _priority, description="priority, then arrival (kube-scheduler)"),
    Ordering("sjf-oracle", _shortest_duration, description="shortest duration first"),
    Ordering(
        "srtf-oracle",
        _shortest_duration,
        preemptive=True,
        description="shortest remaining duration first, preemptive",
    ),
    Ordering("qssf", _shortest_service, description="shortest service (duration x GPUs)"),
    Ordering(
        "shortest-service",
        _shortest_service,
        preemptive=True,
        description="shortest predicted remaining service (duration x GPUs), preemptive",
    ),
    Ordering(
        "stowage",
        _virtual_finish,
        description="earliest virtual finish: submission plus predicted service",
    ),
    Ordering(
        "tiresias-las",
        _las,
        preemptive=True,
        description="least attained service (GPU-seconds), discretised, preemptive",
    ),
):
    ORDERINGS.register(_ordering.name, _ordering)
