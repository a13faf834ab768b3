"""Placement policies for single pods, selectable by name, all on the same engine.

Each policy scores the feasible nodes for one pod; scores are integers 0-100 min-max
normalised across the feasible nodes, the highest wins and ties go to the lexicographically
smallest node name (the lowest row), as in the FGD paper's simulator. A policy also picks the
GPUs inside the chosen node. Policies are pure: they read the state and a per-run context and
return a :class:`Placement`; the caller applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar, cast

import numpy as np

from optimizer.planner.cluster import (
    FULL,
    ClusterState,
    IntArray,
    PodRequest,
    kind_of,
    take_whole_gpus,
)
from optimizer.planner.fragmentation import (
    FloatArray,
    FragmentationModel,
    Shape,
    typical_shapes,
)
from optimizer.planner.saturation import SaturationModel
from shared.topology import best_connected_gpus

#: The largest node in the FGD experiments (milli-CPU, milli-GPU), used to normalise.
MAX_CPU_MILLI: Final = 128_000
MAX_GPU_MILLI: Final = 8 * FULL


@dataclass(frozen=True)
class Placement:
    """A pod's node (row) and the GPUs it gets there."""

    node: int
    gpus: tuple[int, ...]


@dataclass
class _Models:
    """The workload models of a run, built on first use and shared by restricted contexts;
    ``memo`` holds any other plugin's per-run state (see :meth:`PlanContext.memo`)."""

    fragmentation: FragmentationModel | None = None
    saturation: SaturationModel | None = None
    memo: dict[str, Any] = field(default_factory=dict)


class GpuPicker(Protocol):
    """Chooses the GPUs a pod gets on a node the policy chose (an extension point)."""

    def __call__(self, state: ClusterState, node: int, pod: PodRequest) -> tuple[int, ...]: ...


T = TypeVar("T")


@dataclass
class PlanContext:
    """Per-run scratch shared by policy calls (never stored on a policy).

    ``shapes`` is the workload the ``fgd`` policy scores against and ``rollout_shapes`` the
    one ``stowage`` plays (``shapes`` when empty; see :func:`.typical_shapes`'s
    ``every_multi_gpu``); their models are built on first use, and the per-node F values kept
    current by :meth:`note_placed` (saturation estimates are memoised by node state instead).
    """

    rng: np.random.Generator
    shapes: Sequence[Shape] = ()
    rollout_shapes: Sequence[Shape] = ()
    #: Picks GPUs inside the chosen node (default :func:`tightest_gpu`).
    pick_gpus: GpuPicker = field(default_factory=lambda: tightest_gpu)
    _models: _Models = field(default_factory=_Models, repr=False)
    _frag: FloatArray | None = field(default=None, repr=False)

    @classmethod
    def for_workload(cls, pods: Sequence[PodRequest], *, rng: np.random.Generator) -> PlanContext:
        """A context scoring against ``pods``: their typical shapes, and for the ``stowage``
        rollouts those plus every multi-GPU shape."""
        return cls(
            rng=rng,
            shapes=typical_shapes(pods),
            rollout_shapes=typical_shapes(pods, every_multi_gpu=True),
        )

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """Per-run state of a plugin, built on first use under ``key`` and shared with
        restricted contexts, so a stateful plugin needs no field here."""
        if key not in self._models.memo:
            self._models.memo[key] = build()
        return cast("T", self._models.memo[key])

    def _workload(self, shapes: Sequence[Shape] = ()) -> list[Shape]:
        if not (shapes or self.shapes):
            raise ValueError("this policy needs PlanContext.shapes (the workload)")
        return list(shapes or self.shapes)

    def fragmentation(self, state: ClusterState) -> tuple[FragmentationModel, FloatArray]:
        """FGD's model and the F of every node of ``state`` (the state this context follows)."""
        model = self._fragmentation_model(state)
        if self._frag is None:
            self._frag = model.frag(state.cpu_free, state.gpu_free, state.model_id)
        return model, self._frag

    def _fragmentation_model(self, state: ClusterState) -> FragmentationModel:
        if self._models.fragmentation is None:
            self._models.fragmentation = FragmentationModel(self._workload(), state.models)
        return self._models.fragmentation

    def saturation(self, state: ClusterState) -> SaturationModel:
        """The saturation model over ``rollout_shapes`` (else ``shapes``) for ``state``'s GPU
        models."""
        if self._models.saturation is None:
            self._models.saturation = SaturationModel(
                self._workload(self.rollout_shapes), state.models
            )
        return self._models.saturation

    def waste_growth(self, before: ClusterState, after: ClusterState) -> float:
        """How much worse ``after`` is than ``before`` (the same nodes) by the measure this
        run's policy scores with: saturation waste once ``stowage`` is in use, else FGD's F.
        Ranks whole outcomes, such as a gang's candidate domains."""
        saturation = self._models.saturation
        measure = self._fragmentation_model(before).frag if saturation is None else saturation.waste
        grown = measure(after.cpu_free, after.gpu_free, after.model_id).sum()
        return float(grown - measure(before.cpu_free, before.gpu_free, before.model_id).sum())

    def note_placed(self, state: ClusterState, node: int) -> None:
        """Refresh cached per-node values after a placement on ``node``."""
        if self._frag is not None and self._models.fragmentation is not None:
            self._frag[node] = self._models.fragmentation.frag(
                state.cpu_free[node : node + 1],
                state.gpu_free[node : node + 1],
                state.model_id[node : node + 1],
            )[0]

    def restricted(self, rows: IntArray, *, rng: np.random.Generator) -> PlanContext:
        """A context following ``state.subset(rows)``: the same models (shared), the
        cached values of those rows (copied)."""
        frag = None if self._frag is None else self._frag[rows].copy()
        return PlanContext(
            rng=rng,
            shapes=self.shapes,
            rollout_shapes=self.rollout_shapes,
            pick_gpus=self.pick_gpus,
            _models=self._models,
            _frag=frag,
        )


