"""The cluster summary: GPUs by model and pool, fragmentation, power, stale nodes.

Pure: it takes plain rows (one per GPU with its node's facts) and returns the summary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache

DEFAULT_POOL = "default"


@dataclass(frozen=True)
class GpuState:
    """``count`` GPUs of one node in the same state (the store groups them in SQL).

    ``allocated``: running at least one process; ``busy``: utilisation at or above the idle
    threshold (or unknown); ``power_w`` and ``energy_j`` are the group's sums.
    """

    node_name: str
    pool: str | None
    node_last_seen: datetime
    product: str
    health: str
    allocated: bool
    busy: bool
    count: int
    power_w: float | None
    energy_j: float | None


@dataclass
class Counts:
    """GPU counts of one group."""

    total: int = 0
    allocated: int = 0  # running at least one process
    allocated_idle: int = 0  # allocated but below the idle threshold: paid for, unused
    free: int = 0  # healthy, no process
    unhealthy: int = 0


@dataclass
class Summary:
    """The whole summary, serialised as-is by the API."""

    nodes: int = 0
    stale_nodes: list[str] = field(default_factory=list)
    gpus: Counts = field(default_factory=Counts)
    by_model: dict[str, Counts] = field(default_factory=dict)
    by_pool: dict[str, Counts] = field(default_factory=dict)
    fragmented_gpus: int = 0
    #: pool -> GPU model -> fragmented GPUs (each node's free GPUs of that model)
    fragmented_by_pool: dict[str, dict[str, int]] = field(default_factory=dict)
    request_shapes: list[int] = field(default_factory=list)
    power_w: float = 0.0
    energy_j: float = 0.0


@cache
def usable_gpus(free: int, shapes: tuple[int, ...]) -> int:
    """The most of ``free`` GPUs a mix of request ``shapes`` (GPUs per pod) can use."""
    best = [0] * (free + 1)
    for capacity in range(1, free + 1):
        best[capacity] = max([best[capacity - s] + s for s in shapes if s <= capacity] or [0])
    return best[free]


def summarize(
    gpus: Iterable[GpuState],
    *,
    now: datetime,
    stale_after: timedelta,
    request_shapes: Sequence[int],
) -> Summary:
    """Counts by model and pool over fresh nodes; stale nodes are listed, not counted."""
    summary = Summary(request_shapes=sorted(set(request_shapes), reverse=True))
    shapes = tuple(summary.request_shapes)
    free_by_node: dict[str, int] = defaultdict(int)
    free_by_kind: dict[tuple[str, str, str], int] = defaultdict(int)  # node, pool, model
    seen: set[str] = set()
    stale: set[str] = set()
    for gpu in gpus:
        if now - gpu.node_last_seen > stale_after:
            stale.add(gpu.node_name)
            continue
        seen.add(gpu.node_name)
        groups = (
            summary.gpus,
            summary.by_model.setdefault(gpu.product, Counts()),
            summary.by_pool.setdefault(gpu.pool or DEFAULT_POOL, Counts()),
        )
        n = gpu.count
        healthy = gpu.health == "ok"
        for counts in groups:
            counts.total += n
            if not healthy:
                counts.unhealthy += n
            elif gpu.allocated:
                counts.allocated += n
                if not gpu.busy:
                    counts.allocated_idle += n
            else:
                counts.free += n
        if healthy and not gpu.allocated:
            free_by_node[gpu.node_name] += n
            free_by_kind[gpu.node_name, gpu.pool or DEFAULT_POOL, gpu.product] += n
        summary.power_w += gpu.power_w or 0.0
        summary.energy_j += gpu.energy_j or 0.0
    summary.nodes = len(seen)
    summary.stale_nodes = sorted(stale - seen)
    summary.fragmented_gpus = sum(f - usable_gpus(f, shapes) for f in free_by_node.values())
    for (_, pool, model), free in sorted(free_by_kind.items()):
        by_model = summary.fragmented_by_pool.setdefault(pool, {})
        by_model[model] = by_model.get(model, 0) + free - usable_gpus(free, shapes)
    return summary
