"""All-or-nothing placement of a gang, optionally within one topology domain.

A gang of ``size`` pods is placed whole or not at all; an elastic gang (``max_size``) takes as
many more pods, up to ``max_size``, as fit where its minimum went. With a topology constraint
at a level (``rack``, ``zone``, an NVLink clique, …; a node without the level's label is in no
domain), the domains that could hold the gang are ranked by how many members they could host
at most, tightest first (Kueue's Topology Aware Scheduling picks its BestFit domain by the same
kind of measure, keeping roomy domains for large gangs), and the first
domains are tried in that order until :data:`MAX_DOMAIN_TRIALS` of them take the gang: the
gang's pods are placed one by one with the per-pod policy on a copy of the domain, and among
the domains that take the whole gang the one that
takes the most members, then whose use grows waste least (by the policy's measure: the
capacity left once nodes are full for ``stowage``, FGD's F otherwise; without a workload,
the fewest free GPUs) wins, ties to the smallest domain name. A
``required`` constraint that no domain meets leaves the gang waiting, with the reason; a
``preferred`` one falls back to the whole cluster. Pure: the state is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from optimizer.planner.cluster import FULL, BoolArray, ClusterState, IntArray, PodRequest
from optimizer.planner.policies import Placement, PlanContext, Policy

#: A node without the label of a level (see optimizer.planner.snapshot.NO_DOMAIN).
NO_DOMAIN: Final = ""
NO_DOMAIN_FITS: Final = "no-domain-fits"
CLUSTER_TOO_SMALL: Final = "cluster-too-small"
#: Domains that must take a gang in a trial before the best of them is chosen.
MAX_DOMAIN_TRIALS: Final = 8


@dataclass(frozen=True)
class GangRequest:
    """``size`` pods placed together or not at all: each like ``pod``, or, with ``members``,
    member ``i`` asks for ``members[i]`` (a launcher beside its workers). The first ``size``
    members are the minimum; an elastic gang (``max_size``) adds the rest where they fit."""

    name: str
    pod: PodRequest
    size: int
    topology_level: str | None = None
    required: bool = True
    max_size: int | None = None  # elastic: up to this many members when they fit
    members: tuple[PodRequest, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"gang {self.name}: size must be at least 1, not {self.size}")
        if self.max_size is not None and self.max_size < self.size:
            raise ValueError(
                f"gang {self.name}: max_size {self.max_size} is below size {self.size}"
            )
        if self.members and len(self.members) != (self.max_size or self.size):
            raise ValueError(
                f"gang {self.name}: {len(self.members)} member requests for "
                f"{self.max_size or self.size} members"
            )

    def member(self, index: int) -> PodRequest:
        """What member ``index`` asks for."""
        return self.members[index] if self.members else self.pod

    def minimum(self) -> list[PodRequest]:
        """The requests of the first ``size`` members."""
        return [self.member(i) for i in range(self.size)]


@dataclass(frozen=True)
class GangDecision:
    """Where the gang goes (one placement per pod), or why it waits."""

    placements: tuple[Placement, ...]
    domain: str | None
    code: str | None = None
    reason: str | None = None

    @property
    def admitted(self) -> bool:
        return bool(self.placements)


def place_gang(
    state: ClusterState,
    gang: GangRequest,
    *,
    policy: Policy,
    ctx: PlanContext,
    domains: Mapping[str, Sequence[str]],
) -> GangDecision:
    """Decide a gang's placement.

    Args:
        state: the cluster (read only).
        gang: the request.
        policy: the per-pod policy used inside a domain.
        ctx: the run's context (its fragmentation model ranks the domains).
        domains: topology level -> the domain name of each node row.
    """
    if gang.topology_level is None:
        return _whole_cluster(state, gang, policy=policy, ctx=ctx)
    if gang.topology_level not in domains:
        known = ", ".join(domains) or "none"
        raise ValueError(f"unknown topology level {gang.topology_level!r}; known: {known}")
    labels = np.asarray(domains[gang.topology_level])
    unique, ids = np.unique(labels, return_inverse=True)  # sorted names
    names = [str(n) for n in unique if n != NO_DOMAIN]
    capacity = _domain_capacity(state, gang, ids, len(unique))
    candidates = sorted(
        (int(capacity[i]), str(name))
        for i, name in enumerate(unique)
        if name != NO_DOMAIN and capacity[i] >= 0
    )
    best: tuple[int, float, str, tuple[Placement, ...]] | None = None
    taken = 0
    for _, domain in candidates:
        if taken == MAX_DOMAIN_TRIALS:
            break
        rows = np.flatnonzero(labels == domain)
        filled = _fill(state, rows, gang, policy=policy, ctx=ctx)
        if filled is None:
            continue
        taken += 1
        placed, after = filled
        key = (-len(placed), _cost(state.subset(rows), after, ctx), domain, placed)
        if best is None or key[:3] < best[:3]:
            best = key
    if best is not None:
        return GangDecision(placements=best[3], domain=best[2])
    if not gang.required:
        return _whole_cluster(state, gang, policy=policy, ctx=ctx)
    if not names:
        return GangDecision(
            placements=(),
            domain=None,
            code=NO_DOMAIN_FITS,
            reason=f"no node is labelled with a {gang.topology_level}",
        )
    whole = np.bincount(ids, weights=(state.gpu_free == FULL).sum(axis=1), minlength=len(unique))
    free = {str(n): int(whole[i]) for i, n in enumerate(unique) if n != NO_DOMAIN}
    roomiest = max(names, key=lambda d: free[d])  # names are sorted: ties to the first
    largest = (free[roomiest], roomiest)
    return GangDecision(
        placements=(),
        domain=None,
        code=NO_DOMAIN_FITS,
        reason=(
            f"needs {_shape(gang)} in one {gang.topology_level}; "
            f"the {gang.topology_level} with the most room ({largest[1]}) has "
            f"{largest[0]} free GPUs"
        ),
    )


def _whole_cluster(
    state: ClusterState, gang: GangRequest, *, policy: Policy, ctx: PlanContext
) -> GangDecision:
    rows = np.arange(len(state.names))
    filled = _fill(state, rows, gang, policy=policy, ctx=ctx)
    if filled is None:
        return GangDecision(
            placements=(),
            domain=None,
            code=CLUSTER_TOO_SMALL,
            reason=f"needs {_shape(gang)}; {_room(state, gang)}",
        )
    return GangDecision(placements=filled[0], domain=None)


def _fill(
    state: ClusterState, rows: IntArray, gang: GangRequest, *, policy: Policy, ctx: PlanContext
) -> tuple[tuple[Placement, ...], ClusterState] | None:
    """The gang placed pod by pod on a copy of ``rows``: the placements (in the cluster's
    rows) and the copy after them, or None when a pod does not fit."""
    trial = state.subset(rows)
    local = ctx.restricted(rows, rng=np.random.default_rng(0))
    placements = []
    for member in range(gang.max_size or gang.size):
        pod = gang.member(member)
        placement = policy(trial, pod, local)
        if placement is None:
            if member < gang.size:
                return None
            break
        trial.allocate(placement.node, placement.gpus, pod)
        local.note_placed(trial, placement.node)
        placements.append(Placement(int(rows[placement.node]), placement.gpus))
    return tuple(placements), trial


def _cost(before: ClusterState, after: ClusterState, ctx: PlanContext) -> float:
    """How much the domain's waste grows by the policy's measure (only its nodes change),
    or, without a workload, the free GPU milli it keeps (tightest domain first)."""
    if not ctx.shapes:
        return float(after.gpu_free.sum())
    return ctx.waste_growth(before, after)


def _domain_capacity(
    state: ClusterState, gang: GangRequest, ids: IntArray, domains: int
) -> IntArray:
    """For each domain (by ``ids``, the domain of each node row): how many of the gang's
    members it could host at most, counting each node alone (:func:`_most_pods`), or -1
    when for some kind of member it surely cannot hold as many as the gang's minimum needs.
    A necessary condition only: a domain marked -1 would fail its trial fill anyway."""
    needed: dict[PodRequest, int] = {}
    for pod in gang.minimum():
        needed[pod] = needed.get(pod, 0) + 1
    total = np.zeros(domains, dtype=np.int64)
    holds = np.ones(domains, dtype=np.bool_)
    for pod, count in needed.items():
        per_node = _most_pods(state, pod, state.feasible(pod))
        per_domain = np.bincount(ids, weights=per_node, minlength=domains).astype(np.int64)
        holds &= per_domain >= count
        total += per_domain
    return np.where(holds, total, -1)


def _most_pods(state: ClusterState, pod: PodRequest, usable: BoolArray) -> IntArray:
    """An upper bound, per node, on how many ``pod``s it can host (by CPU, memory and GPUs;
    0 on the nodes the pod may not use at all)."""
    by_cpu = state.cpu_free // max(pod.cpu_milli, 1)
    by_memory = state.memory_free // max(pod.memory_mib, 1)
    most = np.minimum(by_cpu, by_memory)
    if pod.num_gpu:
        free = state.gpu_free
        if pod.is_share:
            by_gpu = (free // pod.gpu_milli).sum(axis=1)
        else:
            by_gpu = (free == FULL).sum(axis=1) // pod.num_gpu
        most = np.minimum(most, by_gpu)
    return np.asarray(np.where(usable, most, 0), dtype=np.int64)


def _free_whole_gpus(state: ClusterState, rows: IntArray) -> int:
    return int((state.gpu_free[rows] == FULL).sum())


def _room(state: ClusterState, gang: GangRequest) -> str:
    """``the cluster has N free GPUs``, or, when the gang's pods may use only some nodes,
    ``the M nodes it may use have N free GPUs``."""
    mask = state.masks.get(gang.pod.mask_key) if gang.pod.mask_key else None
    if mask is None:
        return f"the cluster has {_free_whole_gpus(state, np.arange(len(state.names)))} free GPUs"
    rows = np.flatnonzero(mask)
    return f"the {len(rows)} nodes it may use have {_free_whole_gpus(state, rows)} free GPUs"


def _shape(gang: GangRequest) -> str:
    """``4 x 8 GPUs``, or ``1 x 4 CPUs + 4 x 8 GPUs`` for a mixed gang's minimum."""
    counts: dict[str, int] = {}
    for pod in gang.minimum():
        counts[_pod_shape(pod)] = counts.get(_pod_shape(pod), 0) + 1
    return " + ".join(f"{count} x {shape}" for shape, count in counts.items())


def _pod_shape(pod: PodRequest) -> str:
    if pod.num_gpu == 0:
        return f"{pod.cpu_milli // 1000} CPUs"
    if pod.is_share:
        return f"{pod.gpu_milli} milli-GPU"
    return f"{pod.num_gpu} GPUs"