class Policy(Protocol):
    """Chooses a node and GPUs for one pod, or None when no node can host it."""

    def __call__(
        self, state: ClusterState, pod: PodRequest, ctx: PlanContext
    ) -> Placement | None: ...


def pick_highest(scores: IntArray, candidates: IntArray) -> int:
    """Min-max normalise integer ``scores`` of ``candidates`` to 0-100 and return the row of
    the highest, the lowest row on ties."""
    low, high = scores.min(), scores.max()
    normalised = (scores - low) * 100 // (high - low) if high > low else np.full_like(scores, 100)
    return int(candidates[int(np.argmax(normalised))])


def tightest_gpu(state: ClusterState, node: int, pod: PodRequest) -> tuple[int, ...]:
    """Default GPU choice: a share goes to the GPU it fills best; whole GPUs are the
    best-connected fully free set (NVLink bandwidth, then PCIe nearness, then one NUMA node)
    where the node's topology is known, else the lowest-numbered fully free ones."""
    free = state.gpu_free[node]
    if pod.num_gpu == 0:
        return ()
    if pod.is_share:
        room = np.where(free >= pod.gpu_milli, free, np.iinfo(np.int64).max)
        return (int(np.argmin(room)),)
    whole = [int(g) for g in np.flatnonzero(free == FULL)]
    topology = state.topology.get(state.names[node])
    if topology is not None and 1 < pod.num_gpu < len(whole):
        best = best_connected_gpus(
            k=pod.num_gpu, candidates=whole, links=topology.links, numa_of=topology.numa_of
        )
        if best is not None:
            return best
    return tuple(whole[: pod.num_gpu])


def _with(
    score: Callable[[ClusterState, PodRequest, IntArray], IntArray],
) -> Policy:
    """A policy from a scoring function over the feasible rows (GPUs: :func:`tightest_gpu`)."""

    def policy(state: ClusterState, pod: PodRequest, ctx: PlanContext) -> Placement | None:
        candidates = np.flatnonzero(state.feasible(pod))
        if len(candidates) == 0:
            return None
        node = pick_highest(score(state, pod, candidates), candidates)
        return Placement(node, ctx.pick_gpus(state, node, pod))

    return policy


def _ints(values: Any) -> IntArray:
    return np.asarray(values, dtype=np.int64)


def _bestfit(state: ClusterState, pod: PodRequest, rows: IntArray) -> IntArray:
    cpu_left = (state.cpu_free[rows] - pod.cpu_milli) / MAX_CPU_MILLI
    gpu_left = (state.gpu_free[rows].sum(axis=1) - pod.gpu_request_milli) / MAX_GPU_MILLI
    return _ints((1 - (0.5 * cpu_left + 0.5 * gpu_left)) * 100)


