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
    """What the summary needs of one GPU."""

    node_name: str
    pool: str | None
    node_last_seen: datetime
    product: str
    health: str
    util_ratio: float | None
    process_count: int | None
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
    idle_util_ratio: float,
    request_shapes: Sequence[int],
) -> Summary:
    """Counts by model and pool over fresh nodes; stale nodes are listed, not counted."""
    summary = Summary(request_shapes=sorted(set(request_shapes), reverse=True))
    shapes = tuple(summary.request_shapes)
    free_by_node: dict[str, int] = defaultdict(int)
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
        allocated = bool(gpu.process_count)
        healthy = gpu.health == "ok"
        for counts in groups:
            counts.total += 1
            if not healthy:
                counts.unhealthy += 1
            elif allocated:
                counts.allocated += 1
                if gpu.util_ratio is not None and gpu.util_ratio < idle_util_ratio:
                    counts.allocated_idle += 1
            else:
                counts.free += 1
        if healthy and not allocated:
            free_by_node[gpu.node_name] += 1
        summary.power_w += gpu.power_w or 0.0
        summary.energy_j += gpu.energy_j or 0.0
    summary.nodes = len(seen)
    summary.stale_nodes = sorted(stale - seen)
    summary.fragmented_gpus = sum(f - usable_gpus(f, shapes) for f in free_by_node.values())
    return summary
