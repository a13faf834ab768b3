"""GPU demand per scope from one cycle's snapshot: what the forecasts are trained on.

Demand is allocated plus pending GPUs, as the controller sees them: every pod that holds
capacity (bound, admitted, nominated) counts where it sits; every job waiting counts its
minimum (the GPUs its gang needs to start). Scopes are named ``kind/value``:
``cluster``, ``pool/<stowage.io/pool label>``, ``model/<GPU model>``, ``queue/<queue>``,
``namespace/<namespace>``. A waiting job counts toward a pool only when its pods select
that pool's label, and toward a model only when it accepts that one model (otherwise no
one can say where it will run; it still counts in the cluster, its queue and namespace).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from optimizer.planner.plan import ClusterSnapshot
from shared.labels import NODE_POOL

CLUSTER = "cluster"
SCOPE_KINDS = ("cluster", "pool", "model", "queue", "namespace")


@dataclass(frozen=True)
class Demand:
    """GPUs in one scope at one instant (fractions: shares of a GPU)."""

    capacity_gpus: float
    allocated_gpus: float
    pending_gpus: float

    @property
    def demand_gpus(self) -> float:
        return self.allocated_gpus + self.pending_gpus


def scope_name(kind: str, value: str | None = None) -> str:
    """``cluster`` or ``kind/value``; raises ValueError for an unknown kind."""
    if kind not in SCOPE_KINDS:
        raise ValueError(f"unknown scope kind {kind!r}; known: {', '.join(SCOPE_KINDS)}")
    if kind == CLUSTER:
        return CLUSTER
    if not value:
        raise ValueError(f"scope {kind} needs a value, e.g. {kind}/NAME")
    return f"{kind}/{value}"


def demand_by_scope(snapshot: ClusterSnapshot) -> dict[str, Demand]:
    """Capacity, allocated and pending GPUs of every scope the snapshot shows."""
    state = snapshot.base.state
    capacity: dict[str, float] = defaultdict(float)
    allocated: dict[str, float] = defaultdict(float)
    pending: dict[str, float] = defaultdict(float)
    node_scopes: dict[str, list[str]] = {}
    for row, node in enumerate(snapshot.nodes):
        scopes = [CLUSTER, f"model/{state.models[int(state.model_id[row])]}"]
        pool = node.labels.get(NODE_POOL)
        if pool:
            scopes.append(f"pool/{pool}")
        node_scopes[node.name] = scopes
        gpus = float(state.gpu_present[row].sum())
        for scope in scopes:
            capacity[scope] += gpus
    for bound in snapshot.bound:
        gpus = bound.info.request.gpu_request_milli / 1000
        if not gpus:
            continue
        scopes = [*node_scopes.get(bound.node, [CLUSTER]), f"namespace/{bound.info.namespace}"]
        if bound.queue:
            scopes.append(f"queue/{bound.queue}")
        for scope in scopes:
            allocated[scope] += gpus
    for job in snapshot.jobs:
        gpus = job.gpus
        if not gpus or not job.pending:
            continue
        scopes = [CLUSTER, f"namespace/{job.namespace}"]
        if job.queue:
            scopes.append(f"queue/{job.queue}")
        first = job.pending[0]
        if len(first.request.gpu_models) == 1:
            scopes.append(f"model/{next(iter(first.request.gpu_models))}")
        pool = first.node_selector.get(NODE_POOL)
        if pool:
            scopes.append(f"pool/{pool}")
        for scope in scopes:
            pending[scope] += gpus
    names = set(capacity) | set(allocated) | set(pending)
    return {
        name: Demand(
            capacity_gpus=capacity.get(name, 0.0),
            allocated_gpus=round(allocated.get(name, 0.0), 3),
            pending_gpus=round(pending.get(name, 0.0), 3),
        )
        for name in sorted(names)
    }
