"""GPU fragmentation with respect to a workload (the FGD measure), vectorised over nodes.

A node's fragmentation F is the expected GPU capacity a pod drawn from the workload could not
use there: for each typical shape, if the node cannot host the shape at all (too little CPU,
too few GPUs with enough free milli, a model the shape does not accept) all of the node's free
GPU milli counts; if it can, the free milli of the GPUs individually too small for it counts;
weighted by how often the shape occurs. A CPU-only shape can use none of a node's GPUs, so
all of them count for it, as the FGD simulator counts them (measured: its published curves
start at 13.9% fragmented on an empty cluster, the CPU-only share of the default trace). The
term moves every node's F change by the same amount for a given pod, so it never reorders
nodes, but it shifts the integer FGD score and so which nodes tie: leaving it out (shapes
from GPU pods only) moves our ``fgd`` further from the published figures on ``default``,
``cpu050`` and ``cpu100`` (docs/benchmarks.md, "Our fgd where CPU binds").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from optimizer.planner.cluster import FULL, BoolArray, IntArray, PodRequest

FloatArray = npt.NDArray[np.float64]
DEFAULT_COVERAGE: Final = 0.95


@dataclass(frozen=True)
class Shape:
    """A typical pod shape and its share of the workload."""

    cpu_milli: int
    num_gpu: int
    gpu_milli: int
    gpu_models: frozenset[str]
    weight: float


def typical_shapes(
    pods: Iterable[PodRequest],
    *,
    coverage: float = DEFAULT_COVERAGE,
    every_multi_gpu: bool = False,
) -> list[Shape]:
    """The most frequent shapes covering ``coverage`` of ``pods``, weights renormalised.

    Shapes are (CPU, GPU count, milli-GPU per GPU, accepted models); memory is ignored, as in
    the FGD paper. Ties in frequency go to the shape seen first, so the result is stable.
    ``every_multi_gpu`` also keeps every rarer shape asking for several whole GPUs: rare as
    they are, they are the pods that need whole GPUs kept together (the ``stowage`` rollouts).
    """
    counts = Counter(
        (p.cpu_milli, p.num_gpu, p.gpu_milli if p.num_gpu else 0, p.gpu_models) for p in pods
    )
    total = sum(counts.values())
    kept: list[tuple[tuple[int, int, int, frozenset[str]], int]] = []
    covered = 0
    for key, count in counts.most_common():
        kept.append((key, count))
        covered += count
        if covered >= coverage * total:
            break
    if every_multi_gpu:
        kept += [(key, count) for key, count in counts.most_common()[len(kept) :] if key[1] > 1]
    weight_sum = sum(c for _, c in kept)
    return [Shape(cpu, n, m, models, c / weight_sum) for (cpu, n, m, models), c in kept]


def accepted_models(shapes: list[Shape], models: list[str]) -> BoolArray:
    """``[shape, model id]``: whether the shape accepts the GPU model."""
    return np.array(
        [[not s.gpu_models or m in s.gpu_models for m in models] for s in shapes],
        dtype=np.bool_,
    ).reshape(len(shapes), len(models))


class FragmentationModel:
    """Computes F for many node states at once.

    Args:
        shapes: the workload's typical shapes.
        models: the cluster's GPU model names, indexed by model id.
    """

    def __init__(self, shapes: list[Shape], models: list[str]) -> None:
        self.shapes = shapes
        self.weights = np.array([s.weight for s in shapes])
        self.model_ok = accepted_models(shapes, models)
        self._share_millis = sorted(
            {s.gpu_milli for s in shapes if s.num_gpu == 1 and s.gpu_milli < FULL}
        )

    def frag(self, cpu_free: IntArray, gpu_free: IntArray, model_id: IntArray) -> FloatArray:
        """F (milli-GPU) of each row's node state."""
        total_free = gpu_free.sum(axis=1)
        full = (gpu_free == FULL).sum(axis=1)
        max_free = gpu_free.max(axis=1) if gpu_free.shape[1] else np.zeros(len(cpu_free))
        partial = total_free - full * FULL
        too_small = {m: np.where(gpu_free < m, gpu_free, 0).sum(axis=1) for m in self._share_millis}
        result = np.zeros(len(cpu_free))
        for index, shape in enumerate(self.shapes):
            hostable: BoolArray = cpu_free >= shape.cpu_milli
            if shape.num_gpu == 0:
                result += shape.weight * total_free
                continue
            hostable = hostable & self.model_ok[index][model_id]
            if shape.num_gpu == 1 and shape.gpu_milli < FULL:
                hostable = hostable & (max_free >= shape.gpu_milli)
                unusable = too_small[shape.gpu_milli]
            else:
                hostable = hostable & (full >= shape.num_gpu)
                unusable = partial
            result += shape.weight * np.where(hostable, unusable, total_free)
        return result

    def frag_deduplicated(
        self, cpu_free: IntArray, gpu_free: IntArray, model_id: IntArray
    ) -> FloatArray:
        """:meth:`frag`, computed once per distinct node state (GPU order does not matter)."""
        if len(cpu_free) < 64:
            return self.frag(cpu_free, gpu_free, model_id)
        unique, inverse = distinct_states(cpu_free, gpu_free, model_id)
        values = self.frag(unique[:, 0], unique[:, 2:], unique[:, 1])
        return values[inverse]


def distinct_states(
    cpu_free: IntArray, gpu_free: IntArray, model_id: IntArray
) -> tuple[IntArray, IntArray]:
    """The distinct node states among the rows, as rows ``[cpu, model id, sorted GPU free…]``,
    and each row's index among them (GPU order does not matter to a state)."""
    return unique_rows(np.column_stack([cpu_free, model_id, np.sort(gpu_free, axis=1)]))


def unique_rows(keys: IntArray) -> tuple[IntArray, IntArray]:
    """The distinct rows of ``keys`` and, for each row, the index of its distinct row.

    ``np.unique(axis=0)`` sorts a structured view, many times slower than a lexsort of the
    columns on the small, wide-ish arrays the planner has.
    """
    order = np.lexsort(keys.T[::-1])
    ordered = keys[order]
    starts = np.ones(len(keys), dtype=np.bool_)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    group = np.cumsum(starts) - 1
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = group
    return ordered[starts], inverse
