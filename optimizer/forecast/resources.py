"""CPU and memory right-sizing of the containers that run GPU work, as VPA does it.

Per workload and container name (every pod of a Deployment or a gang pooled, as VPA pools a
controller's pods), the samples of the window are weighed by age with a half-life of a day
(a decaying histogram): the target is the weighted 90th percentile plus a 15% margin, at
least 25 millicores and 64 MiB. CPU samples are a bucket's mean use, memory samples its peak
working set. After a sustained drop (every sample of the last six hours under half the
target) the target is taken from those six hours alone, so a workload that shrank is told
so within hours rather than after the history decays.

A request is called oversized or undersized when it is more than 30% away from the target
(and by at least 0.1 core or 128 MiB); a container with no request at all gets one. Pure:
series and requests in, :class:`~optimizer.forecast.rightsizing.Recommendation` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from optimizer.forecast.rightsizing import Recommendation, Workload

HALF_LIFE_S: Final = 86_400.0
PERCENTILE: Final = 0.9
MARGIN: Final = 0.15
#: A drop lasting this long resets the history.
SUSTAINED_S: Final = 6 * 3600.0
#: How far a request may sit from the target before it is worth changing.
TOLERANCE: Final = 0.30
MIB: Final = 1024**2
#: The least target, and the least change worth recommending, per resource.
FLOOR: Final = {"cpu": 0.025, "memory": 64.0 * MIB}
STEP: Final = {"cpu": 0.1, "memory": 128.0 * MIB}


@dataclass(frozen=True)
class ContainerSeries:
    """One container's samples over the window: times (s), CPU cores, memory bytes."""

    namespace: str
    pod: str
    container: str
    times: tuple[float, ...]
    cpu: tuple[float | None, ...]
    memory: tuple[float | None, ...]


def decayed_percentile(
    times: Sequence[float], values: Sequence[float], *, now_s: float, q: float, half_life_s: float
) -> float:
    """The ``q`` quantile of ``values``, each weighed 2^-(age / half-life)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    weights = [0.5 ** (max(now_s - times[i], 0.0) / half_life_s) for i in order]
    threshold = q * sum(weights)
    running = 0.0
    for i, weight in zip(order, weights, strict=True):
        running += weight
        if running >= threshold:
            return values[i]
    return values[order[-1]]


def target(
    times: Sequence[float], values: Sequence[float], *, now_s: float, resource: str
) -> tuple[float, bool]:
    """The recommended request for ``resource`` from its samples, and whether a sustained
    drop reset the history."""
    level = decayed_percentile(times, values, now_s=now_s, q=PERCENTILE, half_life_s=HALF_LIFE_S)
    recent = [(t, v) for t, v in zip(times, values, strict=True) if t >= now_s - SUSTAINED_S]
    dropped = (
        min(times) <= now_s - SUSTAINED_S and bool(recent) and max(v for _, v in recent) < level / 2
    )
    if dropped:
        level = decayed_percentile(
            [t for t, _ in recent],
            [v for _, v in recent],
            now_s=now_s,
            q=PERCENTILE,
            half_life_s=math.inf,
        )
    return max(level * (1 + MARGIN), FLOOR[resource]), dropped


def quantity(resource: str, value: float) -> str:
    """A Kubernetes quantity: millicores or cores, MiB or GiB (rounded up)."""
    if resource == "cpu":
        milli = math.ceil(value * 1000 / 10) * 10
        return f"{milli // 1000}" if milli % 1000 == 0 else f"{milli}m"
    mib = math.ceil(value / MIB)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def recommend_resources(
    series: Sequence[ContainerSeries],
    *,
    now_s: float,
    min_window_s: float,
    pods: Mapping[tuple[str, str], tuple[Workload, Mapping[str, Mapping[str, float]]]],
) -> list[Recommendation]:
    """``cpu`` and ``memory`` recommendations per workload and container. ``pods``: the
    leader's view, (namespace, pod) -> its workload and its containers' requests; a pod not
    there is not judged (its requests are unknown)."""
    groups: dict[tuple[str, Workload, str], list[ContainerSeries]] = {}
    for one in series:
        seen = pods.get((one.namespace, one.pod))
        if seen is not None and one.times:
            groups.setdefault((one.namespace, seen[0], one.container), []).append(one)
    out: list[Recommendation] = []
    for (namespace, workload, container), members in sorted(groups.items()):
        times = [t for m in members for t in m.times]
        if max(times) - min(times) < min_window_s:
            continue
        names = tuple(sorted({m.pod for m in members}))
        for resource in ("cpu", "memory"):
            points = [
                (t, v)
                for m in members
                for t, v in zip(m.times, m.cpu if resource == "cpu" else m.memory, strict=True)
                if v is not None
            ]
            if not points:
                continue
            requested = [
                pods[namespace, name][1].get(container, {}).get(resource) for name in names
            ]
            request = max((r for r in requested if r is not None), default=None)
            found = _judge(
                resource,
                [t for t, _ in points],
                [v for _, v in points],
                request,
                now_s=now_s,
            )
            if found is not None:
                current, recommended, reason = found
                out.append(
                    Recommendation(
                        kind=resource,
                        namespace=namespace,
                        workload=str(workload),
                        pods=names,
                        current=current,
                        recommended=recommended,
                        reason=reason,
                        signal="cgroup",
                        container=container,
                    )
                )
    return out


def _judge(
    resource: str,
    times: list[float],
    values: list[float],
    request: float | None,
    *,
    now_s: float,
) -> tuple[str, str, str] | None:
    """(current, recommended, reason) where the request is worth changing."""
    wanted, dropped = target(times, values, now_s=now_s, resource=resource)
    hours = (max(times) - min(times)) / 3600
    basis = (
        f"p90 of the last {SUSTAINED_S / 3600:.0f} h after a sustained drop"
        if dropped
        else f"decayed p90 over {hours:.1f} h (half-life {HALF_LIFE_S / 3600:.0f} h)"
    )
    reason = f"{basis}, +{MARGIN:.0%}: {quantity(resource, wanted)}"
    if request is None:
        return "none requested", quantity(resource, wanted), f"no {resource} request; {reason}"
    if abs(request - wanted) < STEP[resource]:
        return None
    if request > wanted * (1 + TOLERANCE):
        return quantity(resource, request), quantity(resource, wanted), f"oversized: {reason}"
    if wanted > request * (1 + TOLERANCE):
        return quantity(resource, request), quantity(resource, wanted), f"undersized: {reason}"
    return None