def _dotprod(state: ClusterState, pod: PodRequest, rows: IntArray) -> IntArray:
    cpu = (state.cpu_free[rows] / MAX_CPU_MILLI) * (pod.cpu_milli / MAX_CPU_MILLI)
    if pod.is_share:
        free = state.gpu_free[rows]
        per_gpu = np.where(free >= pod.gpu_milli, free, np.inf) / MAX_GPU_MILLI
        gpu = per_gpu.min(axis=1) * (pod.gpu_milli / MAX_GPU_MILLI)
    else:
        gpu = (state.gpu_free[rows].sum(axis=1) / MAX_GPU_MILLI) * (
            pod.gpu_request_milli / MAX_GPU_MILLI
        )
    return _ints((1 - (cpu + gpu) / 2) * 100)


def _gpu_packing(state: ClusterState, pod: PodRequest, rows: IntArray) -> IntArray:
    free = state.gpu_free[rows]
    present = state.gpu_present[rows]
    full = (free == FULL).sum(axis=1)
    used = (present & (free < FULL)).any(axis=1)
    width = state.gpu_free.shape[1]
    fewer_full = (width - full) * 10 // max(width, 1)
    score = np.where(used, 40 + fewer_full, 20 + fewer_full)
    if pod.is_share:
        partial = present & (free < FULL) & (free >= pod.gpu_milli)
        tightest = np.where(partial, free, FULL).min(axis=1)
        score = np.where(partial.any(axis=1), 60 + (FULL - tightest) * 40 // FULL, score)
    return _ints(score)


def _gpu_clustering(state: ClusterState, pod: PodRequest, rows: IntArray) -> IntArray:
    kinds = state.kinds[rows]
    gpu_kinds = kinds[:, 1:] > 0
    fuller = (MAX_GPU_MILLI - state.gpu_free[rows].sum(axis=1)) * 20 // MAX_GPU_MILLI
    if pod.num_gpu == 0:
        return _ints(fuller)
    mine = kind_of(pod) - 1
    other = 1 - mine
    exclusive = gpu_kinds[:, mine] & ~gpu_kinds[:, other]
    mixed = gpu_kinds[:, mine] & gpu_kinds[:, other]
    idle = ~gpu_kinds.any(axis=1)
    tier = np.select([exclusive, mixed, idle], [80, 60, 40], default=20)
    return _ints(tier + fuller)


def _kube_default(state: ClusterState, pod: PodRequest, rows: IntArray) -> IntArray:
    cpu_left = (state.cpu_free[rows] - pod.cpu_milli) / np.maximum(state.cpu_total[rows], 1)
    capacity = np.maximum(state.gpu_present[rows].sum(axis=1) * FULL, 1)
    gpu_left = (state.gpu_free[rows].sum(axis=1) - pod.gpu_request_milli) / capacity
    return _ints((cpu_left + gpu_left) / 2 * 100)


def random_policy(state: ClusterState, pod: PodRequest, ctx: PlanContext) -> Placement | None:
    """A uniformly random feasible node."""
    candidates = np.flatnonzero(state.feasible(pod))
    if len(candidates) == 0:
        return None
    node = int(ctx.rng.choice(candidates))
    return Placement(node, ctx.pick_gpus(state, node, pod))


@dataclass(frozen=True)
class FragmentationPolicy:
    """FGD: puts each pod (and, for a share, its GPU) where F grows least."""

    def __call__(self, state: ClusterState, pod: PodRequest, ctx: PlanContext) -> Placement | None:
        model, node_frag = ctx.fragmentation(state)
        candidates = np.flatnonzero(state.feasible(pod))
        if len(candidates) == 0:
            return None
        options = _options(state, pod, candidates)
        f_after = model.frag_deduplicated(options.cpu, options.gpu, options.model)
        best = options.best_per_node(f_after)
        delta = (node_frag[candidates] - f_after[best]) / 1000.0
        node = pick_highest(_fgd_scores(delta), candidates)
        return options.placement(state, pod, candidates, best, node, ctx=ctx)


@dataclass(frozen=True)
class SaturationPolicy:
    """``stowage``: puts each pod (and, for a share, its GPU) where the capacity its node
    will have wasted once full grows least (see :mod:`.saturation`), ties to the lowest row."""

    def __call__(self, state: ClusterState, pod: PodRequest, ctx: PlanContext) -> Placement | None:
        saturation = ctx.saturation(state)
        candidates = np.flatnonzero(state.feasible(pod))
        if len(candidates) == 0:
            return None
        options = _options(state, pod, candidates)
        # one call, so the rollouts of new states run as one batch
        waste = saturation.waste(
            np.concatenate([state.cpu_free[candidates], options.cpu]),
            np.concatenate([state.gpu_free[candidates], options.gpu]),
            np.concatenate([state.model_id[candidates], options.model]),
        )
        before, after = waste[: len(candidates)], waste[len(candidates) :]
        growth = np.round(after - before[options.node], 6)
        best = options.best_per_node(growth)
        return options.placement(
            state, pod, candidates, best, int(candidates[np.argmin(growth[best])]), ctx=ctx
        )


@dataclass(frozen=True)
class _Options:
    """Where a pod could go: one row per candidate node, or per (candidate, GPU) for a
    share, with the node's state after the placement."""

    node: IntArray  # index into the candidates
    slot: IntArray  # a share's GPU; -1 for other pods
    cpu: IntArray
    gpu: IntArray
    model: IntArray

    def best_per_node(self, *keys: FloatArray) -> IntArray:
        """For each candidate, its option with the lowest ``keys`` (compared in the order
        given), then the lowest GPU index."""
        if len(self.node) == len(np.unique(self.node)):
            return np.arange(len(self.node))
        order = np.lexsort((self.slot, *keys[::-1]))
        first = np.unique(self.node[order], return_index=True)[1]
        return np.asarray(order[first], dtype=np.int64)

    def placement(
        self,
        state: ClusterState,
        pod: PodRequest,
        candidates: IntArray,
        best: IntArray,
        node: int,
        *,
        ctx: PlanContext,
    ) -> Placement:
        if pod.is_share:  # the policy scored each GPU: its best is the share's GPU
            row = int(np.flatnonzero(candidates == node)[0])
            return Placement(node, (int(self.slot[best[row]]),))
        return Placement(node, ctx.pick_gpus(state, node, pod))


def _options(state: ClusterState, pod: PodRequest, candidates: IntArray) -> _Options:
    cpu_after = state.cpu_free[candidates] - pod.cpu_milli
    free = state.gpu_free[candidates]
    models = state.model_id[candidates]
    if pod.is_share:
        nodes, slots = np.nonzero(free >= pod.gpu_milli)
        trial = free[nodes].copy()
        trial[np.arange(len(nodes)), slots] -= pod.gpu_milli
        return _Options(nodes, slots, cpu_after[nodes], trial, models[nodes])
    trial = free.copy()
    if pod.num_gpu:
        take_whole_gpus(trial, pod.num_gpu)
    every = np.arange(len(candidates))
    return _Options(every, np.full(len(candidates), -1), cpu_after, trial, models)


def _fgd_scores(delta: FloatArray) -> IntArray:
    """sigmoid(delta) as an integer 0-100 score."""
    return _ints(100.0 / (1.0 + np.exp(-delta)))


POLICIES: Final[dict[str, Policy]] = {}
#: The policy used when none is named.
DEFAULT_POLICY: Final = "stowage"


def register(name: str, policy: Policy) -> None:
    """Add a policy under ``name``; a name is registered once."""
    if name in POLICIES:
        raise ValueError(f"policy {name!r} is already registered")
    POLICIES[name] = policy


def policy_or_raise(name: str) -> Policy:
    """The policy registered as ``name``."""
    try:
        return POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown policy {name!r}; known: {known}") from None


for _name, _policy in (
    ("random", random_policy),
    ("bestfit", _with(_bestfit)),
    ("dotprod", _with(_dotprod)),
    ("gpu-packing", _with(_gpu_packing)),
    ("gpu-clustering", _with(_gpu_clustering)),
    ("kube-default", _with(_kube_default)),
    ("fgd", FragmentationPolicy()),
    ("stowage", SaturationPolicy()),
):
    register(_name, _policy)
